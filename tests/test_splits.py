"""Split points: edge + cloud equals the full model at every split of every built-in."""

import pytest
import torch
from torch import nn

from vortex.core.splits import SplitModel
from vortex.errors import SplitError, VortexError
from vortex.models import BUILTIN_MODELS, ModelSpec, build_model, input_size, split_model

MIN_SPLITS = {"cnn": 6, "resnet18": 8, "vgg16_bn": 8, "vit": 8}


@pytest.mark.parametrize("arch", BUILTIN_MODELS)
@pytest.mark.parametrize("channels,size", [(1, 8), (3, 28)])
def test_edge_then_cloud_equals_model(arch, channels, size):
    torch.manual_seed(0)
    spec = ModelSpec(arch, 7, channels, input_size(arch, size))
    model = build_model(spec).eval()
    sm = split_model(model, spec)
    assert sm.num_splits >= MIN_SPLITS[arch]
    x = torch.rand(3, channels, spec.image_size, spec.image_size)
    with torch.no_grad():
        full = model(x)
        assert full.shape == (3, 7)
        out, zs = sm.forward_all(x)
        torch.testing.assert_close(out, full)
        for s, z in zip(sm.splits, zs):
            edge_z = sm.edge(s.index)(x)
            torch.testing.assert_close(edge_z, z)
            torch.testing.assert_close(sm.cloud(s.index)(edge_z), full, rtol=1e-4, atol=1e-5)


def test_vit_splits_are_embeddings_and_each_layer():
    spec = ModelSpec("vit", 10, 1, 16)
    sm = split_model(build_model(spec), spec)
    names = [s.name for s in sm.splits]
    assert names == ["vit.embeddings", *[f"vit.layers.{i}" for i in range(6)], "classifier"]


def test_edge_params_grow_and_describe_payload():
    spec = ModelSpec("cnn", 10, 1, 8)
    model = build_model(spec)
    sm = split_model(model, spec)
    info = sm.describe(torch.rand(2, 1, 8, 8))
    params = [d["edge_params"] for d in info]
    assert params == sorted(params) and params[-1] == sum(p.numel() for p in model.parameters())
    assert info[0]["shape"] == [32, 8, 8] and info[0]["bytes"] == 4 * 32 * 8 * 8
    assert info[0]["edge_params"] == 32 * 9 + 2 * 32  # conv without bias + batch-norm affine


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        return self.head(self.b(h) + h)


def test_named_split_points_and_skip_connection_refused():
    sm = SplitModel(Residual(), ["a", "add", "head"])
    x = torch.randn(5, 4)
    for k in (1, 2, 3):
        torch.testing.assert_close(sm.cloud(k)(sm.edge(k)(x)), sm.model(x))
    with pytest.raises(SplitError, match="more than one tensor crosses"):
        SplitModel(Residual(), ["b"])
    with pytest.raises(SplitError, match="does not exist.*Points where it can be split"):
        SplitModel(Residual(), ["nope"])


def test_resolve_by_name_and_range():
    sm = SplitModel(Residual(), ["a", "add", "head"])
    assert sm.resolve("add") == 2 and sm.resolve("3") == 3
    with pytest.raises(SplitError, match="valid splits are 1..3"):
        sm.resolve(4)
    with pytest.raises(SplitError, match="splits are: 1=a"):
        sm.resolve("missing")


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.fc(x)
        return -self.fc(x)


def test_untraceable_model_is_a_clear_error():
    with pytest.raises(SplitError, match="cannot split Untraceable: torch.fx could not trace"):
        SplitModel(Untraceable())


def test_unknown_model_name():
    with pytest.raises(VortexError, match="unknown model 'alexnet'"):
        build_model(ModelSpec("alexnet", 10, 1, 8))


PINNED = {
    "cnn": ["block1", "block2", "block3", "block4", "block5", "block6", "fc", "logits"],
    "resnet18": [
        "maxpool",
        "layer1.0",
        "layer1.1",
        "layer2.0",
        "layer2.1",
        "layer3.0",
        "layer3.1",
        "layer4.0",
        "flatten",
        "fc",
    ],
    "vgg16_bn": [
        "features.2",
        "features.6",
        "features.9",
        "features.13",
        "features.16",
        "features.19",
        "features.23",
        "features.26",
        "features.29",
        "features.33",
        "features.36",
        "features.39",
        "flatten",
        "classifier.2",
        "classifier.5",
        "classifier.6",
    ],
    "vit": ["vit.embeddings", *(f"vit.layers.{i}" for i in range(6)), "classifier"],
}


@pytest.mark.parametrize("arch", BUILTIN_MODELS)
def test_split_placement_of_every_builtin_is_pinned(arch):
    """Where the cuts fall is part of every saved profile and checkpoint: moving one must fail here."""
    spec = ModelSpec(arch, 10, 1, input_size(arch, 8))
    assert [s.name for s in split_model(build_model(spec), spec).splits] == PINNED[arch]
