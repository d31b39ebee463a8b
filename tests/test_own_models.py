"""Bring your own model: transformers image classifiers (a save_pretrained or Trainer directory, a Hub repo
id) and --init_weights; their hook-cut halves, probe / attack / train / publish. (A torchvision entry point
trained with a target, then probed, attacked and published: tests/test_train.py.)"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file, save_model
from transformers import (
    AutoModelForImageClassification,
    ConvNextConfig,
    ConvNextForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    SwinConfig,
    SwinForImageClassification,
    Trainer,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
)

from vortex.cli.main import main as vortex_main
from vortex.core.hooks import HookSplitModel, logits_of
from vortex.data import load_data
from vortex.errors import SplitError, VortexError
from vortex.hub.checkpoint import file_sha256, load_checkpoint
from vortex.hub.hf_classifier import to_checkpoint
from vortex.hub.layout import read_meta
from vortex.hub.loading import load_init_weights, load_model
from vortex.hub.repo import from_pretrained, publish
from vortex.models import ModelSpec, build_model
from vortex.training.loop import main as train

# a tiny run: 200 training images, a 100-image probe set, few controller measurements
RECIPE = """
dataset: digits
seed: 0
epochs: 1
batch_size: 32
max_train_samples: 300
optimizer: {name: adamw, lr: 0.003, weight_decay: 0.0}
probe: {max_samples: 100, batch_size: 100}
controller: {probe_samples: 100, probe_batch_size: 100, every: 5}
"""


def tiny_vit(num_labels: int = 3) -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=num_labels,
    )
    return ViTForImageClassification(config)


def tiny_resnet(num_labels: int = 10, channels: int = 1) -> ResNetForImageClassification:
    torch.manual_seed(0)
    config = ResNetConfig(
        num_channels=channels, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"
    )
    config.num_labels = num_labels
    return ResNetForImageClassification(config)


def tiny_convnext() -> ConvNextForImageClassification:
    torch.manual_seed(0)
    return ConvNextForImageClassification(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2))


def saved(model, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE)
    return path


def cli(*args) -> int:
    return vortex_main([str(a) for a in args])


@pytest.mark.parametrize("make,side", [(tiny_vit, 8), (tiny_resnet, 16), (tiny_convnext, 16)])
def test_hook_halves_rebuild_the_model_and_hold_only_their_tensors(make, side, tmp_path):
    model = make().eval()
    channels = model.config.num_channels
    sm = HookSplitModel(model, torch.zeros(1, channels, side, side))
    x = torch.rand(3, channels, side, side)
    with torch.no_grad():
        want = logits_of(model(x))
        for k in range(1, sm.num_splits + 1):
            edge, cloud = sm.edge(k), sm.cloud(k)
            torch.testing.assert_close(cloud(edge(x)), want, rtol=1e-4, atol=1e-5)
            assert set(edge.state_dict()) | set(cloud.state_dict()) <= set(model.state_dict())
    # the edge at split 1 holds the stem only, and its file loads into another model's edge
    edge = sm.edge(1)
    assert sum(p.numel() for p in edge.parameters()) < sum(p.numel() for p in model.parameters()) / 2
    save_model(edge, str(tmp_path / "edge.safetensors"))
    assert set(load_file(tmp_path / "edge.safetensors")) == set(edge.state_dict())
    torch.manual_seed(1)
    other = HookSplitModel(type(model)(model.config).eval(), torch.zeros(1, channels, side, side)).edge(1)
    other.load_state_dict(load_file(tmp_path / "edge.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(other(x), edge(x))


def test_a_cut_that_more_than_z_crosses_is_refused():
    """Swin hands the patch grid's size from its embeddings to every stage: the cut after them is refused."""
    torch.manual_seed(0)
    config = SwinConfig(image_size=16, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=2)
    sm = HookSplitModel(SwinForImageClassification(config), torch.zeros(1, 3, 16, 16))
    with pytest.raises(SplitError, match="more than its output crosses that cut"):
        sm.edge(1)


def test_a_transformers_directory_is_probed_with_a_new_head_and_bad_ones_are_one_line(tmp_path, capsys, caplog):
    vit = saved(tiny_vit(num_labels=3), tmp_path / "vit")
    out = tmp_path / "probe"
    assert cli("probe", "--model", vit, "--dataset", "digits", "--out", out, "--max-samples", "100") == 0
    assert "head had 3 labels; replaced by a new one for the data's 10 classes" in caplog.text
    profile = json.loads((out / "profile.json").read_text())
    assert [s["name"] for s in profile["splits"]] == ["vit.embeddings", "vit.layers.0", "vit.layernorm", "classifier"]
    assert profile["splits"][-1]["shape"] == [10]

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((vit / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    capsys.readouterr()
    assert cli("probe", "--model", pickled, "--dataset", "digits", "--out", tmp_path / "p2") == 2
    err = capsys.readouterr().err
    assert "holds no model.safetensors (only pytorch_model.bin)" in err and len(err.strip().splitlines()) == 1
    assert cli("probe", "--model", vit, "--dataset", "digits", "--out", tmp_path / "p3", "--channels", "3") == 2
    assert "takes 1-channel images" in capsys.readouterr().err
    remote = tmp_path / "remote"
    remote.mkdir()
    config = json.loads((vit / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "model_type": "evil", "auto_map": {"x": "m.X"}}))
    save_file({}, str(remote / "model.safetensors"))
    assert cli("probe", "--model", remote, "--dataset", "digits", "--out", tmp_path / "p4") == 2
    assert "never code from a repo" in capsys.readouterr().err
    (remote / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert cli("probe", "--model", remote, "--dataset", "digits", "--out", tmp_path / "p5") == 2
    assert "a bert model, which transformers has no image classifier for" in capsys.readouterr().err


def test_init_weights_are_checked_recorded_and_part_of_the_run(recipe, tmp_path, caplog):
    spec = ModelSpec("cnn", 10, 1, 8)  # what `--model cnn` trains on digits
    model = build_model(spec)
    good = tmp_path / "good.safetensors"
    save_model(model, str(good))
    state = load_file(good)
    save_file({k: v for k, v in state.items() if not k.startswith("logits")}, str(tmp_path / "short.safetensors"))
    save_file({**state, "logits.weight": torch.zeros(3, 128)}, str(tmp_path / "shape.safetensors"))
    (tmp_path / "w.bin").write_bytes(b"\x80\x04K\x01.")
    for name, message in (
        ("short.safetensors", "missing ['logits.bias', 'logits.weight'] (2 in all)"),
        ("shape.safetensors", "other shapes for logits.weight"),
        ("w.bin", "is a pickle file"),
        ("nope.safetensors", "no such file"),
    ):
        with pytest.raises(VortexError, match=re.escape(message)):
            load_init_weights(build_model(spec), tmp_path / name)
    assert load_init_weights(build_model(spec), good) == file_sha256(good)

    flags = ["--recipe", recipe, "--model", "cnn", "--max_train_samples", "128", "--per_device_train_batch_size", "64"]
    flags = [str(f) for f in flags]
    with pytest.raises(VortexError, match="does not fit the model"):  # before any work: no output at all
        train([*flags, "--output_dir", str(tmp_path / "bad"), "--init_weights", str(tmp_path / "short.safetensors")])
    assert not (tmp_path / "bad" / "state").exists()
    out = tmp_path / "run"
    assert train([*flags, "--output_dir", str(out), "--init_weights", str(good)]) == 0
    assert read_meta(out)["init_weights"] == {"path": str(good), "sha256": file_sha256(good)}
    other = tmp_path / "other.safetensors"
    save_file({k: v + 1 for k, v in state.items()}, str(other))
    with pytest.raises(VortexError, match="saved by a run with other settings"):
        train([*flags, "--output_dir", str(out), "--init_weights", str(other), "--resume_from_checkpoint", "latest"])


@pytest.mark.slow
def test_a_transformers_model_trains_with_a_target_and_is_probed_cut_and_published(recipe, tmp_path, capsys):
    vit = saved(tiny_vit(num_labels=3), tmp_path / "vit")
    out = tmp_path / "run"
    flags = ["--recipe", str(recipe), "--model", str(vit), "--output_dir", str(out), "--target-gpz", "3"]
    status = train([*flags, "--baseline", "none"])
    meta = read_meta(out)
    assert status in (0, 3) and [s["index"] for s in meta["privacy"]["splits"]] == [2, 3]
    assert meta["config"]["architecture"] == "transformers" and "base_model" not in meta
    # config.json is the transformers model's: transformers loads the checkpoint as it is
    model, spec, names = load_checkpoint(out)
    hf = AutoModelForImageClassification.from_pretrained(out).eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model.eval()(x).logits)
        k = meta["halves"]["index"]
        edge, cloud = from_pretrained(out, part="edge"), from_pretrained(out, part="cloud")
        torch.testing.assert_close(cloud(edge(x)), hf(x).logits, rtol=1e-4, atol=1e-5)
    assert read_meta(out)["halves"]["edge_params"] < sum(p.numel() for p in hf.parameters()) or k == len(names)

    assert cli("probe", "--model", out, "--dataset", "digits", "--out", tmp_path / "p", "--max-samples", "100") == 0
    capsys.readouterr()  # (the verdict attack above ran on the hook edge; `vortex attack`: the Trainer test)
    assert cli("publish", out, "--repo-id", "org/vit", "--dry-run", "--split", "2") == 0
    listed = capsys.readouterr().out
    assert "edge/model.safetensors" in listed and "cloud/model.safetensors" in listed


def trainer_checkpoint(tmp_path: Path) -> Path:
    """A Trainer run of a tiny transformers ResNet with VortexCallback: output_dir/checkpoint-2."""
    from vortex.training.callback import VortexCallback

    digits = load_data("digits")

    def collate(rows):
        pixels = torch.tensor([r["pixels"] for r in rows], dtype=torch.float32) / 255
        return {"pixel_values": pixels, "labels": torch.tensor([r["label"] for r in rows])}

    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=32,
        max_steps=2,
        save_steps=2,
        remove_unused_columns=False,
        disable_tqdm=True,
        use_cpu=True,
        report_to="none",
    )
    trainer = Trainer(model=tiny_resnet(), args=args, train_dataset=digits["train"], data_collator=collate)
    VortexCallback(digits["test"].select(range(64)), split_points=["resnet.embedder", "resnet.pooler"]).attach(trainer)
    trainer.train()
    trainer.save_model()  # output_dir holds the final model too
    return tmp_path / "trainer" / "checkpoint-2"


@pytest.mark.slow
def test_a_trainer_checkpoint_is_probed_attacked_and_published(tmp_path, capsys):
    ckpt = trainer_checkpoint(tmp_path)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()}
    assert {"config.json", "model.safetensors", "vortex.json", "trainer_state.json"} <= set(before)
    assert cli("probe", "--model", ckpt, "--dataset", "digits", "--out", tmp_path / "p", "--max-samples", "100") == 0
    profile = json.loads((tmp_path / "p" / "profile.json").read_text())
    assert [s["name"] for s in profile["splits"]] == ["resnet.embedder", "resnet.pooler"]  # the callback's splits
    attack = ["--splits", "1", "--epochs", "2", "--max-samples", "64", "--aux-samples", "128"]
    assert cli("attack", "--model", ckpt.parent, "--dataset", "digits", "--out", tmp_path / "a", *attack) == 0
    capsys.readouterr()
    assert cli("publish", ckpt, "--repo-id", "org/trained", "--dry-run") == 0  # halves at the callback's GPZ
    listed = capsys.readouterr().out
    assert "edge/model.safetensors" in listed and "vortex.json" in listed
    assert {p.name: p.read_bytes() for p in ckpt.iterdir() if p.is_file()} == before  # left as it was


@pytest.mark.hub
@pytest.mark.slow
def test_a_hub_transformers_model_is_probed_fine_tuned_from_init_weights_and_records_its_base(
    recipe, tmp_path, monkeypatch, local_hub
):
    """`--model ORG/NAME` served by a local Hub server: a transformers repo (its pickle files never fetched), and
    a repo with pickled weights only (refused in one line); a published transformers checkpoint's edge half pulls."""
    from hub_helpers import SECRET, FakeHub, git_commit
    from huggingface_hub import constants

    olah, fake = local_hub, FakeHub()
    monkeypatch.setattr(constants, "ENDPOINT", fake.url)
    publish(to_checkpoint(saved(tiny_vit(), tmp_path / "vit"), tmp_path / "cut", split=2), "own/cut", token=SECRET)
    fake.close()
    git_commit(olah.mirrors, "own/cut", fake.commits[-1].files, "a transformers model cut at split 2")
    resnet = saved(tiny_resnet(num_labels=10), tmp_path / "resnet")
    files = {p.name: p.read_bytes() for p in resnet.iterdir()}
    git_commit(olah.mirrors, "own/tiny-resnet", {**files, "training_args.bin": b"\x80\x04K\x01."}, "a model")
    pickled = {"config.json": files["config.json"], "pytorch_model.bin": b"\x80\x04K\x01."}
    git_commit(olah.mirrors, "own/pickled", pickled, "pickled weights only")
    init = tmp_path / "init.safetensors"
    save_model(tiny_resnet(num_labels=10), str(init))
    env = {**os.environ, "HF_ENDPOINT": olah.url, "HF_HOME": str(tmp_path / "hf_home")}
    env.pop("HF_TOKEN", None)

    def vortex(*args):
        cmd = [sys.executable, "-m", "vortex", *map(str, args)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

    refused = vortex("probe", "--model", "own/pickled", "--dataset", "digits", "--out", tmp_path / "p0")
    assert refused.returncode == 2 and "safetensors only" in refused.stderr
    assert "Traceback" not in refused.stderr
    out = tmp_path / "run"
    flags = ["--recipe", recipe, "--model", "own/tiny-resnet", "--output_dir", out, "--init_weights", init]
    done = vortex("train", *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = read_meta(out)
    assert meta["base_model"] == "own/tiny-resnet" and meta["init_weights"]["sha256"] == file_sha256(init)
    assert "base_model: own/tiny-resnet" in (out / "README.md").read_text()
    cached = [p.name for p in (tmp_path / "hf_home").rglob("*") if p.is_file()]
    assert "training_args.bin" not in cached
    probed = vortex("probe", "--model", "own/tiny-resnet", "--dataset", "digits", "--out", tmp_path / "p")
    assert probed.returncode == 0, probed.stderr[-3000:]
    pulled = vortex("pull", "own/cut", "--part", "edge", "--out", tmp_path / "edge")
    assert pulled.returncode == 0 and "split 2 (vit.layers.0) of transformers" in pulled.stdout, pulled.stderr
    assert not (tmp_path / "edge" / "cloud").exists() and not (tmp_path / "edge" / "model.safetensors").exists()
    edge = from_pretrained(tmp_path / "edge", part="edge")
    assert edge(torch.rand(2, 1, 8, 8)).shape == (2, 5, 16)


def test_load_model_uses_the_split_points_a_callback_recorded(tmp_path):
    path = saved(tiny_resnet(), tmp_path / "m")
    (path / "vortex.json").write_text(json.dumps({"splits": ["resnet.embedder", "classifier"]}))
    loaded = load_model(str(path), num_classes=10, data_channels=1, data_size=8)
    assert [s.name for s in loaded.split.splits] == ["resnet.embedder", "classifier"]
    assert loaded.spec.architecture == "transformers" and loaded.spec.image_size == 8
