"""The files of a checkpoint directory (and Hub repo), and readers that check them.

model.safetensors   full weights (metadata: vortex_version, gpz)
config.json         enough to rebuild the model without remote code (model_type "vortex"); for a built-in
                    that is key for key a transformers model (vit), that model's transformers config instead,
                    so `AutoModelForImageClassification.from_pretrained(DIR)` loads it
vortex.json         splits, profile, GPZ, recipe, controller history, attack summary; beside a transformers
                    config.json, also vortex's own model description (under "config")
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
META_CONFIG = "config"  # the key of vortex.json holding the model description beside a transformers config.json
ONNX_FILE = "model.onnx"  # a half (or the whole model) exported by `vortex export`
PTE_FILE = "model.pte"  # the same as an ExecuTorch program (`vortex export --format pte`)
# every file of one checkpoint, replaced together when it is saved again (what was measured on older
# weights goes with them); training state, logs, the baseline run and best-point weights are not in it
CHECKPOINT_FILES = (
    WEIGHTS,
    CONFIG,
    META,
    CARD,
    *PARTS,
    ONNX_FILE,
    PTE_FILE,
    "profile.json",
    "profile.png",
    "vortex.png",
    "privacy",
    "attack.json",
    "attack.png",
    "attack",
)


def is_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a directory holding a vortex checkpoint."""
    path = Path(path)
    return (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def gpz_index(meta: dict[str, Any]) -> int | None:
    """The GPZ split recorded in vortex.json (top level or inside the profile), if any."""
    gpz = meta.get("gpz") or meta.get("profile", {}).get("gpz") or {}
    return gpz.get("index")


def read_config(path: str | Path) -> dict[str, Any]:
    """The checkpoint's model description (see `model_description`), with a clear error when `path` is
    not a checkpoint."""
    path = Path(path)
    if not is_checkpoint(path):
        raise VortexError(
            f"'{path}' is not a vortex checkpoint: it needs {CONFIG} and {WEIGHTS}. "
            "Write one with `vortex train --output_dir DIR`"
        )
    config = model_description(path)
    if not config:
        raise VortexError(
            f"'{path / CONFIG}' is not a vortex config and {META} holds no model description ('{META_CONFIG}'); "
            "the checkpoint is incomplete: save it again"
        )
    return config


def model_description(path: str | Path) -> dict[str, Any]:
    """What rebuilds the model (model_type "vortex": architecture, shapes, options, split points, halves'
    hashes): config.json, or vortex.json's "config" when config.json is a transformers config; {} if neither."""
    path = Path(path)
    config = read_json_object(path / CONFIG) if (path / CONFIG).is_file() else {}
    if config.get("model_type") == "vortex":
        return config
    return read_meta(path).get(META_CONFIG) or {}


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
    problem = _split_problem(config["split"]) or _names_problem(config.get("split_points"))
    if problem:
        raise VortexError(f"'{half / CONFIG}' is damaged: {problem}; download or save the checkpoint again")
    return config


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _split_problem(split: Any) -> str | None:
    """What is wrong with a half config's `split` record (index, name, shapes, payload), if anything."""
    if not isinstance(split, dict):
        return f"its split is {split!r}, not a record of the split"
    shapes = ("input_shape", "z_shape", "output_shape")
    if not _whole(split.get("index")) or not isinstance(split.get("name"), str) or not _whole(split.get("z_bytes")):
        return f"its split needs a whole-number index and z_bytes and a name, got {split!r:.120}"
    bad = [k for k in shapes if not isinstance(split.get(k), list) or not all(_whole(n) for n in split[k])]
    return f"its split's {', '.join(bad)} must be lists of whole numbers" if bad else None


def _names_problem(names: Any) -> str | None:
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return None
    return f"its split_points must be a list of module names, got {names!r:.80}"
