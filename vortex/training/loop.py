"""The Accelerate training loop behind `vortex train` and `accelerate launch vortex/train.py`.

    accelerate launch vortex/train.py --recipe recipes/cnn_digits.yaml --output_dir runs/cnn
    accelerate launch vortex/train.py --target-gpz 6 --output_dir runs/gpz6   # land the GPZ at split 6
    vortex train --recipe recipes/cnn_digits.yaml --output_dir runs/cnn        # the same program
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 vortex/train.py ...       # 2 CPU processes

The checkpoint holds model.safetensors, config.json, vortex.json (splits, final profile,
controller history) and profile.json / profile.png (and vortex.png with a target). Training
state goes to OUTPUT_DIR/state/ every epoch (or every --checkpointing_steps steps);
--resume_from_checkpoint latest continues from the newest one, controller included.

With --target-gpz K a controller (vortex/training/controller.py) measures the GPZ on a probe set held
out from the training split every few steps and moves label-driven levers until the GPZ
starts at split K. rho is only the prediction: at the end an inversion attack checks splits K-1
and K, and the target counts as reached only when the rho transition is at K *and* split K resists
the attack (MSE >= --privacy-mse). The run exits with status 3 if the saved model misses either, or
loses more than --max-accuracy-drop test accuracy against an untargeted run of the same recipe.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from contextlib import ExitStack
from dataclasses import Field, dataclass, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import HfArgumentParser, get_scheduler

from vortex.core.probe import profile_model, stream_stats
from vortex.data import data_shape, load_all, load_data, make_loader, num_classes
from vortex.distributed import process_state, sync_buffers
from vortex.errors import AttackError, VortexError
from vortex.files import check_output_dir, locked, write_json
from vortex.hub.checkpoint import save_checkpoint
from vortex.hub.hf_classifier import load_transformers, transformers_spec
from vortex.hub.layout import is_checkpoint, read_json_object, read_meta
from vortex.hub.loading import load_init_weights, resolve_spec, transformers_source
from vortex.hub.repo import is_repo_id
from vortex.logs import show_logs
from vortex.models import build_model, split_model
from vortex.records import ControllerSummary, Profile
from vortex.report.plots import plot_reconstructions, plot_vortex
from vortex.report.tables import profile_table
from vortex.training.config import (
    RECIPE_ARGUMENTS,
    DataArguments,
    ModelArguments,
    OptimArguments,
    Recipe,
    check_smoothing,
    load_recipe,
    recipe_overrides,
    setting,
)
from vortex.training.controller import ControllerConfig, GPZController, check_target
from vortex.training.levers import lever_loss, smoothing_at
from vortex.training.loss import soft_target_loss
from vortex.training.privacy import RECOGNISABLE_MSE, OnlineAttacker, PrivacyCriterion, verify_privacy

log = logging.getLogger(__name__)  # printed by the entry point (vortex.logs), main process only

TARGET_MISSED = 3
RUN_STATE = "vortex_state.json"  # vortex's part of a saved training state (controller, run fingerprint)
BEST_WEIGHTS = "best.safetensors"  # the controller's best point so far, saved with the state that knows it
PRIVACY_ATTACKS = ("decoder", "enhanced")


# Fields typed `Path | str | None` take paths from Python and strings from the command line: HfArgumentParser
# parses the type that follows the first one in such a union, here str.


@dataclass(kw_only=True)
class RunArguments:
    """The recipe, where the run writes, and its training state."""

    _argument_group_name = "run"

    recipe: Recipe | str | Path | None = setting(
        None,
        "YAML recipe: a file, or a shipped one's name (default: recipes/cnn_digits.yaml); its values are "
        "the defaults of the options below, which override them",
        metavar="FILE",
    )
    output_dir: Path | str | None = setting(
        None, "where the checkpoint is written (default: runs/MODEL-DATASET[-gpzK], printed at start)", metavar="DIR"
    )
    init_weights: Path | str | None = setting(
        None,
        "a local .safetensors file of the model's weights to start from (every tensor, of the model's shapes)",
        metavar="FILE",
    )
    trust_code: list[str] = setting(
        [],
        "import this custom architecture for a recipe that names it (repeatable); a --model given on the command "
        "line is trusted as it is; vortex never imports code named by a file otherwise",
        action="append",
        metavar="PACKAGE.MODULE:FUNCTION",
    )
    checkpointing_steps: str = setting(  # or an int
        "epoch", "save the training state every N steps, or 'epoch' (default)", metavar="N|epoch"
    )
    resume_from_checkpoint: Path | str | None = setting(
        None, "a state directory under OUTPUT_DIR/state, or 'latest'", metavar="DIR|latest"
    )
    with_tracking: bool = setting(False, "log loss, accuracy, levers and GPZ through Accelerator(log_with=...)")
    report_to: str = setting(
        "tensorboard",
        "tracker for --with_tracking (tensorboard works offline; 'all' for every installed one)",
        metavar="TRACKER",
    )
    push_to_hub: bool = setting(
        False, "publish the checkpoint to the Hub when training ends (same as `vortex publish`)"
    )
    hub_model_id: str | None = setting(
        None,
        "ORG/NAME of the Hub repo for --push_to_hub (default: OUTPUT_DIR's name in your namespace)",
        metavar="ORG/NAME",
    )
    hub_private_repo: bool = setting(False, "create the Hub repo private")
    hub_revision: str | None = setting(None, "branch to push to (default: main)", metavar="BRANCH")


@dataclass(kw_only=True)
class TargetArguments:
    """The GPZ target: the controller, the verdict attack and the accuracy guard (the recipe's probe: and
    controller: sections set the probe set and the controller's schedule)."""

    _argument_group_name = "GPZ target"

    target_gpz: int | None = setting(
        None, "split K where the GPZ should start (2..L); turns on the controller", metavar="K"
    )
    max_accuracy_drop: float = setting(
        0.02,
        "with --target-gpz: largest test-accuracy loss allowed against the untargeted run (default 0.02 = 2 points)",
        metavar="FRACTION",
    )
    privacy_mse: float = setting(
        RECOGNISABLE_MSE,
        "with --target-gpz: the attack MSE (images in [0, 1]) split K must reach to count as protected "
        f"(default {RECOGNISABLE_MSE}, below which reconstructions are recognisable)",
        metavar="MSE",
    )
    privacy_attack: str = setting(
        "decoder",
        "with --target-gpz: the inversion attack that checks split K (default: decoder)",
        choices=PRIVACY_ATTACKS,
    )
    baseline: str = setting(  # or a Path
        "auto",
        "with --target-gpz: the untargeted run to compare accuracy with: a checkpoint directory, "
        "'auto' (train it into OUTPUT_DIR/baseline, reused if there) or 'none'",
        metavar="DIR|auto|none",
    )
    holdout_probe: bool = setting(False, argparse.SUPPRESS)  # a probe set held out without a target (baseline runs)


ARGUMENTS = (RunArguments, *RECIPE_ARGUMENTS, TargetArguments)  # `vortex train --help`'s groups, in this order


@dataclass(kw_only=True)
class TrainConfig(TargetArguments, OptimArguments, DataArguments, ModelArguments, RunArguments):
    """Everything `vortex train` takes on its command line: the fields of ARGUMENTS (`vortex train --help`
    says what each means). The recipe's fields (ModelArguments, DataArguments, OptimArguments) left None keep
    the recipe's value."""

    def __post_init__(self) -> None:
        if self.privacy_attack not in PRIVACY_ATTACKS:
            known = ", ".join(PRIVACY_ATTACKS)
            raise VortexError(f"privacy_attack must be one of {known}, got {self.privacy_attack!r}")
        if self.target_gpz is not None and (not isinstance(self.target_gpz, int) or isinstance(self.target_gpz, bool)):
            raise VortexError(f"target_gpz must be a whole number or None, got {self.target_gpz!r}")


@dataclass
class TrainResult:
    """What a training run gives back: where the checkpoint is, its status and its records."""

    output_dir: Path
    status: int  # 0, or TARGET_MISSED
    test_accuracy: float
    profile: Profile  # of the saved model, on the test split
    controller: ControllerSummary | None  # with a target
    privacy: dict[str, Any] | None  # the verdict attack's record (vortex.json's `privacy`), with a target
    target_reached: bool | None  # None without a target


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written; a bool option shown as a plain switch (it also takes true/false)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:  # each name, then the value once
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        if action.nargs == "?" and action.const is True:
            return ", ".join(action.option_strings)
        value = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {value}"


class _ArgumentParser(HfArgumentParser):
    """HfArgumentParser, leaving out vortex's field metadata (`recipe`: the recipe key a field overrides), and
    with repeatable options (`action="append"`) taking one value each time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for action in self._actions:
            if isinstance(action, argparse._AppendAction):
                action.nargs = None

    @staticmethod
    def _parse_dataclass_field(parser: argparse.ArgumentParser, field: Field) -> None:
        if "recipe" in field.metadata:
            field = copy.copy(field)
            field.metadata = MappingProxyType({k: v for k, v in field.metadata.items() if k != "recipe"})
        HfArgumentParser._parse_dataclass_field(parser, field)


def build_parser() -> HfArgumentParser:
    """`vortex train`'s parser, generated from the fields of ARGUMENTS (the HF example scripts' flag names,
    older vortex names as aliases)."""
    return _ArgumentParser(ARGUMENTS, prog="vortex train", description=__doc__, formatter_class=_HelpFormatter)


def make_optimizer(model: torch.nn.Module, cfg: dict) -> torch.optim.Optimizer:
    cfg = dict(cfg)
    name, lr, wd = cfg.pop("name", "adamw"), float(cfg.pop("lr", 1e-3)), float(cfg.pop("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd, momentum=float(cfg.get("momentum", 0.9)))
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)


def find_resume_dir(output_dir: Path, arg: str) -> Path:
    """The state directory to resume from: the newest complete one under OUTPUT_DIR/state for 'latest'."""
    if arg != "latest":
        path = Path(arg)
        if not (path / RUN_STATE).is_file():
            raise VortexError(
                f"--resume_from_checkpoint {arg}: not a complete vortex training state (no {RUN_STATE}); "
                f"pass a step_N directory under {output_dir / 'state'} or 'latest'"
            )
        return path
    candidates = sorted(
        (
            p
            for p in (output_dir / "state").glob("step_*")
            if re.fullmatch(r"step_\d+", p.name) and (p / RUN_STATE).is_file()
        ),
        key=lambda p: int(p.name.split("_")[1]),
    )
    if not candidates:
        raise VortexError(f"--resume_from_checkpoint latest: no complete saved state under {output_dir / 'state'}")
    return candidates[-1]


def run_fingerprint(
    recipe: dict,
    target: int | None,
    max_accuracy_drop: float,
    processes: int,
    accumulation: int,
    init_weights: str | None = None,
) -> str:
    """A hash of everything that decides a run's trajectory (the recipe, the target, the initial weights'
    sha256, and how the batches are spread: processes and accumulation): a state resumes only into the same run."""
    settings = {
        "recipe": recipe,
        "target_gpz": target,
        "max_accuracy_drop": max_accuracy_drop,
        "processes": processes,
        "gradient_accumulation_steps": accumulation,
        **({"init_weights": init_weights} if init_weights else {}),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def save_training_state(
    accelerator: Accelerator, output_dir: Path, step: int, run_state: dict, best: dict[str, torch.Tensor]
) -> None:
    """Save Accelerate's state and vortex's own (JSON, never pickle; the controller's best weights, if
    any, as safetensors) into state/step_N as one unit: written beside it and renamed into place, so
    an interrupted save leaves no step_N behind."""
    final, partial = output_dir / "state" / f"step_{step}", output_dir / "state" / f".step_{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(partial / RUN_STATE, run_state)
        if best:
            save_file(best, partial / BEST_WEIGHTS)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    accelerator.wait_for_everyone()


def read_best_weights(state_dir: Path) -> dict[str, torch.Tensor]:
    """The controller's best weights saved with `state_dir`, with a one-line error when they are missing."""
    try:
        return load_file(state_dir / BEST_WEIGHTS)
    except (OSError, SafetensorError) as exc:
        raise VortexError(
            f"cannot read the controller's best weights {state_dir / BEST_WEIGHTS} ({exc}); resume from "
            "another state or start afresh"
        ) from None


def read_run_state(state_dir: Path, fingerprint: str) -> dict:
    """vortex's JSON state saved with `state_dir`, refused when it belongs to another run."""
    try:
        saved = json.loads((state_dir / RUN_STATE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise VortexError(
            f"cannot read {state_dir / RUN_STATE} ({exc}); resume from another state or start afresh"
        ) from None
    foreign = sorted(p.name for p in state_dir.glob("custom_checkpoint_*"))
    if foreign:
        raise VortexError(
            f"{state_dir} holds {', '.join(foreign)}: pickled state that vortex never writes and will "
            "not load (it could run code); resume from a state written by this vortex version"
        )
    if saved.get("fingerprint") != fingerprint:
        raise VortexError(
            f"{state_dir} was saved by a run with other settings (recipe, data or target); resuming "
            "it would mix two runs. Use the settings of that run, or another --output_dir"
        )
    return saved


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, accelerator: Accelerator) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        out = model(x)
        pred = accelerator.gather_for_metrics((out[0] if isinstance(out, tuple) else out).argmax(1))
        y = accelerator.gather_for_metrics(y)
        correct += int((pred == y).sum())
        total += len(y)
    model.train()
    return correct / max(total, 1)


def read_baseline(args: TrainConfig, output_dir: Path) -> tuple[Path | None, float | None, int | None]:
    """The untargeted run to guard accuracy against: its directory, test accuracy and rho GPZ (None if not recorded)."""
    if args.baseline == "none":
        return None, None, None
    base_dir = output_dir / "baseline" if args.baseline == "auto" else Path(args.baseline)
    if args.baseline == "auto" and not is_checkpoint(base_dir):
        complete = any((base_dir / "state").glob(f"step_*/{RUN_STATE}"))  # an interrupted save leaves none
        base_args = replace(
            args,
            output_dir=base_dir,
            target_gpz=None,
            holdout_probe=True,
            resume_from_checkpoint="latest" if complete else None,
            with_tracking=False,
            push_to_hub=False,
        )
        train(base_args)
    meta = base_dir / "vortex.json"
    if not meta.is_file():
        raise VortexError(
            f"--baseline {base_dir} is not a vortex checkpoint with a vortex.json; train one "
            "without --target-gpz, or pass --baseline auto"
        )
    record = read_json_object(meta)
    accuracy = record.get("test_accuracy")
    if not isinstance(accuracy, (int, float)) or isinstance(accuracy, bool) or not 0 <= accuracy <= 1:
        raise VortexError(
            f"'{meta}' records no test accuracy (test_accuracy: {accuracy!r}); train the baseline again, "
            "or pass --baseline auto"
        )
    gpz = record.get("gpz")
    index = gpz.get("index") if isinstance(gpz, dict) else None  # an older record may have none
    return base_dir, float(accuracy), index if isinstance(index, int) and not isinstance(index, bool) else None


SETTINGS_FILES = (".yaml", ".yml", ".json")


def read_settings(parser: HfArgumentParser, path: str) -> tuple[Any, ...]:
    """`vortex train settings.yaml` (or .json), the HF example scripts' way: the file's keys are the
    settings' field names (`vortex train --help`), e.g. recipe, output_dir, target_gpz, num_train_epochs."""
    if not Path(path).is_file():
        raise VortexError(f"settings file '{path}' does not exist")
    try:
        return parser.parse_json_file(path) if path.endswith(".json") else parser.parse_yaml_file(path)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise VortexError(f"settings file '{path}' cannot be read: {str(exc).splitlines()[0]}") from None
    except (TypeError, AttributeError):  # parse_dict of a list or a scalar
        raise VortexError(f"settings file '{path}' must be a mapping of setting names to values") from None
    except ValueError:  # keys that are no setting; a recipe's keys go in the recipe file
        known = {f.name for part in ARGUMENTS for f in fields(part)}
        unknown = sorted(set(yaml.safe_load(Path(path).read_text())) - known)  # JSON is YAML
        raise VortexError(
            f"settings file '{path}' has keys that are no `vortex train` setting: {unknown} (see `vortex train "
            "--help` for the names); a recipe file goes in --recipe or under `recipe:`"
        ) from None


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The command line (`vortex train --help`), or one settings file, as a TrainConfig."""
    parser = build_parser()
    given = sys.argv[1:] if argv is None else argv
    if len(given) == 1 and given[0].endswith(SETTINGS_FILES):
        parts, unknown = read_settings(parser, given[0]), []
    else:
        *parts, unknown = parser.parse_args_into_dataclasses(given, return_remaining_strings=True)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")  # exit status 2, as argparse's
    settings: dict[str, Any] = {}
    for part in parts:
        settings.update(vars(part))
    return TrainConfig(**settings)


def main(argv: list[str] | None = None) -> int:
    show_logs()
    return train(parse_config(argv)).status


def train(config: TrainConfig) -> TrainResult:
    """Train as `vortex train` does: check the output directory, hold its lock (main process) and run."""
    if not config.output_dir:
        recipe = load_recipe(config.recipe, model=config.model, dataset=config.dataset_name)
        name = "-".join(re.sub(r"[^\w.]+", "_", str(v)).strip("_") for v in (recipe.model, recipe.dataset))
        output_dir = f"runs/{name}" + (f"-gpz{config.target_gpz}" if config.target_gpz is not None else "")
        config = replace(config, output_dir=output_dir)
        log.info(f"writing to --output_dir {output_dir}")
    check_output_dir(config.output_dir, "--output_dir")
    with ExitStack() as held:
        return run(config, held)


def run(args: TrainConfig, held: ExitStack) -> TrainResult:
    """The training run; `held` keeps the output directory's lock (taken once the settings are checked)."""
    recipe = load_recipe(args.recipe, **recipe_overrides(args))  # the recipe, the settings given on top
    output_dir = Path(args.output_dir)
    target = args.target_gpz
    ctrl_cfg = ControllerConfig.from_dict(recipe.controller)

    # Data and model; with a target, a probe set is held out of the training split
    data = load_data(  # the fixed default split: every command sees the same test set
        recipe.dataset,
        config_name=recipe.dataset_config_name,
        image_column=recipe.image_column_name,
        label_column=recipe.label_column_name,
        max_samples={"train": recipe.max_train_samples},
    )
    train_ds, test_ds = data["train"], data["test"]
    probe_ds = None
    if target is not None or args.holdout_probe:
        parts = train_ds.train_test_split(test_size=ctrl_cfg.probe_samples, seed=0, stratify_by_column="label")
        train_ds, probe_ds = parts["train"], parts["test"]
    channels, height, _ = data_shape(train_ds)
    k_classes = num_classes(train_ds)
    check_smoothing(recipe.label_smoothing, k_classes)
    source = transformers_source(recipe.model)  # a transformers image classifier's directory, else None
    if source is None:
        spec = resolve_spec(
            recipe.model,
            num_classes=k_classes,
            data_channels=channels,
            data_size=height,
            image_size=recipe.image_size,
            channels=recipe.channels,
            options=recipe.model_options,
        )
    elif recipe.model_options:
        raise VortexError(
            f"model_options {sorted(recipe.model_options)} do not apply to the transformers model '{recipe.model}' "
            "(its config.json says what it is); drop them from the recipe"
        )
    else:
        spec = transformers_spec(
            source,
            num_classes=k_classes,
            data_size=height,
            image_size=recipe.image_size,
            channels=recipe.channels,
            source=recipe.model,
        )
    trusted = [*args.trust_code, *([args.model] if args.model else [])]  # what the user named, not a file
    criterion = PrivacyCriterion(min_mse=args.privacy_mse, attack=args.privacy_attack)
    base_dir, base_acc, base_gpz = None, None, None
    if target is not None or args.init_weights:  # refuse a bad target or init file before any training starts
        first = build_model(spec, trust_code=trusted)
        if target is not None:
            check_target(target, [s.name for s in split_model(first, spec).splits])
        if args.init_weights:
            load_init_weights(first, args.init_weights)
    if process_state().is_main_process:  # one writer per output directory, from here on
        held.enter_context(locked(output_dir, "--output_dir"))
    if target is not None:
        base_dir, base_acc, base_gpz = read_baseline(args, output_dir)
    set_seed(recipe.seed)
    model = load_transformers(source, spec, recipe.model) if source else build_model(spec, trust_code=trusted)
    init_sha256 = load_init_weights(model, args.init_weights) if args.init_weights else None
    if init_sha256:
        log.info(f"initial weights: {args.init_weights} (sha256 {init_sha256[:12]})")
    sm = split_model(model, spec)
    split_names = [s.name for s in sm.splits]

    accelerator = Accelerator(
        **(
            {"gradient_accumulation_steps": recipe.gradient_accumulation_steps}
            if args.gradient_accumulation_steps or recipe.gradient_accumulation_steps > 1
            else {}
        ),  # else Accelerate's default (its env variable)
        log_with=args.report_to if args.with_tracking else None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    size, chans = spec.image_size, spec.in_channels
    train_loader = make_loader(
        train_ds, recipe.batch_size, image_size=size, channels=chans, shuffle=True, seed=recipe.seed
    )
    test_loader = make_loader(test_ds, 256, image_size=size, channels=chans)

    controller = None
    if target is not None:  # accuracy guard: held-out probe accuracy vs the baseline's test accuracy
        controller = GPZController(
            target,
            split_names,
            ctrl_cfg,
            base_acc,
            args.max_accuracy_drop if base_acc is not None else None,
            min_mse=criterion.min_mse,
            baseline_gpz=base_gpz,
        )
        # the probe set decoded once; this process streams its own contiguous shard of it for rho
        x_probe, y_probe = load_all(probe_ds, image_size=size, channels=chans)
        world = process_state()
        xs, ys = (t.tensor_split(world.num_processes)[world.process_index] for t in (x_probe, y_probe))
        probe_batches = list(zip(xs.split(ctrl_cfg.probe_batch_size), ys.split(ctrl_cfg.probe_batch_size)))
        online = OnlineAttacker(train_ds, x_probe, image_size=size, channels=chans)
        log.info(
            f"controller: target GPZ at split {target} ({split_names[target - 1]}), measuring every "
            f"{ctrl_cfg.every}-{ctrl_cfg.max_every} steps on {len(probe_ds)} held-out samples (rho, and an "
            f"online attack at split {target} that must reach MSE {criterion.min_mse})"
            + (f"; baseline test accuracy {base_acc:.4f}" if base_acc is not None else "")
        )

    # Train through a tap of the model that also returns z at the levers' splits
    net = sm.tap(controller.lever_splits if controller else [])
    optimizer = make_optimizer(net, recipe.optimizer)
    accumulation = accelerator.gradient_accumulation_steps
    # the prepared scheduler steps once per process at each optimiser step (as in transformers' examples)
    scheduler = get_scheduler(
        recipe.scheduler,
        optimizer,
        num_warmup_steps=recipe.num_warmup_steps * accelerator.num_processes,
        num_training_steps=max(recipe.epochs * math.ceil(len(train_loader) / accumulation), 1),
    )
    net, optimizer, train_loader, test_loader, scheduler = accelerator.prepare(
        net, optimizer, train_loader, test_loader, scheduler
    )
    total_steps = recipe.epochs * len(train_loader)  # batches of this process; `step` counts them
    steps_per_epoch = len(train_loader)

    if args.with_tracking:
        accelerator.init_trackers(
            "vortex", config={k: v for k, v in recipe.to_dict().items() if isinstance(v, (int, float, str, bool))}
        )

    online_seconds: list[float] = []  # the online attack's share of measuring, per measurement
    best_weights: dict[str, torch.Tensor] = {}  # the controller's best point, kept in memory and in each state

    def measure(step: int) -> None:
        """Profile the probe set (every process a shard), read the online attack when rho puts the
        GPZ at K, let the controller decide, keep the best weights."""
        sync_buffers(model)  # batch-norm statistics as rank 0 has them
        at_k: list[torch.Tensor] = []  # the probe's z_K from the same pass (one process: the whole probe)
        stats, acc = stream_stats(
            sm,
            probe_batches,
            num_classes=k_classes,
            progress=False,
            sketch_dim=recipe.probe.get("sketch_dim"),
            on_batch=(lambda zs: at_k.append(zs[target - 1].cpu())) if accelerator.num_processes == 1 else None,
        )
        rho = [s.summary().rho for s in stats]
        attack_mse = None
        if controller.assess(rho).gpz == target:  # elsewhere it changes neither the decision nor the best point
            started_attack = time.perf_counter()
            attack_mse = online(sm, target, accelerator.device, torch.cat(at_k) if at_k else None)
            online_seconds.append(time.perf_counter() - started_attack)
        entry = controller.observe(step, rho, acc, step / max(total_steps, 1), attack_mse=attack_mse)
        attack = f"online attack MSE at {target} {attack_mse:.4f}" if attack_mse is not None else "no attack"
        log.info(
            f"step {step}: GPZ {entry.gpz} (target {target}, lead {entry.ratio:.2f}), {attack}, "
            f"probe accuracy {acc:.3f} -> {entry.decision}"
        )
        if args.with_tracking:
            accelerator.log(
                {
                    "gpz": entry.gpz,
                    **({"online_attack_mse": attack_mse} if attack_mse is not None else {}),
                    "lever/pull": entry.levers["pull"],
                    "lever/hold": entry.levers["hold"],
                    "probe_accuracy": acc,
                },
                step=step,
            )
        if controller.is_better(entry):
            best_weights.clear()
            to_cpu = {"device": "cpu", "memory_format": torch.contiguous_format, "copy": True}  # one copy each
            best_weights.update({k: v.detach().to(**to_cpu) for k, v in model.state_dict().items()})

    # Resume: vortex's JSON state says how many optimiser steps were done and holds the controller
    fingerprint = run_fingerprint(
        recipe.to_dict(), target, args.max_accuracy_drop, accelerator.num_processes, accumulation, init_sha256
    )

    def save_state(step: int) -> None:
        save_training_state(
            accelerator,
            output_dir,
            step,
            {"fingerprint": fingerprint, "step": step, "controller": controller.state_dict() if controller else None},
            best_weights,
        )

    step = 0
    if args.resume_from_checkpoint:
        state_dir = find_resume_dir(output_dir, args.resume_from_checkpoint)
        saved = read_run_state(state_dir, fingerprint)
        log.info(f"resuming from {state_dir}")
        accelerator.load_state(str(state_dir))  # Accelerate's files: safetensors and weights_only loads
        step = int(saved["step"])
        if controller:
            controller.load_state_dict(saved["controller"])
            if controller.best:
                best_weights.update(read_best_weights(state_dir))
        done = read_meta(output_dir) if is_checkpoint(output_dir) else {}
        if step >= total_steps and done.get("fingerprint") == fingerprint:
            log.info(
                f"{output_dir} holds this run, finished: nothing to resume (test accuracy {done['test_accuracy']:.4f})"
            )
            accelerator.end_training()
            summary = done.get("controller")
            return TrainResult(
                output_dir,
                TARGET_MISSED if done.get("target_reached") is False else 0,
                done["test_accuracy"],
                Profile.from_dict(done["profile"]),
                ControllerSummary.from_dict(summary) if summary else None,
                done.get("privacy"),
                done.get("target_reached"),
            )

    every = None if args.checkpointing_steps == "epoch" else int(args.checkpointing_steps)
    if every is not None and (every < 1 or every % accumulation):
        raise VortexError(
            f"--checkpointing_steps {every} must be a positive multiple of the gradient accumulation steps "
            f"({accumulation}): a state saved between two optimiser steps would lose the gradients gathered so far"
        )
    start_epoch, skip = divmod(step, steps_per_epoch)
    accuracy, started, measuring, optimizer_steps = None, time.perf_counter(), 0.0, 0
    last_finite = "none yet"  # the last finite loss and its step, for the error a NaN / Inf loss gives
    net.train()
    for epoch in range(start_epoch, recipe.epochs):
        train_loader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(train_loader, skip) if epoch == start_epoch and skip else train_loader
        running, batches = 0.0, 0
        for x, y in loader:
            with accelerator.accumulate(net):  # the optimiser steps once per `accumulation` batches
                out, *zs = net(x)
                loss = soft_target_loss(out, y, smoothing_at(recipe.label_smoothing, step / max(total_steps, 1)))
                if controller:
                    loss = loss + lever_loss(zs, y, k_classes, target, controller.levers, images=x)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            optimizer_steps += accelerator.sync_gradients
            step += 1
            value = loss.item()
            if not math.isfinite(value):
                raise VortexError(
                    f"the training loss became {value} at step {step} (epoch {epoch + 1}); last finite loss "
                    f"{last_finite}. Lower the learning rate or the lever weights"
                )
            running, batches, last_finite = running + value, batches + 1, f"{value:.4f} at step {step}"
            if controller and controller.due(step):
                t0 = time.perf_counter()
                measure(step)
                measuring += time.perf_counter() - t0
            if every and step % every == 0:
                save_state(step)
        accuracy = evaluate(net, test_loader, accelerator)
        log.info(
            f"epoch {epoch + 1}/{recipe.epochs}: loss {running / max(batches, 1):.4f}, test accuracy {accuracy:.4f}"
        )
        if args.with_tracking:
            accelerator.log({"train_loss": running / max(batches, 1), "test_accuracy": accuracy}, step=step)
        if every is None:
            save_state(step)
    train_time = time.perf_counter() - started
    if accuracy is None:  # resumed after the last epoch (e.g. interrupted while profiling): measure it again
        accuracy = evaluate(net, test_loader, accelerator)

    # With a target: finish on a measurement; fall back to the best weights if the end missed it
    if controller:
        if not controller.history or controller.history[-1].step != step:
            measure(step)
        if not controller.history[-1].reached and controller.best and controller.best.step != step:
            model.load_state_dict(best_weights)
            log.info(
                f"target missed at the end: restoring the closest point, step {controller.best.step} "
                f"(GPZ {controller.best.gpz})"
            )
            accuracy = evaluate(net, test_loader, accelerator)

    # Profile the saved model on held-out test data (every process takes a shard), then save
    accelerator.wait_for_everyone()
    probe = recipe.probe
    profile = profile_model(
        sm,
        test_ds,
        model_name=str(output_dir),
        dataset_name=recipe.dataset,
        image_size=size,
        channels=chans,
        batch_size=int(probe.get("batch_size", 256)),
        max_samples=probe.get("max_samples"),
        sketch_dim=probe.get("sketch_dim"),
    )
    meta = {
        "recipe": recipe.to_dict(),
        "fingerprint": fingerprint,
        "test_accuracy": accuracy,
        "train_seconds": train_time,
        "gradient_accumulation_steps": accumulation,
        "optimizer_steps_this_session": optimizer_steps,
        "profile": profile,
        "gpz": profile.gpz,
    }
    if init_sha256:
        meta["init_weights"] = {"path": str(args.init_weights), "sha256": init_sha256}
    if source is not None and is_repo_id(recipe.model):
        meta["base_model"] = recipe.model  # the Hub repo it was fine-tuned from (the card's base_model)
    status, verdict = 0, ""
    if controller:
        reached = profile.gpz.index
        meta.update(
            {
                "target_gpz": target,
                "reached_gpz": reached,
                "measure_seconds": measuring,
                "online_attack_seconds": sum(online_seconds),
                "baseline": {"dir": str(base_dir) if base_dir else None, "test_accuracy": base_acc, "gpz": base_gpz},
                "controller": controller.summary(),
            }
        )
        # rho is the prediction; an inversion attack at K-1 and K decides (vortex/training/privacy.py)
        verdict_started = time.perf_counter()
        try:
            privacy, attacks = verify_privacy(
                sm,
                target,
                reached,
                train_ds,
                test_ds,
                criterion,
                num_classes=k_classes,
                image_size=size,
                channels=chans,
                device=accelerator.device,
                seed=recipe.seed,
            )
        except AttackError as exc:  # the trained model is still saved, and the target is not reached
            privacy, attacks = None, []
            meta["privacy"] = {"error": str(exc), "reached": False}
            problems = [f"the verdict attack could not run ({exc}), so split {target} is not verified"]
        else:
            meta["privacy"] = privacy.to_dict()
            problems = [privacy.problem()] if privacy.problem() else []
        meta["privacy_seconds"] = time.perf_counter() - verdict_started
        if base_acc is not None and accuracy < base_acc - args.max_accuracy_drop:
            problems.append(
                f"test accuracy {accuracy:.4f} is more than {args.max_accuracy_drop:.3f} below the "
                f"untargeted run's {base_acc:.4f}"
            )
        status = TARGET_MISSED if problems else 0
        attack_line = f" {privacy.summary()}." if privacy else ""
        verdict = (
            "TARGET MISSED: " + "; ".join(problems) + f".{attack_line} The checkpoint is saved anyway."
            if problems
            else f"target reached: rho transition at split {target} and split {target} resists inversion "
            f"({privacy.summary()}), test accuracy {accuracy:.4f}"
            + (f" (untargeted {base_acc:.4f})" if base_acc is not None else "")
        )
        meta["target_reached"] = not problems
    if accelerator.is_main_process:

        def plots(directory: Path) -> None:
            """The controller's plots, saved with the checkpoint (its model card shows them)."""
            plot_vortex(controller.summary(), split_names, directory / "vortex.png")
            for a in attacks:
                plot_reconstructions(
                    a.originals,
                    a.recons,
                    directory / "privacy" / f"recon_split{a.index}.png",
                    title=f"split {a.index} ({a.name}): attack MSE {a.metrics['mse']:.4f}",
                )

        # + profile.json/png, halves, card: all replaced as one unit
        save_checkpoint(output_dir, model, spec, split_names, meta=meta, extras=plots if controller else None)
        log.info(profile_table(profile))
        if verdict:
            log.info(verdict)
        log.info(f"checkpoint written to {output_dir}")
    accelerator.end_training()
    if args.push_to_hub and accelerator.is_main_process:  # the checkpoint is complete on disk first
        from vortex.hub.repo import publish

        done = publish(
            output_dir,
            args.hub_model_id or output_dir.resolve().name,
            private=args.hub_private_repo,
            revision=args.hub_revision,
            trust_code=trusted,
        )
        log.info(done.summary(output_dir))
    return TrainResult(
        output_dir,
        status,
        accuracy,
        profile,
        controller.summary() if controller else None,
        meta.get("privacy"),
        meta.get("target_reached"),
    )
