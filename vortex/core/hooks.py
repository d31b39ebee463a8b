"""Split points of models torch.fx cannot trace (transformers models), captured with forward hooks.

`HookSplitModel(model, example)` numbers module outputs as splits 1..L and offers what the
probe needs from a `SplitModel` (`model`, `splits`, `forward_all`, `describe`), from ONE forward
pass per batch. Split k is the output of a named module; the hooks cannot check that nothing
else crosses the cut (a skip connection), so name module boundaries such as blocks or stages.

It also cuts the model into halves (`edge(k)`, `cloud(k)`) and taps it for training (`tap`):
the edge runs the model until split k's module returns, then stops; the cloud runs the model
with every module that ran before the cut replaced by a stub and split k's module returning z,
so no edge computation happens in it. Each half holds (state_dict, parameters) only the tensors
of the modules it runs, named as in the model. A cut is checked when made: cloud(edge(x)) must
equal the model's logits on random images, else something besides z crosses it.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

from vortex.core.splits import FOLLOW_UP_MODULES, SplitPoint, describe_splits, evaluating, resolve_split
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
        self._example = example[:1].detach()
        self._calls: tuple[dict[str, list[tuple[int, int]]], dict[str, Any]] | None = None
        self._halves: dict[int, tuple[HookEdge, nn.Module]] = {}

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

    def resolve(self, split: int | str) -> int:
        """The 1-based index of a split given by index or by name, with a clear error."""
        return resolve_split(self.splits, split)

    def tap(self, indices: Sequence[int]) -> HookTap:
        """A module sharing the model's weights that returns (logits, z at each split in `indices`), to train."""
        return HookTap(self.model, self.modules_at([self.resolve(k) for k in indices]))

    def edge(self, split: int | str) -> HookEdge:
        """Image -> z at split k: the model run until split k's module returns."""
        return self._cut(self.resolve(split))[0]

    def cloud(self, split: int | str) -> nn.Module:
        """z at split k -> logits: the model run from split k on."""
        return self._cut(self.resolve(split))[1]

    def _cut(self, k: int) -> tuple[HookEdge, nn.Module]:
        if k not in self._halves:
            example = self._example.to(next(self.model.parameters()).device)
            if self._calls is None:
                self._calls = _trace_calls(self.model, example)
            spans, outputs = self._calls
            name = self.splits[k - 1].name
            end = spans[name][0][1]
            ran_before = {n for n, calls in spans.items() if any(a < end for a, _ in calls)}
            runs_after = {n for n, calls in spans.items() if any(b > end for _, b in calls)}
            done = {n for n, calls in spans.items() if all(b <= end for _, b in calls)}  # never runs after the cut
            stubbed = {n: outputs[n] for n in done if n and n.rpartition(".")[0] not in done}  # outermost ones
            modules = dict(self.model.named_modules())
            edge = HookEdge(self.model, _keys_of(self.model, ran_before), modules[name])
            cloud = HookCloud(self.model, _keys_of(self.model, runs_after), stubbed, self._example.shape[1:])
            self._halves[k] = edge, _checked_cloud(self.model, edge, cloud, example, name)
        return self._halves[k]


def _trace_calls(
    model: nn.Module, example: torch.Tensor
) -> tuple[dict[str, list[tuple[int, int]]], dict[str, Callable[[torch.Tensor], Any]]]:
    """(start, end) positions of every call of every module in one forward pass of `example`, and the form
    of each module's first output (`_form`)."""
    clock, spans, outputs = itertools.count(), {}, {}
    open_calls: dict[str, list[int]] = {}

    def start(name: str) -> None:
        open_calls.setdefault(name, []).append(next(clock))

    def end(name: str, out: Any) -> None:
        spans.setdefault(name, []).append((open_calls[name].pop(), next(clock)))
        outputs.setdefault(name, _form(out))

    handles = []
    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(lambda mod, i, n=name: start(n)))
        handles.append(m.register_forward_hook(lambda mod, i, o, n=name: end(n, o)))
    try:
        with torch.no_grad(), evaluating(model):
            model(example)
    finally:
        for h in handles:
            h.remove()
    return spans, outputs


def _keys_of(model: nn.Module, module_names: set[str]) -> list[str]:
    """The state-dict keys of the tensors held directly by the named modules."""
    return [k for k in model.state_dict() if k.rpartition(".")[0] in module_names]


def _form(out: Any) -> Callable[[torch.Tensor], Any]:
    """What dresses z as a module's output `out`: the tensor, a tuple with z first, or a ModelOutput with z first."""
    if isinstance(out, Mapping) and out:
        kind, key = type(out), next(iter(out))
        return lambda z: kind(**{key: z})
    if isinstance(out, (tuple, list)):
        rest = (None,) * (len(out) - 1)
        return lambda z: (z, *rest)
    return lambda z: z


class _Reached(BaseException):
    """Ends the edge's forward pass at the cut (a BaseException, so no `except Exception` in a model catches it)."""

    def __init__(self, z: torch.Tensor):
        super().__init__()
        self.z = z


class _Half(nn.Module):
    """A half of a hook-split model: it runs the whole model object but holds only `keys` of its state dict."""

    def __init__(self, model: nn.Module, keys: list[str]):
        super().__init__()
        self.model = model
        self._keys = keys

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        full = self.model.state_dict(keep_vars=keep_vars)
        return OrderedDict((prefix + k, full[k]) for k in self._keys)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        wanted = set(self._keys)
        missing = [k for k in self._keys if k not in state_dict]
        unexpected = [k for k in state_dict if k not in wanted]
        self.model.load_state_dict({k: v for k, v in state_dict.items() if k in wanted}, strict=False, assign=assign)
        if strict and (missing or unexpected):
            raise RuntimeError(f"the {type(self).__name__} misses {missing[:5]} and does not hold {unexpected[:5]}")
        return _IncompatibleKeys(missing, unexpected)

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        named = dict(self.model.named_parameters())
        return iter([named[k] for k in self._keys if k in named])


class HookEdge(_Half):
    """Image -> z: the model run until the cut module returns (nothing after it runs)."""

    def __init__(self, model: nn.Module, keys: list[str], cut: nn.Module):
        super().__init__(model, keys)
        self._cut = [cut]  # not a submodule of its own: the model holds it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def stop(module: nn.Module, inputs: Any, out: Any) -> None:
            raise _Reached(first_tensor(out))

        handle = self._cut[0].register_forward_hook(stop)
        try:
            self.model(x)
        except _Reached as reached:
            return reached.z
        finally:
            handle.remove()
        raise SplitError(f"the cut module of {type(self.model).__name__} did not run")


class HookCloud(_Half):
    """z -> logits: the model run on a blank image of `input_shape` with every module that ran before the cut
    stubbed out (returning z dressed as its output, `_form`) and the cut module returning z."""

    def __init__(
        self,
        model: nn.Module,
        keys: list[str],
        stubbed: dict[str, Callable[[torch.Tensor], Any]],
        input_shape: Sequence[int],
    ):
        super().__init__(model, keys)
        self._stubbed, self._input_shape = stubbed, tuple(input_shape)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        modules = dict(self.model.named_modules())
        saved = {n: modules[n].__dict__.get("forward") for n in self._stubbed}
        for n, dress in self._stubbed.items():
            modules[n].forward = lambda *a, _dress=dress, **k: _dress(z)
        blank = torch.zeros((1, *self._input_shape), dtype=z.dtype, device=z.device).expand(len(z), *self._input_shape)
        try:
            return logits_of(self.model(blank))
        finally:
            for n, forward in saved.items():
                if forward is None:
                    del modules[n].forward
                else:
                    modules[n].forward = forward


class HookTap(nn.Module):
    """(logits, z at some splits) from one forward pass of the model, with the graph, for a loss on z."""

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module]):
        super().__init__()
        self.model = model
        self._tapped = list(modules.items())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with _capture(dict(self._tapped)) as found:
            logits = logits_of(self.model(x))
        return (logits, *[found[n] for n, _ in self._tapped])


class _Logits(_Half):
    """The cloud of a cut whose z is the logits already: nothing left to run."""

    def __init__(self, model: nn.Module):
        super().__init__(model, [])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z


def _checked_cloud(model: nn.Module, edge: HookEdge, cloud: HookCloud, example: torch.Tensor, name: str) -> _Half:
    """`cloud`, once cloud(edge(x)) matched the model's logits on random images (else more than z crosses the
    cut); `_Logits` when z is the logits."""

    def close(got: Any, want: torch.Tensor) -> bool:
        scale = max(1.0, float(want.abs().max()))
        return torch.is_tensor(got) and got.shape == want.shape and float((got - want).abs().max()) <= 1e-4 * scale

    x = torch.rand((2, *example.shape[1:]), generator=torch.Generator().manual_seed(0)).to(example.device)
    with torch.no_grad(), evaluating(model):
        want, z = logits_of(model(x)), edge(x)
        if close(z, want):
            return _Logits(model)
        try:
            got = cloud(z)
        except (RuntimeError, TypeError, ValueError, AttributeError, IndexError) as exc:
            got = exc
    if not close(got, want):
        raise SplitError(
            f"cannot cut {type(model).__name__} into halves after '{name}': more than its output crosses that cut "
            "(a skip connection, or a value computed from the image before it); cut at the end of a block"
        )
    return cloud


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
