"""Streaming per-class statistics of one split's features, exact across batches and processes.

Per class c it keeps the count n_c, the mean m_c and M2_c = sum_i ||z_i - m_c||^2, in float64.
Batches and processes are merged with Chan et al.'s pairwise formula, so a large common
offset in z never cancels the variance away (no sum of squares minus square of sums).
Layers wider than a chosen sketch width are first compressed with a count sketch, which
keeps squared distances (hence R_c^2, the global variance and rho) in expectation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vortex.errors import ProfileError


def combine(counts: torch.Tensor, means: torch.Tensor, m2s: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Merge K partial statistics [K,C], [K,C,d], [K,C] into one [C], [C,d], [C]."""
    n = counts.sum(0)
    safe = n.clamp(min=1)
    mean = (counts.unsqueeze(-1) * means).sum(0) / safe.unsqueeze(-1)
    spread = ((means - mean).pow(2).sum(-1) * counts).sum(0)
    return n, mean, m2s.sum(0) + spread


class CountSketch:
    """Linear map R^dim -> R^width: coordinate i goes to a random bucket with a random sign.

    E||S x||^2 = ||x||^2 for every x, so R_c^2 and the global variance of S z are unbiased
    estimates of those of z, with relative error about sqrt(2 / width) per squared distance.
    The buckets depend only on (dim, width, seed): every process draws the same map.
    """

    def __init__(self, dim: int, width: int, seed: int = 0, device: torch.device | str = "cpu"):
        g = torch.Generator().manual_seed(seed * 1_000_003 + dim)
        self.width = width
        self.bucket = torch.randint(width, (dim,), generator=g).to(device)
        self.sign = (torch.randint(2, (dim,), generator=g) * 2 - 1).to(device)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Sketch a batch [B, dim] -> [B, width] (same dtype)."""
        out = z.new_zeros(z.shape[0], self.width)
        return out.index_add_(1, self.bucket, z * self.sign.to(z.dtype))


@dataclass
class Summary:
    """R_c^2 per class and averaged, global variance and rho of one split."""

    counts: list[int]
    rc2_per_class: list[float | None]
    rc2: float
    global_var: float
    rho: float
    small_classes: dict[int, int]


class ClassStats:
    """Per-class count, mean and M2 of flattened features; memory O(classes x dim).

    With `sketch_dim` set and dim larger than it, features are count-sketched to `sketch_dim`
    coordinates first (memory O(classes x sketch_dim)); `self.sketch` is None when exact.
    """

    def __init__(self, num_classes: int, dim: int, device: torch.device | str = "cpu", sketch_dim: int | None = None):
        if sketch_dim is not None and sketch_dim < 1:
            raise ProfileError(f"--sketch-dim must be at least 1, got {sketch_dim}")
        self.num_classes = num_classes
        self.sketch = CountSketch(dim, sketch_dim, device=device) if sketch_dim and dim > sketch_dim else None
        self.dim = self.sketch.width if self.sketch else dim
        self.count = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.mean = torch.zeros(num_classes, self.dim, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.ref: torch.Tensor | None = None

    def update(self, z: torch.Tensor, y: torch.Tensor) -> bool:
        """Add a batch: z [B, ...] (flattened to [B, dim]) with integer labels y [B].

        The batch is centred on a fixed reference (the first sample seen), so its two-pass
        statistics run in float32 without losing a large common offset; the per-class results
        are merged in float64. Returns False if z held NaN or Inf.
        """
        z = z.reshape(z.shape[0], -1)
        if self.sketch is not None:
            z = self.sketch(z)
        if self.ref is None:
            self.ref = z[0].double()
        z = (z - self.ref.to(z.dtype)).float()  # centre in the input's own precision, then float32
        onehot = F.one_hot(y.to(z.device), self.num_classes).to(z.dtype)  # class sums as one matmul
        count = onehot.sum(0)
        mean = onehot.T @ z / count.clamp(min=1).unsqueeze(-1)
        m2 = onehot.T @ (z - mean[y]).pow(2).sum(-1)  # two-pass inside the batch
        self._merge(count.double(), mean.double() + self.ref, m2.double())
        return bool(torch.isfinite(m2).all())

    def _merge(self, count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor) -> None:
        self.count, self.mean, self.m2 = combine(
            torch.stack([self.count, count]), torch.stack([self.mean, mean]), torch.stack([self.m2, m2])
        )

    def sync(self) -> None:
        """Reduce across processes (torch.distributed via accelerate); a no-op with one process."""
        from accelerate.state import PartialState
        from accelerate.utils import gather

        world = PartialState().num_processes
        if world == 1:
            return
        k = self.num_classes
        count = gather(self.count).reshape(world, k)
        mean = gather(self.mean).reshape(world, k, self.dim)
        m2 = gather(self.m2).reshape(world, k)
        self.count, self.mean, self.m2 = combine(count, mean, m2)

    def summary(self) -> Summary:
        """R_c^2 (classes with fewer than 2 samples left out and reported), global variance, rho."""
        counts = self.count.round().long().tolist()
        small = {c: n for c, n in enumerate(counts) if n < 2}
        kept = [c for c in range(self.num_classes) if c not in small]
        if len(kept) < 2:
            raise ProfileError(
                f"R_c^2 needs at least 2 classes with 2 or more samples; per-class counts are {counts}. "
                "Profile more samples (raise --max-samples) or check the labels"
            )
        per_class = (self.m2 / self.count.clamp(min=1)).tolist()
        rc2_per_class = [None if c in small else per_class[c] for c in range(self.num_classes)]
        rc2 = sum(per_class[c] for c in kept) / len(kept)
        n, mu, ss = combine(self.count.unsqueeze(1), self.mean.unsqueeze(1), self.m2.unsqueeze(1))
        global_var = float(ss[0] / n[0])
        rho = rc2 / global_var if global_var > 0 else 0.0
        return Summary(counts, rc2_per_class, rc2, global_var, rho, small)
