"""Split points of a model, found with torch.fx where a single tensor crosses the cut.

`SplitModel(model)` numbers the splits 1..L in execution order. Split k: `edge(k)` runs the
model up to and including stage k and returns z; `cloud(k)` maps z to the model's output, so
`cloud(k)(edge(k)(x)) == model(x)`. `forward_all(x)` returns the output and every z in one pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import fx, nn

from vortex.errors import SplitError

# Cutting right before one of these would split a block in the middle (its pre-activation,
# pre-norm or pre-pooling value): the cut goes after them instead.
FOLLOW_UP_MODULES = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.Hardswish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Dropout,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
)
_FOLLOW_UP_FUNCTIONS = {
    torch.flatten,
    torch.relu,
    nn.functional.relu,
    nn.functional.gelu,
    nn.functional.dropout,
    nn.functional.adaptive_avg_pool2d,
}
_FOLLOW_UP_METHODS = {"flatten", "view", "reshape", "relu", "relu_"}


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode for the block, then restore its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def describe_splits(tapped: nn.Module, example: torch.Tensor) -> list[dict]:
    """Index, name, shape, dim, float32 payload bytes and edge params of every split of a model
    with `.model`, `.splits`, `.forward_all(x)` and `.edge_params(k)` (SplitModel or a hook tap)."""
    with torch.no_grad(), evaluating(tapped.model):
        _, zs = tapped.forward_all(example[:1])
    return [
        {
            "index": s.index,
            "name": s.name,
            "shape": list(z.shape[1:]),
            "dim": math.prod(z.shape[1:]),
            "bytes": 4 * math.prod(z.shape[1:]),
            "edge_params": tapped.edge_params(s.index),
        }
        for s, z in zip(tapped.splits, zs)
    ]


def resolve_split(splits: Sequence[SplitPoint], split: int | str) -> int:
    """The 1-based index of a split of `splits` given by index or by name, with a clear error."""
    if isinstance(split, str) and not split.isdigit():
        for s in splits:
            if split in (s.name, s.node):
                return s.index
        raise SplitError(
            f"split '{split}' does not exist; splits are: " + ", ".join(f"{s.index}={s.name}" for s in splits)
        )
    k = int(split)
    if not 1 <= k <= len(splits):
        raise SplitError(f"split {k} does not exist: valid splits are 1..{len(splits)}")
    return k


@dataclass(frozen=True)
class SplitPoint:
    """One candidate split: 1-based index, a readable name and the fx node it cuts after."""

    index: int
    name: str
    node: str


@runtime_checkable
class Splittable(Protocol):
    """A model with numbered split points 1..L: what the probe, the attacks and the controller need.

    `SplitModel` (torch.fx) and `vortex.core.hooks.HookSplitModel` (forward hooks, for models fx
    cannot trace) satisfy it; both also cut the model into edge and cloud halves (`edge(k)`,
    `cloud(k)`) and tap it for training (`tap`).
    """

    model: nn.Module
    splits: list[SplitPoint]

    @property
    def num_splits(self) -> int: ...

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The model's output and z at every split, from one forward pass."""
        ...

    def edge_params(self, split: int) -> int:
        """Parameters the edge runs for split `split`."""
        ...

    def describe(self, example: torch.Tensor) -> list[dict]:
        """Per split: index, name, shape, dim, bytes, edge params."""
        ...


class _Tracer(fx.Tracer):
    def __init__(self, leaf_depth: int | None, leaf_types: tuple[type, ...], leaf_names: Sequence[str]):
        super().__init__()
        self.leaf_depth = leaf_depth
        self.leaf_types = leaf_types
        self.leaf_names = set(leaf_names)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaf_names or isinstance(m, self.leaf_types):
            return True
        if self.leaf_depth is not None and qualname and qualname.count(".") + 1 >= self.leaf_depth:
            return True
        return super().is_leaf_module(m, qualname)


def _display_name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


class SplitModel(nn.Module):
    """A model with numbered split points, its edge and cloud halves, and a one-pass capture.

    Without `split_points`, modules `leaf_depth` levels down (or of `leaf_types`) are kept whole
    and the cuts between them are found automatically. Named `split_points` (module paths or
    fx node names) are kept whole and the model is traced down to its basic layers around them.
    """

    def __init__(
        self,
        model: nn.Module,
        split_points: Sequence[str] | None = None,
        leaf_depth: int | None = 2,
        leaf_types: tuple[type, ...] = (),
    ):
        super().__init__()
        self.model = model
        modules = dict(model.named_modules())
        leaf_names = [n for n in split_points or () if n in modules]
        try:
            tracer = _Tracer(None if split_points else leaf_depth, leaf_types, leaf_names)
            graph = tracer.trace(model)
        except Exception as exc:  # fx reports untraceable Python in many ways
            raise SplitError(
                f"cannot split {type(model).__name__}: torch.fx could not trace it ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}). Make its forward free of data-dependent "
                "control flow, or wrap the untraceable parts in submodules"
            ) from None
        self.graph = graph
        self._nodes = list(graph.nodes)
        placeholders = [n for n in self._nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise SplitError(
                f"cannot split {type(model).__name__}: its forward takes {len(placeholders)} "
                "inputs; vortex splits models that take one image tensor"
            )
        out = self._nodes[-1]
        if not isinstance(out.args[0], fx.Node):
            raise SplitError(
                f"cannot split {type(model).__name__}: its forward returns a "
                f"{type(out.args[0]).__name__}, not one logits tensor; wrap it so it returns logits"
            )
        self._output = out.args[0]
        self._crossable = self._single_tensor_cuts()
        cuts = self._named_cuts(split_points) if split_points else self._auto_cuts()
        self.splits = [SplitPoint(i + 1, _display_name(n), n.name) for i, n in enumerate(cuts)]
        self._cut_nodes = cuts
        self._edges: dict[int, fx.GraphModule] = {}
        self._clouds: dict[int, fx.GraphModule] = {}
        self._capture = self._graph_module(self._capture_graph())

    @property
    def num_splits(self) -> int:
        return len(self.splits)

    def _single_tensor_cuts(self) -> set[fx.Node]:
        """Nodes whose output is the only value computed so far that later nodes use."""
        position = {n: i for i, n in enumerate(self._nodes)}
        crossable, reach = set(), -1  # reach: furthest use of any earlier non-constant value
        for i, node in enumerate(self._nodes):
            if node.op in ("call_module", "call_function", "call_method") and reach <= i:
                crossable.add(node)
            if node.op != "get_attr":
                last_use = max((position[u] for u in node.users), default=i)
                reach = max(reach, last_use)
        return crossable

    def _auto_cuts(self) -> list[fx.Node]:
        cuts = [
            n
            for n in self._nodes
            if n in self._crossable and n is not self._output and not self._followed_by_same_block(n)
        ]
        cuts.append(self._output)
        return cuts

    def _followed_by_same_block(self, node: fx.Node) -> bool:
        if len(node.users) != 1:
            return False
        user = next(iter(node.users))
        if user.op == "call_module":
            return isinstance(self.model.get_submodule(str(user.target)), FOLLOW_UP_MODULES)
        if user.op == "call_function":
            return user.target in _FOLLOW_UP_FUNCTIONS
        return user.op == "call_method" and user.target in _FOLLOW_UP_METHODS

    def _named_cuts(self, names: Sequence[str]) -> list[fx.Node]:
        by_name = {}
        for n in self._nodes:
            if n.op in ("call_module", "call_function", "call_method"):
                by_name.setdefault(_display_name(n), n)
                by_name.setdefault(n.name, n)
        cuts = []
        for name in names:
            if name not in by_name:
                known = ", ".join(sorted(_display_name(n) for n in self._crossable)[:30])
                raise SplitError(
                    f"split point '{name}' does not exist in {type(self.model).__name__}. "
                    f"Points where it can be split: {known}"
                )
            node = by_name[name]
            if node not in self._crossable:
                raise SplitError(
                    f"cannot split {type(self.model).__name__} after '{name}': more than one "
                    "tensor crosses that cut (a skip connection or a second branch). "
                    "Choose the end of the enclosing block instead"
                )
            cuts.append(node)
        order = {n: i for i, n in enumerate(self._nodes)}
        if [order[n] for n in cuts] != sorted(order[n] for n in set(cuts)):
            raise SplitError(f"split points must be distinct and given in execution order: {', '.join(names)}")
        return cuts

    def _graph_module(self, graph: fx.Graph) -> fx.GraphModule:
        gm = fx.GraphModule(self.model, graph)
        gm.graph.eliminate_dead_code()
        gm = fx.GraphModule(self.model, gm.graph)  # again: it copies only what the pruned graph still reads
        gm.graph.lint()
        gm.recompile()
        return gm

    def _capture_graph(self, indices: Sequence[int] | None = None) -> fx.Graph:
        cuts = self._cut_nodes if indices is None else [self._cut_nodes[self.resolve(k) - 1] for k in indices]
        g, env = fx.Graph(), {}
        for node in self._nodes[:-1]:
            env[node] = g.node_copy(node, env.__getitem__)
        g.output((env[self._output], *[env[n] for n in cuts]))
        return g

    def tap(self, indices: Sequence[int]) -> fx.GraphModule:
        """A module sharing the model's weights that returns (output, z at each split in `indices`).

        Train through it when the loss needs intermediate features (it can be wrapped by DDP).
        """
        return self._graph_module(self._capture_graph(indices))

    def resolve(self, split: int | str) -> int:
        """The 1-based index of a split given by index or by name, with a clear error."""
        return resolve_split(self.splits, split)

    def edge(self, split: int | str) -> fx.GraphModule:
        """Stages 1..k: maps the input image to z."""
        k = self.resolve(split)
        if k not in self._edges:
            cut, g, env = self._cut_nodes[k - 1], fx.Graph(), {}
            for node in self._nodes:
                env[node] = g.node_copy(node, env.__getitem__)
                if node is cut:
                    break
            g.output(env[cut])
            self._edges[k] = self._graph_module(g)
        return self._edges[k]

    def cloud(self, split: int | str) -> fx.GraphModule:
        """Stages k+1..end: maps z to the model's output."""
        k = self.resolve(split)
        if k not in self._clouds:
            cut, g = self._cut_nodes[k - 1], fx.Graph()
            env = {cut: g.placeholder("z")}

            def lookup(n: fx.Node) -> fx.Node:
                if n not in env:  # only constants (get_attr) reach back across a valid cut
                    env[n] = g.node_copy(n, lookup)
                return env[n]

            start = self._nodes.index(cut) + 1
            for node in self._nodes[start:-1]:
                env[node] = g.node_copy(node, lookup)
            g.output(lookup(self._output) if self._output is not cut else env[cut])
            self._clouds[k] = self._graph_module(g)
        return self._clouds[k]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The model's output and z at every split, from a single forward pass."""
        out, *zs = self._capture(x)
        return out, zs

    def edge_params(self, split: int | str) -> int:
        """Number of parameters the edge device holds for split k."""
        return sum(p.numel() for p in self.edge(split).parameters())

    def describe(self, example: torch.Tensor) -> list[dict]:
        """Index, name, shape, dim, float32 payload bytes and edge params of every split."""
        return describe_splits(self, example)
