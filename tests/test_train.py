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


@pytest.mark.parametrize("how", ["flag", "env"])
def test_gradient_accumulation_steps_the_optimiser_once_per_n_batches(recipe, tmp_path, monkeypatch, how):
    flags = ["--per_device_train_batch_size", "32", "--num_train_epochs", "2"]  # 256 samples: 8 batches an epoch
    if how == "flag":
        flags += ["--gradient_accumulation_steps", "4"]
    else:
        monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    assert train(["--recipe", str(recipe), "--output_dir", str(tmp_path / "acc"), *flags]) == 0
    meta = json.loads((tmp_path / "acc" / "vortex.json").read_text())
    assert meta["gradient_accumulation_steps"] == 4 and meta["optimizer_steps_this_session"] == 4  # 16 batches / 4


def test_hf_script_flags_and_a_default_output_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--num_train_epochs", "1", "--max_train_samples", "128", "--learning_rate", "0.01"]
    argv += ["--lr_scheduler_type", "linear", "--num_warmup_steps", "1", "--dataset_name", "digits"]
    assert train(argv) == 0
    assert "writing to --output_dir runs/cnn-digits" in capsys.readouterr().out
    recipe = json.loads((tmp_path / "runs" / "cnn-digits" / "vortex.json").read_text())["recipe"]
    assert (recipe["epochs"], recipe["max_train_samples"], recipe["optimizer"]["lr"]) == (1, 128, 0.01)
    assert (recipe["scheduler"], recipe["num_warmup_steps"]) == ("linear", 1)


def test_a_torchvision_entry_point_trains_with_a_target_and_loads_back(tmp_path):
    """`--model torchvision.models:resnet18`: only the arguments it names are passed, its 3-channel
    stem and 1000-class head are adapted to the data, and the checkpoint loads with --trust-code."""
    entry, out = "torchvision.models:resnet18", tmp_path / "r18"
    status = train(
        [
            "--model",
            entry,
            "--num_train_epochs",
            "1",
            "--max_train_samples",
            "600",
            "--output_dir",
            str(out),
            "--target-gpz",
            "3",
            "--baseline",
            "none",
        ]
    )
    meta = json.loads((out / "vortex.json").read_text())
    assert status in (0, 3) and [s["index"] for s in meta["privacy"]["splits"]] == [2, 3]
    with pytest.raises(VortexError, match="never imports code named by a file"):
        load_checkpoint(out)
    model, spec, names = load_checkpoint(out, trust_code=[entry])
    assert spec.architecture == entry and model.fc.out_features == 10 and model.conv1.in_channels == 1


def test_a_state_between_two_optimiser_steps_is_refused_before_training(recipe, tmp_path):
    with pytest.raises(VortexError, match="must be a positive multiple of the gradient accumulation steps"):
        train(
            [
                "--recipe",
                str(recipe),
                "--output_dir",
                str(tmp_path / "o"),
                "--gradient_accumulation_steps",
                "4",
                "--checkpointing_steps",
                "3",
            ]
        )
