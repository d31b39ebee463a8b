"""The Accelerate training script: checkpoint layout, loading it back, exact resume, tracking."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from vortex.errors import VortexError
from vortex.hub.checkpoint import load_checkpoint
from vortex.training.config import load_recipe
from vortex.training.loop import main as train

RECIPE = """
model: cnn
model_options: {width: 8}
dataset: digits
seed: 3
epochs: 2
batch_size: 64
max_train_samples: 256
optimizer: {name: adamw, lr: 0.01, weight_decay: 0.0}
scheduler: cosine
label_smoothing: -0.05
probe: {max_samples: 200, batch_size: 100}
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, recipe):
    out = tmp_path_factory.mktemp("run") / "ckpt"
    assert (
        train(["--recipe", str(recipe), "--output_dir", str(out), "--checkpointing_steps", "3", "--with_tracking"]) == 0
    )
    return out


def test_checkpoint_layout_and_reload(trained):
    for name in ("model.safetensors", "config.json", "vortex.json", "profile.json", "profile.png"):
        assert (trained / name).is_file(), name
    config = json.loads((trained / "config.json").read_text())
    assert config["architecture"] == "cnn" and config["num_classes"] == 10 and config["options"] == {"width": 8}
    meta = json.loads((trained / "vortex.json").read_text())
    assert meta["splits"] == config["split_points"] and len(meta["splits"]) == 8
    assert meta["profile"]["num_samples"] == 200 and meta["recipe"]["label_smoothing"] == -0.05
    model, spec, names = load_checkpoint(trained)
    saved = load_file(trained / "model.safetensors")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key])
    assert any(trained.glob("logs/**/events.out.tfevents.*")), "TensorBoard events were not written"


def test_probe_loads_the_checkpoint(trained, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vortex",
            "probe",
            "--model",
            str(trained),
            "--dataset",
            "digits",
            "--out",
            str(tmp_path),
            "--max-samples",
            "200",
            "--batch-size",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    probed = json.loads((tmp_path / "profile.json").read_text())
    saved = json.loads((trained / "profile.json").read_text())
    assert [s["rc2"] for s in probed["splits"]] == pytest.approx([s["rc2"] for s in saved["splits"]], rel=1e-6)


def test_resume_mid_epoch_gives_the_uninterrupted_weights(trained, recipe, tmp_path):
    # 256 samples / 64 = 4 steps per epoch: step_3 is inside the first epoch
    resumed = tmp_path / "resumed"
    shutil.copytree(trained / "state" / "step_3", resumed / "state" / "step_3")
    assert (
        train(
            [
                "--recipe",
                str(recipe),
                "--output_dir",
                str(resumed),
                "--resume_from_checkpoint",
                "latest",
                "--checkpointing_steps",
                "3",
            ]
        )
        == 0
    )
    a, b = load_file(trained / "model.safetensors"), load_file(resumed / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_recipe_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: cnn\nepochz: 3\n")
    with pytest.raises(VortexError, match=r"unknown keys \['epochz'\]"):
        load_recipe(bad)
    with pytest.raises(VortexError, match="below 1"):
        load_recipe(None, label_smoothing=1.0)
    with pytest.raises(VortexError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
