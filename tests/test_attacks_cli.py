"""`vortex attack` on a cnn trained by vortex/train.py: leakage per split, files, repeatability, bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from vortex.attacks.base import AttackConfig
from vortex.attacks.sweep import attack_splits, unseen_train_rows
from vortex.cli.main import main as vortex
from vortex.data import load_data
from vortex.hub.layout import read_meta
from vortex.hub.loading import load_model
from vortex.records import AttackReport
from vortex.training.loop import main as train

RECIPE = """
model: cnn
model_options: {width: 8}
dataset: digits
seed: 0
epochs: 3
batch_size: 64
max_train_samples: 600
optimizer: {name: adamw, lr: 0.01, weight_decay: 0.0}
scheduler: cosine
probe: {max_samples: null, batch_size: 256}
"""
FAST = ["--aux-samples", "400", "--max-samples", "120", "--epochs", "6"]

TUPLE_MODEL = """
from torch import nn

class Pair(nn.Module):
    def forward(self, x):
        return x, 2 * x

class Net(nn.Module):
    def __init__(self, num_classes, in_channels, image_size):
        super().__init__()
        self.stage = nn.ModuleDict({"pair": Pair()})
        self.fc = nn.Linear(in_channels * image_size * image_size, num_classes)

    def forward(self, x):
        a, b = self.stage["pair"](x.flatten(1))
        return self.fc(a + b)
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("attack")
    (root / "recipe.yaml").write_text(RECIPE)
    assert train(["--recipe", str(root / "recipe.yaml"), "--output_dir", str(root / "ckpt")]) == 0
    return root / "ckpt"


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def test_decoder_attack_at_split_1_is_recognisable(checkpoint, digits):
    loaded = load_model(str(checkpoint), num_classes=10, data_channels=1, data_size=8)
    aux, source = unseen_train_rows(digits["train"], read_meta(checkpoint), "digits")
    assert len(aux) == len(digits["train"]) - 600 and "not trained on" in source
    config = AttackConfig(epochs=8, seed=0, progress=False)
    run = lambda: attack_splits(loaded.split, digits["test"], aux, [1], config, aux_samples=400)  # noqa: E731
    (first,) = run()
    assert first.index == 1 and first.metrics["num_images"] == len(digits["test"])
    assert first.metrics["mse"] < 0.02, first.metrics
    assert first.epochs_run <= 8 and first.originals.shape == first.recons.shape == (8, 1, 8, 8)
    (again,) = run()
    assert again.metrics == first.metrics  # seeds make a run repeatable


def test_attack_all_splits_writes_contract_files(checkpoint, tmp_path, capsys):
    out = tmp_path / "atk"
    assert (
        vortex(
            ["attack", "--model", str(checkpoint), "--dataset", "digits", "--splits", "all", "--out", str(out), *FAST]
        )
        == 0
    )
    result = json.loads((out / "attack.json").read_text())
    assert AttackReport.from_dict(result).to_dict() == result  # the record's fields with their types, nothing else
    assert result["attack"] == "decoder" and result["aux_dataset"] == "digits"
    splits = result["splits"]
    assert [s["index"] for s in splits] == list(range(1, 9))
    for s in splits:
        assert s["num_images"] == 120
        assert 0 <= s["mse"] <= 1 and -1 <= s["ssim"] <= 1 and s["psnr"] == pytest.approx(s["psnr"])
    assert splits[-1]["mse"] >= 2 * splits[0]["mse"], [s["mse"] for s in splits]
    saved_gpz = read_meta(checkpoint)["profile"]["gpz"]
    assert result["gpz_predicted"]["index"] == saved_gpz["index"]
    assert result["gpz_predicted"]["source"] == "checkpoint profile"
    mse = [s["mse"] for s in splits]
    rises = np.diff(mse)
    assert result["gpz_posthoc"]["index"] == int(np.argmax(rises)) + 2
    zone = result["gpz_predicted"]["zone"]
    assert result["agreement"] == (result["gpz_posthoc"]["index"] in zone)
    with Image.open(out / "attack.png") as image:
        assert image.format == "PNG" and image.size[0] > 500
    for k in range(1, 9):
        with Image.open(out / f"recon_split{k}.png") as grid:
            assert grid.format == "PNG" and grid.size[0] > grid.size[1]  # two rows of 8 images
    printed = capsys.readouterr().out
    assert "GPZ a priori: split" in printed and "block1" in printed


def test_optimize_and_enhanced_attacks(checkpoint, tmp_path):
    out = tmp_path / "opt"
    assert (
        vortex(
            [
                "attack",
                "--model",
                str(checkpoint),
                "--dataset",
                "digits",
                "--attack",
                "optimize",
                "--splits",
                "1,logits",
                "--steps",
                "150",
                "--max-samples",
                "32",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads((out / "attack.json").read_text())
    assert result["aux_dataset"] is None and [s["index"] for s in result["splits"]] == [1, 8]
    assert result["splits"][0]["mse"] < 0.02 < result["splits"][1]["mse"]
    out = tmp_path / "enh"
    assert (
        vortex(
            [
                "attack",
                "--model",
                str(checkpoint),
                "--dataset",
                "digits",
                "--attack",
                "enhanced",
                "--splits",
                "gpz",
                "--out",
                str(out),
                "--aux-samples",
                "200",
                "--max-samples",
                "64",
                "--epochs",
                "2",
            ]
        )
        == 0
    )
    result = json.loads((out / "attack.json").read_text())
    zone = result["gpz_predicted"]["zone"]
    assert [s["index"] for s in result["splits"]] == list(range(max(1, min(zone) - 1), min(8, max(zone) + 1) + 1))


def test_aux_images_of_another_size_and_channels_are_adapted(checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "rgb" / label).mkdir(parents=True)
        for i in range(25):
            pixels = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "rgb" / label / f"{i}.png")
    out = tmp_path / "o"
    assert (
        vortex(
            [
                "attack",
                "--model",
                str(checkpoint),
                "--dataset",
                "digits",
                "--aux-dataset",
                str(tmp_path / "rgb"),
                "--splits",
                "1,2",
                "--out",
                str(out),
                "--max-samples",
                "32",
                "--epochs",
                "1",
            ]
        )
        == 0
    )
    assert "auxiliary images 3x12x12 are adapted to the model's input 1x8x8" in capsys.readouterr().out
    result = json.loads((out / "attack.json").read_text())
    assert result["aux_dataset"] == str(tmp_path / "rgb") and len(result["splits"]) == 2


@pytest.mark.parametrize(
    "args,message",
    [
        (["--splits", "9"], "split 9 does not exist: valid splits are 1..8"),
        (["--splits", "block1,nope"], "split 'nope' does not exist"),
        (["--aux-samples", "5"], "the auxiliary set has 5 images"),
        (["--attack", "optimize", "--steps", "0"], "--steps must be at least 1"),
        (["--epochs", "0"], "--epochs must be at least 1"),
    ],
)
def test_bad_input_is_one_clear_line(checkpoint, tmp_path, capsys, args, message):
    assert (
        vortex(
            [
                "attack",
                "--model",
                str(checkpoint),
                "--dataset",
                "digits",
                "--out",
                str(tmp_path),
                "--max-samples",
                "16",
                *args,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_split_whose_z_is_not_a_tensor_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "tuplenet.py").write_text(TUPLE_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = [
        "attack",
        "--model",
        "tuplenet:Net",
        "--dataset",
        "digits",
        "--out",
        str(tmp_path / "o"),
        "--max-samples",
        "16",
        "--epochs",
        "1",
        "--aux-samples",
        "64",
    ]
    assert vortex([*base, "--splits", "stage.pair"]) == 2
    assert "split 2 (stage.pair) outputs a tuple, not one tensor" in capsys.readouterr().err
    assert vortex([*base, "--splits", "1,3"]) == 0  # the other splits can still be attacked
    assert "no a-priori GPZ (split stage.pair does not output one tensor)" in capsys.readouterr().out
    result = json.loads((tmp_path / "o" / "attack.json").read_text())
    assert result["gpz_predicted"]["index"] is None and result["agreement"] is None


def test_two_processes_split_the_work_and_give_the_single_process_numbers(checkpoint, tmp_path, torchrun):
    args = [
        "attack",
        "--model",
        str(checkpoint),
        "--dataset",
        "digits",
        "--splits",
        "1,8",
        "--epochs",
        "2",
        "--aux-samples",
        "64",
        "--max-samples",
        "32",
    ]
    assert vortex([*args, "--out", str(tmp_path / "one")]) == 0
    torchrun("-m", "vortex", *args, "--out", str(tmp_path / "two"))
    one, two = (json.loads((tmp_path / d / "attack.json").read_text()) for d in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2)
    for a, b in zip(one["splits"], two["splits"], strict=True):
        for key in ("mse", "psnr", "ssim", "cosine"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (a["index"], key)
    with Image.open(tmp_path / "two" / "recon_split8.png") as grid:  # written by the main process
        assert grid.format == "PNG"


@pytest.mark.parametrize(
    "recipe,flags,same",
    [
        ({"dataset": "org/tiny", "dataset_config_name": "gray"}, ["--dataset_config_name", "gray"], True),
        ({"dataset": "org/tiny", "dataset_config_name": "gray"}, ["--dataset_config_name", "rgb"], False),
        ({"dataset": "org/tiny", "dataset_config_name": "gray"}, [], False),
        ({"dataset": "org/tiny"}, [], True),
        ({"dataset": "digits"}, [], False),  # another data set altogether
        (None, [], True),  # no recipe (a profile from the Trainer callback): the name decides
    ],
)
def test_a_stored_profile_and_unseen_rows_need_the_same_data_config(recipe, flags, same):
    from vortex.cli.attack import same_data
    from vortex.cli.main import build_parser

    args = build_parser().parse_args(["attack", "--model", "m", "--dataset", "org/tiny", "--out", "o", *flags])
    assert same_data(args, {"recipe": recipe} if recipe else {}) is same
