"""The `vortex` command as a user runs it: files written, help, clear errors.

The commands run in this process through `vortex.cli.main.main(argv)` (what the `vortex` console script
and `python -m vortex` call), with stdout / stderr captured; one smoke test starts `python -m vortex`
itself, so the entry point and its exit status are covered too."""

import json
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from vortex.cli.main import main
from vortex.records import Profile

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
HIDDEN = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)  # what stderr would not show


@dataclass
class Ran:
    """What a `vortex` command left: its exit status, what it printed, and the warnings a user would have
    seen on stderr (Python's default filters hide deprecation, import and resource warnings)."""

    returncode: int
    stdout: str
    stderr: str
    warnings: list[str]


@pytest.fixture
def vortex(capsys):
    def run(*args, check: bool = True) -> Ran:
        capsys.readouterr()  # only what this command prints
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse: --help and usage errors
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        out = capsys.readouterr()
        shown = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, HIDDEN)]
        ran = Ran(code, out.out, out.err, shown)
        if check:
            assert ran.returncode == 0, ran.stderr
        return ran

    return run


def test_python_m_vortex_runs_the_command_and_exits_with_its_status(tmp_path):
    """The one subprocess: the entry point itself, a refused --out giving exit status 2 and one line."""
    (tmp_path / "taken").write_text("a file")
    proc = subprocess.run(
        [sys.executable, "-m", "vortex", "probe", "--model", "cnn", "--dataset", "digits", "--out", tmp_path / "taken"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        f"vortex: error: --out {tmp_path / 'taken'} is a file, not a directory: pass a directory "
        "(it is created if missing)\n"
    )


def test_probe_writes_contract_profile_and_plot(tmp_path, vortex):
    proc = vortex("probe", "--model", "cnn", "--dataset", "digits", "--out", tmp_path)
    profile = json.loads((tmp_path / "profile.json").read_text())
    record = Profile.from_dict(profile)  # every field of the record, with its type
    assert record.to_dict() == profile and profile["schema_version"] == 1  # and nothing else
    assert len(profile["splits"]) >= 6
    for i, split in enumerate(profile["splits"], start=1):
        assert split["index"] == i
        assert split["bytes"] == 4 * split["dim"] == 4 * int(np.prod(split["shape"]))
        assert 0 <= split["rho"] <= 1 and split["decisive"] in ("feature", "decision")
    gpz = profile["gpz"]
    assert 1 <= gpz["index"] <= len(profile["splits"]) and gpz["index"] in gpz["zone"]
    assert {"criterion", "drops"} <= set(gpz) and len(gpz["drops"]) == len(profile["splits"]) - 1
    assert profile["num_samples"] == 360 and profile["num_classes"] == 10
    image = Image.open(tmp_path / "profile.png")
    assert image.format == "PNG" and image.size[0] > 500
    assert f"GPZ a priori: split {gpz['index']}" in proc.stdout


def test_help_explains_every_option(vortex):
    out = vortex("probe", "--help").stdout
    for option in (
        "--model",
        "--dataset",
        "--out",
        "--split-points",
        "--labels",
        "--max-samples",
        "--gpz-quantity",
        "--sketch-dim",
    ):
        assert option in out
    top = vortex("--help").stdout
    assert "probe" in top and "train" in top
    train = vortex("train", "--help").stdout
    for option in ("--recipe", "--output_dir", "--resume_from_checkpoint", "--with_tracking", "--label_smoothing"):
        assert option in train


def test_data_options_reach_probe_and_attack(tmp_path, vortex):
    kinds = [i % 2 for i in range(20)]
    pictures = [np.full((8, 8), 100 * k, np.uint8) for k in kinds]
    datasets.Dataset.from_dict({"picture": pictures, "kind": kinds}).to_parquet(tmp_path / "named.parquet")
    data = ["--dataset", tmp_path / "named.parquet", "--image_column_name", "picture"]
    probe = ["probe", "--model", "cnn", *data, "--data-split", "train", "--max-samples", "5"]
    vortex(*probe, "--label_column_name", "kind", "--out", tmp_path / "probe")
    profile = json.loads((tmp_path / "probe" / "profile.json").read_text())
    assert (profile["num_samples"], profile["num_classes"]) == (5, 2)
    wrong = vortex(*probe, "--label_column_name", "klass", "--out", tmp_path / "wrong", check=False)
    assert wrong.returncode == 2 and "no column 'klass' (columns: picture, kind)" in wrong.stderr
    assert "Traceback" not in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1 and not wrong.warnings
    attack = vortex("attack", "--help").stdout
    assert all(f"--{flag}" in attack for flag in ("dataset_config_name", "image_column_name", "label_column_name"))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--split-points", "block1,nope"], "split point 'nope' does not exist"),
        (["--dataset", "no/such/thing/here"], "data set"),
        (["--model", "alexnet"], "unknown model 'alexnet'"),
        (["--model", "mypkg.nowhere:build"], "cannot load model 'mypkg.nowhere:build'"),
        (["--sketch-dim", "0"], "--sketch-dim must be at least 1"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, vortex, args, message):
    base = {"--model": "cnn", "--dataset": "digits", "--out": str(tmp_path)}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    proc = vortex("probe", *[x for kv in base.items() for x in kv], check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and message in proc.stderr


CUSTOM = """
from torch import nn

def build(num_classes, in_channels, image_size):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * image_size * image_size, num_classes))
"""


@pytest.fixture
def importable(tmp_path, monkeypatch):
    """Modules written to `tmp_path` import, as with PYTHONPATH=tmp_path; each test imports its own copy."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("tinynet", None)


@pytest.mark.parametrize("flags,shape", [([], [4 * 8 * 8]), (["--image-size", "12", "--channels", "3"], [4 * 12 * 12])])
def test_custom_model_gets_stored_size_unless_told(importable, vortex, flags, shape):
    assert "tinynet" not in sys.modules
    (importable / "tinynet.py").write_text(CUSTOM)
    vortex("probe", "--model", "tinynet:build", "--dataset", "digits", "--out", importable / "out", *flags)
    profile = json.loads((importable / "out" / "profile.json").read_text())
    assert profile["splits"][0]["shape"] == shape
    assert [s["name"] for s in profile["splits"]] == ["2", "3"]  # the cut goes after conv, ReLU and Flatten


def test_checkpoint_on_data_with_other_classes_is_refused(tmp_path, vortex):
    for label in ("cat", "dog"):
        for i in range(3):
            (tmp_path / "imgs" / label).mkdir(parents=True, exist_ok=True)
            Image.new("L", (8, 8), 40 * i).save(tmp_path / "imgs" / label / f"{i}.png")
    vortex(
        "train",
        "--recipe",
        RECIPES / "cnn_digits.yaml",
        "--output_dir",
        tmp_path / "ckpt",
        "--epochs",
        "1",
        "--max_train_samples",
        "64",
    )
    proc = vortex(
        "probe", "--model", tmp_path / "ckpt", "--dataset", tmp_path / "imgs", "--out", tmp_path / "o", check=False
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "has 10 outputs but the data set has 2 classes" in proc.stderr
