"""Plain-text tables printed at the end of a command."""

from __future__ import annotations

from typing import Any


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


def profile_table(profile: dict[str, Any]) -> str:
    """One row per split: name, shape, payload, edge params, R_c^2, global variance, rho, decisive bound."""
    gpz = profile["gpz"]
    rows = [f"{'split':>5}  {'name':<16} {'shape':<14} {'bytes':>7} {'params':>7} {'rc2':>10} "
            f"{'global_var':>10} {'rho':>6}  {'decisive':<8}"]
    for s in profile["splits"]:
        mark = "  <- GPZ" if s["index"] == gpz["index"] else ("  (zone)" if s["index"] in gpz["zone"] else "")
        shape = "x".join(map(str, s["shape"]))
        rows.append(f"{s['index']:>5}  {s['name'][:16]:<16} {shape:<14} {_human(s['bytes']):>7} "
                    f"{_human(s['edge_params']):>7} {s['rc2']:>10.4g} {s['global_var']:>10.4g} {s['rho']:>6.3f}  "
                    f"{s['decisive']:<8}{mark}")
    rows.append(f"GPZ a priori: split {gpz['index']} (zone {gpz['zone']}; {gpz['criterion']}); "
                f"{profile['num_samples']} samples, {profile['labels']} labels, accuracy {profile['accuracy']:.3f}")
    return "\n".join(rows)
