"""Figures written next to the JSON results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .files import write_atomic  # noqa: E402


def _mark_gpz(ax: Any, gpz: dict) -> None:
    zone = gpz["zone"]
    ax.axvspan(min(zone) - 0.5, max(zone) + 0.5, color="gold", alpha=0.25, lw=0)
    ax.axvline(gpz["index"], color="darkgoldenrod", ls="--", lw=1)


def plot_profile(profile: dict[str, Any], path: str | Path) -> Path:
    """R_c^2 (log) and rho per split with the GPZ marked; payload bytes per split below."""
    splits = profile["splits"]
    idx = [s["index"] for s in splits]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.55 * len(idx) + 3), 6), sharex=True,
                                      gridspec_kw={"height_ratios": [2, 1]})
    top.plot(idx, [s["rc2"] for s in splits], "o-", color="tab:blue", label="$R_c^2$ (class mean)")
    top.set_yscale("log")
    top.set_ylabel("$R_c^2$", color="tab:blue")
    right = top.twinx()
    right.plot(idx, [s["rho"] for s in splits], "s-", color="tab:red", label=r"$\rho$ = $R_c^2$ / global var")
    right.set_ylabel(r"$\rho$ (within-class share)", color="tab:red")
    right.set_ylim(0, max(1.0, max(s["rho"] for s in splits)) * 1.05)
    gpz = profile["gpz"]
    _mark_gpz(top, gpz)
    lines = top.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    top.legend(lines, [ln.get_label() for ln in lines] + [], loc="lower left", fontsize=8)
    top.set_title(f"{profile['model']} on {profile['dataset']}: GPZ at split {gpz['index']} "
                  f"(largest drop of {gpz['quantity']})", fontsize=10)
    bottom.bar(idx, [s["bytes"] for s in splits], color="tab:gray")
    bottom.set_yscale("log")
    bottom.set_ylabel("payload (bytes)")
    _mark_gpz(bottom, gpz)
    bottom.set_xticks(idx, [f"{s['index']}\n{s['name']}" for s in splits], fontsize=7, rotation=30)
    bottom.set_xlabel("split")
    fig.tight_layout()
    out = write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return out
