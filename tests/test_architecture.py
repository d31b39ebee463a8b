"""The layering rule of docs/architecture.md: imports flow downward, and no module imports itself back."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vortex"

# rank of each layer: a module may import its own layer (its own package) or a lower rank
LAYERS = {
    "vortex": 0,  # __init__ (version), errors, files, distributed, data
    "vortex.core": 1,
    "vortex.models": 2,
    "vortex.report": 2,
    "vortex.hub": 3,
    "vortex.attacks": 3,
    "vortex.training": 4,
    "vortex.cli": 5,
    "vortex.train": 6,
    "vortex.__main__": 6,
}
# the package's facade imports lazily from the layers it names (vortex.from_pretrained, vortex.VortexModel,
# vortex.VortexCallback)
FACADE = {"vortex": {"vortex.hub.repo", "vortex.hub.model", "vortex.training.callback"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    """The LAYERS key a module belongs to: the longest prefix listed."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    raise AssertionError(f"{module} is in no layer of LAYERS")


def imports(path: Path) -> set[str]:
    """vortex modules imported anywhere in the file (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; write vortex.* imports"
            if node.module and node.module.split(".")[0] == "vortex":
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "vortex"}
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in edges.items():
        here = layer(module)
        for target in targets - FACADE.get(module, set()):
            there = layer(target)
            if LAYERS[there] > LAYERS[here] or (LAYERS[there] == LAYERS[here] and there != here):
                bad.append(f"{module} ({here}) imports {target} ({there})")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules (through package __init__ files too)."""
    found, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                found.append([*path[path.index(target) :], target] if target in path else [module, target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    return found


def test_imports_flow_downward():
    assert violations(graph()) == []


def test_no_import_cycles():
    edges = graph()
    for module, targets in edges.items():  # the facade's lazy imports are not part of the import graph
        edges[module] = targets - FACADE.get(module, set()) - {"vortex"}
    assert cycles(edges) == []


def test_the_check_catches_upward_imports_and_cycles():
    edges = {
        "vortex.core.gpz": {"vortex.hub.repo"},
        "vortex.hub.repo": {"vortex.attacks.sweep"},
        "vortex.training.loop": {"vortex.core.gpz"},
    }
    assert violations(edges) == [
        "vortex.core.gpz (vortex.core) imports vortex.hub.repo (vortex.hub)",
        "vortex.hub.repo (vortex.hub) imports vortex.attacks.sweep (vortex.attacks)",
    ]
    assert cycles({"vortex.a": {"vortex.b"}, "vortex.b": {"vortex.c"}, "vortex.c": {"vortex.a"}}) == [
        ["vortex.a", "vortex.b", "vortex.c", "vortex.a"]
    ]


def test_both_split_implementations_are_splittable():
    import torch
    from torch import nn

    from vortex.core.hooks import HookSplitModel
    from vortex.core.splits import SplitModel, Splittable

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3))
    assert isinstance(SplitModel(model), Splittable)
    assert isinstance(HookSplitModel(model, torch.zeros(1, 1, 8, 8)), Splittable)
