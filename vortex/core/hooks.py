"""Split points of models torch.fx cannot trace (transformers models), captured with forward hooks.

`HookSplitModel(model, example)` numbers module outputs as splits 1..L and offers what the
probe needs from a `SplitModel` (`model`, `splits`, `forward_all`, `describe`), from ONE forward
pass per batch. Split k is the output of a named module; the hooks cannot check that nothing
else crosses the cut (a skip connection), so name module boundaries such as blocks or stages.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from vortex.core.splits import FOLLOW_UP_MODULES, SplitPoint, describe_splits, evaluating
from vortex.errors import SplitError


def first_tensor(out: Any) -> torch.Tensor | None:
    """The hidden state in a module's output: the tensor, or the first tensor of a tuple or ModelOutput."""
    if torch.is_tensor(out):
        return out
    values = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else ()
    return next((v for v in values if torch.is_tensor(v)), None)


def logits_of(out: Any) -> torch.Tensor:
    """The logits in a model's output: a tensor, `.logits` of an ImageClassifierOutput, or a tuple's first."""
    logits = out["logits"] if isinstance(out, Mapping) and "logits" in out else first_tensor(out)
    if logits is None:
        raise SplitError(
            f"cannot find logits in the model's output ({type(out).__name__}): return a tensor "
            "or an output with a `logits` field"
        )
    return logits


@contextmanager
def _capture(modules: Mapping[str, nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Collect the output tensor of each named module while the block runs."""
    found: dict[str, torch.Tensor] = {}

    def hook(name: str, out: Any) -> None:
        if name in found:
            raise SplitError(f"module '{name}' ran twice in one forward pass: it cannot be a split point")
        z = first_tensor(out)
        if z is None:
            raise SplitError(f"module '{name}' returned no tensor ({type(out).__name__}): it cannot be a split point")
        found[name] = z

    handles = [m.register_forward_hook(lambda mod, i, o, n=n: hook(n, o)) for n, m in modules.items()]
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def _trace_order(model: nn.Module, example: torch.Tensor) -> tuple[dict[str, int], dict[str, int]]:
    """First start and first finish position of every module in one forward pass of `example`."""
    started: dict[str, int] = {}
    finished: dict[str, int] = {}

    def stamp(times: dict[str, int], name: str) -> None:  # a hook that returns None changes nothing
        times.setdefault(name, len(started) + len(finished))

    handles = []
    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(lambda mod, i, n=name: stamp(started, n)))
        handles.append(m.register_forward_hook(lambda mod, i, o, n=name: stamp(finished, n)))
    try:
        with torch.no_grad(), evaluating(model):
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    return started, finished


def _is_stack(m: nn.Module) -> bool:
    from transformers import PreTrainedModel

    return isinstance(m, (nn.ModuleList, PreTrainedModel)) or any(isinstance(c, nn.ModuleList) for c in m.children())


def default_split_points(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Module paths in execution order: the stem, each block of the main ModuleList, then the head.

    Starting at the root, modules that are a model (PreTrainedModel), a ModuleList, hold one, or
    are the only module their parent runs are opened into the children that run; the rest, and
    the blocks of a ModuleList, are stages. As in `SplitModel`, a stage followed by a norm,
    activation, pooling or flatten module is merged with it (the cut goes after them).
    """
    return _default_points(model, _trace_order(model, example)[0])


def _default_points(model: nn.Module, started: dict[str, int]) -> list[str]:
    first: dict[str, int] = {}  # first start of any module at or under each path
    for name, t in started.items():
        parts = name.split(".") if name else []
        for i in range(len(parts) + 1):
            prefix = ".".join(parts[:i])
            first[prefix] = min(first.get(prefix, t), t)

    def open_(prefix: str, m: nn.Module) -> list[str]:
        children = sorted(
            ((f"{prefix}{n}", c) for n, c in m.named_children() if f"{prefix}{n}" in first), key=lambda nc: first[nc[0]]
        )
        out = []
        for name, c in children:
            if not isinstance(m, nn.ModuleList) and list(c.children()) and (_is_stack(c) or len(children) == 1):
                out += open_(name + ".", c)
            else:  # the blocks of a ModuleList stay whole
                out.append(name)
        return out

    modules = dict(model.named_modules())
    stages = open_("", model)
    return [
        n
        for n, nxt in zip(stages, stages[1:] + [None])
        if nxt is None or not isinstance(modules[nxt], FOLLOW_UP_MODULES)
    ]


class HookSplitModel(nn.Module):
    """A model whose splits are module outputs, captured by forward hooks in one pass.

    `example` (one input batch) is run once to find the default split points (without
    `split_points`), their execution order, and the parameters that run before each cut.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, split_points: Sequence[str] | None = None):
        super().__init__()
        self.model = model
        modules = dict(model.named_modules())
        started, finished = _trace_order(model, example)
        names = list(split_points) if split_points else _default_points(model, started)
        unknown = [n for n in names if n not in modules or not n]
        if unknown:
            raise SplitError(
                f"split point(s) {unknown} are not modules of {type(model).__name__}; name modules "
                f"such as: {', '.join(_default_points(model, started))}"
            )
        idle = [n for n in names if n not in finished]
        if idle:
            raise SplitError(f"split point(s) {idle} do not run in {type(model).__name__}'s forward pass")
        if [finished[n] for n in names] != sorted(finished[n] for n in set(names)):
            raise SplitError(f"split points must be distinct and given in execution order: {', '.join(names)}")
        self.splits = [SplitPoint(i + 1, n, n) for i, n in enumerate(names)]
        self._modules_by_name = {n: modules[n] for n in names}
        self._edge_params = self._count_edge_params(modules, finished, names)

    @staticmethod
    def _count_edge_params(modules: dict[str, nn.Module], finished: dict[str, int], names: list[str]) -> list[int]:
        """Parameters of the modules that finished running before each cut (each tensor once)."""
        counts = []
        for name in names:
            seen: dict[int, int] = {}
            for n, m in modules.items():
                if finished.get(n, math.inf) <= finished[name]:
                    seen.update({id(p): p.numel() for p in m.parameters(recurse=False)})
            counts.append(sum(seen.values()))
        return counts

    @property
    def num_splits(self) -> int:
        return len(self.splits)

    def modules_at(self, indices: Sequence[int]) -> dict[str, nn.Module]:
        """The modules of the splits in `indices` (1-based), by name."""
        return {self.splits[k - 1].name: self._modules_by_name[self.splits[k - 1].name] for k in indices}

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The logits and z at every split, from a single forward pass."""
        with _capture(self._modules_by_name) as found:
            logits = logits_of(self.model(x))
        return logits, [found[s.name] for s in self.splits]

    def edge_params(self, split: int) -> int:
        """Number of parameters the edge device holds for split k."""
        return self._edge_params[split - 1]

    def describe(self, example: torch.Tensor) -> list[dict]:
        """Index, name, shape, dim, float32 payload bytes and edge params of every split."""
        return describe_splits(self, example)


class TrainingTap:
    """z at some splits from the latest training forward pass, with its graph, for a loss on it.

    Each forward of `root` starts afresh; a module's first call counts (gradient checkpointing
    re-runs modules during backward). Nothing is kept in eval mode or without gradients.
    """

    def __init__(self, root: nn.Module, modules: Mapping[str, nn.Module]):
        self.z: dict[str, torch.Tensor] = {}
        self._handles = [root.register_forward_pre_hook(lambda mod, i: self.z.clear())]
        self._handles += [
            m.register_forward_hook(lambda mod, i, o, n=n: self._keep(n, mod, o)) for n, m in modules.items()
        ]

    def _keep(self, name: str, module: nn.Module, out: Any) -> None:
        if module.training and torch.is_grad_enabled() and name not in self.z:
            self.z[name] = first_tensor(out)

    def take(self) -> dict[str, torch.Tensor]:
        """The captured tensors, forgotten here (they belong to one loss)."""
        z, self.z = self.z, {}
        return z

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
