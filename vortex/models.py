"""Built-in architectures, custom `package.module:function` models, transformers image classifiers, and the
spec that rebuilds them."""

from __future__ import annotations

import copy
import importlib
import inspect
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from vortex.core.splits import SplitModel, Splittable
from vortex.errors import VortexError

BUILTIN_MODELS = ("cnn", "resnet18", "vgg16_bn", "vit")
# a transformers AutoModelForImageClassification, rebuilt from its config (options["config"]) by transformers' own
# classes, never remote code; split with forward hooks (vortex.core.hooks)
TRANSFORMERS = "transformers"
# built-ins whose weights are key for key a transformers model: their config.json is that model's config
TRANSFORMERS_CLASSES = {"vit": "ViTForImageClassification"}
log = logging.getLogger(__name__)


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model without running remote code."""

    architecture: str
    num_classes: int
    in_channels: int
    image_size: int
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        """The spec a config records; KeyError, TypeError or ValueError for one that describes no model."""
        arch, options = d["architecture"], d.get("options", {})
        if not isinstance(arch, str):
            raise TypeError(f"architecture must be a model name, got {arch!r}")
        if not isinstance(options, dict):
            raise TypeError(f"options must be a mapping, got {options!r}")
        sizes = {key: int(d[key]) for key in ("num_classes", "in_channels", "image_size")}
        for key, value in sizes.items():
            if value < 1:
                raise ValueError(f"{key} must be at least 1, got {value}")
        return cls(arch, **sizes, options=dict(options))


def _conv_block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def cnn(num_classes: int, in_channels: int = 1, width: int = 32) -> nn.Sequential:
    """A compact 8-stage CNN: six conv blocks, a hidden linear layer and the logits (8 splits)."""
    w = width
    return nn.Sequential(
        OrderedDict(
            [
                ("block1", _conv_block(in_channels, w, pool=False)),
                ("block2", _conv_block(w, w, pool=True)),
                ("block3", _conv_block(w, 2 * w, pool=False)),
                ("block4", _conv_block(2 * w, 2 * w, pool=True)),
                ("block5", _conv_block(2 * w, 4 * w, pool=False)),
                ("block6", nn.Sequential(_conv_block(4 * w, 4 * w, pool=False), nn.AdaptiveAvgPool2d(1), nn.Flatten())),
                ("fc", nn.Sequential(nn.Linear(4 * w, 4 * w), nn.ReLU())),
                ("logits", nn.Linear(4 * w, num_classes)),
            ]
        )
    )


def resnet18(num_classes: int, in_channels: int = 3) -> nn.Module:
    """torchvision ResNet-18 for small inputs: 3x3 stride-1 stem, no max-pool."""
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def vgg16_bn(num_classes: int, in_channels: int = 3, width: int = 64) -> nn.Module:
    """torchvision VGG16-BN for inputs of 32x32 and up: global pooling and a small classifier.

    `width` is the first stage's channel count (torchvision's 64); the others scale with it
    (e.g. 16: a quarter of the channels, about 1/16 of the compute, the same 16 splits).
    """
    from torchvision.models.vgg import VGG, cfgs, make_layers

    if width < 1:
        raise VortexError(f"vgg16_bn width must be at least 1, got {width}")
    cfg = [c if c == "M" else c * width // 64 for c in cfgs["D"]]
    model = VGG(make_layers(cfg, batch_norm=True), num_classes=num_classes)
    model.features[0] = nn.Conv2d(in_channels, cfg[0], 3, padding=1)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    hidden = cfg[-2] // 2
    model.classifier = nn.Sequential(
        nn.Linear(cfg[-2], hidden),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(hidden, num_classes),
    )
    return model


class ViTClassifier(nn.Module):
    """transformers ViTForImageClassification, unrolled so each encoder layer is a split point.

    It holds the same `vit` and `classifier` modules (same state-dict keys) and returns logits.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        patch_size: int = 4,
        hidden_size: int = 64,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 4,
        intermediate_size: int = 128,
    ):
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        self.config = ViTConfig(
            image_size=image_size,
            patch_size=patch_size,
            num_channels=in_channels,
            hidden_size=hidden_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size,
            num_labels=num_classes,
        )
        hf = ViTForImageClassification(self.config)
        self.vit = hf.vit
        self.classifier = hf.classifier

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vit.embeddings(pixel_values)
        for layer in self.vit.layers:
            hidden = layer(hidden)
        hidden = self.vit.layernorm(hidden)
        return self.classifier(hidden[:, 0])


def vit(num_classes: int, in_channels: int, image_size: int, **options: Any) -> ViTClassifier:
    """A small ViT (6 layers, width 64, patch 4) built offline from a `ViTConfig`."""
    return ViTClassifier(num_classes, in_channels, image_size, **options)


def transformers_config(model: nn.Module, spec: ModelSpec) -> dict[str, Any] | None:
    """The transformers config.json of a transformers model or a built-in in TRANSFORMERS_CLASSES (what
    `save_pretrained` of that transformers class writes), or None for the others."""
    if spec.architecture not in (*TRANSFORMERS_CLASSES, TRANSFORMERS):
        return None
    config = copy.deepcopy(model.config)
    config.architectures = [TRANSFORMERS_CLASSES.get(spec.architecture, type(model).__name__)]
    return config.to_diff_dict()


def hf_config(values: dict[str, Any], source: str) -> Any:
    """The transformers config `values` describe (a config.json), built by transformers' own config class of
    its model_type: `auto_map` (code a repo names) is ignored."""
    from transformers import AutoConfig

    values = {k: v for k, v in values.items() if k != "auto_map"}
    model_type = values.pop("model_type", None)
    try:
        return AutoConfig.for_model(model_type, **values)
    except (ValueError, TypeError, KeyError) as exc:
        raise VortexError(
            f"{source} describes no transformers model vortex can build (model_type {model_type!r}: "
            f"{str(exc).splitlines()[0]}); vortex builds transformers' own image classifiers, never code from a repo"
        ) from None


def transformers_model(spec: ModelSpec) -> nn.Module:
    """The (untrained) AutoModelForImageClassification of spec.options["config"], in float32."""
    from transformers import AutoModelForImageClassification

    config = hf_config(spec.options["config"], f"the model config ({spec.architecture})")
    if config.num_labels != spec.num_classes:
        raise VortexError(
            f"the model config has {config.num_labels} labels but the spec {spec.num_classes} classes; save it again"
        )
    try:
        return AutoModelForImageClassification.from_config(config, dtype=torch.float32)
    except ValueError as exc:
        raise VortexError(
            f"{type(config).__name__} is not the config of an image classifier: {str(exc).splitlines()[0]}"
        ) from None


def input_size(architecture: str, data_size: int) -> int:
    """The image side a built-in runs at for data of side `data_size` (custom models: unchanged)."""
    if architecture == "vgg16_bn":
        return max(32, data_size)  # five 2x2 max-pools
    if architecture == "vit":
        size = max(16, data_size)
        return -(-size // 4) * 4  # a whole number of 4x4 patches
    return data_size


def split_model(model: nn.Module, spec: ModelSpec, split_points: Sequence[str] | None = None) -> Splittable:
    """Wrap a model of `spec` in a SplitModel (a transformers model: a HookSplitModel) with the split points
    its architecture calls for."""
    if spec.architecture == TRANSFORMERS:  # torch.fx cannot trace them: forward hooks
        from vortex.core.hooks import HookSplitModel

        device = next(model.parameters()).device
        example = torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size, device=device)
        try:
            return HookSplitModel(model, example, split_points)
        except (RuntimeError, ValueError) as exc:
            raise VortexError(
                f"{type(model).__name__} cannot run on images of shape {list(example.shape[1:])}: "
                f"{str(exc).splitlines()[0]}; give --image-size / --channels the model was made for"
            ) from None
    if spec.architecture == "vit":
        from transformers.models.vit.modeling_vit import ViTEmbeddings, ViTLayer

        names = ["vit.embeddings", *[f"vit.layers.{i}" for i in range(len(model.vit.layers))], "classifier"]
        return SplitModel(model, split_points or names, leaf_types=(ViTEmbeddings, ViTLayer))
    if split_points:
        return SplitModel(model, split_points)
    if spec.architecture == "cnn":
        return SplitModel(model, leaf_depth=1)  # one split per stage
    return SplitModel(model)  # torchvision-style: found with torch.fx


def is_entry_point(name: str) -> bool:
    """Whether a model name is a `package.module:function` entry point (code to import)."""
    return ":" in name


def check_options(architecture: str, options: dict[str, Any]) -> None:
    """Refuse `model_options` a built-in does not take, listing those it does."""
    builder = {"cnn": cnn, "resnet18": resnet18, "vgg16_bn": vgg16_bn, "vit": ViTClassifier.__init__}[architecture]
    fixed = {"self", "num_classes", "in_channels", "image_size"}
    allowed = [n for n in inspect.signature(builder).parameters if n not in fixed]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise VortexError(
            f"model_options {unknown} are not options of {architecture}; it takes {', '.join(allowed) or 'none'}"
        )


def build_model(spec: ModelSpec, *, trust_code: Sequence[str] = ()) -> nn.Module:
    """Build the (untrained) model a spec describes.

    A `package.module:function` architecture is imported only when its name is in
    `trust_code`: names the user gave on the command line or in code, never ones read from a
    file (config.json, a recipe, a download), as transformers' `trust_remote_code`.
    """
    arch = spec.architecture
    if arch in BUILTIN_MODELS:
        check_options(arch, spec.options)
    if arch == TRANSFORMERS:
        if set(spec.options) != {"config"} or not isinstance(spec.options["config"], dict):
            raise VortexError(f"a {TRANSFORMERS} model's options must be {{'config': a transformers config}}")
        return transformers_model(spec)
    if arch == "cnn":
        return cnn(spec.num_classes, spec.in_channels, **spec.options)
    if arch == "resnet18":
        return resnet18(spec.num_classes, spec.in_channels, **spec.options)
    if arch == "vgg16_bn":
        return vgg16_bn(spec.num_classes, spec.in_channels, **spec.options)
    if arch == "vit":
        return vit(spec.num_classes, spec.in_channels, spec.image_size, **spec.options)
    if is_entry_point(arch):
        if arch not in trust_code:
            raise VortexError(
                f"the model config names code to import ('{arch}'); vortex never imports code named by "
                f"a file. If you trust that function, say so: --trust-code {arch} on the command "
                f"line, or trust_code=['{arch}'] in Python"
            )
        return _custom_model(arch, spec)
    raise VortexError(
        f"unknown model '{arch}': use a built-in ({', '.join(BUILTIN_MODELS)}), a directory written by "
        "vortex, or 'package.module:function' returning an nn.Module"
    )


def _custom_model(entry: str, spec: ModelSpec) -> nn.Module:
    module_name, _, func_name = entry.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise VortexError(
            f"cannot load model '{entry}': {exc}. Check that '{module_name}' is importable "
            f"(on PYTHONPATH) and defines '{func_name}'"
        ) from None
    offered = {"num_classes": spec.num_classes, "in_channels": spec.in_channels, "image_size": spec.image_size}
    params = inspect.signature(func).parameters  # only what the function names (and the user's options)
    try:
        model = func(**{k: v for k, v in offered.items() if k in params}, **spec.options)
    except TypeError as exc:
        raise VortexError(f"'{entry}' cannot be called with options {spec.options}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise VortexError(f"'{entry}' returned {type(model).__name__}, not a torch.nn.Module")
    _adapt_input(model, spec.in_channels, entry)
    _adapt_head(model, spec, entry)
    return model


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def _adapt_input(model: nn.Module, channels: int, entry: str) -> None:
    """Give the first conv layer `channels` inputs (summing or repeating its filters), saying so."""
    name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is None or conv.in_channels == channels or conv.groups != 1:
        return
    new = nn.Conv2d(
        channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        weight = conv.weight.sum(1, keepdim=True) if channels == 1 else conv.weight.mean(1, keepdim=True)
        new.weight.copy_(weight.repeat(1, channels, 1, 1) if channels > 1 else weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _replace(model, name, new)
    log.warning(
        "%s: first conv layer '%s' took %d channels; adapted to the data's %d", entry, name, conv.in_channels, channels
    )


def _adapt_head(model: nn.Module, spec: ModelSpec, entry: str) -> None:
    """Replace the last linear layer when the model's output width is not the class count, saying so."""
    shape = (spec.in_channels, spec.image_size, spec.image_size)
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *shape))
    except RuntimeError as exc:  # e.g. a linear layer sized for other images
        raise VortexError(
            f"'{entry}' cannot run on the data's images of shape {shape}: {str(exc).splitlines()[0]}; give it a "
            "model for that shape, or set image_size / channels in the recipe (--image-size / --channels)"
        ) from None
    model.train()
    width = out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() == 2 else None
    if width == spec.num_classes:
        return
    name, head = next(
        ((n, m) for n, m in reversed(list(model.named_modules())) if isinstance(m, nn.Linear)), (None, None)
    )
    if head is None or head.out_features != width:
        raise VortexError(
            f"'{entry}' gives outputs of shape {tuple(out.shape[1:])}, not {spec.num_classes} class "
            "scores, and has no final linear layer vortex could resize"
        )
    _replace(model, name, nn.Linear(head.in_features, spec.num_classes, bias=head.bias is not None))
    log.warning(
        "%s: head '%s' had %d outputs; replaced by a new one for the data's %d classes",
        entry,
        name,
        width,
        spec.num_classes,
    )
