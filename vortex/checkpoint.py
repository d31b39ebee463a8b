"""Checkpoint directories: model.safetensors, config.json (rebuild recipe) and vortex.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model
from torch import nn

from . import __version__
from .errors import VortexError
from .files import write_atomic, write_json
from .models import ModelSpec, build_model

WEIGHTS, CONFIG, META = "model.safetensors", "config.json", "vortex.json"


def is_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a directory holding a vortex checkpoint."""
    path = Path(path)
    return (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def save_checkpoint(out_dir: str | Path, model: nn.Module, spec: ModelSpec, split_names: list[str],
                    meta: dict[str, Any] | None = None) -> Path:
    """Write weights (safetensors), the rebuild config and vortex.json, each file atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / WEIGHTS, lambda tmp: save_model(model, tmp, metadata={"vortex_version": __version__}))
    write_json(out / CONFIG, {"model_type": "vortex", "vortex_version": __version__, **spec.to_dict(),
                              "split_points": split_names})
    write_json(out / META, {"vortex_version": __version__, "splits": split_names, **(meta or {})})
    return out


def read_config(path: str | Path) -> dict[str, Any]:
    """The checkpoint's config.json, with a clear error when `path` is not a checkpoint."""
    path = Path(path)
    if not is_checkpoint(path):
        raise VortexError(f"'{path}' is not a vortex checkpoint: it needs {CONFIG} and {WEIGHTS}. "
                          "Write one with `vortex train --output_dir DIR`")
    return json.loads((path / CONFIG).read_text())


def load_checkpoint(path: str | Path) -> tuple[nn.Module, ModelSpec, list[str]]:
    """Rebuild the model from config.json and load its safetensors weights (no pickle)."""
    config = read_config(path)
    spec = ModelSpec.from_dict(config)
    model = build_model(spec)
    missing, unexpected = load_model(model, str(Path(path) / WEIGHTS), strict=False)
    if missing or unexpected:
        raise VortexError(f"weights in '{path}' do not match a {spec.architecture} model: missing "
                          f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return model, spec, list(config.get("split_points", []))


def read_meta(path: str | Path) -> dict[str, Any]:
    """The checkpoint's vortex.json (empty when absent)."""
    meta = Path(path) / META
    return json.loads(meta.read_text()) if meta.is_file() else {}
