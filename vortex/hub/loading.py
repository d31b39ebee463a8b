"""Resolve the `--model` argument (built-in, checkpoint directory or `package.module:function`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from vortex.core.splits import SplitModel
from vortex.errors import HubError, VortexError
from vortex.hub.checkpoint import load_checkpoint
from vortex.hub.layout import is_checkpoint
from vortex.hub.repo import fetch_checkpoint, is_repo_id
from vortex.models import BUILTIN_MODELS, ModelSpec, build_model, input_size, split_model


@dataclass
class LoadedModel:
    """A model ready to profile: its splits, the spec that rebuilds it and a display name."""

    split: SplitModel
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
            "written by vortex, or 'package.module:function' returning an nn.Module"
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
            path = fetch_checkpoint(arg, trust_code=trust_code)
        except HubError as exc:
            raise HubError(f"'{arg}' is not a local directory, and as a Hub repo id: {exc}") from None
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
