"""Resolve the `--model` argument: a built-in, `package.module:function`, a vortex checkpoint, or a transformers
image classifier (a directory written by save_pretrained or transformers.Trainer, or a Hub repo id)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model as load_safetensors
from torch import nn

from vortex.core.splits import Splittable
from vortex.errors import HubError, VortexError
from vortex.hub.checkpoint import file_sha256, load_checkpoint
from vortex.hub.hf_classifier import is_transformers_model, load_transformers, recorded_split_points, transformers_spec
from vortex.hub.layout import is_checkpoint
from vortex.hub.repo import fetch_model, is_repo_id
from vortex.models import BUILTIN_MODELS, ModelSpec, build_model, input_size, is_entry_point, split_model


@dataclass
class LoadedModel:
    """A model ready to profile: its splits, the spec that rebuilds it and a display name."""

    split: Splittable
    spec: ModelSpec
    name: str

    @property
    def model(self) -> nn.Module:
        return self.split.model


def resolve_spec(
    arg: str,
    *,
    num_classes: int,
    data_channels: int,
    data_size: int,
    image_size: int | None = None,
    channels: int | None = None,
    options: dict | None = None,
) -> ModelSpec:
    """The spec of a fresh built-in or custom model for data of the given shape."""
    if arg not in BUILTIN_MODELS and ":" not in arg:
        raise VortexError(
            f"unknown model '{arg}': use a built-in ({', '.join(BUILTIN_MODELS)}), a directory "
            "written by vortex, a transformers image classifier (directory or Hub repo id), or "
            "'package.module:function' returning an nn.Module"
        )
    size = image_size or (input_size(arg, data_size) if arg in BUILTIN_MODELS else data_size)
    return ModelSpec(arg, num_classes, channels or data_channels, size, dict(options or {}))


def load_model(
    arg: str,
    *,
    num_classes: int,
    data_channels: int,
    data_size: int,
    image_size: int | None = None,
    channels: int | None = None,
    split_points: Sequence[str] | None = None,
    trust_code: Sequence[str] = (),
) -> LoadedModel:
    """Build or load the model named by `arg` (a Hub repo id is downloaded) and find its split points.

    `arg` itself comes from the user, so a `package.module:function` there is trusted; one
    named by a checkpoint's config.json only when it is in `trust_code`.
    """
    path = Path(arg)
    if is_repo_id(arg):
        try:
            path = fetch_model(arg, trust_code=trust_code)
        except HubError as exc:
            raise HubError(f"'{arg}' is not a local directory, and as a Hub repo id: {exc}") from None
    if is_transformers_model(path):
        spec = transformers_spec(
            path, num_classes=num_classes, data_size=data_size, image_size=image_size, channels=channels, source=arg
        )
        model = load_transformers(path, spec, arg)
        return LoadedModel(split_model(model, spec, split_points or recorded_split_points(path)), spec, arg)
    if path.is_dir():
        if not is_checkpoint(path):
            raise VortexError(
                f"'{arg}' is a directory but not a vortex checkpoint (no config.json and "
                "model.safetensors); pass a checkpoint written by `vortex train`"
            )
        model, spec, saved_points = load_checkpoint(path, trust_code=trust_code)
        if spec.num_classes != num_classes:
            raise VortexError(
                f"model '{arg}' has {spec.num_classes} outputs but the data set has "
                f"{num_classes} classes; profile it on data with the classes it was trained on"
            )
        return LoadedModel(split_model(model, spec, split_points or saved_points or None), spec, arg)
    spec = resolve_spec(
        arg,
        num_classes=num_classes,
        data_channels=data_channels,
        data_size=data_size,
        image_size=image_size,
        channels=channels,
    )
    return LoadedModel(split_model(build_model(spec, trust_code=[arg]), spec, split_points), spec, arg)


def transformers_source(arg: str) -> Path | None:
    """The directory of the transformers image classifier `arg` names for `vortex train` (a directory, or a Hub
    repo id, downloaded); None for a built-in, an entry point or a name that is neither a path nor a repo id."""
    if arg in BUILTIN_MODELS or is_entry_point(arg) or not (Path(arg).exists() or is_repo_id(arg)):
        return None
    path = fetch_model(arg) if is_repo_id(arg) else Path(arg)
    if not is_transformers_model(path):
        raise VortexError(
            f"--model '{arg}' is not a transformers image classifier (config.json and model.safetensors); to start "
            "from a vortex checkpoint, give its architecture as --model and its weights as --init_weights "
            "DIR/model.safetensors"
        )
    return path


def load_init_weights(model: nn.Module, path: str | Path) -> str:
    """Load a local safetensors file into `model` (every tensor, each of the model's shape); return its sha256.

    Missing or unexpected tensors, other shapes, or a file that is not safetensors: one line naming the first few.
    """
    path = Path(path)
    if not path.is_file():
        raise VortexError(f"--init_weights {path}: no such file; give a .safetensors file of the model's weights")
    if path.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"):
        raise VortexError(f"--init_weights {path} is a pickle file; vortex loads safetensors only (save_file)")
    try:
        missing, unexpected = load_safetensors(model, str(path), strict=False)
    except SafetensorError as exc:
        raise VortexError(f"--init_weights {path} is not a readable safetensors file ({exc})") from None
    except RuntimeError as exc:  # tensors of other shapes
        keys = re.findall(r"size mismatch for ([^:]+):", str(exc))
        raise VortexError(
            f"--init_weights {path} does not fit the model: other shapes for {', '.join(keys[:5])}"
            + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            + "; give weights of this architecture and class count"
        ) from None
    if missing or unexpected:
        raise VortexError(
            f"--init_weights {path} does not fit the model: missing {sorted(missing)[:5]} ({len(missing)} in all), "
            f"unexpected {sorted(unexpected)[:5]} ({len(unexpected)} in all); give weights of this architecture"
        )
    return file_sha256(path)
