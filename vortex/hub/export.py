"""Export a checkpoint's edge half, cloud half or whole model to ONNX or ExecuTorch, checked against PyTorch.

    vortex export runs/demo --part edge --format onnx      # -> runs/demo/edge/model.onnx
    vortex export runs/demo --part edge --format pte       # -> runs/demo/edge/model.pte (ExecuTorch, XNNPACK)

The file has a dynamic batch axis and records the split in its metadata (vortex_version, part,
split, split_name, input_shape, z_shape, z_bytes), so a device needs only onnxruntime. Before the
file is written, onnxruntime runs it on real images of the checkpoint's data set (or, for the
cloud half, on their z) and the outputs are compared with PyTorch's; an export that differs by
more than the tolerance is refused. An ExecuTorch program (`.pte`, CPU work delegated to XNNPACK)
is checked the same way by ExecuTorch's own runtime; it takes one image (or one z) per call, as a
device runs it, and the split it holds is recorded by the half's config.json beside it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vortex import __version__
from vortex.errors import VortexError
from vortex.files import write_atomic
from vortex.hub.checkpoint import load_checkpoint, load_half
from vortex.hub.layout import ONNX_FILE, PTE_FILE, read_config, read_half_config, read_meta
from vortex.models import TRANSFORMERS

log = logging.getLogger(__name__)
FORMATS = {"onnx": ONNX_FILE, "pte": PTE_FILE}

TOLERANCE = 1e-4  # max abs difference, relative to the largest output magnitude (at least 1)


@dataclass
class Exported:
    """What `export` wrote and how closely onnxruntime matched PyTorch."""

    path: Path
    part: str
    max_abs_diff: float
    inputs: str  # where the check's inputs came from
    num_inputs: int


def _check_inputs(directory: Path, image_shape: Sequence[int], count: int = 64) -> tuple[torch.Tensor, str]:
    """Images of the checkpoint's own data set (test split) at the model's input shape, else seeded noise."""
    from vortex.data import load_data, make_loader, take

    meta = read_meta(directory)
    name = (meta.get("recipe") or {}).get("dataset") or (meta.get("profile") or {}).get("dataset")
    channels, size = image_shape[0], image_shape[-1]
    if name:
        try:
            x, _ = next(
                iter(
                    make_loader(take(load_data(name)["test"], count, seed=0), count, image_size=size, channels=channels)
                )
            )
            return x, f"{len(x)} test images of {name}"
        except (VortexError, OSError) as exc:
            log.warning("cannot load %s for the export check (%s); using random images", name, exc)
    generator = torch.Generator().manual_seed(0)
    return torch.rand(count, *image_shape, generator=generator), f"{count} random images"


def _load(directory: Path, part: str, trust_code: Sequence[str]) -> torch.nn.Module:
    """The verified half (or the whole model) of a local checkpoint, in eval mode."""
    if part == "full":
        return load_checkpoint(directory, trust_code=trust_code)[0].eval()
    return load_half(directory, part, trust_code=trust_code)


def export(
    directory: str | Path,
    part: str = "edge",
    *,
    fmt: str = "onnx",
    out: str | Path | None = None,
    opset: int = 18,
    tolerance: float = TOLERANCE,
    trust_code: Sequence[str] = (),
) -> Exported:
    """Export `part` ('edge', 'cloud' or 'full') of the checkpoint in `directory` to ONNX or ExecuTorch
    (`fmt` 'onnx' or 'pte'), verified against PyTorch before the file is written."""
    if fmt not in FORMATS:
        raise VortexError(f"--format must be one of {', '.join(FORMATS)}, not '{fmt}'")
    if part not in ("edge", "cloud", "full"):
        raise VortexError(f"--part must be edge, cloud or full, not '{part}'")
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise VortexError(
            "ONNX export needs onnx, onnxscript and onnxruntime: pip install 'vortex-split[export]'"
        ) from None
    if fmt == "pte":
        try:
            import executorch  # noqa: F401
        except ImportError:
            raise VortexError("ExecuTorch export needs executorch: pip install 'vortex-split[export]'") from None
    directory = Path(directory)
    described = read_config(directory) if part == "full" else read_half_config(directory, part)
    if described["architecture"] == TRANSFORMERS:
        raise VortexError(
            f"'{directory}' holds a transformers model: its halves are cut with forward hooks, which vortex cannot "
            "export; use the safetensors halves (vortex pull / vortex.from_pretrained)"
        )
    module = _load(directory, part, trust_code)
    if part == "full":
        config = read_config(directory)
        shape_in = [config["in_channels"], config["image_size"], config["image_size"]]
        split_meta = {}
    else:
        split_meta = read_half_config(directory, part)["split"]
        shape_in = split_meta["input_shape"] if part == "edge" else split_meta["z_shape"]
    image_shape = split_meta.get("input_shape", shape_in)
    images, source = _check_inputs(directory, image_shape)
    with torch.no_grad():
        inputs = images if part != "cloud" else _load(directory, "edge", trust_code)(images)
        reference = module(inputs)
    names = (
        (["pixel_values"], ["z"])
        if part == "edge"
        else (["z"], ["logits"])
        if part == "cloud"
        else (["pixel_values"], ["logits"])
    )
    path = Path(out) if out else (directory / (part if part != "full" else "") / FORMATS[fmt])

    measured: list[float] = []

    def write(tmp: str) -> None:
        got = _run_pte(module, inputs, tmp) if fmt == "pte" else _run_onnx(tmp)
        if got.shape != reference.shape:
            raise VortexError(
                f"the {fmt.upper()} {part} gives outputs of shape {tuple(got.shape)}, PyTorch "
                f"{tuple(reference.shape)}; not written. Try another --opset"
            )
        diff = float((got - reference).abs().max())
        scale = max(1.0, float(reference.abs().max()))
        if not math.isfinite(diff) or diff > tolerance * scale:
            raise VortexError(
                f"the {fmt.upper()} {part} differs from PyTorch on {source} (max abs diff {diff:.3g}, allowed "
                f"{tolerance * scale:.3g}); not written. Try another --opset"
            )
        measured.append(diff)

    def _run_onnx(tmp: str) -> torch.Tensor:
        """Write the ONNX file with vortex's metadata; onnxruntime's outputs on the check inputs."""
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(
            module,
            (inputs[:2],),
            tmp,
            dynamo=True,
            input_names=names[0],
            output_names=names[1],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            verbose=False,
        )
        model = onnx.load(tmp)
        z_shape = split_meta.get("z_shape")
        props = {
            "vortex_version": __version__,
            "part": part,
            "input_shape": json.dumps(list(shape_in)),
            **(
                {
                    "split": str(split_meta["index"]),
                    "split_name": split_meta["name"],
                    "z_shape": json.dumps(z_shape),
                    "z_bytes": str(4 * math.prod(z_shape)),
                }
                if split_meta
                else {}
            ),
        }
        onnx.helper.set_model_props(model, props)
        onnx.save(model, tmp)
        session = onnxruntime.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {names[0][0]: inputs.numpy()})[0])

    write_atomic(path, write)
    return Exported(path, part, measured[0], source, len(inputs))


def _run_pte(module: torch.nn.Module, inputs: torch.Tensor, tmp: str) -> torch.Tensor:
    """Write the ExecuTorch program for one input per call (XNNPACK for what it supports); ExecuTorch's
    outputs on `inputs`, one call each. (A dynamic batch axis loads, but ExecuTorch 1.5's runtime
    refuses batches above a size it plans itself, so the program has static shapes.)"""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    program = torch.export.export(module, (inputs[:1],))
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    Path(tmp).write_bytes(lowered.buffer)
    method = Runtime.get().load_program(Path(tmp)).load_method("forward")
    return torch.cat([method.execute([x.unsqueeze(0).contiguous()])[0] for x in inputs])


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The vortex metadata an exported ONNX file carries."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}
