"""The privacy verdict of a `--target-gpz K` run: the rho transition is only a prediction, so split
K counts as protected only when an inversion attack fails there.

The attack is vortex's black-box decoder attack (standardised z plus its residual from the
nearest class-like cluster, so a model cannot pass by rescaling z) trained on images of the
training split, the most informed attacker of that kind, and scored on held-out test images.
Split K is protected when its attack MSE (per element, images in [0, 1]) is at least
`min_mse` (default 0.02, the level below which reconstructions are taken as recognisable);
split K-1 is attacked too, to show where the protection starts.

During training the controller needs a privacy signal, far cheaper than the verdict:
`OnlineAttacker` refits vortex's closed-form kernel ridge attack (vortex/attacks/ridge.py) on z_K
of a fixed set of training images and scores it on the held-out probe set. The controller reads it
only when rho puts the GPZ at K (elsewhere it changes neither the decision nor the best point), and
takes the probe's z_K from the pass that measured rho.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import datasets
import torch
from accelerate.utils import broadcast

from vortex.attacks.base import AttackConfig
from vortex.attacks.ridge import ridge_inversion
from vortex.attacks.sweep import SplitAttack, attack_splits
from vortex.core.splits import SplitModel, evaluating
from vortex.data import load_all, take
from vortex.distributed import process_state
from vortex.errors import VortexError
from vortex.records import AttackResult

RECOGNISABLE_MSE = 0.02


@dataclass
class PrivacyCriterion:
    """When split K counts as protected, and the attack that decides it."""

    min_mse: float = RECOGNISABLE_MSE
    attack: str = "decoder"
    epochs: int = 30
    aux_samples: int = 2000
    private_samples: int = 500

    def __post_init__(self) -> None:
        if not 0 < self.min_mse < 1:
            raise VortexError(
                f"--privacy-mse must be between 0 and 1 (attack MSE on [0, 1] images), got {self.min_mse}"
            )
        if self.attack not in ("decoder", "enhanced"):
            raise VortexError(f"--privacy-attack must be 'decoder' or 'enhanced', not '{self.attack}'")


@dataclass
class PrivacyVerdict:
    """What the attack found at splits K-1 and K, and whether the target is reached."""

    target: int
    rho_gpz: int
    criterion: PrivacyCriterion
    splits: list[AttackResult] = field(default_factory=list)  # K-1 then K

    @property
    def mse_at_target(self) -> float:
        return next(s.mse for s in self.splits if s.index == self.target)

    @property
    def protected(self) -> bool:
        """Split K resists the attack."""
        return self.mse_at_target >= self.criterion.min_mse

    @property
    def reached(self) -> bool:
        """Both: the rho transition is at K and split K resists the attack."""
        return self.rho_gpz == self.target and self.protected

    def problem(self) -> str | None:
        """One clause saying why the target is missed, or None."""
        k, mse, line = self.target, self.mse_at_target, self.criterion.min_mse
        leak = f"split {k} still leaks (attack MSE {mse:.4f} < {line})"
        if self.rho_gpz != k and not self.protected:
            return f"rho transition at split {self.rho_gpz}, not {k}, and {leak}"
        if self.rho_gpz != k:
            return f"rho transition at split {self.rho_gpz}, not {k} (split {k} resists: attack MSE {mse:.4f})"
        if not self.protected:
            return f"rho transition at {k} but {leak}"
        return None

    def summary(self) -> str:
        """Attack MSE at K-1 and K, one line."""
        parts = [f"split {s.index} MSE {s.mse:.4f}" for s in self.splits]
        return f"{self.criterion.attack} attack: " + ", ".join(parts) + f" (protected at >= {self.criterion.min_mse})"

    def to_dict(self) -> dict[str, Any]:
        """What vortex.json records under `privacy`."""
        return {
            "target": self.target,
            "rho_gpz": self.rho_gpz,
            "criterion": asdict(self.criterion),
            "splits": [s.to_dict() for s in self.splits],
            "protected": self.protected,
            "reached": self.reached,
        }


def verify_privacy(
    sm: SplitModel,
    target: int,
    rho_gpz: int,
    aux: datasets.Dataset,
    private: datasets.Dataset,
    criterion: PrivacyCriterion,
    *,
    num_classes: int,
    image_size: int,
    channels: int,
    device: torch.device,
    seed: int = 0,
) -> tuple[PrivacyVerdict, list[SplitAttack]]:
    """Attack splits K-1 and K of the trained model; every process takes part when there are several."""
    config = AttackConfig(
        attack=criterion.attack, epochs=criterion.epochs, seed=seed, progress=False, clusters=num_classes
    )
    splits = [k for k in (target - 1, target) if k >= 1]
    attacks = attack_splits(
        sm,
        take(private, criterion.private_samples, seed=seed),
        aux,
        splits,
        config,
        image_size=image_size,
        channels=channels,
        aux_samples=criterion.aux_samples,
        device=device,
    )
    return PrivacyVerdict(target, rho_gpz, criterion, [a.record() for a in attacks]), attacks


class OnlineAttacker:
    """The privacy signal at split K during training: held-out MSE of the kernel ridge attack.

    It is fitted afresh at each call on z_K of `fit_samples` training images (fixed at the start)
    and scored on the probe images `x_probe`. The main process computes it and every process
    receives the same number, so all of them take the same decision.
    """

    def __init__(
        self,
        fit: datasets.Dataset,
        x_probe: torch.Tensor,
        *,
        image_size: int,
        channels: int,
        fit_samples: int = 512,
        batch_size: int = 256,
        seed: int = 0,
    ):
        self.x_fit, _ = load_all(take(fit, fit_samples, seed=seed), image_size=image_size, channels=channels)
        self.x_probe, self.batch_size, self.seed = x_probe, batch_size, seed
        self._edges: dict[int, torch.nn.Module] = {}  # built once; they share the model's parameters

    def __call__(self, sm: SplitModel, split: int, device: torch.device, z_probe: torch.Tensor | None = None) -> float:
        """Attack MSE at `split` of the model as it is now (eval mode). `z_probe`, the probe's z at
        `split` when the caller already has it (in the probe's order), saves a forward pass."""
        state = process_state()
        mse = torch.zeros((), dtype=torch.float64, device=device)
        if state.is_main_process:
            if split not in self._edges:
                self._edges[split] = sm.edge(split)
            edge = self._edges[split]
            with torch.no_grad(), evaluating(sm.model):

                def features(x: torch.Tensor) -> torch.Tensor:
                    return torch.cat([edge(b.to(device)).cpu() for b in x.split(self.batch_size)])

                z_probe = features(self.x_probe) if z_probe is None else z_probe
                result = ridge_inversion(features(self.x_fit), self.x_fit, z_probe, self.x_probe, seed=self.seed)
            mse.fill_(result.mse)
        if state.num_processes > 1:
            mse = broadcast(mse)
        return float(mse)
