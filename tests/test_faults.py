"""Trust: nothing vortex reads (a config, a saved state) runs code; states resume only into their own run."""

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from vortex.errors import VortexError
from vortex.files import locked
from vortex.hub.checkpoint import load_checkpoint, load_half
from vortex.hub.loading import load_model
from vortex.hub.repo import from_pretrained
from vortex.models import ModelSpec, build_model
from vortex.training.loop import RUN_STATE
from vortex.training.loop import main as train

TINY = """
model: cnn
model_options: {width: 4}
dataset: digits
seed: 1
epochs: 2
batch_size: 64
max_train_samples: 128
optimizer: {name: adamw, lr: 0.01, weight_decay: 0.0}
probe: {max_samples: 100, batch_size: 100}
"""


def plant_code(config_path, marker):
    """Rewrite a config so that building its model would run `touch marker` through os.system."""
    config = json.loads(config_path.read_text())
    config.update(architecture="os:system", options={"command": f"touch {marker}"})
    config_path.write_text(json.dumps(config))


@pytest.mark.parametrize("config", ["config.json", "edge/config.json", "cloud/config.json"])
@pytest.mark.parametrize("part", ["edge", "cloud", "full"])
def test_a_local_config_naming_code_never_runs_it(tiny_checkpoint, tmp_path, config, part):
    ckpt, marker = tmp_path / "ckpt", tmp_path / "ran"
    shutil.copytree(tiny_checkpoint, ckpt)
    plant_code(ckpt / config, marker)
    with pytest.raises(VortexError, match=r"names the architecture 'os:system'.*--trust-code os:system"):
        from_pretrained(ckpt, part=part)
    assert not marker.exists()


def test_loaders_below_the_download_check_refuse_code_too(tiny_checkpoint, tmp_path):
    ckpt, marker = tmp_path / "ckpt", tmp_path / "ran"
    shutil.copytree(tiny_checkpoint, ckpt)
    for config in ("config.json", "edge/config.json"):
        plant_code(ckpt / config, marker)
    message = r"names code to import \('os:system'\).*--trust-code os:system"
    with pytest.raises(VortexError, match=message):
        load_checkpoint(ckpt)
    with pytest.raises(VortexError, match=message):
        load_half(ckpt, "edge")
    with pytest.raises(VortexError, match=message):  # `vortex probe/attack --model DIR`
        load_model(str(ckpt), num_classes=10, data_channels=1, data_size=8)
    assert not marker.exists()


def test_code_named_by_the_user_is_built(tmp_path, monkeypatch):
    (tmp_path / "usernet.py").write_text(
        "from torch import nn\n\ndef build(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ModelSpec("usernet:build", 10, 1, 8)
    with pytest.raises(VortexError, match="never imports code named by a file"):
        build_model(spec)
    assert "usernet" not in sys.modules
    assert build_model(spec, trust_code=["usernet:build"])(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    # a --model given by the user is trusted as it is
    loaded = load_model("usernet:build", num_classes=10, data_channels=1, data_size=8)
    assert loaded.spec.architecture == "usernet:build"


class Planted:
    """A pickle that creates a marker file when it is unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY)
    assert train(["--recipe", str(recipe), "--output_dir", str(root / "out"), "--checkpointing_steps", "1"]) == 0
    return recipe, root / "out"


def test_state_is_json_and_planted_pickles_never_load(run, tmp_path):
    recipe, out = run
    state = out / "state" / "step_2"
    saved = json.loads((state / RUN_STATE).read_text())
    assert saved["step"] == 2 and len(saved["fingerprint"]) == 16
    assert not list(state.glob("custom_checkpoint_*"))
    resumed, marker = tmp_path / "resumed", tmp_path / "ran"
    shutil.copytree(state, resumed / "state" / "step_2")
    # Accelerate's own files load with weights_only=True: a planted RNG state is skipped, never run
    (resumed / "state" / "step_2" / "random_states_0.pkl").write_bytes(pickle.dumps(Planted(marker)))
    assert train(["--recipe", str(recipe), "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"]) == 0
    assert not marker.exists()
    # what register_for_checkpointing would unpickle with weights_only=False is refused outright
    (resumed / "state" / "step_2" / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Planted(marker)))
    with pytest.raises(VortexError, match=r"holds custom_checkpoint_0.pkl: pickled state that vortex never writes"):
        train(
            [
                "--recipe",
                str(recipe),
                "--output_dir",
                str(resumed),
                "--resume_from_checkpoint",
                str(resumed / "state" / "step_2"),
            ]
        )
    assert not marker.exists()


def test_resume_refuses_a_state_of_other_settings(run, tmp_path, capsys):
    recipe, out = run
    other = tmp_path / "other"
    shutil.copytree(out / "state" / "step_2", other / "state" / "step_2")
    with pytest.raises(VortexError, match="saved by a run with other settings"):
        train(
            ["--recipe", str(recipe), "--output_dir", str(other), "--resume_from_checkpoint", "latest", "--lr", "0.5"]
        )
    assert not (other / "model.safetensors").exists()


def test_latest_skips_a_half_written_state(run, tmp_path):
    recipe, out = run
    target = tmp_path / "partial"
    shutil.copytree(out / "state" / "step_2", target / "state" / "step_2")
    shutil.copytree(out / "state" / "step_3", target / "state" / "step_3")
    (target / "state" / "step_3" / RUN_STATE).unlink()  # as a kill inside an old-style save would leave it
    shutil.copytree(out / "state" / "step_3", target / "state" / ".step_4.partial")
    assert train(["--recipe", str(recipe), "--output_dir", str(target), "--resume_from_checkpoint", "latest"]) == 0
    log = json.loads((target / "vortex.json").read_text())
    assert log["test_accuracy"] == json.loads((out / "vortex.json").read_text())["test_accuracy"]


def test_resuming_a_finished_run_keeps_its_numbers(run, tmp_path, capsys):
    recipe, out = run
    done = tmp_path / "done"
    shutil.copytree(out, done)
    before = (done / "vortex.json").read_bytes()
    last = max(int(p.name.split("_")[1]) for p in (done / "state").glob("step_*"))
    assert train(["--recipe", str(recipe), "--output_dir", str(done), "--resume_from_checkpoint", "latest"]) == 0
    assert "holds this run, finished" in capsys.readouterr().out
    assert (done / "vortex.json").read_bytes() == before and last == 4


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    from hub_helpers import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("other") / "ckpt", seed=1)


@pytest.mark.parametrize("layout", ["checkpoint", "pulled"])  # pulled: config.json + edge/ only
def test_a_half_from_another_run_is_refused(tiny_checkpoint, other_checkpoint, tmp_path, layout):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    if layout == "pulled":
        for name in ckpt.iterdir():
            if name.name not in ("config.json", "edge"):
                shutil.rmtree(name) if name.is_dir() else name.unlink()
    shutil.rmtree(ckpt / "edge")
    shutil.copytree(other_checkpoint / "edge", ckpt / "edge")
    with pytest.raises(VortexError, match=r"belongs to another checkpoint: config.json records other edge weights"):
        from_pretrained(ckpt, part="edge")


def test_a_replaced_half_file_is_refused_by_its_hash(tiny_checkpoint, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    weights = ckpt / "cloud" / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:  # same tensors and metadata, other values
        tensors, metadata = {k: f.get_tensor(k) * 1.01 for k in f.keys()}, f.metadata()
    save_file(tensors, str(weights), metadata=metadata)
    with pytest.raises(VortexError, match=r"model.safetensors' does not match the hash in cloud/config.json"):
        load_half(ckpt, "cloud")


def test_halves_cut_from_other_full_weights_are_refused(tiny_checkpoint, other_checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    shutil.copy(other_checkpoint / "model.safetensors", ckpt / "model.safetensors")
    config = json.loads((ckpt / "config.json").read_text())
    config.pop("halves_sha256")  # even without the top-level record the full weights give it away
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(VortexError, match=r"was cut from other weights than"):
        load_half(ckpt, "edge")


def test_halves_record_their_hashes(tiny_checkpoint):
    from vortex.hub.checkpoint import file_sha256

    config = json.loads((tiny_checkpoint / "config.json").read_text())
    for part in ("edge", "cloud"):
        digest = file_sha256(tiny_checkpoint / part / "model.safetensors")
        assert config["halves_sha256"][part] == digest
        half = json.loads((tiny_checkpoint / part / "config.json").read_text())
        assert half["sha256"] == {"weights": digest, "model": file_sha256(tiny_checkpoint / "model.safetensors")}
    import hashlib

    assert (
        file_sha256(tiny_checkpoint / "config.json")
        == hashlib.sha256((tiny_checkpoint / "config.json").read_bytes()).hexdigest()
    )


@pytest.mark.parametrize(
    "recipe,message",
    [
        ("epochs: eight\n", "epochs must be a whole number, got 'eight'"),
        ("epochs: 0\n", "epochs must be at least 1, got 0"),
        ("batch_size: 0\n", "batch_size must be at least 1, got 0"),
        ("optimizer: {name: adamw, lr: -0.1}\n", "optimizer lr must be a positive number, got -0.1"),
        ("optimizer: {name: adamw, lr: fast}\n", "optimizer lr must be a positive number, got 'fast'"),
        ("model_options: {depth: 3}\n", "model_options ['depth'] are not options of cnn; it takes width"),
        ("label_smoothing: 0.95\n", "must stay below (C-1)/C = 0.900 for 10 classes"),
        ("epochs: [1\n", "is not valid YAML at line"),
        ("- a list\n", "must be a YAML mapping of keys to values"),
        ("model_options: 3\n", "model_options must be a mapping"),
    ],
)
def test_bad_settings_are_one_line_before_any_work(tmp_path, recipe, message):
    path = tmp_path / "bad.yaml"
    path.write_text(TINY.replace("epochs: 2\n", "") + recipe if recipe.startswith("epochs") else TINY + recipe)
    if recipe.startswith(("- a list", "epochs: [1")):
        path.write_text(recipe)
    with pytest.raises(VortexError, match=re.escape(message)):
        train(["--recipe", str(path), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_an_output_dir_that_is_a_file_is_refused_at_once(tmp_path):
    (tmp_path / "taken").write_text("not a directory")
    with pytest.raises(VortexError, match="--output_dir .*taken is a file, not a directory"):
        train(["--output_dir", str(tmp_path / "taken")])


def test_a_nan_loss_stops_training_at_its_step(tmp_path):
    path = tmp_path / "nan.yaml"
    path.write_text(TINY.replace("lr: 0.01", "lr: 1.0e+30"))
    with pytest.raises(VortexError, match=r"the training loss became (nan|inf) at step \d+ \(epoch 1\)"):
        train(["--recipe", str(path), "--output_dir", str(tmp_path / "out")])


def test_two_runs_cannot_write_into_one_directory(run, tmp_path):
    """While one process writes into a directory (here: this test, holding the lock as `vortex
    train` does), a second `vortex train` into it fails at once, naming the holder."""
    recipe, _ = run
    out = tmp_path / "shared"
    out.mkdir()
    with locked(out, "--output_dir"):
        second = subprocess.run(
            [sys.executable, "-m", "vortex", "train", "--recipe", str(recipe), "--output_dir", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"is in use by vortex pid {os.getpid()}: wait for it to finish" in second.stderr
    assert not (out / "model.safetensors").exists()
    assert train(["--recipe", str(recipe), "--output_dir", str(out)]) == 0  # free again once released


def _truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda c: _truncate(c / "model.safetensors"), "model.safetensors' is not a readable safetensors file"),
        (lambda c: (c / "model.safetensors").write_bytes(os.urandom(4096)), "is not a readable safetensors file"),
        (lambda c: (c / "model.safetensors").write_bytes(b""), "is not a readable safetensors file"),
        (lambda c: (c / "config.json").write_text("{not json"), "config.json' is not valid JSON"),
        (lambda c: (c / "config.json").write_text("[1, 2]"), "config.json' holds a JSON list, not an object"),
        (
            lambda c: (c / "config.json").write_text(
                json.dumps({**json.loads((c / "config.json").read_text()), "num_classes": 7})
            ),
            "model.safetensors' does not fit a cnn model as config.json describes it",
        ),
        (
            lambda c: (c / "config.json").write_text(
                json.dumps({**json.loads((c / "config.json").read_text()), "options": {"width": 16}})
            ),
            "model.safetensors' does not fit a cnn model as config.json describes it",
        ),
        (
            lambda c: (c / "config.json").write_text(
                json.dumps({**json.loads((c / "config.json").read_text()), "in_channels": "one"})
            ),
            "config.json' does not describe a model (ValueError",
        ),
        (lambda c: (c / "vortex.json").write_text("{"), "vortex.json' is not valid JSON"),
    ],
)
def test_a_damaged_checkpoint_is_one_line_naming_the_file(tiny_checkpoint, tmp_path, capsys, damage, message):
    from vortex.cli.main import main as vortex

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    damage(ckpt)
    command = ["attack", "--splits", "1"] if "vortex.json" in message else ["probe"]
    assert vortex([*command, "--model", str(ckpt), "--dataset", "digits", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vortex: error: ") and message in err and len(err.strip().splitlines()) == 1, err


DIE_IN_SECOND_SAVE = """
import os, signal, sys
from accelerate import Accelerator

save, calls = Accelerator.save_state, []


def dying(self, *args, **kwargs):  # Accelerate writes its files, then the process is killed
    out = save(self, *args, **kwargs)
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return out


Accelerator.save_state = dying
from vortex.training.loop import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_inside_a_save_leaves_no_state_that_latest_would_pick(run, tmp_path):
    recipe, finished = run
    out, script = tmp_path / "killed", tmp_path / "die.py"
    script.write_text(DIE_IN_SECOND_SAVE)
    args = ["--recipe", str(recipe), "--output_dir", str(out), "--checkpointing_steps", "1"]
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    states = sorted(p.name for p in (out / "state").iterdir())
    assert states == [".step_2.partial", "step_1"]  # the interrupted save never became step_2
    assert train([*args, "--resume_from_checkpoint", "latest"]) == 0
    assert (
        json.loads((out / "vortex.json").read_text())["test_accuracy"]
        == json.loads((finished / "vortex.json").read_text())["test_accuracy"]
    )


def test_a_run_stopped_after_its_last_step_resumes_to_the_right_numbers(run, tmp_path):
    """Interrupted after the last state was saved (e.g. during the final profile): resuming measures
    the accuracy again instead of writing the 0.0 a skipped loop would leave."""
    recipe, finished = run
    out = tmp_path / "stopped"
    shutil.copytree(finished / "state" / "step_4", out / "state" / "step_4")
    assert train(["--recipe", str(recipe), "--output_dir", str(out), "--resume_from_checkpoint", "latest"]) == 0
    got, expected = (json.loads((d / "vortex.json").read_text()) for d in (out, finished))
    assert got["test_accuracy"] == expected["test_accuracy"] > 0
    assert got["profile"]["gpz"] == expected["profile"]["gpz"]


def test_an_interrupted_final_save_leaves_no_numbers_of_other_weights(tiny_checkpoint, tmp_path, monkeypatch):
    """New weights are written, then the save dies while cutting the halves: the directory has no
    vortex.json or card (that would describe the old weights) and the old halves are refused."""
    from vortex.hub import checkpoint

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    model, spec, names = load_checkpoint(ckpt)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "write_halves", dies)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(
            ckpt, model, spec, names, meta=json.loads((tiny_checkpoint / "vortex.json").read_text())
        )
    assert not (ckpt / "vortex.json").exists() and not (ckpt / "README.md").exists()
    with pytest.raises(VortexError, match="was cut from other weights than"):
        load_half(ckpt, "edge")


@pytest.mark.parametrize("command", ["probe", "attack"])
def test_an_out_that_is_a_file_is_refused_before_any_work(tiny_checkpoint, tmp_path, capsys, command):
    from vortex.cli.main import main as vortex

    (tmp_path / "taken").write_text("a file")
    args = [command, "--model", str(tiny_checkpoint), "--dataset", "digits", "--out", str(tmp_path / "taken")]
    started = time.perf_counter()
    assert vortex(args) == 2
    err = capsys.readouterr().err
    assert "--out " in err and "taken is a file, not a directory" in err and time.perf_counter() - started < 10
