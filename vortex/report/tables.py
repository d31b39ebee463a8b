"""Plain-text tables printed at the end of a command."""

from __future__ import annotations

from vortex.records import AttackReport, Profile


def human_size(n: float) -> str:
    """Bytes as B, KB, MB or GB (powers of 1000)."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


def shape_text(shape: list[int]) -> str:
    """A tensor shape as 32x8x8."""
    return "x".join(map(str, shape))


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


def profile_table(profile: Profile) -> str:
    """One row per split: name, shape, payload, edge params, R_c^2, global variance, rho, decisive bound."""
    gpz = profile.gpz
    w = max(16, *(len(s.name) for s in profile.splits))
    rows = [
        f"{'split':>5}  {'name':<{w}} {'shape':<14} {'bytes':>7} {'params':>7} {'rc2':>10} "
        f"{'global_var':>10} {'rho':>6}  {'decisive':<8}"
    ]
    for s in profile.splits:
        mark = "  <- GPZ" if s.index == gpz.index else ("  (zone)" if s.index in gpz.zone else "")
        rows.append(
            f"{s.index:>5}  {s.name:<{w}} {shape_text(s.shape):<14} {_human(s.bytes):>7} "
            f"{_human(s.edge_params):>7} {s.rc2:>10.4g} {s.global_var:>10.4g} {s.rho:>6.3f}  "
            f"{s.decisive:<8}{mark}"
        )
    rows.append(
        f"GPZ a priori: split {gpz.index} (zone {gpz.zone}; {gpz.criterion}); "
        f"{profile.num_samples} samples, {profile.labels} labels, accuracy {profile.accuracy:.3f}"
    )
    sketched = [s for s in profile.splits if s.sketch_dim]
    if sketched:
        rows.append(
            f"split{'s' * (len(sketched) > 1)} {', '.join(str(s.index) for s in sketched)} estimated "
            f"from a count sketch of width {sketched[0].sketch_dim} (--sketch-dim exact keeps every split exact)"
        )
    return "\n".join(rows)


def attack_table(result: AttackReport) -> str:
    """One row per attacked split: name, z shape, MSE, PSNR, SSIM, cosine, rho; then both GPZs."""
    predicted, posthoc = result.gpz_predicted, result.gpz_posthoc
    zone = predicted.zone or []
    rows = [f"{'split':>5}  {'name':<16} {'z shape':<14} {'mse':>8} {'psnr':>7} {'ssim':>6} {'cosine':>7} {'rho':>6}"]
    for s in result.splits:
        mark = "  <- GPZ a priori" if s.index == predicted.index else "  (zone)" if s.index in zone else ""
        if s.index == posthoc.index:
            mark += "  <- post hoc"
        rho = f"{s.rho:>6.3f}" if s.rho is not None else f"{'-':>6}"
        rows.append(
            f"{s.index:>5}  {s.name[:16]:<16} {shape_text(s.shape):<14} {s.mse:>8.4f} "
            f"{s.psnr:>7.2f} {s.ssim:>6.3f} {s.cosine:>7.3f} {rho}{mark}"
        )
    agreement = {True: "they agree", False: "they disagree", None: "agreement n/a"}[result.agreement]
    post = (
        f"split {posthoc.index} (largest MSE rise, within splits {posthoc.interval})"
        if posthoc.index is not None
        else posthoc.reason or "n/a"
    )
    rows.append(
        f"GPZ a priori: split {predicted.index} (zone {zone}); post hoc: {post}; {agreement}. "
        f"{result.attack} attack, aux {result.aux_dataset or 'none'}, "
        f"{result.splits[0].num_images} private images scored"
    )
    return "\n".join(rows)
