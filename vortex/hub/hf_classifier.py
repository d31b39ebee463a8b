"""A transformers image classifier as a vortex model: a directory written by `save_pretrained` or by
`transformers.Trainer` (its output_dir or a checkpoint-N in it), or such a Hub repo once downloaded.

    vortex probe --model runs/trainer/checkpoint-500 --dataset digits --out runs/probe

The directory holds config.json (a transformers config whose model_type is not vortex's) and
model.safetensors (or sharded safetensors); pickled weights (pytorch_model.bin) are never loaded and
no code a config names runs (`auto_map`, trust_remote_code). vortex feeds the model pixels in [0, 1],
with config.json's num_channels, without the image processor's mean / std normalisation (fine-tune
it with `vortex train` to adapt), at a side of: --image-size, else config.json's image_size, else
preprocessor_config.json's size, else the input shape a VortexCallback recorded, else the data's.
When the data has another number of classes than config.json's num_labels, the head is replaced by
a new one (with a warning). Its split points are those a VortexCallback recorded in vortex.json,
else the forward-hook defaults (vortex.core.hooks).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vortex.errors import VortexError
from vortex.hub.checkpoint import save_checkpoint
from vortex.hub.layout import CONFIG, WEIGHTS, model_description, read_json_object, read_meta
from vortex.models import TRANSFORMERS, ModelSpec, hf_config, split_model

log = logging.getLogger(__name__)

SHARDS_INDEX = "model.safetensors.index.json"  # sharded safetensors weights
PREPROCESSOR = "preprocessor_config.json"  # the image processor's settings, written beside the model


def is_transformers_model(path: str | Path) -> bool:
    """Whether `path` is a directory holding a transformers model and no vortex checkpoint: a config.json
    with a model_type other than vortex's, and no model description in vortex.json."""
    path = Path(path)
    if not (path / CONFIG).is_file() or model_description(path):
        return False
    return isinstance(read_json_object(path / CONFIG).get("model_type"), str)


def check_safetensors(path: Path, source: str) -> None:
    """Refuse a model directory without safetensors weights, naming the pickle files it has instead."""
    if (path / WEIGHTS).is_file() or (path / SHARDS_INDEX).is_file():
        return
    pickled = sorted(p.name for p in path.glob("*model*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    instead = f" (only {', '.join(pickled[:3])})" if pickled else ""
    raise VortexError(
        f"'{source}' holds no {WEIGHTS}{instead}; vortex loads weights from safetensors only, never pickle files: "
        "save the model with save_pretrained (safetensors is its default)"
    )


def _side(size: Any) -> int | None:
    """The side of a square image size as configs write it: 32, [32, 32], {"height": 32, "width": 32}, ..."""
    if isinstance(size, dict):
        size = size.get("shortest_edge") or [size.get("height"), size.get("width")]
    if isinstance(size, (list, tuple)):
        size = size[0] if len(set(size)) == 1 else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def model_image_size(path: Path, config: Any) -> int | None:
    """The image side the model was made for: config.json's image_size, else its image processor's size, else
    the input shape a VortexCallback recorded in vortex.json."""
    processor = read_json_object(path / PREPROCESSOR) if (path / PREPROCESSOR).is_file() else {}
    recorded = read_meta(path).get("input_shape")
    recorded = recorded[-1] if isinstance(recorded, list) and recorded else None
    sizes = (getattr(config, "image_size", None), processor.get("crop_size"), processor.get("size"), recorded)
    return next((side for side in map(_side, sizes) if side), None)


def transformers_spec(
    path: str | Path,
    *,
    num_classes: int,
    data_size: int | None,
    image_size: int | None = None,
    channels: int | None = None,
    source: str | None = None,
) -> ModelSpec:
    """The spec of the transformers model in `path` for data of `num_classes` classes (its head replaced, with a
    warning, when config.json has another num_labels); image side as the module docstring says."""
    from transformers import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    path, source = Path(path), source or str(path)
    config = hf_config(read_json_object(path / CONFIG), f"'{path / CONFIG}'")
    if type(config) not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING:
        raise VortexError(
            f"'{source}' is a {config.model_type} model, which transformers has no image classifier for "
            "(AutoModelForImageClassification); give an image classification model"
        )
    config.architectures = [MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[type(config)].__name__]  # what vortex builds
    check_safetensors(path, source)
    model_channels = int(getattr(config, "num_channels", 3))
    if channels and channels != model_channels:
        raise VortexError(
            f"'{source}' takes {model_channels}-channel images (config.json num_channels); drop --channels "
            f"{channels}: vortex converts the data's images to {model_channels} channels"
        )
    size = image_size or model_image_size(path, config) or data_size
    if size is None:
        raise VortexError(
            f"'{source}' does not say its image size (no image_size in {CONFIG}, no {PREPROCESSOR}); "
            f"add image_size to its {CONFIG}"
        )
    if config.num_labels != num_classes:
        log.warning(
            "%s: head had %d labels; replaced by a new one for the data's %d classes",
            source,
            config.num_labels,
            num_classes,
        )
        config.num_labels = num_classes
    return ModelSpec(TRANSFORMERS, num_classes, model_channels, size, {"config": config.to_diff_dict()})


def load_transformers(path: str | Path, spec: ModelSpec, source: str | None = None) -> nn.Module:
    """The model in `path` with its safetensors weights, built as `spec` says (a new head for other classes),
    in float32; tensors its weights lack start untrained, with a warning naming them."""
    from transformers import AutoModelForImageClassification

    source = source or str(path)
    check_safetensors(Path(path), source)
    config = hf_config(spec.options["config"], f"'{source}'")
    try:
        model, info = AutoModelForImageClassification.from_pretrained(
            str(path),
            config=config,
            use_safetensors=True,
            trust_remote_code=False,
            ignore_mismatched_sizes=True,
            output_loading_info=True,
            dtype=torch.float32,
        )
    except (OSError, ValueError) as exc:
        raise VortexError(
            f"cannot load '{source}' as a transformers image classifier: {str(exc).splitlines()[0]}"
        ) from None
    missing = sorted(info["missing_keys"])
    if missing:
        log.warning("%s: %d tensors are not in its weights and start untrained: %s", source, len(missing), missing[:5])
    return model


def recorded_split_points(path: str | Path) -> list[str] | None:
    """The split points a VortexCallback recorded in the directory's vortex.json, if any."""
    names = read_meta(path).get("splits")
    return names if isinstance(names, list) and names and all(isinstance(n, str) for n in names) else None


def to_checkpoint(path: str | Path, out: str | Path, *, split: int | str | None = None) -> Path:
    """Write the transformers model in `path` as a vortex checkpoint in `out`: its weights and config, vortex.json
    with what a VortexCallback recorded (profile, GPZ, controller), halves at `split` (default: that GPZ)."""
    path = Path(path)
    num_labels = hf_config(read_json_object(path / CONFIG), f"'{path / CONFIG}'").num_labels
    spec = transformers_spec(path, num_classes=num_labels, data_size=None)
    model = load_transformers(path, spec)
    sm = split_model(model, spec, recorded_split_points(path))
    kept = ("profile", "gpz", "target_gpz", "reached_gpz", "target_reached", "controller")
    meta = {k: v for k, v in read_meta(path).items() if k in kept}
    return save_checkpoint(out, model, spec, [s.name for s in sm.splits], meta=meta, split=split)
