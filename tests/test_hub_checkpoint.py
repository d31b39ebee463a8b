"""Checkpoint halves (cut, stored alone, verified on load) and the model card with its model-index."""

import json
import shutil

import pytest
import torch
from hub_helpers import make_checkpoint
from huggingface_hub import ModelCard
from safetensors import safe_open

from vortex import __version__
from vortex.errors import VortexError
from vortex.files import write_json
from vortex.hub.cards import write_card
from vortex.hub.checkpoint import load_checkpoint, load_half, save_checkpoint
from vortex.hub.layout import read_meta
from vortex.hub.repo import from_pretrained
from vortex.models import split_model


def attack_summary(profile: dict) -> dict:
    """An attack.json (vortex.records.AttackReport): error grows with depth, jumps at the GPZ."""
    gpz = profile["gpz"]["index"]
    splits = [
        {
            "index": s["index"],
            "name": s["name"],
            "mse": 0.01 * s["index"] + (0.05 if s["index"] >= gpz else 0),
            "psnr": 30.0 - 2 * s["index"],
            "ssim": 0.9 - 0.1 * s["index"],
            "cosine": 0.5,
            "num_images": 64,
            "shape": s["shape"],
            "seconds": 1.0,
        }
        for s in profile["splits"]
    ]
    return {
        "vortex_version": "test",
        "model": "cnn",
        "dataset": "digits",
        "aux_dataset": "mnist-5k",
        "attack": "decoder",
        "splits": splits,
        "gpz_predicted": {"index": gpz},
        "gpz_posthoc": {"index": gpz},
        "agreement": True,
    }


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "plain", seed=3)


def test_halves_are_cut_at_the_gpz_and_hold_only_their_tensors(ckpt):
    model, spec, names = load_checkpoint(ckpt)
    model.eval()
    sm = split_model(model, spec, names)
    meta = read_meta(ckpt)
    k = meta["gpz"]["index"]
    assert meta["halves"]["index"] == k and meta["halves"]["name"] == names[k - 1]
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"vortex_version": __version__, "gpz": str(k)}
    for part, module in (("edge", sm.edge(k)), ("cloud", sm.cloud(k))):
        with safe_open(str(ckpt / part / "model.safetensors"), framework="pt") as f:
            assert f.metadata() == {
                "vortex_version": __version__,
                "part": part,
                "split": str(k),
                "split_name": names[k - 1],
            }
            assert set(f.keys()) == set(module.state_dict())
    edge, cloud = load_half(ckpt, "edge"), load_half(ckpt, "cloud")
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(edge(x), sm.edge(k)(x))
        torch.testing.assert_close(cloud(edge(x)), model(x))
        torch.testing.assert_close(from_pretrained(ckpt)(x), model(x))


def test_split_option_cuts_elsewhere(ckpt, tmp_path):
    model, spec, names = load_checkpoint(ckpt)
    save_checkpoint(tmp_path, model, spec, names, meta=read_meta(ckpt), split="block3", card=False)
    assert read_meta(tmp_path)["halves"]["index"] == 3 and not (tmp_path / "README.md").exists()
    edge = from_pretrained(tmp_path, part="edge")
    assert list(edge(torch.zeros(1, 1, 8, 8)).shape[1:]) == read_meta(tmp_path)["halves"]["z_shape"]
    with pytest.raises(VortexError, match="split 12 does not exist: valid splits are 1..8"):
        from_pretrained(tmp_path, part="edge", split=12)
    save_checkpoint(tmp_path, model, spec, names, meta={}, card=False)  # no GPZ, no split: no stale halves
    assert not (tmp_path / "edge").exists() and "halves" not in read_meta(tmp_path)


def claim_other_z_shape(d):
    config = json.loads((d / "edge/config.json").read_text())
    config["split"]["z_shape"] = [3, 3]
    (d / "edge/config.json").write_text(json.dumps(config))


def swap_in_cloud_weights(d):
    (d / "edge/model.safetensors").write_bytes((d / "cloud/model.safetensors").read_bytes())


def drop_edge_weights(d):
    (d / "edge/model.safetensors").unlink()


@pytest.mark.parametrize(
    "tamper,message",
    [
        (claim_other_z_shape, r"but the checkpoint records \[3, 3\]"),
        (swap_in_cloud_weights, "holds the cloud half of split .*, but its config describes the edge half"),
        (drop_edge_weights, "has no edge/ half"),
    ],
)
def test_a_half_that_does_not_match_its_split_is_refused(ckpt, tmp_path, tamper, message):
    shutil.copytree(ckpt, tmp_path / "c")
    tamper(tmp_path / "c")
    with pytest.raises(VortexError, match=message):
        from_pretrained(tmp_path / "c", part="edge")


@pytest.mark.parametrize("source", ["vortex.json", "attack/attack.json"])
def test_card_shows_attack_metrics_per_split_and_parses_back(ckpt, tmp_path, source):
    model, spec, names = load_checkpoint(ckpt)
    attack = attack_summary(read_meta(ckpt)["profile"])
    if source == "vortex.json":
        save_checkpoint(tmp_path, model, spec, names, meta={**read_meta(ckpt), "attack": attack})
    else:  # `vortex attack --out DIR/attack` after training, then the card is refreshed
        save_checkpoint(tmp_path, model, spec, names, meta=read_meta(ckpt))
        write_json(tmp_path / source, attack)
        write_card(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    results = {(r.metric_type, r.metric_config): r for r in card.data.eval_results}
    for s in attack["splits"]:
        for metric in ("mse", "psnr", "ssim"):
            r = results[(metric, f"split_{s['index']}")]
            assert r.task_type == "model-inversion" and r.metric_value == pytest.approx(s[metric])
            assert f"at split {s['index']} ({s['name']})" in r.metric_name
    assert results[("accuracy", None)].metric_value == pytest.approx(read_meta(ckpt)["test_accuracy"])
    assert (card.data.library_name, card.data.license, card.data.datasets) == ("vortex", "other", None)
    assert {"split-inference", "model-inversion"} <= set(card.data.tags)
    text = card.text
    assert (
        "| split | name | z shape | payload (bytes) | edge params | rho | R_c^2 | attack MSE | PSNR (dB) | SSIM |"
    ) in text
    gpz = attack["gpz_predicted"]["index"]
    row = next(line for line in text.splitlines() if line.startswith(f"| {gpz} | "))
    assert "GPZ" in row and f"{attack['splits'][gpz - 1]['mse']:.4g}" in row
    assert f"**Predicted GPZ: split {gpz}**" in text and "they agree" in text and "![profile.png](profile.png)" in text
    assert 'vortex.from_pretrained("ORG/NAME", part="edge")' in text
    assert "negative smoothing" in text and "No inversion attack was run" not in text


def test_card_without_attack_reports_rho_per_split(ckpt):
    card = ModelCard.load(ckpt / "README.md")
    profile = read_meta(ckpt)["profile"]
    rho = {r.metric_config: r.metric_value for r in card.data.eval_results if r.metric_type == "rho"}
    assert rho == {f"split_{s['index']}": pytest.approx(s["rho"], abs=1e-6) for s in profile["splits"]}
    assert "attack MSE" not in card.text and "No inversion attack was run" in card.text
    for split in profile["splits"]:
        assert f"| {split['index']} | `{split['name']}` | " in card.text


@pytest.mark.parametrize("mse,words", [(0.0081, "still leaks"), (0.031, "resists inversion")])
def test_card_states_the_privacy_verdict_not_the_indicator(ckpt, tmp_path, mse, words):
    model, spec, names = load_checkpoint(ckpt)
    meta = read_meta(ckpt)
    gpz = meta["profile"]["gpz"]["index"]
    privacy = {
        "target": gpz,
        "rho_gpz": gpz,
        "criterion": {"min_mse": 0.02, "attack": "decoder"},
        "splits": [{"index": gpz - 1, "name": "a", "mse": 0.004}, {"index": gpz, "name": "b", "mse": mse}],
        "protected": mse >= 0.02,
        "reached": mse >= 0.02,
    }
    meta.update(target_gpz=gpz, reached_gpz=gpz, target_reached=mse >= 0.02, privacy=privacy)
    save_checkpoint(tmp_path, model, spec, names, meta=meta)
    text = (tmp_path / "README.md").read_text()
    assert "Verified by attack: decoder attack" in text and f"split {gpz} MSE {mse:.4f}" in text
    assert f"split {gpz}\n{words}" in text
    assert ("**target reached**" in text) is (mse >= 0.02) and ("**target missed**" in text) is (mse < 0.02)
    bare = tmp_path / "bare"  # no attack of any kind: the card says protection is not verified
    save_checkpoint(bare, model, spec, names, meta={k: v for k, v in read_meta(ckpt).items() if k != "attack"})
    assert "Protection is not verified" in (bare / "README.md").read_text()
