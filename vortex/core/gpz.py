"""Locating the Golden Partition Zone from a per-split curve (a priori) or attack errors (post hoc)."""

from __future__ import annotations

from collections.abc import Sequence

from vortex.errors import ProfileError
from vortex.records import Gpz, PosthocGpz

ZONE_THRESHOLD = 0.2


def relative_drops(values: Sequence[float]) -> list[float]:
    """delta_i = (v_{i-1} - v_i) / v_{i-1} for splits 2..L (0 where v_{i-1} is 0)."""
    return [(a - b) / a if a > 0 else 0.0 for a, b in zip(values[:-1], values[1:])]


def locate_gpz(values: Sequence[float], quantity: str = "rho", zone_threshold: float = ZONE_THRESHOLD) -> Gpz:
    """The paper's rule: the zone starts at the split after the largest relative drop.

    The second-largest drop joins the zone when it is itself at least `zone_threshold` and
    sits right next to the largest (no small drops between them); otherwise the zone is one split.
    """
    if len(values) < 2:
        raise ProfileError(f"locating a GPZ needs at least 2 splits, got {len(values)}")
    drops = relative_drops(values)
    order = sorted(range(len(drops)), key=lambda i: -drops[i])
    first = order[0]
    zone = [first + 2]
    if len(order) > 1:
        second = order[1]
        if drops[second] >= zone_threshold and abs(second - first) == 1:
            zone = sorted([first + 2, second + 2])
    return Gpz(
        index=first + 2,
        zone=zone,
        criterion=f"largest relative drop of {quantity} between consecutive splits; "
        f"zone joins an adjacent drop of at least {zone_threshold:.0%}",
        quantity=quantity,
        drops=drops,
    )


def locate_posthoc(indices: Sequence[int], mse: Sequence[float]) -> PosthocGpz:
    """The split after the largest rise of attack MSE (the GPZ as attacks see it).

    `indices` are the attacked splits in increasing order (a subset such as 1, 3, 5 is fine);
    the rise between two attacked splits a < b is credited to b, and `interval` [a + 1, b]
    says where between them it happened.
    """
    if len(indices) != len(mse):
        raise ProfileError(f"{len(indices)} split indices but {len(mse)} MSE values")
    if len(mse) < 2:
        raise ProfileError(f"a post-hoc GPZ needs attacks at 2 or more splits, got {len(mse)}")
    if any(b <= a for a, b in zip(indices[:-1], indices[1:])):
        raise ProfileError(f"split indices must increase, got {list(indices)}")
    rises = [b - a for a, b in zip(mse[:-1], mse[1:])]
    best = max(range(len(rises)), key=lambda i: rises[i])
    return PosthocGpz(index=indices[best + 1], interval=[indices[best] + 1, indices[best + 1]], rises=rises)
