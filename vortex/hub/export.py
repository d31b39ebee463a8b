"""Export a checkpoint's edge half, cloud half or whole model to ONNX, checked against PyTorch.

    vortex export runs/demo --part edge --format onnx      # -> runs/demo/edge/model.onnx

The file has a dynamic batch axis and records the split in its metadata (vortex_version, part,
split, split_name, input_shape, z_shape, z_bytes), so a device needs only onnxruntime. Before the
file is written, onnxruntime runs it on real images of the checkpoint's data set (or, for the
cloud half, on their z) and the outputs are compared with PyTorch's; an export that differs by
more than the tolerance is refused.
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
from vortex.hub.layout import ONNX_FILE, read_config, read_half_config, read_meta

log = logging.getLogger(__name__)
FORMATS = ("onnx",)

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
    """Export `part` ('edge', 'cloud' or 'full') of the checkpoint in `directory` to ONNX, verified."""
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
    directory = Path(directory)
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
    path = Path(out) if out else (directory / (part if part != "full" else "") / ONNX_FILE)

    measured: list[float] = []

    def write(tmp: str) -> None:
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
        got = torch.from_numpy(session.run(None, {names[0][0]: inputs.numpy()})[0])
        if got.shape != reference.shape:
            raise VortexError(
                f"the ONNX {part} gives outputs of shape {tuple(got.shape)}, PyTorch "
                f"{tuple(reference.shape)}; not written. Try another --opset"
            )
        diff = float((got - reference).abs().max())
        scale = max(1.0, float(reference.abs().max()))
        if not math.isfinite(diff) or diff > tolerance * scale:
            raise VortexError(
                f"the ONNX {part} differs from PyTorch on {source} (max abs diff {diff:.3g}, allowed "
                f"{tolerance * scale:.3g}); not written. Try another --opset"
            )
        measured.append(diff)

    write_atomic(path, write)
    return Exported(path, part, measured[0], source, len(inputs))


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The vortex metadata an exported ONNX file carries."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}
