"""Label-distribution shaping: the soft-target loss with smoothing alpha in (-inf, 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vortex.errors import VortexError


def soft_targets(y: torch.Tensor, num_classes: int, alpha: float | torch.Tensor) -> torch.Tensor:
    """1 - alpha on the true class, alpha / (C - 1) on every other class (rows sum to 1).

    alpha may be negative (the true class gets more than 1) and may be a per-class tensor [C],
    in which case each sample uses the alpha of its true class.
    """
    alpha = torch.as_tensor(alpha, dtype=torch.float32, device=y.device)
    if (alpha >= 1).any():
        raise VortexError(f"label smoothing alpha must be below 1, got {alpha.max().item():g}")
    a = alpha[y] if alpha.ndim == 1 else alpha.expand(y.shape)
    off = (a / (num_classes - 1)).unsqueeze(1)
    target = off.expand(-1, num_classes).clone()
    target.scatter_(1, y.unsqueeze(1), (1 - a).unsqueeze(1))
    return target


def soft_target_loss(logits: torch.Tensor, y: torch.Tensor, alpha: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Cross-entropy against `soft_targets`; equals F.cross_entropy(label_smoothing=s) for alpha = s (C-1)/C."""
    target = soft_targets(y, logits.shape[1], alpha)
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()
