"""Reconstruction quality per image on [0, 1] images: MSE, PSNR (torchmetrics), SSIM and cosine, in float64.

SSIM is torchmetrics' (11x11 Gaussian window, sigma 1.5, reflect padding, averaged over the whole
image) with the same float64 sums; only its filter is computed differently (`_filter`), about ten
times faster on a CPU than torch's float64 convolution. Float32 would be as fast but is not exact
enough: E[x^2] - E[x]^2 cancels on flat images (constant images: SSIM off by 6e-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio

from vortex.errors import AttackError

METRICS = ("mse", "psnr", "ssim", "cosine")
MIN_SIDE = 6  # SSIM pads each side by half its 11-pixel window
MAX_PSNR = 100.0  # dB reported for an exact reconstruction (true PSNR is infinite; JSON has no inf)
SSIM_SIGMA = 1.5  # torchmetrics' Gaussian window: int(3.5 * sigma + 0.5) * 2 + 1 = 11 taps a side
SSIM_TAPS = 11
SSIM_K1, SSIM_K2 = 0.01, 0.03
WINDOW_BYTES = 8 << 20  # SSIM filters a few image planes at a time: their gathered windows stay in cache


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torchmetrics' normalised 11x11 Gaussian window, as a row of 121 weights."""
    dist = torch.arange((1 - SSIM_TAPS) / 2, (1 + SSIM_TAPS) / 2, 1, dtype=dtype, device=device)
    gauss = torch.exp(-torch.pow(dist / SSIM_SIGMA, 2) / 2)
    gauss = (gauss / gauss.sum()).unsqueeze(0)
    return (gauss.t() @ gauss).reshape(1, -1)


def _filter(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Every channel of `x` [B, C, H + 10, W + 10] filtered by the 121-tap `window`: [B, C, H, W].

    One matrix product per plane over its gathered windows, as torch's CPU conv2d computes it, for a
    few planes at a time so that the gathered windows stay in cache."""
    b, c, hp, wp = x.shape
    h, w = hp - SSIM_TAPS + 1, wp - SSIM_TAPS + 1
    planes = x.reshape(b * c, hp, wp)
    step = max(1, WINDOW_BYTES // (window.numel() * h * w * x.element_size()))
    out = [
        window @ p.unfold(1, SSIM_TAPS, 1).unfold(2, SSIM_TAPS, 1).permute(0, 3, 4, 1, 2).reshape(len(p), -1, h * w)
        for p in planes.split(step)
    ]
    return torch.cat(out).view(b, c, h, w)


def _ssim(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (data range 1) of two [B, C, H, W] batches, as torchmetrics computes it."""
    pad = (SSIM_TAPS - 1) // 2
    p, t = (F.pad(v, (pad, pad, pad, pad), mode="reflect") for v in (recon, target))
    window = _gaussian_window(recon.dtype, recon.device)
    mu_p, mu_t, pp, tt, pt = (_filter(v, window) for v in (p, t, p * p, t * t, p * t))
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mu_pp, mu_tt, mu_pt = mu_p.pow(2), mu_t.pow(2), mu_p * mu_t
    var_p, var_t = torch.clamp(pp - mu_pp, min=0.0), torch.clamp(tt - mu_tt, min=0.0)
    upper = 2 * (pt - mu_pt) + c2
    lower = (var_p + var_t) + c2
    ssim = ((2 * mu_pt + c1) * upper) / ((mu_pp + mu_tt + c1) * lower)
    return ssim.reshape(len(ssim), -1).mean(-1)


def image_metrics(recon: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image MSE (per element), PSNR (dB, data range 1), SSIM (11-tap Gaussian) and cosine.

    Both batches are [B, C, H, W] in [0, 1]; each returned tensor has shape [B].
    """
    if recon.shape != target.shape or recon.ndim != 4:
        raise AttackError(
            f"reconstructions {tuple(recon.shape)} and images {tuple(target.shape)} must be "
            "[B, C, H, W] batches of the same shape"
        )
    if min(target.shape[-2:]) < MIN_SIDE:
        raise AttackError(
            f"images of {target.shape[-2]}x{target.shape[-1]} pixels are too small for SSIM's 11-pixel window "
            f"(at least {MIN_SIDE} a side); resize them with --image-size"
        )
    recon, target = recon.detach().double().clamp(0, 1), target.detach().double()
    mse = (recon - target).pow(2).flatten(1).mean(1)
    psnr = peak_signal_noise_ratio(recon, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    cosine = torch.nn.functional.cosine_similarity(recon.flatten(1), target.flatten(1), dim=1, eps=1e-8)
    return {"mse": mse, "psnr": psnr.clamp(max=MAX_PSNR), "ssim": _ssim(recon, target), "cosine": cosine}


def summarize(per_image: dict[str, torch.Tensor]) -> dict[str, float]:
    """The mean of each per-image metric over all images, and the number of images."""
    n = len(per_image["mse"])
    if n == 0:
        raise AttackError("no private images were scored: the test split is empty")
    return {**{k: float(per_image[k].double().mean()) for k in METRICS}, "num_images": n}
