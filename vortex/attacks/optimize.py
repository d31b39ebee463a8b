"""White-box inversion by optimisation (rMLE, He et al. 2019): find x' in [0, 1] with edge(x') ~ z.

The loss per image is the relative feature error ||edge(x') - z||^2 / ||z||^2 (scale-free, so one
`tv_weight` suits every split) plus `tv_weight` times the total variation of x'. Adam steps on
the pixels with a cosine learning-rate decay, each followed by a projection onto [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from vortex.attacks.base import Attack, AuxPairs, register
from vortex.core.splits import evaluating
from vortex.errors import AttackError


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of each image in [B, C, H, W]: mean |dx| + mean |dy|."""
    tv = x.new_zeros(x.shape[0])
    if x.shape[-1] > 1:
        tv = tv + (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    if x.shape[-2] > 1:
        tv = tv + (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    return tv


@contextmanager
def _frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients inside the block; both restored afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with evaluating(module):
            yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def invert_by_optimization(
    edge: nn.Module,
    z: torch.Tensor,
    image_shape: Sequence[int],
    *,
    steps: int = 300,
    lr: float = 0.05,
    tv_weight: float = 0.01,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    desc: str = "rMLE",
    progress: bool = True,
) -> torch.Tensor:
    """Reconstruct one image per row of `z` (on the CPU, [N, *image_shape]); starts from mid-gray."""
    if steps < 1:
        raise AttackError(f"--steps must be at least 1, got {steps}")
    if tv_weight < 0:
        raise AttackError(f"--tv-weight must be 0 or more, got {tv_weight}")
    device = torch.device(device)
    out = []
    batches = range(0, len(z), batch_size)
    bar = tqdm(total=steps * len(batches), desc=desc, unit="step", leave=False, disable=not progress)
    with _frozen(edge):
        for i in batches:
            target = z[i : i + batch_size].to(device).float()
            scale = target.flatten(1).pow(2).sum(1).clamp_min(1e-12)
            x = torch.full((len(target), *image_shape), 0.5, device=device, requires_grad=True)
            optimizer = torch.optim.Adam([x], lr=lr)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
            for _ in range(steps):
                error = (edge(x) - target).flatten(1).pow(2).sum(1) / scale
                loss = (error + tv_weight * total_variation(x)).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                with torch.no_grad():
                    x.clamp_(0, 1)
                bar.update()
            bar.set_postfix(feature_error=f"{float(error.detach().mean()):.4f}")
            out.append(x.detach().cpu())
    bar.close()
    return torch.cat(out)


@register
class OptimizeAttack(Attack):
    """White box (He et al. 2019, rMLE): optimise x' in [0, 1] so that edge(x') matches z, with a
    total-variation prior; needs no auxiliary data."""

    name = "optimize"
    needs_aux = False

    def fit(self, edge: nn.Module, aux: AuxPairs | None) -> None:
        self.edge = edge

    def invert(self, z: torch.Tensor) -> torch.Tensor:
        c = self.config
        return invert_by_optimization(
            self.edge,
            z,
            self.image_shape,
            steps=c.steps,
            lr=c.opt_lr,
            tv_weight=c.tv_weight,
            device=c.device,
            desc=self.desc,
            progress=c.progress,
        )
