"""Closed-loop control of where the GPZ lands during training (`--target-gpz K`).

Every `every` optimiser steps (doubling up to `max_every` while it stays on target) the
controller profiles a held-out probe set with the same streaming statistics as `vortex probe`
(all processes contributing), locates the GPZ on rho, reads the privacy signal at K (the online
attack's MSE, vortex/training/privacy.py) and moves its levers (vortex/training/levers.py):

- GPZ after K, or K's drop beaten by a later one: raise `pull` (tighten the classes at K);
- GPZ before K, or K's drop beaten by an earlier one: raise `hold` (keep K-1 image-like);
- GPZ at K but split K still leaks (online attack MSE below `min_mse`): raise `pull`;
- on target with the margin, and split K resisting the online attack: leave the levers as they are.

The step is a factor 2**(gain * shortfall), clipped to [2**0.5, 4], where the shortfall is how
far K's relative drop falls short of leading the largest other drop by the margin (or, for a
leak, how far the attack MSE falls short of `min_mse`). `decorrelate` is on from the start when K
lies before the untargeted run's rho GPZ (where the indicator predicts split K leaks), off
otherwise; the controller does not move it. If the probe accuracy falls more than
`max_accuracy_drop` below the untargeted baseline in the second half of training, the levers are
halved instead. Without a privacy signal (the Trainer callback) "on target" is rho alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from vortex.core.gpz import locate_gpz
from vortex.errors import VortexError
from vortex.records import BestPoint, ControllerEntry, ControllerSummary
from vortex.training.levers import Levers


@dataclass
class ControllerConfig:
    """Recipe section `controller:`; all optional."""

    every: int = 15  # optimiser steps between measurements while off target
    max_every: int = 60  # the interval doubles up to this while it stays on target
    probe_samples: int = 300  # held out from the training split for measuring
    probe_batch_size: int = 300
    pull: float = 2.0  # initial weight of rho of z_K at unit length
    decorrelate: float = 1.0  # weight of the within-class distance correlation of z_K and the image, when on
    hold: float = 0.0  # initial weight of the hold on rho(z_{K-1})
    hold_start: float = 1.0  # first hold weight once the transition comes too early
    hold_floor: float = 0.9  # the hold keeps rho at K-1 above this share of the highest rho before it
    margin: float = 1.1  # K's drop must beat every other drop by this factor
    gain: float = 4.0  # lever step 2**(gain * shortfall), clipped to x1.41..x4
    max_weight: float = 64.0

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ControllerConfig:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        if set(d) - known:
            raise VortexError(f"unknown controller keys {sorted(set(d) - known)}; known: {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class Assessment:
    """One measurement read against the target."""

    gpz: int
    zone: list[int]
    drops: list[float]
    ratio: float  # K's drop over the largest other drop
    runner_up: int  # the split of that other drop
    rho_on_target: bool  # GPZ at K with the margin
    protected: bool | None  # split K resists the online attack (None: no signal or no criterion)
    reached: bool


def check_target(target: int, split_names: list[str]) -> None:
    """Refuse a target the GPZ rule cannot place: it needs a split before K to drop from."""
    last = len(split_names)
    if not 2 <= target <= last:
        raise VortexError(
            f"--target-gpz {target} is outside the valid range 2..{last} for this model "
            f"(splits: {', '.join(f'{i}={n}' for i, n in enumerate(split_names, 1))}); the GPZ starts at the "
            "split after a drop, so split 1 cannot hold it"
        )


class GPZController:
    """Measures the GPZ, moves the levers toward the target, keeps the history and the best point."""

    def __init__(
        self,
        target: int,
        split_names: list[str],
        config: ControllerConfig,
        baseline_accuracy: float | None = None,
        max_accuracy_drop: float | None = None,
        min_mse: float | None = None,
        baseline_gpz: int | None = None,
    ):
        check_target(target, split_names)
        self.target, self.split_names, self.config = target, split_names, config
        self.min_mse = min_mse  # the online attack's MSE at K must reach it; None: rho alone decides
        self.baseline_accuracy, self.max_accuracy_drop = baseline_accuracy, max_accuracy_drop
        # K before the untargeted run's transition: split K is predicted to leak, so remove information at once
        early = baseline_gpz is not None and target < baseline_gpz
        self.levers = Levers(pull=config.pull, hold=config.hold, decorrelate=config.decorrelate if early else 0.0)
        self.history: list[ControllerEntry] = []
        self.best: BestPoint | None = None
        self.interval, self.next_step = config.every, config.every

    def due(self, step: int) -> bool:
        """Whether to measure after optimiser step `step`."""
        return step >= self.next_step

    @property
    def lever_splits(self) -> list[int]:
        """The splits whose z the levers need in the loss: K-1 and K."""
        return [self.target - 1, self.target]

    def _step(self, shortfall: float) -> float:
        """Lever factor 2**(gain * shortfall), clipped to [2**0.5, 4]."""
        return 2.0 ** min(max(self.config.gain * shortfall, 0.5), 2.0)

    def assess(self, rho: list[float], attack_mse: float | None = None) -> Assessment:
        """Where the GPZ is, how clearly K's drop leads (ratio >= margin: on target by rho) and whether
        split K resists the online attack (`protected`, None without a signal or a criterion)."""
        gpz = locate_gpz(rho, "rho")
        drops, k = gpz.drops, self.target - 2
        others = [(d, i + 2) for i, d in enumerate(drops) if i != k]
        runner_up, runner_split = max(others) if others else (0.0, self.target)
        ratio = drops[k] / max(runner_up, 1e-6)
        on_rho = gpz.index == self.target and ratio >= self.config.margin
        protected = None if attack_mse is None or self.min_mse is None else attack_mse >= self.min_mse
        return Assessment(
            gpz=gpz.index,
            zone=gpz.zone,
            drops=drops,
            ratio=ratio,
            runner_up=runner_split,
            rho_on_target=on_rho,
            protected=protected,
            reached=on_rho and protected is not False,
        )

    def observe(
        self, step: int, rho: list[float], accuracy: float, progress: float, attack_mse: float | None = None
    ) -> ControllerEntry:
        """Record one measurement (with the online attack's MSE at K when there is one), move the
        levers, and return the logged decision."""
        a = self.assess(rho, attack_mse)
        cfg, lv = self.config, self.levers
        lv.hold_floor = cfg.hold_floor * max(rho[: max(self.target - 2, 1)])
        factor = self._step((cfg.margin - a.ratio) / cfg.margin)  # how far K's drop is from leading
        guard = (
            self.baseline_accuracy is not None
            and self.max_accuracy_drop is not None
            and progress >= 0.5
            and accuracy < self.baseline_accuracy - self.max_accuracy_drop
        )
        if guard:
            lv.pull, lv.hold, lv.decorrelate = lv.pull / 2, lv.hold / 2, lv.decorrelate / 2
            decision = f"accuracy {accuracy:.3f} below baseline {self.baseline_accuracy:.3f}: halve the levers"
        elif a.reached:
            decision = "on target: keep levers"
        elif a.rho_on_target:  # the indicator is at K, the attack says split K still leaks
            factor = self._step((self.min_mse - attack_mse) / self.min_mse)
            lv.pull = min(max(lv.pull, 0.25) * factor, cfg.max_weight)
            decision = (
                f"rho at K but split K leaks (online attack MSE {attack_mse:.4f} < {self.min_mse}): pull x{factor:.2f}"
            )
        elif a.gpz > self.target or (a.gpz == self.target and a.runner_up >= self.target):
            # a later drop competes, or none does (two splits) and K's own drop is too small: pull
            lv.pull = min(max(lv.pull, 0.25) * factor, cfg.max_weight)
            decision = f"transition after K (largest drop at {a.gpz}): pull x{factor:.2f}"
        else:
            lv.hold = min(max(lv.hold * factor, cfg.hold_start), cfg.max_weight)
            decision = f"transition before K (drop at {a.runner_up} competes): hold x{factor:.2f}"
        steady = a.reached and bool(self.history) and self.history[-1].reached
        self.interval = min(self.interval * 2, cfg.max_every) if steady else cfg.every
        self.next_step = step + self.interval
        entry = ControllerEntry(
            step=step,
            progress=round(progress, 4),
            gpz=a.gpz,
            zone=a.zone,
            ratio=a.ratio,
            rho_on_target=a.rho_on_target,
            attack_mse=attack_mse,
            protected=a.protected,
            reached=a.reached,
            accuracy=accuracy,
            rho=rho,
            drops=a.drops,
            levers=lv.to_dict(),
            decision=decision,
        )
        self.history.append(entry)
        return entry

    def is_better(self, entry: ControllerEntry) -> bool:
        """Closer to K (then harder to invert at K, up to `min_mse`, then clearer, then later) than the
        best seen, and within the accuracy bound."""
        if (
            self.baseline_accuracy is not None
            and self.max_accuracy_drop is not None
            and entry.accuracy < self.baseline_accuracy - self.max_accuracy_drop
        ):
            return False
        privacy = min(entry.attack_mse or 0.0, self.min_mse or 0.0)
        key = (-abs(entry.gpz - self.target), privacy, min(entry.ratio, self.config.margin), entry.step)
        if self.best is None or key >= tuple(self.best.key):
            self.best = BestPoint(
                key=list(key),
                step=entry.step,
                gpz=entry.gpz,
                ratio=entry.ratio,
                attack_mse=entry.attack_mse,
                accuracy=entry.accuracy,
            )
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "levers": self.levers.to_dict(),
            "history": [h.to_dict() for h in self.history],
            "best": self.best and self.best.to_dict(),
            "interval": self.interval,
            "next_step": self.next_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.levers = Levers(**state["levers"])
        self.history = [ControllerEntry.from_dict(h) for h in state["history"]]
        self.best = state["best"] and BestPoint.from_dict(state["best"])
        self.interval, self.next_step = state["interval"], state["next_step"]

    def summary(self) -> ControllerSummary:
        """What vortex.json records: target, config, final levers and the history."""
        return ControllerSummary(
            target_gpz=self.target,
            config=asdict(self.config),
            levers=self.levers.to_dict(),
            baseline_accuracy=self.baseline_accuracy,
            max_accuracy_drop=self.max_accuracy_drop,
            min_mse=self.min_mse,
            best=self.best,
            history=list(self.history),
        )
