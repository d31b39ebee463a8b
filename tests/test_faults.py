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
    "recipe,flags,message",
    [
        ("epochs: eight\n", [], "epochs must be a whole number, got 'eight'"),
        ("epochs: 0\n", [], "epochs must be at least 1, got 0"),
        ("batch_size: 0\n", [], "batch_size must be at least 1, got 0"),
        ("optimizer: {name: adamw, lr: -0.1}\n", [], "optimizer lr must be a positive number, got -0.1"),
        ("optimizer: {name: adamw, lr: fast}\n", [], "optimizer lr must be a positive number, got 'fast'"),
        ("", ["--lr", "0"], "optimizer lr must be a positive number, got 0.0"),
        ("", ["--lr", "-1"], "optimizer lr must be a positive number, got -1.0"),
        ("optimizer: {name: sgd, lr: 0.1, momentum: x}\n", [], "optimizer momentum must be a number of at least 0"),
        ("optimizer: {name: adamw, weight_decay: heavy}\n", [], "optimizer weight_decay must be a number of at least"),
        ("optimizer: {name: adamw, betas: 0.9}\n", [], "recipe optimizer has unknown keys ['betas']"),
        ("probe: {max_samples: x}\n", [], "probe max_samples must be a whole number of at least 1 or null, got 'x'"),
        ("probe: {batch_size: 0}\n", [], "probe batch_size must be a whole number of at least 1, got 0"),
        ("controller: {every: two}\n", [], "controller every must be a whole number of at least 1, got 'two'"),
        ("controller: {pull: -1}\n", [], "controller pull must be a number of at least 0, got -1"),
        ("controller: {speed: 3}\n", [], "unknown controller keys ['speed']"),
        ("model_options: {depth: 3}\n", [], "model_options ['depth'] are not options of cnn; it takes width"),
        ("label_smoothing: 0.95\n", [], "must stay below (C-1)/C = 0.900 for 10 classes"),
        ("epochs: [1\n", [], "is not valid YAML at line"),
        ("- a list\n", [], "must be a YAML mapping of keys to values"),
        ("model_options: 3\n", [], "model_options must be a mapping"),
    ],
)
def test_bad_settings_are_one_line_before_any_work(tmp_path, recipe, flags, message):
    """A bad value in the recipe or on the command line (applied to the recipe, then checked) is
    refused before training starts: no state is saved, no checkpoint written."""
    path, out = tmp_path / "bad.yaml", tmp_path / "out"
    path.write_text(TINY.replace("epochs: 2\n", "") + recipe if recipe.startswith("epochs") else TINY + recipe)
    if recipe.startswith(("- a list", "epochs: [1")):
        path.write_text(recipe)
    with pytest.raises(VortexError, match=re.escape(message)):
        train(["--recipe", str(path), "--output_dir", str(out), *flags])
    assert not (out / "state").exists() and not (out / "model.safetensors").exists()


def test_an_output_dir_that_is_a_file_is_refused_at_once(tmp_path):
    (tmp_path / "taken").write_text("not a directory")
    with pytest.raises(VortexError, match="--output_dir .*taken is a file, not a directory"):
        train(["--output_dir", str(tmp_path / "taken")])


def test_a_nan_loss_stops_training_at_its_step(tmp_path):
    path = tmp_path / "nan.yaml"
    path.write_text(TINY.replace("lr: 0.01", "lr: 1.0e+30"))
    with pytest.raises(VortexError, match=r"the training loss became (nan|inf) at step \d+ \(epoch 1\)") as caught:
        train(["--recipe", str(path), "--output_dir", str(tmp_path / "out")])
    step, last = re.search(
        r"at step (\d+) .*last finite loss (none yet|[\d.]+ at step \d+)", str(caught.value)
    ).groups()
    assert last == "none yet" or last.endswith(f" at step {int(step) - 1}")  # the loss of the step before


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


def _edit(path, **changes):
    """Rewrite a JSON file with some keys changed."""
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


COMMANDS = {  # how each command is pointed at the damaged checkpoint (publish: a dry run, nothing is pushed)
    "probe": lambda c, o: ["probe", "--model", str(c), "--dataset", "digits", "--out", str(o)],
    "attack": lambda c, o: ["attack", "--splits", "1", "--model", str(c), "--dataset", "digits", "--out", str(o)],
    "publish": lambda c, o: ["publish", str(c), "--repo-id", "org/name", "--dry-run"],
    "publish --split": lambda c, o: ["publish", str(c), "--repo-id", "org/name", "--dry-run", "--split", "3"],
}


@pytest.mark.parametrize(
    "damage,command,message",
    [
        (
            lambda c: _truncate(c / "model.safetensors"),
            "probe",
            "model.safetensors' is not a readable safetensors file",
        ),
        (lambda c: (c / "model.safetensors").write_bytes(os.urandom(4096)), "probe", "is not a readable safetensors"),
        (lambda c: (c / "model.safetensors").write_bytes(b""), "probe", "is not a readable safetensors file"),
        (lambda c: (c / "model.safetensors").write_bytes(b""), "publish", "is not a readable safetensors file"),
        (lambda c: (c / "config.json").write_text("{not json"), "probe", "config.json' is not valid JSON"),
        (lambda c: (c / "config.json").write_text("{not json"), "publish", "config.json' is not valid JSON"),
        (lambda c: (c / "config.json").write_text("[1, 2]"), "probe", "config.json' holds a JSON list, not an object"),
        (
            lambda c: _edit(c / "config.json", num_classes=7),
            "probe",
            "model.safetensors' does not fit a cnn model as config.json describes it",
        ),
        (
            lambda c: _edit(c / "config.json", options={"width": 16}),
            "probe",
            "model.safetensors' does not fit a cnn model as config.json describes it",
        ),
        (
            lambda c: _edit(c / "config.json", architecture="resnet18", options={}),
            "publish",
            "model.safetensors' does not fit a resnet18 model as config.json describes it",
        ),
        (
            lambda c: _edit(c / "config.json", in_channels="one"),
            "probe",
            "config.json' does not describe a model (ValueError",
        ),
        (
            lambda c: _edit(c / "config.json", architecture=5),
            "probe",
            "config.json' does not describe a model (TypeError: architecture must be a model name, got 5)",
        ),
        (
            lambda c: _edit(c / "config.json", architecture=5),
            "publish",
            "config.json' does not describe a model (TypeError: architecture must be a model name, got 5)",
        ),
        (
            lambda c: _edit(c / "config.json", num_classes=-1),
            "probe",
            "config.json' does not describe a model (ValueError: num_classes must be at least 1, got -1)",
        ),
        (
            lambda c: _edit(c / "edge" / "config.json", split="x"),
            "publish",
            "edge/config.json' is damaged: its split is 'x', not a record of the split",
        ),
        (lambda c: (c / "vortex.json").write_text("{"), "attack", "vortex.json' is not valid JSON"),
        (lambda c: (c / "vortex.json").write_text("{"), "publish", "ckpt/vortex.json' is not valid JSON"),
        (lambda c: (c / "vortex.json").write_text("{"), "publish --split", "ckpt/vortex.json' is not valid JSON"),
    ],
)
def test_a_damaged_checkpoint_is_one_line_naming_the_file(tiny_checkpoint, tmp_path, capsys, damage, command, message):
    from vortex.cli.main import main as vortex

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    damage(ckpt)
    assert vortex(COMMANDS[command](ckpt, tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert err.startswith("vortex: error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert ".publish-" not in err  # the user's file is named, never a staging copy


def test_a_half_config_with_a_damaged_split_is_one_line(tiny_checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    _edit(ckpt / "cloud" / "config.json", split="x")
    for load in (lambda: load_half(ckpt, "cloud"), lambda: from_pretrained(ckpt, part="cloud")):
        with pytest.raises(VortexError, match=r"cloud/config.json' is damaged: its split is 'x'"):
            load()
    _edit(ckpt / "cloud" / "config.json", split={"index": 3, "name": "block3"})
    with pytest.raises(VortexError, match=r"its split needs a whole-number index and z_bytes and a name"):
        load_half(ckpt, "cloud")


def test_a_custom_model_that_cannot_take_the_data_is_one_line(tmp_path, capsys, monkeypatch):
    from vortex.cli.main import main as vortex

    (tmp_path / "wrongshape.py").write_text(
        "from torch import nn\n\ndef build(num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["probe", "--model", "wrongshape:build", "--dataset", "digits", "--out", str(tmp_path / "o")]
    assert vortex(args) == 2
    err = capsys.readouterr().err
    assert "'wrongshape:build' cannot run on the data's images of shape (1, 8, 8): mat1 and mat2" in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "content,message",
    [("{", "vortex.json' is not valid JSON"), ('{"test_accuracy": "high"}', "records no test accuracy")],
)
def test_a_malformed_baseline_is_one_line_before_training(tmp_path, content, message):
    recipe, base, out = tmp_path / "t.yaml", tmp_path / "base", tmp_path / "out"
    recipe.write_text(TINY + "controller: {probe_samples: 32}\n")
    base.mkdir()
    (base / "vortex.json").write_text(content)
    with pytest.raises(VortexError, match=re.escape(message)):
        train(["--recipe", str(recipe), "--output_dir", str(out), "--target-gpz", "3", "--baseline", str(base)])
    assert not (out / "state").exists()


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


def _shifted(ckpt):
    """The checkpoint's model, spec and split names, with other weights."""
    model, spec, names = load_checkpoint(ckpt)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    return model, spec, names


def test_an_interrupted_final_save_leaves_the_previous_checkpoint(tiny_checkpoint, tmp_path, monkeypatch):
    """New weights are saved and the save dies while cutting the halves: every file of the previous
    checkpoint is still there, unchanged and loadable; the next save clears what the interrupted one left."""
    from hub_helpers import tree_bytes

    from vortex.hub import checkpoint

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    before, meta = tree_bytes(ckpt), json.loads((ckpt / "vortex.json").read_text())
    model, spec, names = _shifted(ckpt)

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "write_halves", dies)
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save_checkpoint(ckpt, model, spec, names, meta=meta)
    assert {k: v for k, v in tree_bytes(ckpt).items() if not k.startswith(".")} == before
    load_checkpoint(ckpt), load_half(ckpt, "edge"), load_half(ckpt, "cloud")
    checkpoint.save_checkpoint(ckpt, model, spec, names, meta=meta)
    assert not list(ckpt.glob(".checkpoint*")) and tree_bytes(ckpt)["model.safetensors"] != before["model.safetensors"]
    load_checkpoint(ckpt), load_half(ckpt, "edge")


def test_a_save_that_dies_while_moving_into_place_leaves_no_numbers_and_no_mix(tiny_checkpoint, tmp_path, monkeypatch):
    """Even a crash within the final renames (the new weights in, the new config not yet): the old
    vortex.json and card are gone, and the hashes refuse the old config and halves beside the new weights."""
    from vortex.hub import checkpoint

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    model, spec, names = _shifted(ckpt)
    replace = os.replace

    def dies_at_the_config(source, target):
        if str(source).endswith(".checkpoint.partial/config.json"):
            raise KeyboardInterrupt
        replace(source, target)

    monkeypatch.setattr(checkpoint.os, "replace", dies_at_the_config)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(ckpt, model, spec, names, meta=json.loads((ckpt / "vortex.json").read_text()))
    monkeypatch.undo()
    assert not (ckpt / "vortex.json").exists() and not (ckpt / "README.md").exists()
    with pytest.raises(VortexError, match=r"model.safetensors' does not match the hash in config.json"):
        load_checkpoint(ckpt)
    with pytest.raises(VortexError, match="was cut from other weights than"):
        load_half(ckpt, "edge")


def test_a_new_checkpoint_replaces_every_file_of_the_old_one(tiny_checkpoint, tmp_path):
    """What was measured on the old weights (profile, attack results, plots, ONNX, halves, card) goes;
    training state, logs, the baseline, best-point weights, the lock and the user's files stay."""
    from vortex.hub.checkpoint import file_sha256, save_checkpoint

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    stale = ["attack.json", "attack.png", "attack/attack.json", "vortex.png", "privacy/recon_split3.png", "model.onnx"]
    kept = ["state/step_4/vortex_state.json", "logs/events", "best/model.safetensors", "baseline/vortex.json"]
    kept += [".vortex.lock", "notes.txt"]
    for name in [*stale, *kept, "edge/model.onnx"]:
        (ckpt / name).parent.mkdir(parents=True, exist_ok=True)
        (ckpt / name).write_text(name)
    model, spec, names = _shifted(ckpt)
    save_checkpoint(ckpt, model, spec, names, meta={}, card=False)  # no profile, no GPZ: no halves either
    left = sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file())
    assert left == sorted(["config.json", "model.safetensors", "vortex.json", *kept])
    digest = file_sha256(ckpt / "model.safetensors")
    config, meta = (json.loads((ckpt / name).read_text()) for name in ("config.json", "vortex.json"))
    assert config["weights_sha256"] == meta["weights_sha256"] == digest and "halves_sha256" not in config
    load_checkpoint(ckpt)


def test_full_weights_are_bound_to_their_config_and_numbers(tiny_checkpoint, other_checkpoint, tmp_path):
    from vortex.hub.checkpoint import save_checkpoint

    swapped, bare, numbers, old = (tmp_path / n for n in ("swapped", "bare", "numbers", "old"))
    for ckpt in (swapped, numbers, old):
        shutil.copytree(tiny_checkpoint, ckpt)
    shutil.copy(other_checkpoint / "model.safetensors", swapped / "model.safetensors")
    for load in (load_checkpoint, from_pretrained):
        with pytest.raises(VortexError, match=r"swapped/model.safetensors' does not match the hash in config.json"):
            load(swapped)
    model, spec, names = load_checkpoint(tiny_checkpoint)
    save_checkpoint(bare, model, spec, names, meta={}, card=False)  # no halves: the hash is recorded all the same
    shutil.copy(other_checkpoint / "model.safetensors", bare / "model.safetensors")
    with pytest.raises(VortexError, match=r"bare/model.safetensors' does not match the hash in config.json"):
        load_checkpoint(bare)
    shutil.copy(other_checkpoint / "vortex.json", numbers / "vortex.json")
    with pytest.raises(VortexError, match=r"numbers/vortex.json' describes other weights than"):
        load_checkpoint(numbers)
    config = json.loads((old / "config.json").read_text())
    del config["weights_sha256"]  # as an older vortex wrote it
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(VortexError, match=r"records no hash of model.safetensors; save the checkpoint again"):
        load_checkpoint(old)


@pytest.mark.parametrize("split", [None, "3"])
def test_publish_pushes_only_files_that_belong_together(tiny_checkpoint, other_checkpoint, tmp_path, split):
    from hub_helpers import tree_bytes

    from vortex.hub.repo import publish

    halves, weights = tmp_path / "halves", tmp_path / "weights"
    for ckpt in (halves, weights):
        shutil.copytree(tiny_checkpoint, ckpt)
    shutil.rmtree(halves / "edge")
    shutil.copytree(other_checkpoint / "edge", halves / "edge")
    shutil.copy(other_checkpoint / "model.safetensors", weights / "model.safetensors")
    if split is None:  # halves kept as they are are checked; --split cuts new ones
        with pytest.raises(VortexError, match="belongs to another checkpoint"):
            publish(halves, "org/name", dry_run=True)
    else:
        assert publish(halves, "org/name", dry_run=True, split=split).halves["index"] == 3
    before = tree_bytes(weights)
    with pytest.raises(VortexError, match=r"model.safetensors' does not match the hash in config.json"):
        publish(weights, "org/name", dry_run=True, split=split)
    assert tree_bytes(weights) == before


TRAIN_WHEN_TOLD = """
import sys, time
from pathlib import Path

import vortex.training.loop  # noqa: F401  (the slow imports, done before the start)
from vortex.cli.main import main

ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():  # both start at once, when the test says so
    time.sleep(0.01)
sys.exit(main(["train", *sys.argv[3:]]))
"""


def test_two_concurrent_trainings_into_one_directory(tmp_path):
    """Two real `vortex train` processes into one --output_dir, started at the same instant: exactly
    one trains and writes its checkpoint; the other fails while it runs, with one line naming it."""
    recipe, out, script, go = tmp_path / "t.yaml", tmp_path / "shared", tmp_path / "train.py", tmp_path / "go"
    recipe.write_text(TINY.replace("epochs: 2", "epochs: 4"))
    script.write_text(TRAIN_WHEN_TOLD)
    logs = {(i, stream): tmp_path / f"{stream}{i}" for i in (0, 1) for stream in ("out", "err")}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / f"ready{i}"), str(go), "--recipe", str(recipe)]
            + ["--output_dir", str(out)],
            stdout=logs[i, "out"].open("w"),
            stderr=logs[i, "err"].open("w"),
        )
        for i in (0, 1)
    ]
    ended: dict[int, float] = {}
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready{i}").exists() for i in (0, 1)):
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, logs[0, "err"].read_text()
            time.sleep(0.02)
        go.touch()
        while len(ended) < 2 and time.monotonic() < deadline + 120:
            ended.update({i: time.monotonic() for i, p in enumerate(procs) if i not in ended and p.poll() is not None})
            time.sleep(0.01)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [logs[i, "err"].read_text()[-2000:] for i in (0, 1)]
    won, lost = (0, 1) if procs[0].returncode == 0 else (1, 0)
    err = logs[lost, "err"].read_text()
    assert "Traceback" not in err and ended[lost] < ended[won], err  # it failed while the other trained
    assert err.strip().splitlines()[-1] == (
        f"vortex: error: {out} is in use by vortex pid {procs[won].pid}: wait for it to finish, or choose "
        "another --output_dir"
    )
    assert "checkpoint written" in logs[won, "out"].read_text()
    load_checkpoint(out)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
@pytest.mark.parametrize("command", ["train", "probe", "attack"])
def test_an_output_dir_that_cannot_be_written_is_refused_at_once(tiny_checkpoint, tmp_path, capsys, command):
    from vortex.cli.main import main as vortex

    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        for out, what in ((readonly, "cannot be written"), (readonly / "new", f"cannot be created in {readonly}")):
            flag = "--output_dir" if command == "train" else "--out"
            args = [command] if command == "train" else COMMANDS[command](tiny_checkpoint, out)[:-2]
            started = time.perf_counter()
            assert vortex([*args, flag, str(out)]) == 2
            err = capsys.readouterr().err
            assert f"{flag} {out} {what}: pick a directory you can write to" in err, err
            assert time.perf_counter() - started < 10 and not list(readonly.iterdir())
    finally:
        readonly.chmod(0o700)


@pytest.mark.parametrize("command", ["probe", "attack"])
def test_an_out_that_is_a_file_is_refused_before_any_work(tiny_checkpoint, tmp_path, capsys, command):
    from vortex.cli.main import main as vortex

    (tmp_path / "taken").write_text("a file")
    args = [command, "--model", str(tiny_checkpoint), "--dataset", "digits", "--out", str(tmp_path / "taken")]
    started = time.perf_counter()
    assert vortex(args) == 2
    err = capsys.readouterr().err
    assert "--out " in err and "taken is a file, not a directory" in err and time.perf_counter() - started < 10
