"""Exact checks of split placement (vortex/core/splits.py) on small models, for `make mutation`.

Every model here runs in milliseconds: where the cuts fall (names, fx nodes, count), what edge and cloud
compute (against the layers applied by hand), the one-pass capture, the payload and parameter counts, and
every error message word for word.
"""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from vortex.core.splits import SplitModel, SplitPoint, describe_splits, evaluating, resolve_split
from vortex.errors import SplitError
from vortex.models import ModelSpec, build_model, split_model


def seq() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 2))


class Residual(nn.Module):
    """h = a(x) feeds both b and the sum: no cut between a's output and the add but right after a."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        return self.head(self.b(h) + h)


class Functional(nn.Module):
    """Follow-ups called as functions and methods, a parameter read at the start and used at the end."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 4 * 4, 6)
        self.mid = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)
        self.scale = nn.Parameter(torch.tensor([1.5, -2.0, 0.5]))

    def forward(self, x):
        s = self.scale  # a get_attr node early in the graph, used only by the last op
        h = torch.relu(self.conv(x))  # conv is followed by torch.relu: no cut after conv
        h = h.flatten(1)  # relu is followed by the flatten method: no cut after relu
        h = F.gelu(self.fc(h))  # fc is followed by F.gelu
        h = torch.sigmoid(self.mid(h))  # not a follow-up function: a cut after mid
        h = h.mean(dim=1, keepdim=True) * h  # h has two users: a cut after sigmoid
        return self.head(h) * s


def functional_reference(m: Functional, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The value after every layer of Functional, computed by hand."""
    v = {"conv": m.conv(x)}
    v["relu"] = torch.relu(v["conv"])
    v["flatten"] = v["relu"].reshape(len(x), -1)
    v["fc"] = m.fc(v["flatten"])
    v["gelu"] = F.gelu(v["fc"])
    v["mid"] = m.mid(v["gelu"])
    v["sigmoid"] = torch.sigmoid(v["mid"])
    v["mean"] = v["sigmoid"].mean(dim=1, keepdim=True)
    v["mul"] = v["mean"] * v["sigmoid"]
    v["head"] = m.head(v["mul"])
    v["mul_1"] = v["head"] * m.scale
    return v


def n_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def test_sequential_cuts_after_each_block_edge_and_cloud_match_the_layers():
    model = seq()
    sm = SplitModel(model)
    assert sm.splits == [SplitPoint(1, "1", "_1"), SplitPoint(2, "3", "_3"), SplitPoint(3, "4", "_4")]
    assert sm.num_splits == 3
    x = torch.randn(6, 4)
    h1 = torch.relu(model[0](x))
    h3 = torch.tanh(model[2](h1))
    out = model[4](h3)
    with torch.no_grad():
        for k, z in ((1, h1), (2, h3), (3, out)):
            torch.testing.assert_close(sm.edge(k)(x), z, rtol=0, atol=0)
            torch.testing.assert_close(sm.cloud(k)(z), out, rtol=0, atol=0)
        got, zs = sm.forward_all(x)
        torch.testing.assert_close(got, out, rtol=0, atol=0)
        assert len(zs) == 3
        for z, want in zip(zs, (h1, h3, out)):
            torch.testing.assert_close(z, want, rtol=0, atol=0)
        torch.testing.assert_close(sm(x), out, rtol=0, atol=0)
    assert [sm.edge_params(k) for k in (1, 2, 3)] == [
        n_params(model[0]),
        n_params(model[0], model[2]),
        n_params(model),
    ]
    assert [n_params(sm.cloud(k)) for k in (1, 2, 3)] == [n_params(model[2], model[4]), n_params(model[4]), 0]
    # the edge holds only its layers (not the unused rest of the model), and halves are built once
    assert set(dict(sm.edge(1).named_parameters())) == {"0.weight", "0.bias"}
    assert sm.edge(2) is sm.edge("2") and sm.cloud(2) is sm.cloud("2")
    # a name made of digits is read as an index: "3" is split 3 (named "4"), not the split named "3"
    assert sm.resolve("3") == 3
    assert sm.edge(1) is not sm.edge(2) and sm.cloud(1) is not sm.cloud(2)


def test_skip_connection_cuts_and_named_points():
    model = Residual()
    sm = SplitModel(model)
    assert [n.name for n in sm.graph.nodes] == ["x", "a", "b", "add", "head", "output"]
    assert sm.splits == [SplitPoint(1, "a", "a"), SplitPoint(2, "add", "add"), SplitPoint(3, "head", "head")]
    x = torch.randn(5, 4)
    h = model.a(x)
    s = model.b(h) + h
    out = model.head(s)
    with torch.no_grad():
        for k, z in ((1, h), (2, s), (3, out)):
            torch.testing.assert_close(sm.edge(k)(x), z, rtol=0, atol=0)
            torch.testing.assert_close(sm.cloud(k)(z), out, rtol=0, atol=0)
    named = SplitModel(Residual(), ["add"])
    assert named.splits == [SplitPoint(1, "add", "add")]
    with torch.no_grad():
        torch.testing.assert_close(named.edge(1)(x), s, rtol=0, atol=0)
    assert named.edge_params(1) == n_params(model.a, model.b)


def test_functional_follow_ups_and_a_constant_read_early():
    model = Functional()
    sm = SplitModel(model)
    assert [(s.name, s.node) for s in sm.splits] == [
        ("flatten", "flatten"),
        ("gelu", "gelu"),
        ("mid", "mid"),
        ("sigmoid", "sigmoid"),
        ("mul", "mul"),
        ("head", "head"),
        ("mul_1", "mul_1"),
    ]
    x = torch.randn(3, 1, 4, 4)
    ref = functional_reference(model, x)
    with torch.no_grad():
        out, zs = sm.forward_all(x)
        torch.testing.assert_close(out, ref["mul_1"], rtol=0, atol=0)
        for s, z in zip(sm.splits, zs):
            want = ref[s.name]
            torch.testing.assert_close(z, want, rtol=0, atol=0)
            torch.testing.assert_close(sm.edge(s.index)(x), want, rtol=0, atol=0)
            torch.testing.assert_close(sm.cloud(s.index)(want), ref["mul_1"], rtol=1e-6, atol=1e-6)
        # the parameter read before the first cut reaches the cloud as a constant, not as a second input
        assert [n.name for n in sm.cloud(1).graph.nodes if n.op == "placeholder"] == ["z"]
        tap = sm.tap([4, "mid"])
        got = tap(x)
        assert len(got) == 3
        for t, want in zip(got, (ref["mul_1"], ref["sigmoid"], ref["mid"])):
            torch.testing.assert_close(t, want, rtol=0, atol=0)
    # (`scale` is read before the first cut but used only by the cloud: no edge holds it)
    assert sm.edge_params(3) - sm.edge_params(1) == n_params(model.fc, model.mid)
    assert n_params(sm.cloud(3)) == n_params(model.head) + model.scale.numel()
    assert n_params(sm.cloud(2)) == n_params(model.mid, model.head) + model.scale.numel()
    # named cuts by module path, by fx node name, through a follow-up
    named = SplitModel(Functional(), ["conv", "relu", "flatten", "fc", "mul_1"])
    assert [(s.name, s.node) for s in named.splits] == [
        ("conv", "conv"),
        ("relu", "relu"),
        ("flatten", "flatten"),
        ("fc", "fc"),
        ("mul_1", "mul_1"),
    ]


def test_cnn_named_blocks_are_kept_whole():
    spec = ModelSpec("cnn", 3, 1, 8, {"width": 2})
    torch.manual_seed(3)
    model = build_model(spec).eval()
    auto = split_model(model, spec)
    assert [s.name for s in auto.splits] == ["block1", "block2", "block3", "block4", "block5", "block6", "fc", "logits"]
    sm = SplitModel(model, ["block2", "block4", "logits"])
    assert sm.splits == [
        SplitPoint(1, "block2", "block2"),
        SplitPoint(2, "block4", "block4"),
        SplitPoint(3, "logits", "logits"),
    ]
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        z2 = model.block2(model.block1(x))
        z4 = model.block4(model.block3(z2))
        torch.testing.assert_close(sm.edge(1)(x), z2, rtol=0, atol=0)
        torch.testing.assert_close(sm.edge(2)(x), z4, rtol=0, atol=0)
        torch.testing.assert_close(sm.cloud(2)(z4), model(x), rtol=0, atol=0)
    assert sm.edge_params(2) == n_params(model.block1, model.block2, model.block3, model.block4)
    # inside a block by its fx node name (block1.0 is the conv, node block1_0)
    inner = SplitModel(model, ["block1_0", "block1.2"])
    assert inner.splits == [SplitPoint(1, "block1.0", "block1_0"), SplitPoint(2, "block1.2", "block1_2")]
    with torch.no_grad():
        torch.testing.assert_close(inner.edge(2)(x), model.block1(x), rtol=0, atol=0)


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(x) * 2


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner, self.post = Inner(), nn.Linear(3, 3)

    def forward(self, x):
        return self.post(self.inner(x)) + 1


class Nested(nn.Module):
    """Three levels: `outer.inner.lin` and `outer.post`, then `head`."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.outer, self.head = Outer(), nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.outer(x))


@pytest.mark.parametrize(
    "kwargs,names",
    [
        ({"leaf_depth": 1}, ["outer", "head"]),
        ({"leaf_depth": 2}, ["outer.inner", "outer.post", "add", "head"]),
        ({"leaf_depth": 3}, ["outer.inner.lin", "mul", "outer.post", "add", "head"]),
        ({"leaf_depth": None}, ["outer.inner.lin", "mul", "outer.post", "add", "head"]),
        ({"leaf_depth": None, "leaf_types": (Inner,)}, ["outer.inner", "outer.post", "add", "head"]),
        ({"leaf_depth": 3, "leaf_types": (Outer,)}, ["outer", "head"]),
    ],
)
def test_leaf_depth_and_leaf_types_decide_what_is_traced_into(kwargs, names):
    sm = SplitModel(Nested(), **kwargs)
    assert [s.name for s in sm.splits] == names
    x = torch.randn(4, 3)
    with torch.no_grad():
        for s in sm.splits:
            torch.testing.assert_close(sm.cloud(s.index)(sm.edge(s.index)(x)), sm.model(x), rtol=0, atol=0)


def test_a_named_point_with_children_is_kept_whole_when_traced_to_the_basic_layers():
    model = Nested()
    sm = SplitModel(model, ["outer.inner", "head"])
    assert sm.splits == [SplitPoint(1, "outer.inner", "outer_inner"), SplitPoint(2, "head", "head")]
    x = torch.randn(4, 3)
    with torch.no_grad():
        torch.testing.assert_close(sm.edge(1)(x), model.outer.inner.lin(x) * 2, rtol=0, atol=0)


def test_named_points_trace_below_the_default_leaf_depth():
    model = Nested()
    sm = SplitModel(model, ["outer.inner.lin", "mul", "head"])
    assert sm.splits == [
        SplitPoint(1, "outer.inner.lin", "outer_inner_lin"),
        SplitPoint(2, "mul", "mul"),
        SplitPoint(3, "head", "head"),
    ]
    x = torch.randn(4, 3)
    with torch.no_grad():
        torch.testing.assert_close(sm.edge(1)(x), model.outer.inner.lin(x), rtol=0, atol=0)
        torch.testing.assert_close(sm.edge(2)(x), model.outer.inner.lin(x) * 2, rtol=0, atol=0)


class MethodTail(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.a, self.head = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.a(x).clamp(min=-0.5))


def test_a_method_that_is_not_a_follow_up_does_not_move_the_cut():
    model = MethodTail()
    sm = SplitModel(model)
    assert [s.name for s in sm.splits] == ["a", "clamp", "head"]
    x = torch.randn(4, 3)
    with torch.no_grad():
        torch.testing.assert_close(sm.edge(1)(x), model.a(x), rtol=0, atol=0)
        torch.testing.assert_close(sm.cloud(1)(model.a(x)), model(x), rtol=0, atol=0)


def test_resolve_split_by_name_node_digits_and_range():
    splits = [SplitPoint(1, "a.b", "a_b"), SplitPoint(2, "c", "c"), SplitPoint(3, "d", "d_node")]
    assert resolve_split(splits, "a.b") == 1 and resolve_split(splits, "a_b") == 1
    assert resolve_split(splits, "d_node") == 3 and resolve_split(splits, "d") == 3
    assert resolve_split(splits, "2") == 2 and resolve_split(splits, 3) == 3 and resolve_split(splits, 1) == 1
    for bad in (0, 4, "0", "4", -1):
        with pytest.raises(SplitError) as err:
            resolve_split(splits, bad)
        assert str(err.value) == f"split {int(bad)} does not exist: valid splits are 1..3"
    with pytest.raises(SplitError) as err:
        resolve_split(splits, "e")
    assert str(err.value) == "split 'e' does not exist; splits are: 1=a.b, 2=c, 3=d"
    sm = SplitModel(Residual())
    assert sm.resolve("add") == 2 and sm.resolve("3") == 3
    with pytest.raises(SplitError) as err:
        sm.resolve(0)
    assert str(err.value) == "split 0 does not exist: valid splits are 1..3"


def test_describe_gives_exact_shapes_payload_and_params_in_eval_mode():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    sm = SplitModel(model)
    running = model[1].running_mean.clone()
    model.train()
    info = sm.describe(torch.randn(7, 1, 6, 6))
    assert info == [
        {"index": 1, "name": "2", "shape": [48], "dim": 48, "bytes": 192, "edge_params": 27 + 3 + 6},
        {"index": 2, "name": "3", "shape": [5], "dim": 5, "bytes": 20, "edge_params": 36 + 48 * 5 + 5},
    ]
    assert describe_splits(sm, torch.randn(2, 1, 6, 6)) == info
    # described in eval mode (batch-norm statistics untouched), then back to training mode
    assert model.training and model[1].training
    torch.testing.assert_close(model[1].running_mean, running, rtol=0, atol=0)
    assert model[1].num_batches_tracked.item() == 0


def test_evaluating_restores_the_previous_mode_even_on_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    model.train()
    with evaluating(model) as m:
        assert m is model and not model.training and not model[1].training
    assert model.training is True and model[1].training is True
    model.eval()
    with evaluating(model):
        assert not model.training
    assert model.training is False
    model.train()
    with pytest.raises(KeyError), evaluating(model):
        raise KeyError("x")
    assert model.training is True and model[1].training is True


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x, y):
        return self.fc(x + y)


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(x), x


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def test_models_that_cannot_be_split_are_refused_with_exact_messages():
    with pytest.raises(SplitError) as err:
        SplitModel(TwoInputs())
    assert str(err.value) == (
        "cannot split TwoInputs: its forward takes 2 inputs; vortex splits models that take one image tensor"
    )
    with pytest.raises(SplitError) as err:
        SplitModel(TwoOutputs())
    assert str(err.value) == (
        "cannot split TwoOutputs: its forward returns a tuple, not one logits tensor; wrap it so it returns logits"
    )
    try:
        fx.Tracer().trace(Untraceable())
    except Exception as exc:  # noqa: BLE001 - the message fx gives, whatever its type
        first = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    with pytest.raises(SplitError) as err:
        SplitModel(Untraceable())
    assert str(err.value) == (
        f"cannot split Untraceable: torch.fx could not trace it ({first}). Make its forward free of "
        "data-dependent control flow, or wrap the untraceable parts in submodules"
    )
    assert err.value.__cause__ is None and err.value.__suppress_context__


class Raises(nn.Module):
    def forward(self, x):
        raise ValueError()


def test_an_untraceable_model_with_an_empty_message():
    with pytest.raises(SplitError) as err:
        SplitModel(Raises())
    assert str(err.value) == (
        "cannot split Raises: torch.fx could not trace it (ValueError: ). Make its forward free of "
        "data-dependent control flow, or wrap the untraceable parts in submodules"
    )


def test_named_points_that_do_not_exist_cross_a_skip_or_come_out_of_order():
    with pytest.raises(SplitError) as err:
        SplitModel(Residual(), ["b"])
    assert str(err.value) == (
        "cannot split Residual after 'b': more than one tensor crosses that cut (a skip connection or a "
        "second branch). Choose the end of the enclosing block instead"
    )
    with pytest.raises(SplitError) as err:
        SplitModel(Residual(), ["nope"])
    assert str(err.value) == (
        "split point 'nope' does not exist in Residual. Points where it can be split: a, add, head"
    )
    for names in (["head", "a"], ["a", "a"], ["a", "add", "a"]):
        with pytest.raises(SplitError) as err:
            SplitModel(Residual(), names)
        assert str(err.value) == f"split points must be distinct and given in execution order: {', '.join(names)}"
    # a placeholder is not a point to cut after
    with pytest.raises(SplitError, match="split point 'x' does not exist"):
        SplitModel(Residual(), ["x"])


def test_the_list_of_known_points_stops_at_30_sorted():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(35)])
    with pytest.raises(SplitError) as err:
        SplitModel(model, ["99"])
    known = sorted(str(i) for i in range(35))[:30]
    assert str(err.value) == (
        f"split point '99' does not exist in Sequential. Points where it can be split: {', '.join(known)}"
    )
    assert re.search(r": 0, 1, 10, 11,", str(err.value))


def test_the_edge_holds_only_the_parameters_it_uses():  # a weight read before the cut but used after it
    sm = SplitModel(Functional())
    assert set(dict(sm.edge(1).named_parameters())) == {"conv.weight", "conv.bias"}
