"""Streaming class statistics against a direct numpy computation."""

import numpy as np
import pytest
import torch
from reference import numpy_reference

from vortex.core import stats as stats_module
from vortex.core.bounds import entropy_bounds, gaussian_entropy
from vortex.core.stats import ClassStats, CountSketch, choose_sketch_dim
from vortex.errors import ProfileError


def stream(z: np.ndarray, y: np.ndarray, num_classes: int, batch: int) -> ClassStats:
    stats = ClassStats(num_classes, int(np.prod(z.shape[1:])))
    for i in range(0, len(z), batch):
        stats.update(torch.from_numpy(z[i : i + batch]), torch.from_numpy(y[i : i + batch]))
    return stats


@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize("batch", [1, 7, 64, 1000])
def test_matches_numpy(offset, batch):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, size=400)
    z = (rng.normal(size=(400, 3, 4)) * (1 + y[:, None, None]) + y[:, None, None] + offset).astype(np.float32)
    ref = numpy_reference(z, y, 5)
    got = stream(z, y, 5, batch).summary()
    np.testing.assert_allclose(got.rc2_per_class, ref["rc2_per_class"], rtol=1e-6)
    for key in ("rc2", "global_var", "rho"):
        assert getattr(got, key) == pytest.approx(ref[key], rel=1e-6), key
    assert got.counts == np.bincount(y, minlength=5).tolist()


def test_large_offset_keeps_small_variance():
    # sum-of-squares minus square-of-sums in float32 would return noise (or a negative) here
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(2), 500)
    z = (1e4 + rng.normal(scale=1e-2, size=(1000, 8))).astype(np.float64)
    got = stream(z, y, 2, 33).summary()
    assert got.rc2 == pytest.approx(numpy_reference(z, y, 2)["rc2"], rel=1e-6)
    assert got.rc2 == pytest.approx(8e-4, rel=0.1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_features_give_the_statistics_of_their_values(dtype):
    """Features from autocast: the statistics of the half-precision values as numpy computes them in
    float64 (a class offset of 50 against a spread of 0.1: half-precision sums would lose the spread;
    the deviations from the rough class means are exact differences and are summed in float32)."""
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), 40)
    z = torch.from_numpy(50 + y[:, None] + rng.normal(scale=0.1, size=(120, 6))).to(dtype)
    stats = ClassStats(3, 6)
    for i in range(0, 120, 32):
        stats.update(z[i : i + 32], torch.from_numpy(y[i : i + 32]))
    ref = numpy_reference(z.double().numpy(), y, 3)
    got = stats.summary()
    for key in ("rc2", "global_var", "rho"):
        assert getattr(got, key) == pytest.approx(ref[key], rel=1e-5), key


def test_memory_does_not_grow_with_samples():
    stats = ClassStats(3, 10)
    sizes = {t.numel() for t in (stats.count, stats.mean, stats.m2)}
    for _ in range(20):
        stats.update(torch.randn(50, 10), torch.randint(0, 3, (50,)))
    assert {t.numel() for t in (stats.count, stats.mean, stats.m2)} == sizes


def test_class_with_one_sample_is_reported_not_divided_by_zero():
    z = torch.randn(9, 4)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 0])
    summ = stream(z.numpy(), y.numpy(), 3, 4).summary()
    assert summ.small_classes == {2: 1}
    assert summ.rc2_per_class[2] is None
    ref = numpy_reference(z.numpy(), y.numpy(), 3)
    assert summ.rc2 == pytest.approx(np.mean(ref["rc2_per_class"][:2]), rel=1e-6)


def test_too_few_classes_is_a_clear_error():
    stats = ClassStats(3, 2)
    stats.update(torch.randn(3, 2), torch.tensor([0, 0, 1]))
    with pytest.raises(ProfileError, match="at least 2 classes"):
        stats.summary()


def test_entropy_bounds_closed_form():
    # two equiprobable classes in d=4: H(Y) = ln 2
    b = entropy_bounds([0.4, 0.4], [10, 10], global_var=4.0, dim=4)
    assert b["h_bound_feature"] == pytest.approx(2 * np.log(2 * np.pi * np.e * 1.0))
    assert b["h_bound_decision"] == pytest.approx(np.log(2) + 2 * np.log(2 * np.pi * np.e * 0.1))
    assert b["decisive"] == "decision"
    assert b["h_bound_per_dim"] == pytest.approx(b["h_bound_decision"] / 4)
    assert entropy_bounds([4.0, 4.0], [1, 1], 4.0, 4)["decisive"] == "feature"
    assert np.isfinite(gaussian_entropy(0.0, 3))


def numpy_count_sketch(z: np.ndarray, bucket: np.ndarray, sign: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((len(z), width))
    for i in range(z.shape[1]):
        out[:, bucket[i]] += sign[i] * z[:, i]
    return out


def test_sketched_statistics_are_the_statistics_of_the_sketch():
    # the sketch is one fixed linear map: its statistics equal numpy's on the sketched features
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, size=300)
    z = (rng.normal(size=(300, 500)) + y[:, None] * 0.5).astype(np.float32)
    stats = ClassStats(4, 500, sketch_dim=64)
    for i in range(0, 300, 37):
        stats.update(torch.from_numpy(z[i : i + 37]), torch.from_numpy(y[i : i + 37]))
    assert stats.mean.shape == (4, 64)
    sketched = numpy_count_sketch(z.astype(np.float64), stats.sketch.bucket.numpy(), stats.sketch.sign.numpy(), 64)
    ref, got = numpy_reference(sketched, y, 4), stats.summary()
    for key in ("rc2", "global_var", "rho"):
        assert getattr(got, key) == pytest.approx(ref[key], rel=1e-6), key


def test_sketch_estimates_the_exact_statistics():
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(5), 200)
    z = (rng.normal(size=(1000, 20000)) * (1 + y[:, None] / 4) + rng.normal(size=(5, 20000))[y]).astype(np.float32)
    exact, sketched = numpy_reference(z, y, 5), stream_sketched(z, y, 5, 2048)
    for key in ("rc2", "global_var", "rho"):
        assert getattr(sketched, key) == pytest.approx(exact[key], rel=0.05), key
    assert stream_sketched(z, y, 5, 2048).rc2 == sketched.rc2  # same map on every call (and process)


def stream_sketched(z: np.ndarray, y: np.ndarray, num_classes: int, width: int):
    stats = ClassStats(num_classes, z.shape[1], sketch_dim=width)
    stats.update(torch.from_numpy(z), torch.from_numpy(y))
    return stats.summary()


def test_sketch_leaves_narrow_layers_exact_and_rejects_bad_width():
    assert ClassStats(3, 100, sketch_dim=128).sketch is None
    with pytest.raises(ProfileError, match="--sketch-dim"):
        ClassStats(3, 100, sketch_dim=0)


def test_sketch_runs_the_map_its_buckets_describe():
    z = torch.randn(5, 1000, dtype=torch.float64)
    sketch = CountSketch(1000, 96)  # 96 does not divide 1000: a partial last block
    expected = numpy_count_sketch(z.numpy(), sketch.bucket.numpy(), sketch.sign.numpy(), 96)
    np.testing.assert_allclose(sketch(z).numpy(), expected, rtol=1e-12, atol=1e-12)
    assert sorted(sketch.bucket[:96].tolist()) == list(range(96))  # each block fills every bucket once


def test_default_is_exact_until_the_class_means_exceed_the_budget(monkeypatch):
    dims = [100, 5000, 20]
    assert choose_sketch_dim(None, 10, dims) is None  # 10 x 5120 x 8 bytes: far below the default budget
    monkeypatch.setattr(stats_module, "STATS_BYTES", 100_000)
    width = choose_sketch_dim(None, 10, dims)
    assert width == 1024  # the widest power of two with 10 x (100 + width + 20) x 8 <= 100,000
    assert ClassStats(10, 5000, sketch_dim=width).sketch is not None
    assert ClassStats(10, 100, sketch_dim=width).sketch is None and ClassStats(10, 20, sketch_dim=width).sketch is None
    assert choose_sketch_dim("exact", 10, dims) is None  # --sketch-dim exact: whatever the budget
    assert choose_sketch_dim(512, 10, dims) == 512  # a number is used as given
    with pytest.raises(ProfileError, match="--sketch-dim must be a width of at least 1 or 'exact'"):
        choose_sketch_dim("wide", 10, dims)
