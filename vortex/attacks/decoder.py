"""Inversion decoders z -> x built from z's shape, and their training with early stopping.

Three layouts of z are recognised: a spatial map [C, h, w] (conv stem, then upsampling conv
blocks to the image size), a token sequence [T, D] whose T (or T - 1 with a CLS token first)
is a square number (each token back to its patch), and anything else, flattened (a linear
stem to a small map, then the same upsampling path).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vortex.attacks.base import Attack, AuxPairs, Training, register, train_together
from vortex.attacks.enhance import AttentionBlock, FeatureNorm, FFTAmplitude
from vortex.attacks.prepare import ClassCentring, Standardize, doubled
from vortex.errors import AttackError


@dataclass(frozen=True)
class Layout:
    """How a decoder reads z: "spatial", "tokens" (grid side, CLS first?) or "flat"."""

    kind: str
    grid: int = 0
    cls_token: bool = False


def z_layout(z_shape: Sequence[int]) -> Layout:
    """The layout of one sample's z (without the batch axis)."""
    if len(z_shape) == 3:
        return Layout("spatial")
    if len(z_shape) == 2:
        tokens = z_shape[0]
        for drop in (0, 1):
            g = math.isqrt(tokens - drop)
            if g >= 2 and g * g == tokens - drop:
                return Layout("tokens", g, bool(drop))
    return Layout("flat")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class _Residual(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(_block(ch, ch), nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class _Up(nn.Module):
    """Double the map size (nearest) and mix with `depth` conv blocks."""

    def __init__(self, ch: int, depth: int):
        super().__init__()
        self.body = nn.Sequential(_block(ch, ch), *[_Residual(ch) for _ in range(depth - 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(F.interpolate(x, scale_factor=2, mode="nearest"))


class _FlatStem(nn.Module):
    def __init__(self, dim: int, width: int, size: tuple[int, int]):
        super().__init__()
        self.width, self.size = width, size
        self.linear = nn.Linear(dim, width * size[0] * size[1])
        self.norm = nn.BatchNorm2d(width)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.linear(z).view(-1, self.width, *self.size)
        return F.relu(self.norm(x))


class _TokenStem(nn.Module):
    """Drop a CLS token, map each token to a p x p patch of `width` channels, lay patches on the grid."""

    def __init__(self, dim: int, width: int, layout: Layout, patch: int):
        super().__init__()
        self.layout, self.patch = layout, patch
        self.linear = nn.Linear(dim, width * patch * patch)
        self.shuffle = nn.PixelShuffle(patch)
        self.norm = nn.BatchNorm2d(width)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.layout.cls_token:
            z = z[:, 1:]
        g = self.layout.grid
        x = self.linear(z).transpose(1, 2).reshape(z.shape[0], -1, g, g)
        return F.relu(self.norm(self.shuffle(x)))


def _start_size(side: int) -> int:
    """The side a flat stem starts from: `side` halved while even and above 4, at most 8."""
    while side > 4 and side % 2 == 0:
        side //= 2
    return min(side, 8)


class InversionDecoder(nn.Module):
    """prepare (enhanced only) -> stem -> [attention] -> upsampling blocks -> resize -> head -> sigmoid."""

    def __init__(self, z_shape: Sequence[int], image_shape: Sequence[int], width: int = 32, enhanced: bool = False):
        super().__init__()
        z_shape, (channels, height, width_px) = tuple(int(s) for s in z_shape), tuple(image_shape)
        self.layout, self.image_size = z_layout(z_shape), (height, width_px)
        kind = self.layout.kind
        zc = z_shape[0] if kind == "spatial" else z_shape[-1] if kind == "tokens" else math.prod(z_shape)
        self.prepare = nn.Sequential(FeatureNorm(kind, zc), FFTAmplitude(kind)) if enhanced else nn.Identity()
        zc = 2 * zc if enhanced else zc
        if kind == "spatial":
            self.stem, size = _block(zc, width), z_shape[1:]
        elif kind == "tokens":
            patch = max(1, min(height, width_px) // self.layout.grid)
            self.stem, size = _TokenStem(zc, width, self.layout, patch), (self.layout.grid * patch,) * 2
        else:
            size = (_start_size(height), _start_size(width_px))
            self.stem = _FlatStem(zc, width, size)
        depth = 2 if enhanced else 1
        mixers: list[nn.Module] = [AttentionBlock(width)] if enhanced else []
        h, w = size
        while h < height or w < width_px:
            mixers.append(_Up(width, depth))
            h, w = 2 * h, 2 * w
        self.body = nn.Sequential(*mixers)
        refine = [_Residual(width), AttentionBlock(width)] if enhanced else [_block(width, width)]
        self.head = nn.Sequential(*refine, nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.layout.kind == "flat":
            z = z.flatten(1)
        x = self.body(self.stem(self.prepare(z)))
        if x.shape[-2:] != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        return torch.sigmoid(self.head(x))


def build_decoder(
    z_shape: Sequence[int], image_shape: Sequence[int], *, width: int = 32, enhanced: bool = False
) -> InversionDecoder:
    """A decoder from one sample's z shape to the (C, H, W) image shape."""
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise AttackError(f"image shape must be (C, H, W), got {tuple(image_shape)}")
    if math.prod(z_shape) < 1:
        raise AttackError(f"z has shape {tuple(z_shape)}: there is nothing to invert")
    return InversionDecoder(z_shape, image_shape, width=width, enhanced=enhanced)


@dataclass
class FitResult:
    """The decoder with its best held-out weights, the epochs run and the held-out MSE."""

    decoder: nn.Module
    epochs_run: int
    val_mse: float


@torch.no_grad()
def _mse(decoder: nn.Module, z: torch.Tensor, x: torch.Tensor, batch_size: int, device: torch.device) -> float:
    decoder.eval()
    total = 0.0
    for i in range(0, len(z), batch_size):
        xb = x[i : i + batch_size].to(device)
        total += float(F.mse_loss(decoder(z[i : i + batch_size].to(device)), xb, reduction="sum"))
    return total / x.numel()


class DecoderTraining(Training):
    """Training of one decoder on (z, x) pairs with pixel MSE, keeping the weights best on the
    held-out pairs; stops after `patience` epochs without a better held-out MSE. Batches are
    shuffled by its own generator seeded with `seed`, so a run is repeatable whatever trains beside
    it. `on_done` receives the FitResult."""

    def __init__(
        self,
        decoder: nn.Module,
        z_train: torch.Tensor,
        x_train: torch.Tensor,
        z_val: torch.Tensor,
        x_val: torch.Tensor,
        *,
        epochs: int,
        batch_size: int = 64,
        lr: float = 2e-3,
        patience: int = 5,
        seed: int = 0,
        device: torch.device | str = "cpu",
        desc: str = "decoder",
        on_done: Callable[[FitResult], None] | None = None,
    ):
        super().__init__()
        if epochs < 1:
            raise AttackError(f"--epochs must be at least 1, got {epochs}")
        self.device = torch.device(device)
        self.decoder = decoder.to(self.device)
        self.z_train, self.x_train, self.z_val, self.x_val = z_train, x_train, z_val, x_val
        self.epochs, self.batch_size, self.patience = epochs, batch_size, patience
        self.desc, self.on_done = desc, on_done
        self.optimizer = torch.optim.Adam(decoder.parameters(), lr=lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=epochs)
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.val, self.best, self.best_epoch = 0, math.nan, math.inf, 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.order = torch.empty(0, dtype=torch.long)
        self.result: FitResult | None = None

    def begin_epoch(self) -> int:
        self.epoch += 1
        self.decoder.train()
        self.order = torch.randperm(len(self.z_train), generator=self.generator)
        return len(range(0, len(self.order) - 1, self.batch_size))  # a last batch of one would break BatchNorm

    def step(self, i: int) -> None:
        idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        loss = F.mse_loss(self.decoder(self.z_train[idx].to(self.device)), self.x_train[idx].to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def end_epoch(self) -> bool:
        self.scheduler.step()
        self.val = _mse(self.decoder, self.z_val, self.x_val, 4 * self.batch_size, self.device)
        if self.val < self.best:
            self.best, self.best_state, self.best_epoch = self.val, copy.deepcopy(self.decoder.state_dict()), self.epoch
        if self.epoch < self.epochs and self.epoch - self.best_epoch < self.patience:
            return False
        if self.best_state is None:
            raise AttackError(
                f"{self.desc}: decoder training diverged (held-out MSE is not finite); "
                "check that z is finite at this split"
            )
        self.decoder.load_state_dict(self.best_state)
        self.decoder.eval()
        self.best_state = None
        self.result = FitResult(self.decoder, self.epoch, self.best)
        if self.on_done is not None:
            self.on_done(self.result)
        return True

    def postfix(self) -> dict[str, str]:
        return {"val_mse": f"{self.val:.4f}", "best": f"{self.best:.4f}"}


@register
class DecoderAttack(Attack):
    """Black box (the paper's threat model): query the edge with auxiliary images, standardise
    their z and add its residual from the nearest class-like cluster (vortex.attacks.prepare),
    train a decoder z -> x with pixel MSE, stop early on the held-out part."""

    name = "decoder"
    enhanced = False

    def fit(self, edge: nn.Module, aux: AuxPairs | None) -> None:
        train_together([self.fit_stepwise(edge, aux)], desc=self.desc, progress=self.config.progress)

    def fit_stepwise(self, edge: nn.Module, aux: AuxPairs | None) -> DecoderTraining:
        """Standardise and centre z, build the decoder; the training that fits it."""
        if aux is None:
            raise AttackError(f"the {self.name} attack needs auxiliary images")
        c = self.config
        torch.manual_seed(self.seed)
        standardize = Standardize.fit(aux.z_train)
        prepare: list[nn.Module] = [standardize]
        z_shape = tuple(aux.z_train.shape[1:])
        if c.clusters:
            kind = z_layout(z_shape).kind
            if kind == "flat" and len(z_shape) > 1:  # centre the vector the decoder reads, not its rows
                prepare.append(nn.Flatten())
                z_shape = (math.prod(z_shape),)
            axis = -1 if kind == "tokens" else 1
            centred = nn.Sequential(*prepare)(aux.z_train)
            prepare.append(ClassCentring.fit(centred, c.clusters, axis=axis, seed=self.seed))
            z_shape = doubled(z_shape, axis)
        decoder = build_decoder(z_shape, self.image_shape, width=c.width, enhanced=self.enhanced)
        return DecoderTraining(
            nn.Sequential(*prepare, decoder),
            aux.z_train,
            aux.x_train,
            aux.z_val,
            aux.x_val,
            epochs=c.epochs,
            batch_size=c.batch_size,
            lr=c.lr,
            patience=c.patience,
            seed=self.seed,
            device=c.device,
            desc=self.desc,
            on_done=self._fitted,
        )

    def _fitted(self, fit: FitResult) -> None:
        self.decoder, self.epochs_run, self.val_mse = fit.decoder, fit.epochs_run, fit.val_mse

    @torch.no_grad()
    def invert(self, z: torch.Tensor) -> torch.Tensor:
        device, batch = self.config.device, 4 * self.config.batch_size
        return torch.cat([self.decoder(z[i : i + batch].to(device)).cpu() for i in range(0, len(z), batch)])


@register
class EnhancedAttack(DecoderAttack):
    """The decoder attack strengthened: standardised z plus its FFT amplitude, a deeper decoder
    with attention blocks."""

    name = "enhanced"
    enhanced = True
