"""Training recipes (YAML files in recipes/ read into a checked dataclass) and the settings that override them.

`vortex train`'s options are dataclass fields, each defined once with its help and aliases; the command
line parser is generated from them by `transformers.HfArgumentParser` (vortex/training/loop.py). The fields
below name, in their metadata, the recipe key they override (`recipe`): the YAML recipe gives the values,
and a field that is not None on the command line (or in a `TrainConfig`) wins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from transformers import SchedulerType

from vortex.core.stats import EXACT
from vortex.errors import VortexError
from vortex.training.controller import ControllerConfig

RECIPES = resources.files("vortex") / "recipes"  # the repository's recipes/, shipped in the wheel
DEFAULT_RECIPE = "cnn_digits.yaml"
PROBE_DEFAULTS = {"max_samples": None, "batch_size": 256, "sketch_dim": None}  # the `probe:` section's keys


@dataclass
class Recipe:
    """What to train and how: model, data, optimiser, schedule, label smoothing, probe set."""

    model: str = "cnn"
    dataset: str = "digits"
    dataset_config_name: str | None = None  # a Hub dataset's config
    image_column_name: str | None = None  # default: guessed from the column types and names
    label_column_name: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    channels: int | None = None
    seed: int = 0
    epochs: int = 8
    batch_size: int = 64
    gradient_accumulation_steps: int = 1
    max_train_samples: int | None = None
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "adamw", "lr": 3e-3, "weight_decay": 5e-4})
    scheduler: str = "cosine"  # a transformers.get_scheduler name
    num_warmup_steps: int = 0
    label_smoothing: float | list[float] | dict[str, float] = 0.0
    probe: dict[str, Any] = field(default_factory=lambda: dict(PROBE_DEFAULTS))
    controller: dict[str, Any] = field(default_factory=dict)
    license: str = "other"  # of the trained weights; the model card's `license`

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def setting(default: Any = None, text: str = "", *aliases: str, **argparse_options: Any) -> Any:
    """A `vortex train` setting (a dataclass field): its default, its --help text, older flag names, other
    add_argument options."""
    metadata = {"help": text, **argparse_options}
    if aliases:
        metadata["aliases"] = list(aliases)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _override(recipe_key: str, text: str, *aliases: str, **argparse_options: Any) -> Any:
    """A setting that overrides the recipe's `recipe_key` (None: keep the recipe's); `aliases` are older flag names."""
    return setting(None, text, *aliases, recipe=recipe_key, **argparse_options)


@dataclass(kw_only=True)
class ModelArguments:
    """Which network to train."""

    _argument_group_name = "model"

    model: str | None = _override(
        "model",
        "override the recipe's model: a built-in name, package.module:function, or a transformers image "
        "classifier (a directory written by save_pretrained or transformers.Trainer, or a Hub repo id)",
        metavar="MODEL",
    )


@dataclass(kw_only=True)
class DataArguments:
    """Which images, with the HF example scripts' flag names."""

    _argument_group_name = "data"

    dataset_name: str | None = _override(
        "dataset",
        "override the recipe's data set: a built-in, an image folder, a .parquet file or a Hub dataset id",
        "--dataset",
        metavar="DATASET",
    )
    dataset_config_name: str | None = _override(
        "dataset_config_name", "the config of a Hub dataset with several (e.g. 'gray')", metavar="NAME"
    )
    image_column_name: str | None = _override(
        "image_column_name", "the column holding the images (default: guessed)", metavar="COLUMN"
    )
    label_column_name: str | None = _override(
        "label_column_name", "the column holding the labels (default: guessed)", metavar="COLUMN"
    )
    max_train_samples: int | None = _override(
        "max_train_samples",
        "train on N samples of the train split (a seeded choice, made before any image is converted)",
        metavar="N",
    )


@dataclass(kw_only=True)
class OptimArguments:
    """How to train: epochs, batches, optimiser, schedule, smoothing, seed."""

    _argument_group_name = "optimisation"

    num_train_epochs: int | None = _override(
        "epochs", "override the recipe's number of epochs", "--epochs", metavar="EPOCHS"
    )
    per_device_train_batch_size: int | None = _override(
        "batch_size", "override the recipe's batch size (per process)", "--batch_size", metavar="N"
    )
    gradient_accumulation_steps: int | None = _override(
        "gradient_accumulation_steps",
        "batches per optimiser step (default: the recipe's, or ACCELERATE_GRADIENT_ACCUMULATION_STEPS)",
        metavar="N",
    )
    learning_rate: float | None = _override(
        "lr", "override the optimiser's learning rate (the recipe's optimizer: lr)", "--lr", metavar="LR"
    )
    lr_scheduler_type: str | None = _override(
        "scheduler",
        "override the recipe's scheduler: a transformers.get_scheduler name (cosine, linear, constant, ...)",
        metavar="NAME",
    )
    num_warmup_steps: int | None = _override(
        "num_warmup_steps", "override the recipe's learning-rate warm-up steps", metavar="N"
    )
    label_smoothing: float | None = _override(
        "label_smoothing",
        "smoothing alpha in (-inf, 1): 1-alpha on the true class; negative is allowed",
        metavar="ALPHA",
    )
    seed: int | None = _override("seed", "override the recipe's seed", metavar="N")


RECIPE_ARGUMENTS = (ModelArguments, DataArguments, OptimArguments)  # the settings that override recipe keys


def recipe_overrides(settings: Any) -> dict[str, Any]:
    """`load_recipe`'s overrides from `settings` (a TrainConfig, or any of RECIPE_ARGUMENTS): recipe key -> value."""
    return {f.metadata["recipe"]: getattr(settings, f.name) for f in fields(settings) if "recipe" in f.metadata}


def find_recipe(path: str | Path) -> Path:
    """A recipe file: `path` itself when it exists, else the shipped recipe of that name."""
    if Path(path).is_file():
        return Path(path)
    name = Path(path).name if Path(path).suffix else f"{Path(path).name}.yaml"
    shipped = RECIPES / name
    if shipped.is_file():
        return Path(str(shipped))
    known = sorted(p.name for p in RECIPES.iterdir() if p.name.endswith(".yaml"))
    raise VortexError(f"recipe '{path}' does not exist; write a YAML file or use a shipped one: {', '.join(known)}")


def load_recipe(path: str | Path | Recipe | None = None, **overrides: Any) -> Recipe:
    """Read a YAML recipe (default: recipes/cnn_digits.yaml), apply non-None overrides (`lr`: the
    optimiser's) and check the result, so a bad value from the command line is refused as one from the file.

    `path` is a file, the name of a recipe shipped with vortex (`cnn_digits`, `recipes/cnn_digits.yaml`),
    or a Recipe (checked as a file is).
    """
    lr = overrides.pop("lr", None)
    if isinstance(path, Recipe):
        data, path = path.to_dict(), "given as a Recipe"
    else:
        path = find_recipe(path or DEFAULT_RECIPE)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}" if where else ""
            raise VortexError(f"recipe '{path}' is not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise VortexError(f"recipe '{path}' must be a YAML mapping of keys to values, not a {type(data).__name__}")
    known = {f.name for f in fields(Recipe)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise VortexError(f"recipe '{path}' has unknown keys {unknown}; known keys: {sorted(known)}")
    if overrides.get("model") not in (None, data.get("model", Recipe.model)):
        data.pop("model_options", None)  # the recipe's options are for its own model
    if overrides.get("dataset") not in (None, data.get("dataset", Recipe.dataset)):
        for key in DATA_OPTIONS:  # the recipe's config and columns are for its own data set
            data.pop(key, None)
    data.update({k: v for k, v in overrides.items() if v is not None})
    recipe = Recipe(**data)
    check_types(recipe, path)
    if lr is not None:
        recipe.optimizer = {**recipe.optimizer, "lr": lr}
    ls = recipe.label_smoothing
    alphas = list(ls.values()) if isinstance(ls, dict) else list(ls) if isinstance(ls, list) else [ls]
    if any(not isinstance(a, (int, float)) or isinstance(a, bool) for a in alphas):
        raise VortexError(f"label_smoothing must be a number, a list of numbers or {{start, end}}, got {ls}")
    if any(float(a) >= 1 for a in alphas):
        raise VortexError(f"label_smoothing must be below 1 (negative is allowed), got {ls}")
    unknown = sorted(set(recipe.probe) - set(PROBE_DEFAULTS))
    if unknown:
        raise VortexError(f"recipe probe section has unknown keys {unknown}; known: {', '.join(PROBE_DEFAULTS)}")
    for key, value in recipe.probe.items():
        if key == "sketch_dim" and value == EXACT:  # keep every split exact, however large
            continue
        if (value is not None or key == "batch_size") and (not _whole(value) or value < 1):
            none = "" if key == "batch_size" else " or null"
            raise VortexError(f"recipe probe {key} must be a whole number of at least 1{none}, got {value!r}")
    check_controller(recipe.controller)
    unknown = sorted(set(recipe.optimizer) - set(OPTIMIZER_KEYS))
    if unknown:
        raise VortexError(f"recipe optimizer has unknown keys {unknown}; known: {', '.join(OPTIMIZER_KEYS)}")
    for key in ("weight_decay", "momentum"):
        value = recipe.optimizer.get(key, 0.0)
        if not _number(value) or not 0 <= value < float("inf"):
            raise VortexError(f"optimizer {key} must be a number of at least 0, got {value!r}")
    schedulers = [s.value for s in SchedulerType]
    if recipe.scheduler not in schedulers:
        raise VortexError(f"scheduler must be one of {', '.join(schedulers)}, not '{recipe.scheduler}'")
    if recipe.optimizer.get("name", "adamw") not in ("adamw", "sgd"):
        raise VortexError(f"optimizer name must be 'adamw' or 'sgd', not '{recipe.optimizer.get('name')}'")
    if recipe.num_warmup_steps < 0:
        raise VortexError(f"num_warmup_steps must be 0 or more, got {recipe.num_warmup_steps}")
    for key, value in (
        ("epochs", recipe.epochs),
        ("batch_size", recipe.batch_size),
        ("gradient_accumulation_steps", recipe.gradient_accumulation_steps),
    ):
        if value < 1:
            raise VortexError(f"{key} must be at least 1, got {value}")
    if recipe.max_train_samples is not None and recipe.max_train_samples < 1:
        raise VortexError(f"max_train_samples must be at least 1, got {recipe.max_train_samples}")
    lr = recipe.optimizer.get("lr", 1e-3)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not 0 < lr < float("inf"):
        raise VortexError(f"optimizer lr must be a positive number, got {lr!r}")
    return recipe


INTEGERS = ("seed", "epochs", "batch_size", "gradient_accumulation_steps", "num_warmup_steps")
OPTIMIZER_KEYS = ("name", "lr", "weight_decay", "momentum")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_controller(section: dict[str, Any]) -> None:
    """The `controller:` section's keys and values: intervals and sample counts whole numbers of at
    least 1, weights and factors finite numbers of at least 0."""
    config = ControllerConfig.from_dict(section)  # refuses unknown keys
    for f in fields(ControllerConfig):
        value = getattr(config, f.name)
        whole = f.type == "int"
        if not (_whole(value) if whole else _number(value)) or not (1 if whole else 0) <= value < float("inf"):
            kind = "a whole number of at least 1" if whole else "a number of at least 0"
            raise VortexError(f"recipe controller {f.name} must be {kind}, got {value!r}")


OPTIONAL_INTEGERS = ("image_size", "channels", "max_train_samples")
DATA_OPTIONS = ("dataset_config_name", "image_column_name", "label_column_name")  # optional strings
MAPPINGS = ("model_options", "optimizer", "probe", "controller")


def check_types(recipe: Recipe, path: str | Path) -> None:
    """One line naming the key whose value has the wrong type (YAML gives strings for typos like 'eight')."""
    for key in INTEGERS + OPTIONAL_INTEGERS:
        value = getattr(recipe, key)
        if (value is not None or key in INTEGERS) and (not isinstance(value, int) or isinstance(value, bool)):
            raise VortexError(f"recipe '{path}': {key} must be a whole number, got {value!r}")
    for key in MAPPINGS:
        if not isinstance(getattr(recipe, key), dict):
            raise VortexError(f"recipe '{path}': {key} must be a mapping (key: value), got {getattr(recipe, key)!r}")
    for key in ("model", "dataset", "scheduler", "license"):
        if not isinstance(getattr(recipe, key), str):
            raise VortexError(f"recipe '{path}': {key} must be a string, got {getattr(recipe, key)!r}")
    for key in DATA_OPTIONS:
        if not isinstance(getattr(recipe, key), (str, type(None))):
            raise VortexError(f"recipe '{path}': {key} must be a string or null, got {getattr(recipe, key)!r}")


def check_smoothing(alpha: Any, num_classes: int) -> None:
    """Smoothing puts 1 - alpha on the true class and alpha / (C - 1) on each other: at alpha >=
    (C - 1) / C the true class no longer gets the most, and training learns nothing."""
    alphas = list(alpha.values()) if isinstance(alpha, dict) else list(alpha) if isinstance(alpha, list) else [alpha]
    limit = (num_classes - 1) / num_classes
    if any(float(a) >= limit for a in alphas):
        raise VortexError(
            f"label_smoothing {alpha} must stay below (C-1)/C = {limit:.3f} for {num_classes} classes: from there "
            "on the true class no longer gets the largest target"
        )
    if isinstance(alpha, list) and len(alpha) != num_classes:
        raise VortexError(f"label_smoothing lists {len(alpha)} values but the data set has {num_classes} classes")
