"""Exact checks of the training levers (vortex/training/levers.py) against numpy, for `make mutation`."""

import numpy as np
import pytest
import torch

from vortex.errors import VortexError
from vortex.training.levers import Levers, batch_rho, class_residual, distance_correlation, lever_loss, smoothing_at


def numpy_batch_rho(z: np.ndarray, y: np.ndarray, num_classes: int, unit: bool = False) -> float:
    """mean over classes with >= 2 samples of the mean squared distance to the class mean, over the
    mean squared distance of all samples to their mean (float64)."""
    z = z.reshape(len(z), -1).astype(np.float64)
    if unit:
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
    within = [((z[y == c] - z[y == c].mean(0)) ** 2).sum(1).mean() for c in range(num_classes) if (y == c).sum() >= 2]
    return float(np.mean(within) / ((z - z.mean(0)) ** 2).sum(1).mean())


@pytest.mark.parametrize("unit", [False, True])
def test_batch_rho_skips_small_and_absent_classes_and_flattens(unit):
    rng = np.random.default_rng(0)
    y = np.array([0, 0, 0, 1, 1, 2, 0, 1, 1, 0, 0, 1])  # class 2 has one sample, class 3 none
    z = rng.normal(size=(12, 2, 3)) * 0.3 + y[:, None, None] * 0.5 + 0.2
    got = batch_rho(torch.from_numpy(z), torch.from_numpy(y), 4, unit=unit)
    assert got.dtype == torch.float32 and got.shape == ()
    assert got.item() == pytest.approx(numpy_batch_rho(z, y, 4, unit), rel=1e-5)


def test_batch_rho_on_small_features_is_not_swamped_by_its_guard():
    # features of size 1e-3 (global variance ~1e-6): the 1e-12 guard must stay negligible
    rng = np.random.default_rng(1)
    y = np.arange(30) % 3
    z = (rng.normal(size=(30, 4)) + y[:, None]) * 1e-3
    assert batch_rho(torch.from_numpy(z), torch.from_numpy(y), 3).item() == pytest.approx(
        numpy_batch_rho(z, y, 3), rel=1e-5
    )


def test_batch_rho_without_a_class_of_two_is_zero():
    got = batch_rho(torch.randn(3, 4), torch.tensor([0, 1, 2]), 3)
    assert got.dtype == torch.float32 and got.shape == () and got.item() == 0.0
    one_pair = batch_rho(torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0]]), torch.tensor([1, 1, 0]), 2)
    # class 1: within 1.0; all three: mean (7/3, 5/3), mean squared distance (74 + 26 + 164) / 27 = 88 / 9
    assert one_pair.item() == pytest.approx(9 / 88, rel=1e-6)


def test_batch_rho_is_differentiable():
    z = torch.randn(10, 3, requires_grad=True)
    batch_rho(z, torch.arange(10) % 2, 2, unit=True).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_smoothing_schedule_defaults_and_clamping():
    assert smoothing_at({"start": 0.1}, 0.9) == pytest.approx(0.1)  # end defaults to start
    assert smoothing_at({"end": 0.3}, 0.5) == pytest.approx(0.15)  # start defaults to 0
    assert smoothing_at({}, 0.5) == 0.0
    sched = {"start": 0.2, "end": -0.1}
    assert smoothing_at(sched, 0.0) == pytest.approx(0.2)
    assert smoothing_at(sched, 1.0) == pytest.approx(-0.1)
    assert smoothing_at(sched, -3.0) == pytest.approx(0.2)  # progress clamped to [0, 1]
    assert smoothing_at(sched, 7.0) == pytest.approx(-0.1)
    assert smoothing_at(sched, 0.25) == pytest.approx(0.2 - 0.3 * 0.25)


def test_smoothing_spec_types():
    value = smoothing_at(1, 0.3)
    assert value == 1.0 and type(value) is float
    per_class = smoothing_at((0.1, 0, -0.2), 0.3)
    assert per_class.dtype == torch.float32 and per_class.tolist() == pytest.approx([0.1, 0.0, -0.2])
    with pytest.raises(VortexError, match=r"^label_smoothing schedule takes 'start' and 'end', not \['a', 'b'\]$"):
        smoothing_at({"start": 0.1, "b": 1, "a": 2}, 0.0)


def test_levers_default_to_zero_and_serialise_every_field():
    assert Levers().to_dict() == {"pull": 0.0, "hold": 0.0, "hold_floor": 0.0, "decorrelate": 0.0}
    assert Levers(pull=2.0, hold=3.0, hold_floor=0.5, decorrelate=1.5).to_dict() == {
        "pull": 2.0,
        "hold": 3.0,
        "hold_floor": 0.5,
        "decorrelate": 1.5,
    }


def test_lever_loss_terms_one_by_one():
    rng = np.random.default_rng(2)
    y = np.arange(20) % 2
    prev, at = rng.normal(size=(20, 5)) + y[:, None], rng.normal(size=(20, 5)) + 2 * y[:, None]
    zs, yt = [torch.from_numpy(prev), torch.from_numpy(at)], torch.from_numpy(y)
    rho_prev, rho_at = numpy_batch_rho(prev, y, 2), numpy_batch_rho(at, y, 2, unit=True)
    floor = rho_prev + 0.25  # the hold is active
    both = lever_loss(zs, yt, 2, 4, Levers(pull=2.0, hold=3.0, hold_floor=floor))
    assert both.item() == pytest.approx(2.0 * rho_at + 3.0 * 0.25, rel=1e-5)
    hold_only = lever_loss(zs, yt, 2, 4, Levers(pull=0.0, hold=3.0, hold_floor=floor))
    assert hold_only.item() == pytest.approx(3.0 * 0.25, rel=1e-5)
    pull_only = lever_loss(zs, yt, 2, 4, Levers(pull=2.0, hold=0.0, hold_floor=floor))
    assert pull_only.item() == pytest.approx(2.0 * rho_at, rel=1e-5)
    met = lever_loss(zs, yt, 2, 4, Levers(pull=2.0, hold=3.0, hold_floor=rho_prev - 0.1))  # floor met: no hold
    assert met.item() == pytest.approx(2.0 * rho_at, rel=1e-5)
    unit_pull = lever_loss(zs, yt, 2, 4, Levers(pull=1.0, hold=0.0, hold_floor=floor))
    assert unit_pull.item() == pytest.approx(rho_at, rel=1e-5)
    unit_hold = lever_loss(zs, yt, 2, 4, Levers(pull=0.0, hold=1.0, hold_floor=floor))
    assert unit_hold.item() == pytest.approx(0.25, rel=1e-5)
    alone = lever_loss(zs[1:], yt, 2, 2, Levers(pull=2.0, hold=3.0, hold_floor=floor))  # no z before K
    assert alone.item() == pytest.approx(2.0 * rho_at, rel=1e-5)


def test_lever_loss_off_is_a_float32_zero():
    zs, y = [torch.randn(8, 3, dtype=torch.float64)] * 2, torch.arange(8) % 2
    for target, levers in ((None, Levers(pull=2.0, hold=1.0, hold_floor=5.0)), (3, Levers())):
        loss = lever_loss(zs, y, 2, target, levers)
        assert loss.dtype == torch.float32 and loss.shape == () and loss.item() == 0.0


def numpy_dcor2(a: np.ndarray, b: np.ndarray) -> float:
    """Squared distance correlation written out (Szekely, Rizzo and Bakirov 2007), float64."""

    def centred(v):
        v = v.reshape(len(v), -1).astype(np.float64)
        d = np.sqrt(((v[:, None, :] - v[None, :, :]) ** 2).sum(-1))
        return d - d.mean(0, keepdims=True) - d.mean(1, keepdims=True) + d.mean()

    da, db = centred(a), centred(b)
    return float((da * db).mean() / np.sqrt((da * da).mean() * (db * db).mean()))


def test_distance_correlation_against_numpy_and_its_closed_cases():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(24, 2, 3)), rng.normal(size=(24, 4))
    b[:, 0] += np.sin(a[:, 0, 0] * 2)  # a non-linear dependence
    got = distance_correlation(torch.from_numpy(a), torch.from_numpy(b))
    assert got.dtype == torch.float32 and got.shape == ()
    assert got.item() == pytest.approx(numpy_dcor2(a, b), rel=1e-4)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    copy = 3.0 * a.reshape(24, 6) @ q + 1.0  # rotated, scaled, shifted: 1
    assert distance_correlation(torch.from_numpy(a), torch.from_numpy(copy)).item() == pytest.approx(1.0, abs=1e-5)
    scaled = distance_correlation(torch.from_numpy(a * 1e3), torch.from_numpy(b)).item()
    assert scaled == pytest.approx(got.item(), rel=1e-4)  # rescaling z cannot lower it


def test_class_residual_removes_each_class_mean():
    v = torch.tensor([[1.0, 2.0], [3.0, 6.0], [10.0, 0.0], [5.0, 5.0]])
    y = torch.tensor([0, 0, 1, 0])
    got = class_residual(v, y, 3)  # class 0: mean (3, 13/3); class 1: itself
    assert got.flatten().tolist() == pytest.approx([-2.0, -7 / 3, 0.0, 5 / 3, 0.0, 0.0, 2.0, 2 / 3], abs=1e-6)


def test_decorrelate_term_reads_what_z_holds_beyond_the_class():
    rng = np.random.default_rng(4)
    y = np.arange(30) % 3
    images = rng.uniform(size=(30, 1, 4, 4))
    z = rng.normal(size=(30, 8))
    z[:, :2] += images.reshape(30, -1)[:, :2] * 3  # z knows two pixels
    res_z = z - np.stack([z[y == c].mean(0) for c in range(3)])[y]
    flat = images.reshape(30, -1)
    res_x = flat - np.stack([flat[y == c].mean(0) for c in range(3)])[y]
    expected = numpy_dcor2(res_z, res_x)
    zs, yt, xt = [torch.from_numpy(z)] * 2, torch.from_numpy(y), torch.from_numpy(images)
    only = lever_loss(zs, yt, 3, 4, Levers(decorrelate=2.0), images=xt)
    assert only.item() == pytest.approx(2.0 * expected, rel=1e-4)
    # class means moved far apart (x100), the residual unchanged: the term does not move
    far = torch.from_numpy(z + 100 * np.eye(8)[y])
    moved = lever_loss([far] * 2, yt, 3, 4, Levers(decorrelate=2.0), images=xt)
    assert moved.item() == pytest.approx(only.item(), rel=1e-4)
    with_pull = lever_loss(zs, yt, 3, 4, Levers(pull=1.0, decorrelate=2.0), images=xt)
    assert with_pull.item() == pytest.approx(2.0 * expected + numpy_batch_rho(z, y, 3, unit=True), rel=1e-4)
    alone = lever_loss(zs, yt, 3, 4, Levers(decorrelate=1.0), images=xt)  # no pull or hold: still on
    assert alone.item() == pytest.approx(expected, rel=1e-4)
    # without the images the term is off, not an error
    assert lever_loss(zs, yt, 3, 4, Levers(decorrelate=2.0)).item() == 0.0
