"""The files of a checkpoint directory (and Hub repo), and readers that check them.

model.safetensors   full weights (metadata: vortex_version, gpz)
config.json         enough to rebuild the model without remote code
vortex.json         splits, profile, GPZ, recipe, controller history, attack summary
profile.json/.png   the R_c^2 / rho profile and its plot
README.md           the model card (hub_cards/)
edge/, cloud/       the two halves cut at the GPZ (or a chosen split), each loadable alone:
                    model.safetensors with only that half's tensors + config.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vortex.errors import VortexError

WEIGHTS, CONFIG, META, CARD = "model.safetensors", "config.json", "vortex.json", "README.md"
PARTS = ("edge", "cloud")
ONNX_FILE = "model.onnx"  # a half (or the whole model) exported by `vortex export`


def is_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a directory holding a vortex checkpoint."""
    path = Path(path)
    return (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def gpz_index(meta: dict[str, Any]) -> int | None:
    """The GPZ split recorded in vortex.json (top level or inside the profile), if any."""
    gpz = meta.get("gpz") or meta.get("profile", {}).get("gpz") or {}
    return gpz.get("index")


def read_config(path: str | Path) -> dict[str, Any]:
    """The checkpoint's config.json, with a clear error when `path` is not a checkpoint."""
    path = Path(path)
    if not is_checkpoint(path):
        raise VortexError(
            f"'{path}' is not a vortex checkpoint: it needs {CONFIG} and {WEIGHTS}. "
            "Write one with `vortex train --output_dir DIR`"
        )
    return read_json_object(path / CONFIG)


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint file, with a one-line error naming the file when it is not one."""
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VortexError(f"'{path}' is not valid JSON ({exc}); the checkpoint is damaged: save it again") from None
    if not isinstance(data, dict):
        raise VortexError(f"'{path}' holds a JSON {type(data).__name__}, not an object; the checkpoint is damaged")
    return data


def read_meta(path: str | Path) -> dict[str, Any]:
    """The checkpoint's vortex.json (empty when absent)."""
    meta = Path(path) / META
    return read_json_object(meta) if meta.is_file() else {}


def read_half_config(path: str | Path, part: str, *, weights: str = WEIGHTS) -> dict[str, Any]:
    """config.json of the `part` half under `path`, with a clear error when the half (its config and
    its `weights` file: safetensors, or ONNX_FILE for an ONNX download) is missing."""
    half = Path(path) / part
    if not (half / CONFIG).is_file() or not (half / weights).is_file():
        raise VortexError(
            f"'{path}' has no {part} half ({part}/{CONFIG} and {part}/{weights}); write the halves "
            f"with `vortex publish DIR --split K` or save_checkpoint(..., split=K)"
        )
    config = read_json_object(half / CONFIG)
    if config.get("model_type") != "vortex" or config.get("part") != part or "split" not in config:
        raise VortexError(f"'{half / CONFIG}' is not the config of a vortex {part} half")
    return config
