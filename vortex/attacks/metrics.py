"""Reconstruction quality per image on [0, 1] images: MSE, PSNR, SSIM (torchmetrics) and cosine."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from vortex.errors import AttackError

METRICS = ("mse", "psnr", "ssim", "cosine")
MIN_SIDE = 6  # SSIM pads each side by half its 11-pixel window
MAX_PSNR = 100.0  # dB reported for an exact reconstruction (true PSNR is infinite; JSON has no inf)


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
    ssim = structural_similarity_index_measure(recon, target, data_range=1.0, reduction="none")
    cosine = torch.nn.functional.cosine_similarity(recon.flatten(1), target.flatten(1), dim=1, eps=1e-8)
    return {"mse": mse, "psnr": psnr.clamp(max=MAX_PSNR), "ssim": ssim, "cosine": cosine}


def summarize(per_image: dict[str, torch.Tensor]) -> dict[str, float]:
    """The mean of each per-image metric over all images, and the number of images."""
    n = len(per_image["mse"])
    if n == 0:
        raise AttackError("no private images were scored: the test split is empty")
    return {**{k: float(per_image[k].double().mean()) for k in METRICS}, "num_images": n}
