"""Attack metrics (vortex/attacks/metrics.py) in closed form, for `make mutation` (fast, no attack runs)."""

import math

import numpy as np
import pytest
import torch

from vortex.attacks.metrics import MAX_PSNR, METRICS, image_metrics, summarize
from vortex.errors import AttackError


def test_per_image_values_in_float64_without_grad():
    rng = np.random.default_rng(0)
    target = rng.random((2, 3, 8, 7))
    recon = target + rng.normal(0, 0.05, target.shape)  # some values leave [0, 1]: they are clamped first
    assert recon.min() < 0 or recon.max() > 1
    r = torch.tensor(recon, dtype=torch.float32, requires_grad=True)
    m = image_metrics(r, torch.tensor(target, dtype=torch.float32))
    assert set(m) == set(METRICS) == {"mse", "psnr", "ssim", "cosine"}
    clamped = np.clip(recon.astype(np.float32).astype(np.float64), 0, 1)
    t = target.astype(np.float32).astype(np.float64)
    for k, v in m.items():
        assert v.dtype == torch.float64 and v.shape == (2,) and not v.requires_grad, k
    for i in range(2):
        mse = np.mean((clamped[i] - t[i]) ** 2)
        assert m["mse"][i].item() == pytest.approx(mse, rel=1e-12)
        assert m["psnr"][i].item() == pytest.approx(10 * math.log10(1 / mse), rel=1e-6)
        cos = (clamped[i] * t[i]).sum() / np.linalg.norm(clamped[i]) / np.linalg.norm(t[i])
        assert m["cosine"][i].item() == pytest.approx(cos, rel=1e-12)


def test_ssim_of_constant_images_in_closed_form():
    # constant images: SSIM = (2ab + c1) / (a^2 + b^2 + c1) with c1 = (0.01 x data range 1)^2
    for a, b in ((0.2, 0.7), (0.9, 0.1)):
        m = image_metrics(torch.full((1, 2, 11, 11), a), torch.full((1, 2, 11, 11), b))
        c1 = 0.01**2
        assert m["ssim"][0].item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-6)
        assert m["psnr"][0].item() == pytest.approx(-10 * math.log10((a - b) ** 2), rel=1e-6)


def test_exact_and_near_exact_reconstructions():
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    exact = image_metrics(x, x)
    assert exact["psnr"].tolist() == [MAX_PSNR] * 3 and MAX_PSNR == 100.0
    near = image_metrics(x + 1e-4, x)  # 80 dB: below the cap, reported as is
    assert near["psnr"].tolist() == pytest.approx([80.0] * 3, abs=1e-3)


def test_cosine_of_a_black_reconstruction_is_zero_not_nan():
    m = image_metrics(torch.zeros(1, 1, 8, 8), torch.rand(1, 1, 8, 8) + 0.1)
    assert m["cosine"].tolist() == [0.0]


@pytest.mark.parametrize("recon, target", [((2, 1, 8, 8), (2, 1, 7, 8)), ((1, 8, 8), (1, 8, 8))])
def test_shapes_are_checked(recon, target):
    with pytest.raises(AttackError) as info:
        image_metrics(torch.rand(*recon), torch.rand(*target))
    assert str(info.value) == (
        f"reconstructions {recon} and images {target} must be [B, C, H, W] batches of the same shape"
    )


def test_images_too_small_for_ssim_are_one_line():
    assert image_metrics(torch.rand(1, 1, 6, 6), torch.rand(1, 1, 6, 6))["ssim"].shape == (1,)  # the smallest side
    with pytest.raises(AttackError) as info:
        image_metrics(torch.rand(2, 1, 5, 8), torch.rand(2, 1, 5, 8))
    assert str(info.value) == (
        "images of 5x8 pixels are too small for SSIM's 11-pixel window (at least 6 a side); resize them with "
        "--image-size"
    )


def test_summarize_means_every_metric_and_counts_images():
    per_image = {k: torch.tensor([1.0, 2.0, 4.5]) * (i + 1) for i, k in enumerate(METRICS)}
    per_image["psnr"] = torch.tensor([10, 20, 31], dtype=torch.int64)  # any dtype: averaged in float64
    s = summarize(per_image)
    assert s == {"mse": 2.5, "psnr": 61 / 3, "ssim": 7.5, "cosine": 10.0, "num_images": 3}
    assert all(type(s[k]) is float for k in METRICS) and type(s["num_images"]) is int
    with pytest.raises(AttackError, match=r"^no private images were scored: the test split is empty$"):
        summarize({k: torch.zeros(0) for k in METRICS})


def test_cosine_of_dark_images_is_not_damped_by_its_guard():
    # norms of 0.05 or so: cos = <a, b> / (|a| |b|), the 1e-8 guard far below them
    rng = np.random.default_rng(1)
    a, b = rng.random((1, 1, 8, 8)) * 0.01, rng.random((1, 1, 8, 8)) * 0.01
    m = image_metrics(torch.tensor(a), torch.tensor(b))
    cos = (a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)
    assert m["cosine"][0].item() == pytest.approx(cos, rel=1e-9)


@pytest.mark.parametrize("planes_at_once", [1, 3, None])
@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (3, 3, 12, 10), (2, 2, 6, 9), (1, 1, 40, 33)])
def test_ssim_is_torchmetrics_float64(shape, planes_at_once, monkeypatch):
    """SSIM's own filter (gathered windows, one matrix product, a few planes at a time) gives torchmetrics'
    float64 numbers however the planes are grouped (equal to the last bits with the same BLAS summation
    order; 1e-12 allows another order), for close, unrelated, identical and flat reconstructions."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    from vortex.attacks import metrics

    if planes_at_once is not None:
        h, w = shape[-2:]
        monkeypatch.setattr(metrics, "WINDOW_BYTES", planes_at_once * 121 * h * w * 8)
    g = torch.Generator().manual_seed(sum(shape))
    target = torch.rand(shape, generator=g, dtype=torch.float64)
    recon = (target + 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    flat = torch.full(shape, 0.3, dtype=torch.float64)
    unrelated = torch.rand(shape, generator=g, dtype=torch.float64)
    for r, t in ((recon, target), (unrelated, target), (target, target), (flat + 0.01 * recon, flat)):
        ours = image_metrics(r, t)["ssim"]
        theirs = structural_similarity_index_measure(r, t, data_range=1.0, reduction="none")
        assert ours.dtype == torch.float64
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
