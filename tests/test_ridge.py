"""The closed-form kernel ridge attack (the controller's online privacy signal) against sklearn."""

import numpy as np
import pytest
import torch
from sklearn.kernel_ridge import KernelRidge

from vortex.attacks.ridge import PENALTIES, WIDTH, ridge_inversion


def problem(n_fit=40, n_eval=25, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_fit + n_eval, 1, 4, 4, generator=g)
    mix = torch.randn(16, d, generator=g)
    z = x.flatten(1) @ mix + 0.3 * torch.randn(n_fit + n_eval, d, generator=g)
    return z[:n_fit], x[:n_fit], z[n_fit:], x[n_fit:]


def sklearn_reference(z_fit, x_fit, z_eval, x_eval, penalty):
    """Kernel ridge by sklearn on the same standardised z, kernel width and centred targets."""
    zf, ze = z_fit.double().numpy(), z_eval.double().numpy()
    mean, std = zf.mean(0), zf.std(0, ddof=1)
    zf, ze = (zf - mean) / std, (ze - mean) / std
    d2 = ((zf[:, None] - zf[None]) ** 2).sum(-1)
    gamma = WIDTH / np.median(d2[d2 > 0])
    xf, xe = x_fit.flatten(1).double().numpy(), x_eval.flatten(1).double().numpy()

    def fit_predict(train_idx, z_query):
        model = KernelRidge(alpha=penalty, kernel="rbf", gamma=gamma)
        centre = xf[train_idx].mean(0)
        model.fit(zf[train_idx], xf[train_idx] - centre)
        return model.predict(z_query) + centre

    recon = np.clip(fit_predict(np.arange(len(zf)), ze), 0, 1)
    return float(((recon - xe) ** 2).mean()), gamma


def test_matches_sklearn_kernel_ridge_with_the_penalty_leave_one_out_picks():
    z_fit, x_fit, z_eval, x_eval = problem()
    result = ridge_inversion(z_fit, x_fit, z_eval, x_eval)
    mse, _ = sklearn_reference(z_fit, x_fit, z_eval, x_eval, result.penalty)
    assert result.mse == pytest.approx(mse, rel=1e-6)
    assert (result.fit_samples, result.eval_samples, result.pooled_side) == (40, 25, None)


def test_leave_one_out_choice_equals_refitting_without_each_sample():
    """The closed-form LOO residual, against n refits by sklearn with the target mean fixed as in the fit."""
    z_fit, x_fit, z_eval, x_eval = problem(n_fit=30, seed=1)
    chosen = ridge_inversion(z_fit, x_fit, z_eval, x_eval).penalty
    zf = z_fit.double().numpy()
    zf = (zf - zf.mean(0)) / zf.std(0, ddof=1)
    xf = x_fit.flatten(1).double().numpy()
    d2 = ((zf[:, None] - zf[None]) ** 2).sum(-1)
    gamma, centre = WIDTH / np.median(d2[d2 > 0]), xf.mean(0)
    errors = []
    for penalty in PENALTIES:
        sq = []
        for i in range(len(zf)):
            keep = np.arange(len(zf)) != i
            model = KernelRidge(alpha=penalty, kernel="rbf", gamma=gamma).fit(zf[keep], xf[keep] - centre)
            sq.append(((model.predict(zf[i : i + 1]) + centre - xf[i]) ** 2).mean())
        errors.append(np.mean(sq))
    assert chosen == PENALTIES[int(np.argmin(errors))]


def test_rescaling_z_per_element_cannot_hide_the_image():
    z_fit, x_fit, z_eval, x_eval = problem(seed=2)
    scale = torch.logspace(-3, 3, z_fit.shape[1])
    plain = ridge_inversion(z_fit, x_fit, z_eval, x_eval).mse
    scaled = ridge_inversion(z_fit * scale + 7.0, x_fit, z_eval * scale + 7.0, x_eval).mse
    assert scaled == pytest.approx(plain, rel=1e-4)


def test_an_informative_z_leaks_and_an_unrelated_one_does_not():
    z_fit, x_fit, z_eval, x_eval = problem(n_fit=200, n_eval=50, d=16, seed=3)
    leaky = ridge_inversion(z_fit, x_fit, z_eval, x_eval).mse
    noise = torch.randn_like(z_fit), torch.randn_like(z_eval)
    blind = ridge_inversion(noise[0], x_fit, noise[1], x_eval).mse
    guess_mean = (x_eval - x_fit.mean(0)).pow(2).mean().item()  # what an attacker without z does
    assert leaky < 0.3 * guess_mean
    assert blind == pytest.approx(guess_mean, rel=0.1)


def test_large_images_are_compared_pooled_and_wide_z_is_sketched():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(30, 3, 64, 64, generator=g)
    z = torch.randn(30, 20_000, generator=g)
    result = ridge_inversion(z[:20], x[:20], z[20:], x[20:])
    assert result.pooled_side == 32 and 0 < result.mse < 1
