"""Pieces of the strengthened attacker: feature normalisation, an FFT amplitude channel, attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_SIDE = 16  # maps larger than 16x16 attend on a pooled 16x16 grid (256 tokens)


class FeatureNorm(nn.Module):
    """Standardise z per channel with running batch statistics (no affine part).

    `kind` is "spatial" ([B, C, h, w]: per channel), "tokens" ([B, T, D]: per feature over
    tokens) or "flat" ([B, d]: per feature).
    """

    def __init__(self, kind: str, channels: int):
        super().__init__()
        self.kind = kind
        self.norm = (
            nn.BatchNorm2d(channels, affine=False) if kind == "spatial" else nn.BatchNorm1d(channels, affine=False)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "tokens":
            return self.norm(z.transpose(1, 2)).transpose(1, 2)
        return self.norm(z)


class FFTAmplitude(nn.Module):
    """Append log(1 + |FFT(z)|) to z along its channel axis (doubling it).

    The transform runs over the spatial axes of a map, the token axis of a sequence, or the
    vector itself, so the decoder also sees how the energy of z spreads over frequencies.
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "spatial":
            amp = torch.fft.fft2(z.float(), norm="ortho").abs()
            return torch.cat([z, torch.log1p(amp)], dim=1)
        amp = torch.fft.fft(z.float(), dim=1, norm="ortho").abs()  # over tokens, or over the vector
        return torch.cat([z, torch.log1p(amp)], dim=-1)


class AttentionBlock(nn.Module):
    """Pre-norm multi-head self-attention over the positions of a [B, C, h, w] map, plus an MLP.

    Maps larger than ATTENTION_SIDE x ATTENTION_SIDE attend on a pooled grid of that size and
    the update is upsampled back, so the cost stays bounded (quadratic in 256 tokens at most).
    """

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.norm1 = nn.GroupNorm(1, channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm2 = nn.GroupNorm(1, channels)
        self.mlp = nn.Sequential(nn.Conv2d(channels, 2 * channels, 1), nn.GELU(), nn.Conv2d(2 * channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm1(x)
        if h > ATTENTION_SIDE or w > ATTENTION_SIDE:
            y = F.adaptive_avg_pool2d(y, (min(h, ATTENTION_SIDE), min(w, ATTENTION_SIDE)))
        seq = y.flatten(2).transpose(1, 2)
        update = self.attn(seq, seq, seq, need_weights=False)[0].transpose(1, 2).reshape(b, c, *y.shape[-2:])
        if update.shape[-2:] != (h, w):
            update = F.interpolate(update, size=(h, w), mode="bilinear", align_corners=False)
        x = x + update
        return x + self.mlp(self.norm2(x))
