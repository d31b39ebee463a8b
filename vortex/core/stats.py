"""Streaming per-class statistics of one split's features, exact across batches and processes.

Per class c it keeps the count n_c, the mean m_c and M2_c = sum_i ||z_i - m_c||^2, in float64.
Batches and processes are merged with Chan et al.'s pairwise formula, so a large common
offset in z never cancels the variance away (no sum of squares minus square of sums).
Layers wider than a chosen sketch width are first compressed with a count sketch, which
keeps squared distances (hence R_c^2, the global variance and rho) in expectation; by default
(`choose_sketch_dim`) only when the exact class means of all splits would exceed STATS_BYTES.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vortex.errors import ProfileError

STATS_BYTES = 2**30  # default bound on the float64 class means of all splits (classes x dims x 8 bytes)
EXACT = "exact"  # the --sketch-dim value that keeps every split exact whatever its size
BLOCK_BYTES = 2**22  # on CPU the second pass over a batch goes in blocks of rows of this size (cache-sized)


def combine(counts: torch.Tensor, means: torch.Tensor, m2s: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Merge K partial statistics [K,C], [K,C,d], [K,C] into one [C], [C,d], [C]."""
    n = counts.sum(0)
    safe = n.clamp(min=1)
    mean = (counts.unsqueeze(-1) * means).sum(0) / safe.unsqueeze(-1)
    spread = ((means - mean).pow(2).sum(-1) * counts).sum(0)
    return n, mean, m2s.sum(0) + spread


class CountSketch:
    """Linear map R^dim -> R^width: coordinate i goes to bucket `bucket[i]` with a random sign.

    Blocks of `width` consecutive coordinates are added into the buckets with a random rotation
    each (`bucket[i] = (i % width + shift of its block) % width`), so the map runs as contiguous
    multiply-adds. E||S x||^2 = ||x||^2 for every x (random signs), so R_c^2 and the global variance
    of S z are unbiased estimates of those of z, with relative error about sqrt(2 / width) per
    squared distance. The map depends only on (dim, width, seed): every process draws the same.
    """

    def __init__(self, dim: int, width: int, seed: int = 0, device: torch.device | str = "cpu"):
        g = torch.Generator().manual_seed(seed * 1_000_003 + dim)
        self.dim, self.width = dim, width
        self.shift = torch.randint(width, (-(-dim // width),), generator=g).tolist()
        self.sign = (torch.randint(2, (dim,), generator=g) * 2 - 1).float().to(device)

    @property
    def bucket(self) -> torch.Tensor:
        """The bucket of every coordinate, [dim]."""
        i = torch.arange(self.dim)
        return (i % self.width + torch.tensor(self.shift)[i // self.width]) % self.width

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Sketch a batch [B, dim] -> [B, width] (same dtype)."""
        out, sign, w = z.new_zeros(z.shape[0], self.width), self.sign.to(z.dtype), self.width
        for start, shift in zip(range(0, self.dim, w), self.shift):
            block, signs = z[:, start : start + w], sign[start : start + w]
            head = min(w - shift, block.shape[1])  # coordinates before the rotation wraps around
            out[:, shift : shift + head].addcmul_(block[:, :head], signs[:head])
            out[:, : block.shape[1] - head].addcmul_(block[:, head:], signs[head:])
        return out


def choose_sketch_dim(sketch_dim: int | str | None, num_classes: int, dims: list[int]) -> int | None:
    """The sketch width of a profile (splits wider than it are sketched), or None for exact statistics.

    `sketch_dim` None chooses: exact while num_classes x sum(dims) float64 means fit in STATS_BYTES,
    else the widest power of two that makes them fit; EXACT ("exact") forces exact; a number is used as is.
    """
    if sketch_dim == EXACT:
        return None
    if isinstance(sketch_dim, str):
        raise ProfileError(f"--sketch-dim must be a width of at least 1 or '{EXACT}', got '{sketch_dim}'")
    if sketch_dim is not None or num_classes * sum(dims) * 8 <= STATS_BYTES:
        return sketch_dim
    width = 1 << (max(dims).bit_length() - 1)
    while width > 1 and num_classes * sum(min(d, width) for d in dims) * 8 > STATS_BYTES:
        width //= 2
    return width


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

    def update(self, z: torch.Tensor, y: torch.Tensor) -> bool:
        """Add a batch: z [B, ...] (flattened to [B, dim]) with integer labels y [B].

        Corrected two-pass, only for the classes the batch holds: rough class means in the input's
        precision, then the deviations from them (small numbers, float32) give the exact mean shift
        and M2, so a large common offset never cancels. The results are merged in float64.
        Returns False if z held NaN or Inf.
        """
        z = z.reshape(z.shape[0], -1)
        if self.sketch is not None:
            z = self.sketch(z)
        classes, inverse = torch.unique(y.to(z.device), return_inverse=True)
        count = torch.bincount(inverse, minlength=len(classes))
        rough = z.new_zeros(len(classes), z.shape[1]).index_add_(0, inverse, z).div_(count.unsqueeze(1))
        shift = torch.zeros(rough.shape, device=z.device)  # sum of the deviations from `rough` per class
        sq = torch.empty(len(z), device=z.device)  # squared deviation of every sample
        step = max(1, BLOCK_BYTES // (4 * z.shape[1])) if z.device.type == "cpu" else len(z)
        for start in range(0, len(z), step):
            rows = inverse[start : start + step]
            dev = rough.index_select(0, rows)
            dev = torch.sub(z[start : start + step], dev, out=dev).float()
            shift.index_add_(0, rows, dev)
            torch.sum(dev.square_(), 1, out=sq[start : start + step])
        shift = shift.double() / count.unsqueeze(1)
        sq = sq.double()
        m2 = sq.new_zeros(len(classes)).index_add_(0, inverse, sq) - count * shift.square().sum(1)
        self._merge(classes, count.double(), rough.double() + shift, m2)
        return bool(torch.isfinite(m2).all())

    def _merge(self, classes: torch.Tensor, count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor) -> None:
        """Chan's update of the rows `classes` with a batch's count, mean and M2 of those classes."""
        before = self.count[classes]
        total = before + count
        delta = mean - self.mean[classes]
        self.mean[classes] += delta * (count / total).unsqueeze(1)
        self.m2[classes] += m2 + delta.square().sum(1) * before * count / total
        self.count[classes] = total

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
