"""Entropy bounds of a split (max-entropy Gaussian argument, see docs/science.md).

feature level:  h(Z) <= (d/2) ln(2 pi e sigma^2),        sigma^2 = global variance / d
decision level: h(Z) <= H(Y) + sum_c p_c (d/2) ln(2 pi e R_c^2 / d)   (mixture bound)
The smaller of the two is the decisive bound. Values are in nats; variances are floored at
VAR_FLOOR per dimension so a collapsed class (R_c^2 = 0) gives a finite number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

VAR_FLOOR = 1e-12


def gaussian_entropy(total_var: float, dim: int) -> float:
    """Differential entropy of an isotropic Gaussian in `dim` dimensions with trace `total_var`."""
    return 0.5 * dim * math.log(2 * math.pi * math.e * max(total_var / dim, VAR_FLOOR))


def entropy_bounds(
    rc2_per_class: Sequence[float | None], counts: Sequence[int], global_var: float, dim: int
) -> dict[str, float | str]:
    """Feature-level and decision-level upper bounds on h(Z), total and per dimension."""
    kept = [(r, n) for r, n in zip(rc2_per_class, counts) if r is not None]
    total = sum(n for _, n in kept)
    h_y = -sum(n / total * math.log(n / total) for _, n in kept)
    feature = gaussian_entropy(global_var, dim)
    decision = h_y + sum(n / total * gaussian_entropy(r, dim) for r, n in kept)
    decisive = "decision" if decision < feature else "feature"
    return {
        "h_bound_feature": feature,
        "h_bound_decision": decision,
        "h_bound_per_dim": min(feature, decision) / dim,
        "decisive": decisive,
    }
