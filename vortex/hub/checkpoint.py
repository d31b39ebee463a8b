"""Write and load checkpoint directories: full weights, the edge/ and cloud/ halves, profile, card.

The files are listed in vortex/hub/layout.py.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import fx, nn

from vortex import __version__
from vortex.core.splits import SplitModel, evaluating
from vortex.errors import VortexError
from vortex.files import write_atomic, write_json
from vortex.hub.layout import (
    CARD,
    CHECKPOINT_FILES,
    CONFIG,
    META,
    META_CONFIG,
    PARTS,
    WEIGHTS,
    gpz_index,
    model_description,
    read_config,
    read_half_config,
    read_meta,
)
from vortex.models import ModelSpec, build_model, split_model, transformers_config
from vortex.records import Profile, to_plain

STAGING, REPLACED = ".checkpoint.partial", ".checkpoint.old"  # hidden, inside the checkpoint directory


def save_checkpoint(
    out_dir: str | Path,
    model: nn.Module,
    spec: ModelSpec,
    split_names: list[str],
    meta: dict[str, Any] | None = None,
    *,
    split: int | str | None = None,
    card: bool = True,
    extras: Callable[[Path], None] | None = None,
) -> Path:
    """Write the checkpoint as one unit: assembled in a hidden `.checkpoint.partial` directory
    inside `out_dir`, then moved into place replacing every file of the previous checkpoint
    (`CHECKPOINT_FILES`: stale profile, attack results, plots and halves go too; training state,
    logs and anything else stay). An interrupted save leaves the previous checkpoint as it was.
    The full weights' hash is recorded in config.json, vortex.json and each half's config.

    The halves are cut at `split` (index or name), by default at the GPZ recorded in
    `meta`; without either, no halves are written. `meta["profile"]` is also written as
    profile.json and profile.png; `extras(directory)` writes more files of the checkpoint (plots)
    before `card` renders README.md.
    """
    final = Path(out_dir)
    out = final / STAGING
    shutil.rmtree(out, ignore_errors=True)  # what an interrupted save left
    out.mkdir(parents=True)
    meta = {"vortex_version": __version__, "splits": split_names, **to_plain(meta or {})}  # as read from the file
    sm = split_model(model, spec, split_names)
    gpz = gpz_index(meta)
    k = sm.resolve(split) if split is not None else gpz
    weights_meta = {"vortex_version": __version__, **({"gpz": str(gpz)} if gpz else {})}
    write_atomic(out / WEIGHTS, lambda tmp: save_model(model, tmp, metadata=weights_meta))
    meta["weights_sha256"] = file_sha256(out / WEIGHTS)
    if k is None:
        meta.pop("halves", None)
    else:
        meta["halves"] = write_halves(out, sm, spec, k)
    config_halves = {"halves_sha256": meta["halves"]["sha256"]} if meta.get("halves") else {}
    description = {
        "model_type": "vortex",
        "vortex_version": __version__,
        **spec.to_dict(),
        "split_points": split_names,
        "weights_sha256": meta["weights_sha256"],
        **config_halves,
    }
    hf_config = transformers_config(model, spec)  # vit: config.json is transformers', vortex's goes in vortex.json
    if hf_config is not None:
        meta[META_CONFIG] = description
    write_json(out / CONFIG, description if hf_config is None else hf_config)
    if "profile" in meta:
        from vortex.report.plots import plot_profile

        write_json(out / "profile.json", meta["profile"])
        plot_profile(Profile.from_dict(meta["profile"]), out / "profile.png")
    if extras:
        extras(out)
    write_json(out / META, meta)
    if card:
        from vortex.hub.cards import write_card

        write_card(out)
    replace_checkpoint(out, final)
    return final


def replace_checkpoint(new: Path, out: Path) -> None:
    """Move the checkpoint assembled in `new` into `out`, replacing every file of the one there;
    the old vortex.json and card go out first and the new ones come in last, so even a crash
    within these renames leaves no numbers beside weights they do not describe."""
    old = out / REPLACED
    shutil.rmtree(old, ignore_errors=True)
    old.mkdir()
    for name in (META, CARD):
        if (out / name).exists():
            os.replace(out / name, old / name)
    for name in (*(n for n in CHECKPOINT_FILES if n not in (META, CARD)), CARD, META):
        target, source = out / name, new / name
        if target.exists() and (target.is_dir() or not source.is_file()):
            os.replace(target, old / name)
        if source.exists():
            os.replace(source, target)
    shutil.rmtree(old)
    shutil.rmtree(new)


def write_halves(out_dir: str | Path, sm: SplitModel, spec: ModelSpec, split: int | str) -> dict[str, Any]:
    """Write edge/ and cloud/ for split `split` of `sm`; return what vortex.json records about them."""
    out, k = Path(out_dir), sm.resolve(split)
    info = split_info(sm, spec, k)
    params, digests = {}, {"model": file_sha256(out / WEIGHTS)}
    for part in PARTS:
        module = sm.edge(k) if part == "edge" else sm.cloud(k)
        names = [s.name for s in sm.splits]
        params[part], digests[part] = write_half(out, part, module, spec, names, info, digests["model"])
    return {**info, "edge_params": params["edge"], "cloud_params": params["cloud"], "sha256": digests}


def split_info(sm: SplitModel, spec: ModelSpec, split: int | str) -> dict[str, Any]:
    """Where split `split` of `sm` cuts: index, name, image, z and output shapes, z payload (float32 bytes)."""
    k = sm.resolve(split)
    device = next(sm.model.parameters()).device
    example = torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size, device=device)
    with torch.no_grad(), evaluating(sm.model):
        z_shape = list(sm.edge(k)(example).shape[1:])
    return {
        "index": k,
        "name": sm.splits[k - 1].name,
        "input_shape": list(example.shape[1:]),
        "z_shape": z_shape,
        "z_bytes": 4 * math.prod(z_shape),
        "output_shape": [spec.num_classes],
    }


def write_half(
    out_dir: str | Path,
    part: str,
    module: nn.Module,
    spec: ModelSpec,
    split_points: list[str],
    info: dict[str, Any],
    model_sha256: str,
) -> tuple[int, str]:
    """Write `module` as the `part` half cut at `info` (see `split_info`) from the full weights hashed
    `model_sha256`: its weights and its config; return its parameter count and its weights' hash."""
    out = Path(out_dir)
    params = sum(p.numel() for p in module.parameters())
    metadata = {"vortex_version": __version__, "part": part, "split": str(info["index"]), "split_name": info["name"]}
    write_atomic(out / part / WEIGHTS, lambda tmp: save_model(module, tmp, metadata=metadata))
    digest = file_sha256(out / part / WEIGHTS)
    write_json(
        out / part / CONFIG,
        {
            "model_type": "vortex",
            "vortex_version": __version__,
            "part": part,
            **spec.to_dict(),
            "split_points": split_points,
            "split": info,
            "params": params,
            "sha256": {"weights": digest, "model": model_sha256},
        },
    )
    return params, digest


def load_checkpoint(path: str | Path, *, trust_code: Sequence[str] = ()) -> tuple[nn.Module, ModelSpec, list[str]]:
    """Rebuild the model from config.json and load its safetensors weights (no pickle).

    A custom architecture is built only when the user trusts its name (see `build_model`).
    """
    config = read_config(path)
    spec = spec_of(config, Path(path) / CONFIG)
    model = build_model(spec, trust_code=trust_code)
    load_weights(model, Path(path) / WEIGHTS, f"a {spec.architecture} model as {CONFIG} describes it")
    verify_weights(Path(path), config)
    return model, spec, list(config.get("split_points", []))


def verify_weights(path: Path, config: dict[str, Any]) -> None:
    """Check the full weights against the hash config.json records, and vortex.json (when there)
    against the same weights: a changed, swapped or cut-short file is refused, naming it."""
    weights, recorded = path / WEIGHTS, config.get("weights_sha256")
    if not isinstance(recorded, str):
        raise VortexError(f"'{path / CONFIG}' records no hash of {WEIGHTS}; save the checkpoint again with this vortex")
    got = file_sha256(weights)
    if got != recorded:
        raise VortexError(
            f"'{weights}' does not match the hash in {CONFIG} ({got[:12]} vs {recorded[:12]}): the file was "
            "changed or replaced; download or save it again"
        )
    described = read_meta(path).get("weights_sha256", got)
    if described != got:
        raise VortexError(
            f"'{path / META}' describes other weights than '{weights}' ({str(described)[:12]} vs {got[:12]}); "
            "download or save the checkpoint again"
        )


def verify_checkpoint(path: str | Path, *, halves: bool = True, trust_code: Sequence[str] = ()) -> None:
    """Check that a checkpoint's files belong together: its weights load into the model config.json
    describes and match their hash, vortex.json describes them, and (with `halves`) each half there
    loads and was cut from them."""
    load_checkpoint(path, trust_code=trust_code)
    for part in PARTS if halves else ():
        if (Path(path) / part / WEIGHTS).is_file():
            load_half(path, part, trust_code=trust_code)


def spec_of(config: dict[str, Any], source: Path) -> ModelSpec:
    """The ModelSpec a config describes, with a one-line error naming the file when it cannot."""
    try:
        return ModelSpec.from_dict(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise VortexError(
            f"'{source}' does not describe a model ({type(exc).__name__}: {exc}); save it again"
        ) from None


def unreadable(weights: Path, exc: Exception) -> VortexError:
    """The one-line error for a weights file safetensors cannot read (truncated, empty, not safetensors)."""
    return VortexError(f"'{weights}' is not a readable safetensors file ({exc}); download or save it again")


def load_weights(module: nn.Module, weights: Path, what: str) -> None:
    """Load a safetensors file into `module`, every way it can fail said in one line naming the file."""
    try:
        missing, unexpected = load_model(module, str(weights), strict=False)
    except SafetensorError as exc:
        raise unreadable(weights, exc) from None
    except RuntimeError as exc:  # a tensor of another shape: the config and the weights disagree
        raise VortexError(f"'{weights}' does not fit {what}: {str(exc).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise VortexError(
            f"'{weights}' does not fit {what}: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )


def load_half(path: str | Path, part: str, *, trust_code: Sequence[str] = ()) -> fx.GraphModule:
    """Rebuild the `part` half stored under `path` from its own config and weights, verified."""
    config = read_half_config(path, part)
    spec = spec_of(config, Path(path) / part / CONFIG)
    sm = split_model(build_model(spec, trust_code=trust_code), spec, config["split_points"])
    recorded = config["split"]
    k = sm.resolve(recorded["index"])
    if sm.splits[k - 1].name != recorded["name"]:
        raise VortexError(
            f"the {part} half in '{path}' was cut after '{recorded['name']}' but split {k} of this "
            f"{spec.architecture} is '{sm.splits[k - 1].name}'; re-save the checkpoint"
        )
    module = sm.edge(k) if part == "edge" else sm.cloud(k)
    weights = Path(path) / part / WEIGHTS
    try:
        with safe_open(str(weights), framework="pt") as f:
            stored = f.metadata() or {}
    except SafetensorError as exc:
        raise unreadable(weights, exc) from None
    if (stored.get("part"), stored.get("split")) != (part, str(k)):
        raise VortexError(
            f"'{weights}' holds the {stored.get('part')} half of split {stored.get('split')}, but its "
            f"config describes the {part} half of split {k}; re-save the checkpoint"
        )
    try:
        missing, unexpected = load_model(module, str(weights), strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        raise VortexError(f"the {part} half in '{path}' does not fit split {k}: {str(exc).splitlines()[-1]}") from None
    if missing or unexpected:
        raise VortexError(
            f"the {part} half in '{path}' does not match split {k} ({recorded['name']}): missing "
            f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    verify_binding(Path(path), part, config)
    verify_half(module, recorded, part)
    return module.eval()


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_binding(path: Path, part: str, config: dict[str, Any]) -> None:
    """Check that the `part` half's weights are the ones written with this checkpoint: its file
    against the hash in its config, and both against the checkpoint's config.json and full weights."""
    recorded = config.get("sha256") if isinstance(config.get("sha256"), dict) else {}
    weights = path / part / WEIGHTS
    if not isinstance(recorded.get("weights"), str):
        raise VortexError(f"'{path / part / CONFIG}' records no weights hash; re-save the checkpoint with this vortex")
    got = file_sha256(weights)
    if got != recorded["weights"]:
        raise VortexError(
            f"'{weights}' does not match the hash in {part}/{CONFIG} ({got[:12]} vs "
            f"{recorded['weights'][:12]}): the file was changed or replaced; download or save it again"
        )
    top = model_description(path)  # a pull may hold no full weights
    expected = top.get("halves_sha256") if isinstance(top.get("halves_sha256"), dict) else {}
    if expected and (expected.get(part), expected.get("model")) != (got, recorded.get("model")):
        raise VortexError(
            f"'{path / part}' belongs to another checkpoint: {CONFIG} records other {part} weights "
            f"({str(expected.get(part))[:12]} vs {got[:12]}); pull or save the halves again"
        )
    if (path / WEIGHTS).is_file() and file_sha256(path / WEIGHTS) != recorded.get("model"):
        raise VortexError(
            f"'{path / part}' was cut from other weights than '{path / WEIGHTS}'; re-cut the halves "
            "with `vortex publish DIR --split K` or save the checkpoint again"
        )


def verify_half(module: nn.Module, recorded: dict[str, Any], part: str) -> None:
    """Run a zero input of the recorded shape through a half; check its output shape and payload."""
    shape_in = recorded["input_shape"] if part == "edge" else recorded["z_shape"]
    expected = recorded["z_shape"] if part == "edge" else recorded["output_shape"]
    with torch.no_grad(), evaluating(module):
        out = module(torch.zeros(1, *shape_in))
    got = list(out.shape[1:])
    if got != expected or (part == "edge" and 4 * math.prod(got) != recorded["z_bytes"]):
        raise VortexError(
            f"the {part} half at split {recorded['index']} maps {shape_in} to {got}, but the "
            f"checkpoint records {expected} ({recorded['z_bytes']} payload bytes); it is not the "
            "recorded split"
        )
