"""Exact checks of the streaming statistics that `make mutation` showed no other test makes.

Each test asserts a value computed independently (numpy, a closed form, or a budget worked out by
hand), so a one-line change of vortex/core/stats.py fails it.
"""

import warnings

import numpy as np
import pytest
import torch
from reference import numpy_reference

from vortex.core import stats as stats_module
from vortex.core.stats import ClassStats, CountSketch, choose_sketch_dim, combine
from vortex.errors import ProfileError


def partial_stats(z: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """count, mean and M2 per class, written out in numpy."""
    count = np.bincount(y, minlength=num_classes).astype(np.float64)
    mean = np.zeros((num_classes, z.shape[1]))
    m2 = np.zeros(num_classes)
    for c in range(num_classes):
        if count[c]:
            mean[c] = z[y == c].mean(0)
            m2[c] = ((z[y == c] - mean[c]) ** 2).sum()
    return count, mean, m2


def test_combine_divides_a_single_sample_by_one_and_leaves_an_empty_class_at_zero():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(7, 3))
    y = np.array([0, 0, 0, 1, 0, 0, 0])  # class 1: one sample in all; class 2: none
    parts = [partial_stats(z[:4], y[:4], 3), partial_stats(z[4:], y[4:], 3)]
    n, mean, m2 = combine(*(torch.tensor(np.stack([p[i] for p in parts])) for i in range(3)))
    count, exact_mean, exact_m2 = partial_stats(z, y, 3)
    assert n.tolist() == count.tolist() == [6.0, 1.0, 0.0]
    np.testing.assert_allclose(mean.numpy(), exact_mean, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(mean[1].numpy(), z[3], rtol=1e-12)  # one sample: its mean is itself
    assert mean[2].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(m2.numpy(), exact_m2, rtol=1e-12, atol=1e-15)


def test_the_sketch_map_is_pinned():
    # the map is part of what a sketched profile means: the same (dim, width, seed) must give the same
    # map in every version (and process), and the default seed is 0
    sketch = CountSketch(10, 4)
    assert sketch.shift == [1, 1, 0]
    assert sketch.sign.tolist() == [1.0, -1.0, 1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0, 1.0]
    assert sketch.bucket.tolist() == [1, 2, 3, 0, 1, 2, 3, 0, 0, 1]
    same = CountSketch(10, 4, seed=0)
    assert same.shift == sketch.shift and torch.equal(same.sign, sketch.sign)
    other = CountSketch(10, 4, seed=1)
    assert (other.shift, other.sign.tolist()) == ([1, 2, 2], [1.0, 1.0, 1.0, -1.0, -1.0, 1.0, -1.0, -1.0, 1.0, 1.0])


def test_statistics_are_kept_on_the_device_asked_for_in_float64():
    sketch = CountSketch(10, 4, device="meta")
    assert sketch.sign.device.type == "meta"
    exact, sketched = ClassStats(3, 10, device="meta"), ClassStats(3, 10, device="meta", sketch_dim=4)
    for stats in (exact, sketched):
        assert [t.device.type for t in (stats.count, stats.mean, stats.m2)] == ["meta"] * 3
    assert sketched.sketch.sign.device.type == "meta"
    stats = ClassStats(3, 10)
    assert [t.dtype for t in (stats.count, stats.mean, stats.m2)] == [torch.float64] * 3


def test_update_puts_its_work_on_the_features_device_not_the_default_one():
    # a user who called torch.set_default_device(...) still gets statistics on the features' device
    rng = np.random.default_rng(1)
    z, y = rng.normal(size=(40, 6)).astype(np.float32), np.arange(40) % 3
    with torch.device("meta"):
        stats = ClassStats(3, 6, device="cpu")
        assert stats.update(torch.from_numpy(z), torch.from_numpy(y))
        got = stats.summary()
    assert got.rho == pytest.approx(numpy_reference(z, y, 3)["rho"], rel=1e-6)


def test_sketch_width_one_is_accepted_and_a_layer_as_wide_as_the_sketch_stays_exact():
    one = ClassStats(3, 10, sketch_dim=1)
    assert one.sketch is not None and one.dim == 1 and one.mean.shape == (3, 1)
    assert ClassStats(3, 64, sketch_dim=64).sketch is None
    assert ClassStats(3, 65, sketch_dim=64).sketch is not None
    with pytest.raises(ProfileError, match="--sketch-dim must be at least 1, got 0"):
        ClassStats(3, 10, sketch_dim=0)


def test_sketch_budget_boundaries(monkeypatch):
    dims = [100, 5000, 20]
    monkeypatch.setattr(stats_module, "STATS_BYTES", 10 * 5120 * 8)  # the exact means fit to the byte
    assert choose_sketch_dim(None, 10, dims) is None
    monkeypatch.setattr(stats_module, "STATS_BYTES", 10 * 5120 * 8 - 1)  # one byte short: the widest fitting power
    assert choose_sketch_dim(None, 10, dims) == 4096  # 10 x (100 + 4096 + 20) x 8 = 337,280 bytes fit
    monkeypatch.setattr(stats_module, "STATS_BYTES", 10 * (100 + 1024 + 20) * 8)  # 1024 fits to the byte
    assert choose_sketch_dim(None, 10, dims) == 1024
    monkeypatch.setattr(stats_module, "STATS_BYTES", 10 * (100 + 1024 + 20) * 8 - 1)
    assert choose_sketch_dim(None, 10, dims) == 512
    monkeypatch.setattr(stats_module, "STATS_BYTES", 8)  # even width 1 is over budget: 1 is the floor
    assert choose_sketch_dim(None, 10, dims) == 1


def test_many_blocks_give_the_same_statistics_without_warnings(monkeypatch):
    # BLOCK_BYTES cut to 3 rows of 8 float32 coordinates: the second pass runs in 14 blocks
    monkeypatch.setattr(stats_module, "BLOCK_BYTES", 3 * 4 * 8)
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, size=40)
    z = (rng.normal(size=(40, 8)) + 3 * y[:, None] + 1e3).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = ClassStats(3, 8)
        assert stats.update(torch.from_numpy(z), torch.from_numpy(y)) is True
    ref, got = numpy_reference(z, y, 3), stats.summary()
    np.testing.assert_allclose(got.rc2_per_class, ref["rc2_per_class"], rtol=1e-5)
    assert got.rho == pytest.approx(ref["rho"], rel=1e-5)


def test_update_reports_non_finite_features():
    stats = ClassStats(2, 3)
    assert stats.update(torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 0, 1])) is True
    bad = torch.randn(6, 3)
    bad[2, 1] = float("nan")
    assert stats.update(bad, torch.tensor([0, 1, 0, 1, 0, 1])) is False
    inf = torch.randn(4, 3)
    inf[0, 0] = float("inf")
    assert ClassStats(2, 3).update(inf, torch.tensor([0, 0, 1, 1])) is False


def test_constant_features_have_rho_zero_not_a_division_by_zero():
    stats = ClassStats(2, 4)
    stats.update(torch.full((6, 4), 3.5), torch.tensor([0, 0, 0, 1, 1, 1]))
    got = stats.summary()
    assert (got.rc2, got.global_var, got.rho) == (0.0, 0.0, 0.0)


def test_too_few_classes_message_says_what_to_do():
    stats = ClassStats(3, 2)
    stats.update(torch.randn(3, 2), torch.tensor([0, 0, 1]))
    with pytest.raises(ProfileError) as info:
        stats.summary()
    assert str(info.value) == (
        "R_c^2 needs at least 2 classes with 2 or more samples; per-class counts are [2, 1, 0]. "
        "Profile more samples (raise --max-samples) or check the labels"
    )


class FakeState:
    """accelerate's PartialState as `sync` reads it, with a chosen number of processes."""

    num_processes = 1


def test_sync_reduces_two_processes_to_the_statistics_of_all_samples(monkeypatch):
    rng = np.random.default_rng(3)
    y = np.concatenate([np.arange(4).repeat(2), rng.integers(0, 4, size=52)])
    z = (rng.normal(size=(60, 5)) * (1 + y[:, None]) + 1e3).astype(np.float32)
    mine, theirs = ClassStats(4, 5), ClassStats(4, 5)
    mine.update(torch.from_numpy(z[:25]), torch.from_numpy(y[:25]))
    theirs.update(torch.from_numpy(z[25:]), torch.from_numpy(y[25:]))
    other = {id(mine.count): theirs.count, id(mine.mean): theirs.mean, id(mine.m2): theirs.m2}
    calls = []

    def gather(t):  # accelerate's gather: every process's tensor, concatenated along dim 0
        calls.append(tuple(t.shape))
        return torch.cat([t, other[id(t)]])

    monkeypatch.setattr(FakeState, "num_processes", 2)
    monkeypatch.setattr("accelerate.state.PartialState", FakeState)
    monkeypatch.setattr("accelerate.utils.gather", gather)
    mine.sync()
    assert sorted(calls) == [(4,), (4,), (4, 5)]
    count, mean, m2 = partial_stats(z.astype(np.float64), y, 4)
    assert mine.count.tolist() == count.tolist()
    np.testing.assert_allclose(mine.mean.numpy(), mean, rtol=1e-9)
    np.testing.assert_allclose(mine.m2.numpy(), m2, rtol=1e-6)
    ref = numpy_reference(z, y, 4)
    assert mine.summary().rho == pytest.approx(ref["rho"], rel=1e-6)


def test_sync_with_one_process_changes_nothing(monkeypatch):
    def gather(t):
        raise AssertionError("one process gathers nothing")

    monkeypatch.setattr(FakeState, "num_processes", 1)
    monkeypatch.setattr("accelerate.state.PartialState", FakeState)
    monkeypatch.setattr("accelerate.utils.gather", gather)
    stats = ClassStats(2, 3)
    stats.update(torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 0, 1]))
    before = [t.clone() for t in (stats.count, stats.mean, stats.m2)]
    stats.sync()
    assert all(torch.equal(a, b) for a, b in zip(before, (stats.count, stats.mean, stats.m2)))


def test_rho_of_features_with_a_global_variance_below_one():
    rng = np.random.default_rng(4)
    y = np.arange(60) % 3
    z = ((rng.normal(size=(60, 4)) + y[:, None]) * 0.05).astype(np.float32)  # global variance ~0.01
    stats = ClassStats(3, 4)
    stats.update(torch.from_numpy(z), torch.from_numpy(y))
    ref, got = numpy_reference(z, y, 3), stats.summary()
    assert ref["global_var"] < 0.05
    assert got.rho == pytest.approx(ref["rho"], rel=1e-6) and got.global_var == pytest.approx(ref["global_var"])
