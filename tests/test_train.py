"""The Accelerate training script: checkpoint layout, loading it back, exact resume, tracking."""

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vortex.errors import VortexError
from vortex.hub.checkpoint import load_checkpoint
from vortex.records import ControllerSummary, Profile
from vortex.train import TARGET_MISSED, TrainConfig, parse_config
from vortex.train import train as train_api
from vortex.training.config import load_recipe
from vortex.training.loop import main as train
from vortex.training.privacy import PrivacyCriterion

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


def test_hf_script_flags_and_a_default_output_dir(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)
    argv = ["--num_train_epochs", "1", "--max_train_samples", "128", "--learning_rate", "0.01"]
    argv += ["--lr_scheduler_type", "linear", "--num_warmup_steps", "1", "--dataset_name", "digits"]
    assert train(argv) == 0
    assert "writing to --output_dir runs/cnn-digits" in capsys.readouterr().out
    # the loop logs, and the entry point prints what it logs
    logged = {r.getMessage() for r in caplog.records if r.name == "vortex.training.loop"}
    assert "writing to --output_dir runs/cnn-digits" in logged and "checkpoint written to runs/cnn-digits" in logged
    recipe = json.loads((tmp_path / "runs" / "cnn-digits" / "vortex.json").read_text())["recipe"]
    assert (recipe["epochs"], recipe["max_train_samples"], recipe["optimizer"]["lr"]) == (1, 128, 0.01)
    assert (recipe["scheduler"], recipe["num_warmup_steps"]) == ("linear", 1)


def test_a_torchvision_entry_point_trains_with_a_target_and_loads_back(tmp_path, capsys):
    """`--model torchvision.models:resnet18`: only the arguments it names are passed, its 3-channel
    stem and 1000-class head are adapted to the data, and the checkpoint loads with --trust-code, in
    `vortex probe`, `vortex attack` and `vortex publish --dry-run` too."""
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

    from vortex.cli.main import main as vortex

    trust = ["--trust-code", entry]
    probe = ["--dataset", "digits", "--out", str(tmp_path / "p"), "--max-samples", "100", *trust]
    assert vortex(["probe", "--model", str(out), *probe]) == 0
    assert json.loads((tmp_path / "p" / "profile.json").read_text())["num_samples"] == 100
    attack = ["--splits", "2,3", "--epochs", "2", "--max-samples", "64", "--aux-samples", "128", *trust]
    assert vortex(["attack", "--model", str(out), "--dataset", "digits", "--out", str(tmp_path / "a"), *attack]) == 0
    assert [s["index"] for s in json.loads((tmp_path / "a" / "attack.json").read_text())["splits"]] == [2, 3]
    capsys.readouterr()
    assert vortex(["publish", str(out), "--repo-id", "org/r18", "--dry-run", *trust]) == 0
    assert "edge/model.safetensors" in capsys.readouterr().out


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


@pytest.mark.hub
def test_a_hub_dataset_config_and_columns_train_and_a_resume_with_other_data_is_refused(recipe, tmp_path, local_hub):
    """`vortex train` on ORG/NAME served by a local Hub server, as a user runs it (HF_ENDPOINT set)."""
    from hub_helpers import dataset_repo, git_commit

    olah = local_hub
    git_commit(olah.mirrors, "train/tiny", dataset_repo(), "two configs", repo_type="datasets")
    env = {**os.environ, "HF_ENDPOINT": olah.url, "HF_HOME": str(tmp_path / "hf_home")}
    env.pop("HF_TOKEN", None)
    out = tmp_path / "run"
    flags = ["--recipe", str(recipe), "--output_dir", str(out), "--dataset_name", "train/tiny"]
    flags += ["--image_column_name", "picture", "--label_column_name", "kind", "--num_train_epochs", "1"]

    def vortex_train(*extra):
        cmd = [sys.executable, "-m", "vortex", "train", *flags, *extra]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

    done = vortex_train("--dataset_config_name", "gray", "--max_train_samples", "12")
    assert done.returncode == 0, done.stderr[-3000:]
    recipe_used = json.loads((out / "vortex.json").read_text())["recipe"]
    assert (recipe_used["dataset"], recipe_used["dataset_config_name"]) == ("train/tiny", "gray")
    assert (recipe_used["image_column_name"], recipe_used["label_column_name"]) == ("picture", "kind")
    assert json.loads((out / "config.json").read_text())["num_classes"] == 3
    other = vortex_train("--dataset_config_name", "rgb", "--resume_from_checkpoint", "latest")
    assert other.returncode != 0 and "saved by a run with other settings" in other.stderr


def test_the_command_line_parses_into_the_config_a_caller_builds():
    argv = ["--recipe", "cnn_digits", "--output-dir", "runs/x", "--target_gpz", "4", "--dataset", "digits"]
    argv += ["--num_train_epochs", "2", "--batch_size", "32", "--learning_rate", "0.01", "--trust-code", "a.b:c"]
    argv += ["--trust_code", "d.e:f", "--with_tracking", "--privacy-attack", "enhanced", "--checkpointing_steps", "6"]
    expected = TrainConfig(
        recipe="cnn_digits",
        output_dir="runs/x",
        target_gpz=4,
        dataset_name="digits",
        num_train_epochs=2,
        per_device_train_batch_size=32,
        learning_rate=0.01,
        trust_code=["a.b:c", "d.e:f"],
        with_tracking=True,
        privacy_attack="enhanced",
        checkpointing_steps="6",
    )
    assert parse_config(argv) == expected and parse_config([]) == TrainConfig()
    with pytest.raises(VortexError, match="privacy_attack must be one of decoder, enhanced, got 'optimize'"):
        TrainConfig(privacy_attack="optimize")
    with pytest.raises(VortexError, match="target_gpz must be a whole number or None, got '4'"):
        TrainConfig(target_gpz="4")


def test_the_python_api_returns_the_records_it_wrote(recipe, tmp_path, monkeypatch):
    """`train(TrainConfig(...))` with a Recipe and a target: the TrainResult is what vortex.json holds."""
    quick = functools.partial(PrivacyCriterion, epochs=2, aux_samples=200, private_samples=100)
    monkeypatch.setattr("vortex.training.loop.PrivacyCriterion", quick)  # a short verdict attack
    tiny = dataclasses.replace(load_recipe(recipe), controller={"probe_samples": 64})
    config = TrainConfig(recipe=tiny, output_dir=tmp_path / "api", target_gpz=3, baseline="none", num_train_epochs=1)
    result = train_api(config)
    meta = json.loads((tmp_path / "api" / "vortex.json").read_text())
    assert result.output_dir == Path(tmp_path / "api") and result.status in (0, TARGET_MISSED)
    assert result.status == (0 if meta["target_reached"] else TARGET_MISSED)
    assert result.test_accuracy == meta["test_accuracy"] and meta["recipe"]["epochs"] == 1
    assert result.profile == Profile.from_dict(json.loads((tmp_path / "api" / "profile.json").read_text()))
    assert len(result.profile.splits) == len(meta["splits"]) and result.profile.gpz.index == meta["reached_gpz"]
    assert result.controller == ControllerSummary.from_dict(meta["controller"])
    assert result.privacy == meta["privacy"] and result.target_reached is meta["target_reached"]
    assert train_api(dataclasses.replace(config, resume_from_checkpoint="latest")) == result  # finished: read back
