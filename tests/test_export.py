"""Export of the halves: onnxruntime and ExecuTorch run what vortex writes, and it matches PyTorch."""

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from vortex.cli.main import main as vortex
from vortex.hub.export import export, onnx_metadata
from vortex.hub.repo import from_pretrained


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint, tmp_path_factory):
    copy = tmp_path_factory.mktemp("export") / "ckpt"  # exports are written into the checkpoint
    shutil.copytree(tiny_checkpoint, copy)
    return copy


@pytest.fixture(scope="module")
def exported(checkpoint):
    return {part: export(checkpoint, part) for part in ("edge", "cloud", "full")}


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_edge_then_cloud_in_onnxruntime_equals_the_full_model(checkpoint, exported):
    x = torch.rand(7, 1, 8, 8, generator=torch.Generator().manual_seed(3))  # a batch size never exported
    z = session(exported["edge"].path).run(None, {"pixel_values": x.numpy()})[0]
    logits = session(exported["cloud"].path).run(None, {"z": z})[0]
    full = session(exported["full"].path).run(None, {"pixel_values": x.numpy()})[0]
    with torch.no_grad():
        reference = from_pretrained(checkpoint)(x).numpy()
        reference_z = from_pretrained(checkpoint, part="edge")(x).numpy()
    np.testing.assert_allclose(z, reference_z, atol=1e-5)
    np.testing.assert_allclose(logits, reference, atol=1e-4)
    np.testing.assert_allclose(full, reference, atol=1e-4)
    assert exported["edge"].max_abs_diff < 1e-4 and "test images of digits" in exported["edge"].inputs


def test_the_file_records_the_split(checkpoint, exported):
    halves = json.loads((checkpoint / "vortex.json").read_text())["halves"]
    meta = onnx_metadata(exported["edge"].path)
    assert exported["edge"].path == checkpoint / "edge" / "model.onnx"
    assert (meta["part"], int(meta["split"]), meta["split_name"]) == ("edge", halves["index"], halves["name"])
    assert json.loads(meta["z_shape"]) == halves["z_shape"] and int(meta["z_bytes"]) == halves["z_bytes"]


def test_export_command_prints_the_difference(checkpoint, tmp_path, capsys):
    out = tmp_path / "edge.onnx"
    assert vortex(["export", str(checkpoint), "--part", "edge", "--format", "onnx", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"to {out}" in text and "onnxruntime vs PyTorch on 64 test images of digits: max abs diff" in text
    assert out.stat().st_size > 1000


def test_an_executorch_edge_runs_in_executorch_and_matches_pytorch(checkpoint, tmp_path, capsys):
    from executorch.runtime import Runtime

    out = tmp_path / "edge.pte"
    assert vortex(["export", str(checkpoint), "--part", "edge", "--format", "pte", "--out", str(out)]) == 0
    assert "ExecuTorch vs PyTorch on 64 test images of digits: max abs diff" in capsys.readouterr().out
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(4))  # one image per call, as a device
    z = Runtime.get().load_program(out).load_method("forward").execute([x])[0]
    with torch.no_grad():
        reference = from_pretrained(checkpoint, part="edge")(x)
    np.testing.assert_allclose(z.numpy(), reference.numpy(), atol=1e-5)
