"""Label-driven levers that move the feature-to-decision transition, applied in the training loss.

- `alpha`: label smoothing (global, per class, or scheduled from `start` to `end`), through
  `soft_target_loss`. It reshapes the label distribution everywhere at once: on its own it moves
  the transition little (docs/science.md, "Training dynamics").
- `pull`: weight of rho of the batch's z_K with every sample scaled to unit length, computed with
  its labels: tightens the class clouds at split K, so the collapse happens there. At unit
  length no per-sample rescaling can meet the penalty, and it removes more of what an attack
  reads than rho on raw z (default recipe, K = 3, fixed weight 10: attack MSE at K 0.015
  against 0.011).
- `hold`: weight of max(0, floor - rho(z_{K-1})): keeps split K-1 feature-level, so the
  collapse is not already complete before K.
- `decorrelate`: weight of the squared distance correlation between what z_K and the image hold
  beyond their class (both taken as residuals from their class means in the batch). It asks the
  edge to drop what it knows about the image that the label does not explain; distance
  correlation is unchanged by rescaling z, so it cannot be met by shrinking the residual (the
  way rho can), and it sees non-linear dependence too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vortex.errors import VortexError


def class_residual(v: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each row of `v` (flattened) minus the mean of its class in the batch."""
    v = v.reshape(v.shape[0], -1).float()
    onehot = F.one_hot(y, num_classes).float()
    means = onehot.T @ v / onehot.sum(0).clamp(min=1).unsqueeze(1)
    return v - means[y]


def batch_rho(z: torch.Tensor, y: torch.Tensor, num_classes: int, *, unit: bool = False) -> torch.Tensor:
    """Differentiable rho = mean_c R_c^2 / global variance of one batch (classes with < 2 samples
    skipped); with `unit`, of the samples scaled to unit L2 length."""
    z = z.reshape(z.shape[0], -1).float()
    if unit:
        z = F.normalize(z, dim=1)
    onehot = F.one_hot(y, num_classes).float()
    count = onehot.sum(0)
    within = (onehot.T @ class_residual(z, y, num_classes).pow(2).sum(1)) / count.clamp(min=1)
    keep = count >= 2
    if keep.sum() < 1:
        return z.new_zeros(())
    total = (z - z.mean(0)).pow(2).sum(1).mean()
    return within[keep].mean() / (total + 1e-12)


def _centred_distances(v: torch.Tensor) -> torch.Tensor:
    d = (torch.cdist(v, v).pow(2) + 1e-12).sqrt()  # the small constant keeps the gradient finite at d = 0
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Differentiable squared distance correlation (Szekely et al., 2007) of two batches of rows:
    0 when the rows are independent, 1 when one is a rotated, scaled and shifted copy of the other."""
    da, db = (_centred_distances(v.reshape(v.shape[0], -1).float()) for v in (a, b))
    return (da * db).mean() / ((da * da).mean() * (db * db).mean()).sqrt().clamp_min(1e-12)


def smoothing_at(spec: Any, progress: float) -> float | torch.Tensor:
    """The label-smoothing alpha at `progress` in [0, 1] of training.

    `spec` is a number, a list (one alpha per class), or {"start": a, "end": b} (linear schedule).
    """
    if isinstance(spec, dict):
        unknown = set(spec) - {"start", "end"}
        if unknown:
            raise VortexError(f"label_smoothing schedule takes 'start' and 'end', not {sorted(unknown)}")
        start, end = float(spec.get("start", 0.0)), float(spec.get("end", spec.get("start", 0.0)))
        return start + (end - start) * min(max(progress, 0.0), 1.0)
    if isinstance(spec, (list, tuple)):
        return torch.tensor([float(a) for a in spec])
    return float(spec)


@dataclass
class Levers:
    """Current weights of the layer-targeted levers."""

    pull: float = 0.0
    hold: float = 0.0
    hold_floor: float = 0.0
    decorrelate: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def lever_loss(
    zs: list[torch.Tensor],
    y: torch.Tensor,
    num_classes: int,
    target: int | None,
    levers: Levers,
    images: torch.Tensor | None = None,
) -> torch.Tensor:
    """The extra loss at split `target` (zs holds z at splits target-1 and target, in that order;
    `images`, the batch's inputs, are needed by `decorrelate` only)."""
    decorrelate = levers.decorrelate if images is not None else 0.0
    if target is None or (levers.pull == 0 and levers.hold == 0 and decorrelate == 0):
        return y.new_zeros((), dtype=torch.float32)
    *before, at = zs
    loss = levers.pull * batch_rho(at, y, num_classes, unit=True)
    if before and levers.hold:
        loss = loss + levers.hold * F.relu(levers.hold_floor - batch_rho(before[0], y, num_classes))
    if decorrelate:
        residuals = class_residual(at, y, num_classes), class_residual(images, y, num_classes)
        loss = loss + decorrelate * distance_correlation(*residuals)
    return loss
