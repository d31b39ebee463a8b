"""Training recipes: YAML files in recipes/ read into a checked dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vortex.errors import VortexError

RECIPES = resources.files("vortex") / "recipes"  # the repository's recipes/, shipped in the wheel
DEFAULT_RECIPE = "cnn_digits.yaml"
PROBE_DEFAULTS = {"max_samples": None, "batch_size": 256, "sketch_dim": None}  # the `probe:` section's keys


@dataclass
class Recipe:
    """What to train and how: model, data, optimiser, schedule, label smoothing, probe set."""

    model: str = "cnn"
    dataset: str = "digits"
    model_options: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    channels: int | None = None
    seed: int = 0
    epochs: int = 8
    batch_size: int = 64
    max_train_samples: int | None = None
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "adamw", "lr": 3e-3, "weight_decay": 5e-4})
    scheduler: str = "cosine"
    label_smoothing: float | list[float] | dict[str, float] = 0.0
    probe: dict[str, Any] = field(default_factory=lambda: dict(PROBE_DEFAULTS))
    controller: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def load_recipe(path: str | Path | None = None, **overrides: Any) -> Recipe:
    """Read a YAML recipe (default: recipes/cnn_digits.yaml) and apply non-None overrides.

    `path` is a file, or the name of a recipe shipped with vortex (`cnn_digits`, `recipes/cnn_digits.yaml`).
    """
    path = find_recipe(path or DEFAULT_RECIPE)
    data = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in fields(Recipe)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise VortexError(f"recipe '{path}' has unknown keys {unknown}; known keys: {sorted(known)}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    recipe = Recipe(**data)
    ls = recipe.label_smoothing
    alphas = list(ls.values()) if isinstance(ls, dict) else list(ls) if isinstance(ls, list) else [ls]
    if any(float(a) >= 1 for a in alphas):
        raise VortexError(f"label_smoothing must be below 1 (negative is allowed), got {ls}")
    unknown = sorted(set(recipe.probe) - set(PROBE_DEFAULTS))
    if unknown:
        raise VortexError(f"recipe probe section has unknown keys {unknown}; known: {', '.join(PROBE_DEFAULTS)}")
    if recipe.scheduler not in ("cosine", "constant"):
        raise VortexError(f"scheduler must be 'cosine' or 'constant', not '{recipe.scheduler}'")
    if recipe.optimizer.get("name", "adamw") not in ("adamw", "sgd"):
        raise VortexError(f"optimizer name must be 'adamw' or 'sgd', not '{recipe.optimizer.get('name')}'")
    return recipe
