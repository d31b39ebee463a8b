"""Figures written next to the JSON results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vortex.files import write_atomic  # noqa: E402
from vortex.records import AttackReport, ControllerSummary, Profile  # noqa: E402


def _save(fig: Any, path: str | Path, dpi: int) -> Path:
    """Lay out, write the figure as a PNG atomically, and free it."""
    fig.tight_layout()
    out = write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    plt.close(fig)
    return out


def _mark_gpz(ax: Any, index: int, zone: list[int]) -> None:
    ax.axvspan(min(zone) - 0.5, max(zone) + 0.5, color="gold", alpha=0.25, lw=0)
    ax.axvline(index, color="darkgoldenrod", ls="--", lw=1)


def plot_profile(profile: Profile, path: str | Path) -> Path:
    """R_c^2 (log) and rho per split with the GPZ marked; payload bytes per split below."""
    splits = profile.splits
    idx = [s.index for s in splits]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(max(6.0, 0.55 * len(idx) + 3), 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    top.plot(idx, [s.rc2 for s in splits], "o-", color="tab:blue", label="$R_c^2$ (class mean)")
    top.set_yscale("log")
    top.set_ylabel("$R_c^2$", color="tab:blue")
    right = top.twinx()
    right.plot(idx, profile.rho(), "s-", color="tab:red", label=r"$\rho$ = $R_c^2$ / global var")
    right.set_ylabel(r"$\rho$ (within-class share)", color="tab:red")
    right.set_ylim(0, max(1.0, *profile.rho()) * 1.05)
    gpz = profile.gpz
    _mark_gpz(top, gpz.index, gpz.zone)
    lines = top.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    top.legend(lines, [ln.get_label() for ln in lines] + [], loc="lower left", fontsize=8)
    top.set_title(
        f"{profile.model} on {profile.dataset}: GPZ at split {gpz.index} (largest drop of {gpz.quantity})",
        fontsize=10,
    )
    bottom.bar(idx, [s.bytes for s in splits], color="tab:gray")
    bottom.set_yscale("log")
    bottom.set_ylabel("payload (bytes)")
    _mark_gpz(bottom, gpz.index, gpz.zone)
    bottom.set_xticks(idx, [f"{s.index}\n{s.name}" for s in splits], fontsize=7, rotation=30)
    bottom.set_xlabel("split")
    return _save(fig, path, dpi=120)


def plot_vortex(controller: ControllerSummary, split_names: list[str], path: str | Path) -> Path:
    """The "vortex" plot: rho per split (x) over training steps (y), measured GPZ and target marked;
    beside it the lever weights and, when measured, the online attack's MSE at K against the line."""
    history = controller.history
    rho = np.array([h.rho for h in history])
    steps = [h.step for h in history]
    idx = np.arange(1, len(split_names) + 1)
    attacked = [h.attack_mse for h in history]
    panels = 3 if any(m is not None for m in attacked) else 2
    fig, axes = plt.subplots(
        1,
        panels,
        figsize=(8 + 3 * (panels - 1), max(4.0, 0.18 * len(steps) + 2.5)),
        gridspec_kw={"width_ratios": [3] + [1] * (panels - 1)},
        sharey=True,
    )
    ax, levers = axes[0], axes[1]
    mesh = ax.pcolormesh(idx, steps, rho, shading="nearest", cmap="viridis", vmin=0, vmax=max(1e-6, rho.max()))
    fig.colorbar(mesh, ax=ax, label=r"$\rho$ (within-class share)")
    ax.plot([h.gpz for h in history], steps, "o", color="white", mec="black", ms=5, label="measured GPZ")
    k = controller.target_gpz
    ax.axvline(k, color="red", ls="--", lw=1.5, label=f"target {k}")
    ax.set_xticks(idx, [f"{i}\n{n}" for i, n in zip(idx, split_names)], fontsize=7, rotation=30)
    ax.set_xlabel("split")
    ax.set_ylabel("training step")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(r"vortex: $\rho$ per split over training", fontsize=10)
    levers.plot([h.levers["pull"] for h in history], steps, "-", label="pull (rho at K)")
    levers.plot([h.levers["hold"] for h in history], steps, "-", label="hold (K-1)")
    levers.set_xlabel("lever weight")
    levers.legend(fontsize=8)
    if panels == 3:
        privacy = axes[2]
        privacy.plot([np.nan if m is None else m for m in attacked], steps, "o-", color="tab:purple", ms=4)
        if controller.min_mse is not None:
            privacy.axvline(controller.min_mse, color="red", ls="--", lw=1.2, label="protected from here")
            privacy.legend(fontsize=8)
        privacy.set_xlim(left=0)
        privacy.set_xlabel(f"online attack MSE at split {k}")
    return _save(fig, path, dpi=110)


def plot_attack(result: AttackReport, path: str | Path) -> Path:
    """Attack MSE (with the profile's rho on a second axis) and PSNR per split; a-priori GPZ shaded,
    post-hoc GPZ dotted."""
    splits = result.splits
    idx = [s.index for s in splits]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.55 * len(idx) + 3), 6), sharex=True)
    top.plot(idx, [s.mse for s in splits], "o-", color="tab:purple", label="attack MSE")
    top.set_ylabel("MSE (per pixel)", color="tab:purple")
    lines = top.get_legend_handles_labels()[0]
    rho = [s.rho for s in splits]
    if None not in rho:
        right = top.twinx()
        right.plot(idx, rho, "s--", color="tab:red", alpha=0.7, label=r"$\rho$ (profile)")
        right.set_ylabel(r"$\rho$ (within-class share)", color="tab:red")
        right.set_ylim(0, max(1.0, *rho) * 1.05)
        lines += right.get_legend_handles_labels()[0]
    bottom.plot(idx, [s.psnr for s in splits], "o-", color="tab:green")
    bottom.set_ylabel("PSNR (dB)", color="tab:green")
    predicted, posthoc = result.gpz_predicted, result.gpz_posthoc
    for ax in (top, bottom):
        if predicted.index is not None:
            _mark_gpz(ax, predicted.index, predicted.zone or [predicted.index])
        if posthoc.index is not None:
            ax.axvline(posthoc.index, color="black", ls=":", lw=1.2)
    top.legend(lines, [ln.get_label() for ln in lines], loc="upper left", fontsize=8)
    agreement = {True: "agree", False: "disagree", None: "n/a"}[result.agreement]
    top.set_title(
        f"{result.attack} attack on {result.model} ({result.dataset}, aux "
        f"{result.aux_dataset or 'none'}): GPZ a priori {predicted.index} (shaded), "
        f"post hoc {posthoc.index} (dotted): {agreement}",
        fontsize=9,
    )
    bottom.set_xticks(idx, [f"{s.index}\n{s.name}" for s in splits], fontsize=7, rotation=30)
    bottom.set_xlabel("split")
    return _save(fig, path, dpi=120)


def plot_reconstructions(originals: Any, recons: Any, path: str | Path, title: str = "") -> Path:
    """Originals in the top row, their reconstructions below; arrays [N, C, H, W] in [0, 1]."""
    originals, recons = np.asarray(originals, dtype=float), np.asarray(recons, dtype=float)
    n = len(originals)
    fig, axes = plt.subplots(2, n, figsize=(1.1 * n + 0.6, 2.6), squeeze=False)
    for row, (images, label) in enumerate(((originals, "original"), (recons, "reconstructed"))):
        for i, image in enumerate(images):
            ax = axes[row][i]
            if image.shape[0] == 1:
                ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(np.clip(image.transpose(1, 2, 0), 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path, dpi=120)
