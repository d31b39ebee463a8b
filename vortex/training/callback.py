"""vortex inside `transformers.Trainer`: log the R_c^2 profile and GPZ, and steer the GPZ.

    cb = VortexCallback(probe_ds, target_gpz=3).attach(trainer)   # then trainer.train()

At each evaluation (and every `every` steps, or on the controller's schedule with a target)
the callback profiles the model on the probe set with the same streaming statistics as
`vortex probe` (every process a shard, reduced exactly) and logs `rc2/<split>`, `rho/<split>`,
`gpz` and `probe_accuracy` through `Trainer.log`, so they reach every `report_to` integration.
Each checkpoint-N the Trainer saves gets profile.json and vortex.json (splits, input shape, profile,
GPZ, and with a target the controller's state and history); OUTPUT_DIR gets the final ones at the end.
`vortex probe / attack / publish` take such a directory as the model (vortex/hub/hf_classifier.py).

Profiling needs no more than `Trainer(callbacks=[VortexCallback(probe_ds)])` (or `trainer.add_callback`).
A callback's `on_log` runs after the reporting integrations (they are registered first) and
`on_evaluate` after the evaluation metrics were logged, so the values must go through `trainer.log`:
a callback is not handed its Trainer, so VortexCallback takes the one whose callback handler is
calling it (the first event it gets, `on_init_end` or `on_train_begin`). Steering needs `attach(trainer)`:
the GPZ levers are terms of the loss on intermediate features, and `attach` installs `compute_loss` as
the Trainer's `compute_loss_func` (a documented argument); forward hooks hand it z at splits K-1 and K.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn
from transformers import TrainerCallback
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from vortex import __version__
from vortex.core.hooks import HookSplitModel, TrainingTap, logits_of
from vortex.core.probe import build_profile, shard_loader, stream_stats
from vortex.data import make_loader, num_classes
from vortex.distributed import process_state, sync_buffers
from vortex.errors import VortexError
from vortex.files import write_json
from vortex.records import Profile
from vortex.training.controller import ControllerConfig, GPZController
from vortex.training.levers import lever_loss, smoothing_at
from vortex.training.loss import soft_target_loss

log = logging.getLogger(__name__)


class ClassifierForTrainer(nn.Module):
    """Wraps a classifier returning logits (a torchvision model) for the Trainer.

    `forward(pixel_values, labels=None)` returns an `ImageClassifierOutput`, with the
    cross-entropy `loss` when labels are given.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        logits = self.net(pixel_values)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)


def _is_canonical(ds: Any) -> bool:
    return isinstance(ds, datasets.Dataset) and isinstance(ds.features.get("pixels"), datasets.Array3D)


def _collate(rows: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with `pixel_values` and `labels` (or `label`) -> (x float32 [B, C, H, W], y int64 [B])."""
    key = "labels" if "labels" in rows[0] else "label"
    if "pixel_values" not in rows[0] or key not in rows[0]:
        raise VortexError(f"probe rows need 'pixel_values' and 'labels' (or 'label'); got {sorted(rows[0])}")
    x = torch.stack([torch.as_tensor(r["pixel_values"], dtype=torch.float32) for r in rows])
    return x, torch.tensor([int(r[key]) for r in rows])


class VortexCallback(TrainerCallback):
    """Profiles the model being trained (R_c^2, rho, GPZ) and, with `target_gpz`, steers the GPZ.

    probe_dataset: held-out labelled images, either a canonical vortex dataset (`pixels` uint8
        + `label`, from `vortex.data.load_data`; fed in [0, 1], resized to `image_size` and
        `channels`, by default the model config's) or what a Trainer user has: any map-style
        dataset (a `datasets.Dataset`, with or without `with_transform`) whose rows hold
        `pixel_values` (fed as they are) and `labels` or `label`.
    split_points: module paths (default: stem, each block, head; see vortex.hooks).
    target_gpz: split K where the GPZ should start; drives `vortex.controller.GPZController`
        on its own schedule (`every` steps while off target, doubling while on it).
    every: without a target, also profile every N optimiser steps (besides each evaluation).
    labels: group by "true" labels or by the model's "predicted" ones.
    label_smoothing: alpha of the soft-target loss (below 1, negative allowed, per class or
        {"start", "end"}); with a target or a non-zero alpha, `attach` installs `compute_loss`.
    controller: `ControllerConfig` overrides (pull, hold_start, margin, max_every, ...; its
        probe_samples / probe_batch_size do not apply: the probe set and `batch_size` above do);
        baseline_accuracy / max_accuracy_drop: its accuracy guard (as `vortex train`).
    sketch_dim: estimate splits wider than this from a count sketch (bounded memory); None (default)
        sketches only when exact class means would not fit the memory budget, "exact" never does.

    Multi-process runs are data parallel (DDP): every process profiles its shard of the
    probe set with the model it holds (batch-norm buffers taken from rank 0).
    """

    def __init__(
        self,
        probe_dataset: Any,
        split_points: list[str] | None = None,
        target_gpz: int | None = None,
        every: int | None = None,
        labels: str = "true",
        *,
        batch_size: int = 256,
        max_samples: int | None = None,
        image_size: int | None = None,
        channels: int | None = None,
        label_smoothing: Any = 0.0,
        controller: dict[str, Any] | None = None,
        baseline_accuracy: float | None = None,
        max_accuracy_drop: float | None = None,
        dataset_name: str = "probe",
        sketch_dim: int | str | None = None,
    ):
        if every is not None and every < 1:
            raise VortexError(f"every must be at least 1 step, got {every}")
        self.probe_dataset, self.split_points, self.target = probe_dataset, split_points, target_gpz
        self.every, self.labels, self.batch_size, self.max_samples = every, labels, batch_size, max_samples
        self.image_size, self.channels, self.label_smoothing = image_size, channels, label_smoothing
        self.dataset_name, self.sketch_dim = dataset_name, sketch_dim
        self.config = ControllerConfig.from_dict({**(controller or {}), **({"every": every} if every else {})})
        self.baseline_accuracy, self.max_accuracy_drop = baseline_accuracy, max_accuracy_drop
        self.trainer = None  # set by attach(): the Trainer whose loss vortex owns
        self._logger: Any = None  # the Trainer that runs this callback: its `log` reaches every tracker
        self.controller: GPZController | None = None
        self.last_profile: Profile | None = None
        self._sm: HookSplitModel | None = None
        self._tap: TrainingTap | None = None
        self._measured_step: int | None = None
        self._last_logs: dict[str, Any] = {}

    # ---- wiring -------------------------------------------------------------------------------

    @property
    def needs_loss(self) -> bool:
        """Whether the Trainer's loss must be `compute_loss` (a target, or label smoothing)."""
        return self.target is not None or self.label_smoothing != 0

    def attach(self, trainer: Any) -> VortexCallback:
        """Register with `trainer`: add the callback and, if needed, its loss; check the target now."""
        if self.trainer is not None and self.trainer is not trainer:
            raise VortexError("this VortexCallback is attached to another Trainer already; make one per Trainer")
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        if self.needs_loss:
            if trainer.compute_loss_func not in (None, self.compute_loss):
                raise VortexError(
                    "the Trainer has a compute_loss_func already; vortex's levers need their own "
                    "(VortexCallback.compute_loss): drop yours, or profile without target_gpz"
                )
            trainer.compute_loss_func = self.compute_loss
        self._split_model(trainer.model)
        return self

    def _find_trainer(self) -> None:
        """The Trainer calling this event (CallbackHandler.call_event calls it from a Trainer method): a callback
        passed in `callbacks=[...]` is not handed its Trainer, and the trackers only see what `Trainer.log` logs."""
        if self.trainer is not None or (self._logger is not None and self in self._logger.callback_handler.callbacks):
            return
        from transformers import Trainer

        frame = sys._getframe(1)
        for _ in range(8):  # this event <- call_event <- handler.on_... <- the Trainer's method
            if frame is None:
                return
            owner = frame.f_locals.get("self")
            if isinstance(owner, Trainer) and self in owner.callback_handler.callbacks:
                self._logger = owner
                return
            frame = frame.f_back

    def _require_trainer(self) -> None:
        """Steering changes the Trainer's loss, which a callback passed in `callbacks=[...]` cannot do."""
        if self.trainer is None and self.needs_loss:
            what = f"target_gpz={self.target}" if self.target is not None else "label_smoothing"
            raise VortexError(
                f"VortexCallback({what}) changes the Trainer's loss: write "
                "`VortexCallback(probe_ds, ...).attach(trainer)` after creating the Trainer, instead of "
                "passing it in Trainer(callbacks=[...]) (that way works for profiling only)"
            )

    def _split_model(self, model: nn.Module) -> HookSplitModel:
        """The split view of `model` (built once per model), its probe example, classes and controller."""
        if self._sm is None or self._sm.model is not model:
            self._example, self._num_classes = self._first_example(model)
            self._sm = HookSplitModel(model, self._device_example(model), self.split_points)
            if self._num_classes is None:
                with torch.no_grad():
                    self._num_classes = self._sm.forward_all(self._device_example(model))[0].shape[1]
            if self.target is not None and self.controller is None:
                self.controller = GPZController(
                    self.target, self.split_names, self.config, self.baseline_accuracy, self.max_accuracy_drop
                )
        return self._sm

    @property
    def split_names(self) -> list[str]:
        return [s.name for s in self._sm.splits]

    def _first_example(self, model: nn.Module) -> tuple[torch.Tensor, int | None]:
        """One probe input (as the model sees it) and the class count, when the data says it."""
        ds = self.probe_dataset
        if _is_canonical(ds):
            config = getattr(model, "config", None)
            self.image_size = self.image_size or getattr(config, "image_size", None)
            self.channels = self.channels or getattr(config, "num_channels", None)
            x, _ = next(iter(make_loader(ds.select([0]), 1, image_size=self.image_size, channels=self.channels)))
            return x, num_classes(ds)
        x, _ = _collate([ds[0]])
        features = getattr(ds, "features", None) or {}
        label = features.get("labels", features.get("label"))
        return x, label.num_classes if isinstance(label, datasets.ClassLabel) else None

    def _device_example(self, model: nn.Module) -> torch.Tensor:
        return self._example.to(next(model.parameters()).device)

    # ---- measuring ----------------------------------------------------------------------------

    def _batches(self) -> Any:
        """This process's shard of the probe set as (x, y) batches."""
        ds = self.probe_dataset
        if _is_canonical(ds):
            return shard_loader(
                ds, self.batch_size, image_size=self.image_size, channels=self.channels, max_samples=self.max_samples
            )
        state = process_state()
        rows = torch.arange(len(ds))
        if self.max_samples is not None:
            rows = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[: self.max_samples]
        shard = rows.tensor_split(state.num_processes)[state.process_index].tolist()
        return torch.utils.data.DataLoader(torch.utils.data.Subset(ds, shard), self.batch_size, collate_fn=_collate)

    def profile(self, model: nn.Module) -> Profile:
        """The profile.json dictionary of `model` on the probe set; every process must call it."""
        sm = self._split_model(model)
        sync_buffers(model)  # batch-norm statistics as rank 0 has them (as DDP does)
        stats, accuracy = stream_stats(
            sm,
            self._batches(),
            num_classes=self._num_classes,
            labels=self.labels,
            progress=False,
            sketch_dim=self.sketch_dim,
        )
        config = getattr(model, "config", None)
        name = getattr(config, "name_or_path", "") or type(model).__name__
        self.last_profile = build_profile(
            sm,
            stats,
            model_name=name,
            dataset_name=self.dataset_name,
            labels=self.labels,
            accuracy=accuracy,
            example=self._device_example(model),
        )
        return self.last_profile

    def _measure(
        self, model: nn.Module, state: Any, observe: bool = False, metrics: dict[str, Any] | None = None
    ) -> Profile:
        """Profile now (once per step), let the controller decide if asked, and log the values.

        The values go through the Trainer's `log` (so `state.log_history` and every `report_to` tracker get
        them; straight into `state.log_history` when no Trainer was found); during an evaluation also into
        the metrics `trainer.evaluate()` returns.
        """
        step = state.global_step
        if self._measured_step == step and not observe:
            if metrics is not None:
                metrics.update(self._last_logs)
            return self.last_profile
        profile = self.profile(model)
        logs = {f"rc2/{s.name}": s.rc2 for s in profile.splits}
        logs.update({f"rho/{s.name}": s.rho for s in profile.splits})
        logs.update(gpz=profile.gpz.index, probe_accuracy=profile.accuracy)
        if observe and self.controller is not None:
            entry = self.controller.observe(step, profile.rho(), profile.accuracy, step / max(state.max_steps, 1))
            self.controller.is_better(entry)
            logs.update({"lever/pull": entry.levers["pull"], "lever/hold": entry.levers["hold"]})
        trainer = self.trainer or self._logger
        if trainer is not None:
            trainer.log(logs)
        else:
            state.log_history.append({**logs, "step": step})
        if metrics is not None:
            metrics.update(logs)
        self._measured_step, self._last_logs = step, logs
        return profile

    def _meta(self, profile: Profile, step: int) -> dict[str, Any]:
        """What vortex.json records: splits, profile, GPZ and, with a target, the controller."""
        meta = {
            "vortex_version": __version__,
            "step": step,
            "splits": self.split_names,
            "input_shape": list(self._example.shape[1:]),  # as the model sees the probe images
            "profile": profile,
            "gpz": profile.gpz,
        }
        if self.controller is not None:
            reached = profile.gpz.index
            meta.update(
                target_gpz=self.target,
                reached_gpz=reached,
                target_reached=None,  # rho is a prediction: the callback runs no attack to verify it
                controller=self.controller.summary(),
                controller_state=self.controller.state_dict(),
            )
        return meta

    def _write(self, out: Path, profile: Profile, step: int) -> None:
        write_json(out / "profile.json", profile)
        write_json(out / "vortex.json", self._meta(profile, step))

    # ---- the loss -----------------------------------------------------------------------------

    def compute_loss(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        """Soft-target cross-entropy plus, while training with a target, the levers at splits K-1, K.

        Scaled by this batch's share of `num_items_in_batch` (the Trainer's gradient-accumulation contract).
        """
        state = self.trainer.state
        progress = state.global_step / max(state.max_steps, 1)
        loss = soft_target_loss(logits_of(outputs), labels, smoothing_at(self.label_smoothing, progress))
        z = self._tap.take() if self._tap is not None else {}
        if z and self.controller is not None:
            names = [self.split_names[k - 1] for k in self.controller.lever_splits]
            loss = loss + lever_loss(
                [z[n] for n in names], labels, self._num_classes, self.target, self.controller.levers
            )
        if num_items_in_batch is not None:
            loss = loss * (labels.numel() / num_items_in_batch)
        return loss

    # ---- Trainer events -----------------------------------------------------------------------

    def on_init_end(self, args, state, control, **kwargs):
        self._find_trainer()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._find_trainer()  # added after the Trainer was made
        self._require_trainer()
        sm = self._split_model(model)
        if self.controller is not None:
            self._resume(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", state.global_step)
            self._tap = TrainingTap(model, sm.modules_at(self.controller.lever_splits))

    def _resume(self, checkpoint: Path, step: int) -> None:
        """Continue the controller from the checkpoint the Trainer resumes from (OUTPUT_DIR/checkpoint-N)."""
        meta = checkpoint / "vortex.json"
        if step > 0 and meta.is_file():
            self.controller.load_state_dict(json.loads(meta.read_text())["controller_state"])

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.controller is not None:
            if self.controller.due(state.global_step) or state.global_step >= state.max_steps:
                self._measure(model, state, observe=True)
        elif self.every and state.global_step % self.every == 0:
            self._measure(model, state)

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        self._measure(model, state, metrics=metrics)

    def on_save(self, args, state, control, model=None, **kwargs):
        profile = self._measure(model, state)
        if state.is_world_process_zero:
            self._write(
                Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", profile, state.global_step
            )

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._tap is not None:
            self._tap.remove()
            self._tap = None
        if args.load_best_model_at_end:  # other weights than the last step's: measure them afresh
            self._measured_step = None
        profile = self._measure(model, state)
        if not state.is_world_process_zero:
            return
        out = Path(args.output_dir)
        self._write(out, profile, state.global_step)
        from vortex.report.plots import plot_profile, plot_vortex

        plot_profile(profile, out / "profile.png")
        if self.controller is not None:
            plot_vortex(self.controller.summary(), self.split_names, out / "vortex.png")
            reached = profile.gpz.index
            log.warning(
                f"vortex: rho transition at split {reached} ({self.split_names[reached - 1]}), target "
                f"{self.target}{'' if reached == self.target else ' MISSED'}; probe accuracy "
                f"{profile.accuracy:.4f}. Protection at split {self.target} is NOT verified: the callback "
                "runs no inversion attack"
            )
