"""vortex.VortexModel from a directory, and the built-in vit's checkpoint read by transformers."""

import json
import shutil

import pytest
import torch
from hub_helpers import make_checkpoint, tree_bytes
from transformers import AutoConfig, AutoModelForImageClassification

import vortex
from vortex.cli.main import main as vortex_main
from vortex.hub.checkpoint import load_checkpoint, save_checkpoint
from vortex.hub.layout import read_meta
from vortex.hub.model import Verdict, VortexModel
from vortex.models import split_model

HALF_FILES = ["config.json", "edge/config.json", "edge/model.safetensors", "vortex.json"]


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("vit") / "ckpt", architecture="vit")


def outputs(model, x):
    with torch.no_grad():
        return model(x)


def test_from_a_directory_logits_and_halves_equal_the_checkpoint(tiny_checkpoint):
    model, _, _ = load_checkpoint(tiny_checkpoint)
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    full = VortexModel.from_pretrained(tiny_checkpoint)
    edge, cloud = (VortexModel.from_pretrained(tiny_checkpoint, part=p) for p in ("edge", "cloud"))
    assert vortex.VortexModel is VortexModel and not full.training
    torch.testing.assert_close(outputs(full, x), outputs(model.eval(), x))
    torch.testing.assert_close(outputs(cloud, outputs(edge, x)), outputs(full, x))
    torch.testing.assert_close(outputs(vortex.from_pretrained(tiny_checkpoint, part="edge"), x), outputs(edge, x))
    meta = read_meta(tiny_checkpoint)
    halves = meta["halves"]
    c = edge.config
    assert (c.part, c.split_index, c.split_name) == ("edge", halves["index"], halves["name"])
    assert c.z_shape == halves["z_shape"]
    assert c.payload_bytes == halves["z_bytes"] and c.gpz == meta["gpz"]["index"] and c.privacy is None
    assert c.model.architecture == "cnn" and c.input_shape == [1, 8, 8]
    assert full.config.split_index == halves["index"] and cloud.config.part == "cloud"


def test_save_pretrained_round_trips(tiny_checkpoint, tmp_path):
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    full = VortexModel.from_pretrained(tiny_checkpoint)
    full.save_pretrained(tmp_path / "full")
    again = VortexModel.from_pretrained(tmp_path / "full")
    torch.testing.assert_close(outputs(again, x), outputs(full, x))
    assert again.config == full.config
    for split in (None, 1):  # the stored half, and one cut from the full weights at split 1
        edge = VortexModel.from_pretrained(tiny_checkpoint, part="edge", split=split)
        out = tmp_path / f"edge{split}"
        edge.save_pretrained(out)
        assert sorted(tree_bytes(out)) == HALF_FILES
        back = VortexModel.from_pretrained(out, part="edge")
        torch.testing.assert_close(outputs(back, x), outputs(edge, x))
        assert back.config == edge.config
    assert VortexModel.from_pretrained(tmp_path / "edge1", part="edge").config.split_index == 1


def test_the_config_carries_the_privacy_verdict(tiny_checkpoint, tmp_path):
    model, spec, names = load_checkpoint(tiny_checkpoint)
    meta = read_meta(tiny_checkpoint)
    k = meta["gpz"]["index"]
    privacy = {
        "target": k,
        "rho_gpz": k,
        "criterion": {"min_mse": 0.02, "attack": "decoder"},
        "splits": [{"index": k - 1, "name": "a", "mse": 0.004}, {"index": k, "name": "b", "mse": 0.031}],
        "protected": True,
        "reached": True,
    }
    save_checkpoint(tmp_path, model, spec, names, meta={**meta, "privacy": privacy}, card=False)
    edge = VortexModel.from_pretrained(tmp_path, part="edge")
    assert edge.config.privacy == Verdict(k, True, True, "decoder", 0.031, 0.02)
    assert edge.config.to_dict()["privacy"]["attack_mse"] == 0.031


def test_transformers_loads_the_vit_checkpoint_with_the_same_logits(vit_checkpoint):
    config = json.loads((vit_checkpoint / "config.json").read_text())
    assert config["model_type"] == "vit" and config["architectures"] == ["ViTForImageClassification"]
    assert len(config["id2label"]) == 10 and (config["image_size"], config["num_channels"]) == (16, 1)
    description = read_meta(vit_checkpoint)["config"]  # vortex's own model description
    assert description["architecture"] == "vit" and description["halves_sha256"]["model"]
    assert AutoConfig.from_pretrained(vit_checkpoint).num_labels == 10
    hf = AutoModelForImageClassification.from_pretrained(vit_checkpoint).eval()
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    ours = VortexModel.from_pretrained(vit_checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).logits, ours(x), atol=1e-5, rtol=0)
    edge, cloud = (VortexModel.from_pretrained(vit_checkpoint, part=p) for p in ("edge", "cloud"))
    torch.testing.assert_close(outputs(cloud, outputs(edge, x)), outputs(ours, x))
    ours.save_pretrained(vit_checkpoint.parent / "again")  # saved again: still transformers' config.json
    again = AutoModelForImageClassification.from_pretrained(vit_checkpoint.parent / "again").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(pixel_values=x).logits, ours(x), atol=1e-5, rtol=0)


def test_probe_attack_and_a_recut_work_on_the_vit_checkpoint(vit_checkpoint, tmp_path):
    work = tmp_path / "vit"
    shutil.copytree(vit_checkpoint, work)
    assert vortex_main(["probe", "--model", str(work), "--dataset", "digits", "--out", str(tmp_path / "probe")]) == 0
    assert json.loads((tmp_path / "probe" / "profile.json").read_text())["gpz"]["index"] >= 1
    fast = ["--aux-samples", "200", "--max-samples", "60", "--epochs", "2", "--splits", "2"]
    attack = ["attack", "--model", str(work), "--dataset", "digits", "--out", str(tmp_path / "a")]
    assert vortex_main([*attack, *fast]) == 0
    assert [s["index"] for s in json.loads((tmp_path / "a" / "attack.json").read_text())["splits"]] == [2]
    model, spec, names = load_checkpoint(work)
    sm = split_model(model, spec, names)
    edge = VortexModel.from_pretrained(work, part="edge", split=1)
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(outputs(edge, x), outputs(sm.edge(1).eval(), x))
