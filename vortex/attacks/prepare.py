"""What the attacker does to z before decoding, so that a defender's rescaling cannot hide information.

- `Standardize`: (z - mean) / std per element, with the attacker's own statistics: undoes any
  per-dimension scale or shift.
- `ClassCentring`: clusters the attacker's z into as many groups as the model has classes and
  appends the residual from the nearest cluster centre, standardised. A model that blows up its
  class means (or shrinks what varies within a class, as a penalty on rho does) hides the image
  in that residual; the residual channel reads it back at full scale.
"""

from __future__ import annotations

import math

import torch
from torch import nn

PROJECTION_DIM = 256  # clusters are found on a fixed random projection of this width
MOMENT_BYTES = 1 << 20  # float64 columns of z whose moments are taken at once: they stay in cache


def _flat(z: torch.Tensor) -> torch.Tensor:
    return z.reshape(len(z), math.prod(z.shape[1:]))


def _moments(
    z: torch.Tensor, points: torch.Tensor | None = None, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element mean and std (float64, returned as float32) of `z`, or of its residual
    `z - points[labels]`; elements constant on it get std 1 (no relative floor: one huge-variance
    element must not leave the others unscaled). Taken a few columns at a time, which keeps their
    float64 copy in cache; each column's sums are the same as over all columns at once."""
    flat = _flat(z)
    offsets = None if points is None else _flat(points)
    mean, std = (torch.empty(flat.shape[1], dtype=torch.float32, device=z.device) for _ in range(2))
    step = max(1, MOMENT_BYTES // (8 * max(1, len(flat))))
    for i in range(0, flat.shape[1], step):
        cols = slice(i, i + step)
        part = (flat[:, cols] if offsets is None else flat[:, cols] - offsets[:, cols][labels]).double()
        s = part.std(0)
        mean[cols], std[cols] = part.mean(0), torch.where(s > 1e-12, s, torch.ones_like(s))
    return mean.view(z.shape[1:]), std.view(z.shape[1:])


class Standardize(nn.Module):
    """z -> (z - mean) / std per element, with statistics of the attacker's own z."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    @classmethod
    def fit(cls, z: torch.Tensor) -> Standardize:
        return cls(*_moments(z))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean).div_(self.std)  # in place: one copy of z, not two


class ClassCentring(nn.Module):
    """Append to standardised z its standardised residual from the nearest of k cluster centres.

    The output has twice the channels of z: along axis 1 for a map [B, C, h, w] or a vector
    [B, d], along the last axis for tokens [B, T, D].
    """

    def __init__(
        self, projection: torch.Tensor, centres: torch.Tensor, points: torch.Tensor, residual: Standardize, axis: int
    ):
        super().__init__()
        self.register_buffer("projection", projection)  # [d, p]
        self.register_buffer("centres", centres)  # [k, p]: where the clusters are, projected
        self.register_buffer("points", points)  # [k, *z]: the cluster means in z's space
        self.residual, self.axis = residual, axis

    @classmethod
    def fit(cls, z: torch.Tensor, clusters: int, *, axis: int, seed: int = 0) -> ClassCentring:
        """Cluster the attacker's standardised z (k-means on a seeded random projection)."""
        from sklearn.cluster import KMeans

        d = math.prod(z.shape[1:])
        generator = torch.Generator().manual_seed(seed)
        p = min(PROJECTION_DIM, d)
        projection = torch.randn(d, p, generator=generator) / math.sqrt(p) if d > p else torch.eye(d)
        projected = (_flat(z) @ projection).double().numpy()
        k = max(1, min(clusters, len(z)))
        labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(projected).labels_
        labels = torch.from_numpy(labels).long()
        points = torch.stack([z[labels == c].mean(0) if (labels == c).any() else z.mean(0) for c in range(k)])
        centres = _flat(points) @ projection
        residual = Standardize(*_moments(z, points, labels))
        return cls(projection, centres, points, residual, axis)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest cluster of each row of z."""
        return torch.cdist(_flat(z) @ self.projection, self.centres).argmin(1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        r = self.residual(z - self.points[self.nearest(z)])
        return torch.cat([z, r], dim=self.axis)


def doubled(z_shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    """z's shape after `ClassCentring` (axis counts the batch axis)."""
    shape = list(z_shape)
    shape[axis - 1 if axis > 0 else axis] *= 2
    return tuple(shape)
