"""Exact checks of checkpoint writing and its safety checks (vortex/hub/checkpoint.py), for `make mutation`.

A tiny untrained cnn (width 2, 8x8, 3 classes) saved without profiling takes ~0.1 s: every file's content is
compared with what is computed here from the model and hashlib, and every refusal with its full message.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from vortex import __version__
from vortex.errors import VortexError
from vortex.hub.checkpoint import (
    file_sha256,
    load_checkpoint,
    load_half,
    load_weights,
    save_checkpoint,
    spec_of,
    split_info,
    verify_binding,
    verify_checkpoint,
    verify_half,
    verify_weights,
)
from vortex.models import ModelSpec, build_model, split_model

SPEC = ModelSpec("cnn", 3, 1, 8, {"width": 2})
NAMES = ["block1", "block2", "block3", "block4", "block5", "block6", "fc", "logits"]
SPEC_DICT = {"architecture": "cnn", "num_classes": 3, "in_channels": 1, "image_size": 8, "options": {"width": 2}}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(SPEC)


def params_of(model: nn.Module, blocks: list[str]) -> int:
    return sum(p.numel() for b in blocks for p in getattr(model, b).parameters())


def keys_of(model: nn.Module, blocks: list[str]) -> set[str]:
    return {k for k in model.state_dict() if k.split(".")[0] in blocks}


def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint with halves at its GPZ (split 3), no card, and the model it was saved from."""
    model = tiny_model()
    out = save_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "a" / "b", model, SPEC, NAMES, {"gpz": {"index": 3}}, card=False
    )
    return out, model.eval()  # eval: running a test's input through it must not change its batch-norm statistics


@pytest.fixture
def ckpt(saved, tmp_path):
    """A copy of `saved` to tamper with."""
    shutil.copytree(saved[0], tmp_path / "c")
    return tmp_path / "c"


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def safetensors_error(path: Path) -> str:
    """What safetensors says about a file it cannot read."""
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as exc:  # noqa: BLE001 - SafetensorError
        return str(exc)
    raise AssertionError(f"{path} is readable")


def message(exc_info) -> str:
    return str(exc_info.value)


def test_every_file_of_a_saved_checkpoint_is_exactly_what_was_asked(saved):
    out, model = saved
    assert out.name == "b" and out.parent.name == "a"
    assert sorted(p.name for p in out.iterdir()) == ["cloud", "config.json", "edge", "model.safetensors", "vortex.json"]
    assert sorted(p.name for p in (out / "edge").iterdir()) == ["config.json", "model.safetensors"]
    full = sha(out / "model.safetensors")
    edge, cloud = sha(out / "edge/model.safetensors"), sha(out / "cloud/model.safetensors")
    x = torch.zeros(1, 1, 8, 8)
    with torch.no_grad():
        z_shape = list(model.block3(model.block2(model.block1(x))).shape[1:])
    assert z_shape == [4, 4, 4]
    split = {
        "index": 3,
        "name": "block3",
        "input_shape": [1, 8, 8],
        "z_shape": z_shape,
        "z_bytes": 4 * math.prod(z_shape),
        "output_shape": [3],
    }
    edge_params = params_of(model, NAMES[:3])
    cloud_params = params_of(model, NAMES[3:])
    assert edge_params + cloud_params == sum(p.numel() for p in model.parameters())
    assert json.loads((out / "vortex.json").read_text()) == {
        "vortex_version": __version__,
        "splits": NAMES,
        "gpz": {"index": 3},
        "weights_sha256": full,
        "halves": {
            **split,
            "edge_params": edge_params,
            "cloud_params": cloud_params,
            "sha256": {"model": full, "edge": edge, "cloud": cloud},
        },
    }
    assert json.loads((out / "config.json").read_text()) == {
        "model_type": "vortex",
        "vortex_version": __version__,
        **SPEC_DICT,
        "split_points": NAMES,
        "weights_sha256": full,
        "halves_sha256": {"model": full, "edge": edge, "cloud": cloud},
    }
    for part, params, digest in (("edge", edge_params, edge), ("cloud", cloud_params, cloud)):
        assert json.loads((out / part / "config.json").read_text()) == {
            "model_type": "vortex",
            "vortex_version": __version__,
            "part": part,
            **SPEC_DICT,
            "split_points": NAMES,
            "split": split,
            "params": params,
            "sha256": {"weights": digest, "model": full},
        }
        assert metadata(out / part / "model.safetensors") == {
            "vortex_version": __version__,
            "part": part,
            "split": "3",
            "split_name": "block3",
        }
    assert metadata(out / "model.safetensors") == {"vortex_version": __version__, "gpz": "3"}
    state = model.state_dict()
    stored = load_file(str(out / "model.safetensors"))
    assert set(stored) == set(state)
    for k, v in state.items():
        assert torch.equal(stored[k], v)
    edge_keys = {f"{k}" for k in load_file(str(out / "edge/model.safetensors"))}
    cloud_keys = set(load_file(str(out / "cloud/model.safetensors")))
    assert edge_keys == keys_of(model, NAMES[:3]) and cloud_keys == keys_of(model, NAMES[3:])


def test_load_checkpoint_gives_the_same_model_spec_and_names(saved):
    out, model = saved
    loaded, spec, names = load_checkpoint(out)
    assert spec == SPEC and names == NAMES
    x = torch.randn(2, 1, 8, 8)
    loaded.eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_load_checkpoint_without_split_points_gives_no_names(ckpt):
    edit_json(ckpt / "config.json", lambda c: c.pop("split_points"))
    assert load_checkpoint(ckpt)[2] == []


def test_halves_load_alone_in_eval_mode_and_compute_the_model(saved):
    out, model = saved
    model.eval()
    edge, cloud = load_half(out, "edge"), load_half(out, "cloud")
    assert not edge.training and not cloud.training
    assert all(not m.training for m in edge.modules()) and all(not m.training for m in cloud.modules())
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        z = model.block3(model.block2(model.block1(x)))
        torch.testing.assert_close(edge(x), z, rtol=0, atol=0)
        torch.testing.assert_close(cloud(z), model(x), rtol=0, atol=0)
    verify_checkpoint(out)


def test_split_info_records_where_a_split_cuts():
    model = tiny_model()
    model.train()
    sm = split_model(model, SPEC)
    info = split_info(sm, SPEC, "block5")
    assert info == {
        "index": 5,
        "name": "block5",
        "input_shape": [1, 8, 8],
        "z_shape": [8, 2, 2],
        "z_bytes": 4 * 8 * 2 * 2,
        "output_shape": [3],
    }
    assert model.training and model.block1[1].num_batches_tracked.item() == 0  # measured in eval mode


def test_a_chosen_split_a_missing_gpz_and_no_meta(tmp_path):
    model = tiny_model(1)
    a = save_checkpoint(tmp_path / "a", model, SPEC, NAMES, {"gpz": {"index": 3}}, split="block5", card=False)
    meta = json.loads((a / "vortex.json").read_text())
    assert (meta["halves"]["index"], meta["halves"]["name"], meta["gpz"]) == (5, "block5", {"index": 3})
    assert metadata(a / "model.safetensors") == {"vortex_version": __version__, "gpz": "3"}
    assert metadata(a / "edge/model.safetensors")["split"] == "5"
    b = save_checkpoint(tmp_path / "b", model, SPEC, NAMES, None, card=False)
    assert sorted(p.name for p in b.iterdir()) == ["config.json", "model.safetensors", "vortex.json"]
    assert json.loads((b / "vortex.json").read_text()) == {
        "vortex_version": __version__,
        "splits": NAMES,
        "weights_sha256": sha(b / "model.safetensors"),
    }
    assert "halves_sha256" not in json.loads((b / "config.json").read_text())
    assert metadata(b / "model.safetensors") == {"vortex_version": __version__}
    # the GPZ inside a profile counts too; a stale "halves" record of the meta is dropped without a split
    c = save_checkpoint(tmp_path / "c", model, SPEC, NAMES, {"halves": {"index": 2}, "note": "x"}, card=False)
    assert json.loads((c / "vortex.json").read_text()) == {
        "vortex_version": __version__,
        "splits": NAMES,
        "note": "x",
        "weights_sha256": sha(c / "model.safetensors"),
    }
    d = save_checkpoint(tmp_path / "d", model, SPEC, NAMES, {"gpz": {"index": 2}}, split=7, card=False)
    assert json.loads((d / "vortex.json").read_text())["halves"]["index"] == 7


def test_saving_again_replaces_the_checkpoint_files_and_keeps_the_rest(tmp_path):
    out = tmp_path / "run"
    save_checkpoint(out, tiny_model(0), SPEC, NAMES, {"gpz": {"index": 2}}, card=False)
    (out / "attack.json").write_text("{}")  # measured on the old weights
    (out / "privacy").mkdir()
    (out / "privacy" / "x.json").write_text("{}")
    (out / "logs").mkdir()
    (out / "logs" / "train.log").write_text("kept")
    (out / "trainer_state.json").write_text("kept")
    (out / ".checkpoint.partial").mkdir()  # what an interrupted save left
    (out / ".checkpoint.partial" / "junk").write_text("x")
    (out / ".checkpoint.old").mkdir()  # and what a crash between the renames left
    (out / ".checkpoint.old" / "vortex.json").write_text("{}")
    old_edge = sha(out / "edge/model.safetensors")
    model = tiny_model(5)

    def extras(directory: Path) -> None:
        (directory / "vortex.png").write_bytes(b"png")

    save_checkpoint(out, model, SPEC, NAMES, {}, split=4, card=True, extras=extras)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "cloud",
        "config.json",
        "edge",
        "logs",
        "model.safetensors",
        "trainer_state.json",
        "vortex.json",
        "vortex.png",
    ]
    assert (out / "logs/train.log").read_text() == "kept" and (out / "trainer_state.json").read_text() == "kept"
    assert (out / "vortex.png").read_bytes() == b"png"
    assert sha(out / "edge/model.safetensors") != old_edge
    assert metadata(out / "edge/model.safetensors")["split"] == "4"
    assert sha(out / "model.safetensors") == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    stored = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(stored[k], v) for k, v in model.state_dict().items())
    verify_checkpoint(out)
    save_checkpoint(out, model, SPEC, NAMES, {}, card=False)  # no GPZ, no card: the halves and card go
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "logs",
        "model.safetensors",
        "trainer_state.json",
        "vortex.json",
    ]
    verify_checkpoint(out)


def test_a_profile_in_the_meta_is_written_and_plotted(tmp_path):
    stats = [
        {
            "index": i,
            "name": n,
            "shape": [4],
            "dim": 4,
            "bytes": 16,
            "edge_params": 10 * i,
            "rc2": 1.0 / i,
            "rc2_per_class": [1.0 / i, None, 0.5 / i],
            "global_var": 2.0,
            "rho": 0.5 / i,
            "sketch_dim": None,
            "h_bound_feature": 0.1,
            "h_bound_decision": 0.2,
            "h_bound_per_dim": 0.3,
            "decisive": "feature",
        }
        for i, n in enumerate(NAMES, 1)
    ]
    gpz = {"index": 2, "zone": [2], "criterion": "largest drop", "quantity": "rho", "drops": [0.5] * 7}
    profile = {
        "schema_version": 1,
        "vortex_version": __version__,
        "model": "cnn",
        "dataset": "digits",
        "num_samples": 10,
        "num_classes": 3,
        "labels": "true",
        "accuracy": 0.5,
        "class_counts": [5, 1, 4],
        "small_classes": {"1": 1},
        "splits": stats,
        "gpz": gpz,
    }
    out = save_checkpoint(tmp_path / "p", tiny_model(), SPEC, NAMES, {"profile": profile}, card=False)
    written = json.loads((out / "profile.json").read_text())
    assert written["splits"] == stats and written["gpz"]["index"] == 2
    assert (out / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert metadata(out / "model.safetensors") == {"vortex_version": __version__, "gpz": "2"}
    assert metadata(out / "edge/model.safetensors")["split"] == "2"


def test_verify_weights_refuses_a_missing_hash_changed_weights_and_other_weights_described(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    verify_weights(ckpt, config)
    for recorded in (None, 7):
        with pytest.raises(VortexError) as err:
            verify_weights(ckpt, {**config, "weights_sha256": recorded})
        assert message(err) == (
            f"'{ckpt / 'config.json'}' records no hash of model.safetensors; save the checkpoint again with this vortex"
        )
    with pytest.raises(VortexError) as err:
        verify_weights(ckpt, {k: v for k, v in config.items() if k != "weights_sha256"})
    assert "records no hash of model.safetensors" in message(err)
    good = config["weights_sha256"]
    wrong = "0123456789abcdef" * 4
    with pytest.raises(VortexError) as err:
        verify_weights(ckpt, {**config, "weights_sha256": wrong})
    assert message(err) == (
        f"'{ckpt / 'model.safetensors'}' does not match the hash in config.json ({good[:12]} vs {wrong[:12]}): "
        "the file was changed or replaced; download or save it again"
    )
    edit_json(ckpt / "vortex.json", lambda m: m.update(weights_sha256=wrong))
    with pytest.raises(VortexError) as err:
        verify_weights(ckpt, config)
    assert message(err) == (
        f"'{ckpt / 'vortex.json'}' describes other weights than '{ckpt / 'model.safetensors'}' "
        f"({wrong[:12]} vs {good[:12]}); download or save the checkpoint again"
    )
    (ckpt / "vortex.json").unlink()  # no vortex.json: nothing to disagree with
    verify_weights(ckpt, config)


def test_load_checkpoint_refuses_changed_weights(ckpt):
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-1] ^= 1  # a changed number: still loads, but not the weights hashed
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(VortexError, match=r"model.safetensors' does not match the hash in config.json"):
        load_checkpoint(ckpt)
    with pytest.raises(VortexError, match=r"does not match the hash in config.json"):
        verify_checkpoint(ckpt, halves=False)


def test_load_weights_says_every_failure_in_one_line(tmp_path):
    model = tiny_model()
    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(good))
    load_weights(tiny_model(1), good, "a cnn")
    short = tmp_path / "short.safetensors"
    short.write_bytes(good.read_bytes()[:100])
    with pytest.raises(VortexError) as err:
        load_weights(tiny_model(1), short, "a cnn")
    assert (
        message(err)
        == f"'{short}' is not a readable safetensors file ({safetensors_error(short)}); download or save it again"
    )
    assert "\n" not in message(err) and err.value.__cause__ is None
    wide = build_model(ModelSpec("cnn", 3, 1, 8, {"width": 4}))
    try:
        wide.load_state_dict(load_file(str(good)), strict=False)
    except RuntimeError as exc:
        last = str(exc).splitlines()[-1].strip()
    with pytest.raises(VortexError) as err:
        load_weights(wide, good, "a wide cnn")
    assert message(err) == f"'{good}' does not fit a wide cnn: {last}"
    assert last.startswith("size mismatch for ")
    other = nn.Sequential(*[nn.Linear(1, 1) for _ in range(7)])
    missing = sorted(other.state_dict())[:5]
    unexpected = sorted(model.state_dict())[:5]
    with pytest.raises(VortexError) as err:
        load_weights(other, good, "seven linears")
    assert message(err) == f"'{good}' does not fit seven linears: missing {missing}, unexpected {unexpected}"
    # only unexpected tensors (a model with fewer) is refused too
    fewer = tmp_path / "fewer.safetensors"
    one = nn.Linear(1, 1)
    save_file({**{k: v.contiguous() for k, v in one.state_dict().items()}, "extra": torch.zeros(1)}, str(fewer))
    with pytest.raises(VortexError) as err:
        load_weights(nn.Linear(1, 1), fewer, "a linear")
    assert message(err) == f"'{fewer}' does not fit a linear: missing [], unexpected ['extra']"


def test_spec_of_names_the_file_that_does_not_describe_a_model():
    assert spec_of({**SPEC_DICT}, Path("x.json")) == SPEC
    broken = {k: v for k, v in SPEC_DICT.items() if k != "architecture"}
    try:
        ModelSpec.from_dict(broken)
    except KeyError as exc:
        why = f"KeyError: {exc}"
    with pytest.raises(VortexError) as err:
        spec_of(broken, Path("dir/config.json"))
    assert message(err) == f"'dir/config.json' does not describe a model ({why}); save it again"
    with pytest.raises(VortexError, match=r"^'c.json' does not describe a model \((TypeError|ValueError): "):
        spec_of({**SPEC_DICT, "num_classes": "three"}, Path("c.json"))


def test_file_sha256_reads_the_whole_file(tmp_path):
    path = tmp_path / "big"
    data = bytes(range(256)) * 9000  # more than one 1 MiB block
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_sha256(str(path)) == hashlib.sha256(data).hexdigest()


def test_a_half_cut_at_another_name_is_refused(ckpt):
    edit_json(ckpt / "edge/config.json", lambda c: c["split"].update(name="block9"))
    with pytest.raises(VortexError) as err:
        load_half(ckpt, "edge")
    assert message(err) == (
        f"the edge half in '{ckpt}' was cut after 'block9' but split 3 of this cnn is 'block3'; re-save the checkpoint"
    )


def test_a_half_holding_the_other_part_or_split_is_refused(ckpt):
    shutil.copy(ckpt / "cloud/model.safetensors", ckpt / "edge/model.safetensors")
    with pytest.raises(VortexError) as err:
        load_half(ckpt, "edge")
    assert message(err) == (
        f"'{ckpt / 'edge/model.safetensors'}' holds the cloud half of split 3, but its config describes the "
        "edge half of split 3; re-save the checkpoint"
    )
    edge = load_file(str(ckpt / "cloud/model.safetensors"))
    save_file(edge, str(ckpt / "cloud/model.safetensors"), metadata={"part": "cloud", "split": "4"})
    with pytest.raises(VortexError) as err:
        load_half(ckpt, "cloud")
    assert message(err) == (
        f"'{ckpt / 'cloud/model.safetensors'}' holds the cloud half of split 4, but its config describes the "
        "cloud half of split 3; re-save the checkpoint"
    )
    save_file(edge, str(ckpt / "cloud/model.safetensors"))  # no metadata at all
    with pytest.raises(VortexError, match=r"holds the None half of split None, but its config describes the cloud"):
        load_half(ckpt, "cloud")
    (ckpt / "cloud/model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(VortexError) as err:
        load_half(ckpt, "cloud")
    bad = ckpt / "cloud/model.safetensors"
    assert (
        message(err)
        == f"'{bad}' is not a readable safetensors file ({safetensors_error(bad)}); download or save it again"
    )


def test_a_half_whose_tensors_do_not_fit_its_split_is_refused(ckpt, saved):
    out, model = saved
    sm = split_model(tiny_model(), SPEC)
    tensors = load_file(str(ckpt / "edge/model.safetensors"))
    meta = {"part": "edge", "split": "3"}
    wrong = {**tensors, "block1.0.weight": torch.zeros(3, 1, 3, 3), "block3.0.weight": torch.zeros(4, 2, 1, 1)}
    save_file(wrong, str(ckpt / "edge/model.safetensors"), metadata=meta)
    try:
        sm.edge(3).load_state_dict(wrong, strict=False)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
    assert len(lines) == 3  # two tensors of the wrong shape: the message names the last one
    last = lines[-1]
    with pytest.raises(VortexError) as err:
        load_half(ckpt, "edge")
    assert message(err) == f"the edge half in '{ckpt}' does not fit split 3: {last}"
    moved = ("block2", "block3")
    renamed = {("x." + k if k.startswith(moved) else k): v for k, v in tensors.items()}
    save_file(renamed, str(ckpt / "edge/model.safetensors"), metadata=meta)
    # batch-norm fills in a missing num_batches_tracked itself: it is not reported missing
    missing = sorted(k for k in tensors if k.startswith(moved) and not k.endswith("num_batches_tracked"))
    assert len(missing) > 5
    with pytest.raises(VortexError) as err:
        load_half(ckpt, "edge")
    assert message(err) == (
        f"the edge half in '{ckpt}' does not match split 3 (block3): missing {missing[:5]}, "
        f"unexpected {sorted('x.' + k for k in tensors if k.startswith(moved))[:5]}"
    )
    save_file({**tensors, "extra": torch.zeros(1)}, str(ckpt / "edge/model.safetensors"), metadata=meta)
    with pytest.raises(VortexError) as err:
        load_half(ckpt, "edge")
    assert message(err) == (
        f"the edge half in '{ckpt}' does not match split 3 (block3): missing [], unexpected ['extra']"
    )


def test_a_half_with_other_weights_than_recorded_is_refused(ckpt, saved):
    out, _ = saved
    part_config = json.loads((ckpt / "edge/config.json").read_text())
    edge_sha, full_sha = part_config["sha256"]["weights"], part_config["sha256"]["model"]
    verify_binding(ckpt, "edge", part_config)
    for bad in ({}, {"sha256": "abc"}, {"sha256": {"weights": 1}}):
        with pytest.raises(VortexError) as err:
            verify_binding(ckpt, "edge", {**part_config, **bad} if bad else {})
        assert message(err) == (
            f"'{ckpt / 'edge/config.json'}' records no weights hash; re-save the checkpoint with this vortex"
        )
    other = "f" * 64
    with pytest.raises(VortexError) as err:
        verify_binding(ckpt, "edge", {**part_config, "sha256": {"weights": other, "model": full_sha}})
    assert message(err) == (
        f"'{ckpt / 'edge/model.safetensors'}' does not match the hash in edge/config.json ({edge_sha[:12]} vs "
        f"{other[:12]}): the file was changed or replaced; download or save it again"
    )
    with pytest.raises(VortexError) as err:
        verify_binding(ckpt, "edge", {**part_config, "sha256": {"weights": edge_sha, "model": other}})
    assert message(err) == (
        f"'{ckpt / 'edge'}' belongs to another checkpoint: config.json records other edge weights "
        f"({edge_sha[:12]} vs {edge_sha[:12]}); pull or save the halves again"
    )
    # config.json names other halves
    edit_json(ckpt / "config.json", lambda c: c["halves_sha256"].update(edge=other))
    with pytest.raises(VortexError) as err:
        load_half(ckpt, "edge")
    assert message(err) == (
        f"'{ckpt / 'edge'}' belongs to another checkpoint: config.json records other edge weights "
        f"({other[:12]} vs {edge_sha[:12]}); pull or save the halves again"
    )
    load_half(ckpt, "cloud")  # the cloud's record is intact
    # a checkpoint without the halves' record in config.json (older): only the full weights are compared
    edit_json(ckpt / "config.json", lambda c: c.pop("halves_sha256"))
    load_half(ckpt, "edge")
    edit_json(ckpt / "config.json", lambda c: c.update(halves_sha256="not a record"))
    load_half(ckpt, "edge")
    with pytest.raises(VortexError) as err:
        verify_binding(ckpt, "edge", {**part_config, "sha256": {"weights": edge_sha, "model": other}})
    assert message(err) == (
        f"'{ckpt / 'edge'}' was cut from other weights than '{ckpt / 'model.safetensors'}'; re-cut the halves "
        "with `vortex publish DIR --split K` or save the checkpoint again"
    )
    # a pull of the halves alone (no full weights) is checked against config.json only
    (ckpt / "model.safetensors").unlink()
    verify_binding(ckpt, "edge", {**part_config, "sha256": {"weights": edge_sha, "model": other}})


def test_changed_half_weights_are_refused_by_load_and_verify(ckpt):
    edge = load_file(str(ckpt / "edge/model.safetensors"))
    edge["block1.0.weight"] = edge["block1.0.weight"] + 1
    save_file(edge, str(ckpt / "edge/model.safetensors"), metadata={"part": "edge", "split": "3"})
    with pytest.raises(VortexError, match=r"edge/model.safetensors' does not match the hash in edge/config.json"):
        load_half(ckpt, "edge")
    verify_checkpoint(ckpt, halves=False)
    with pytest.raises(VortexError, match=r"does not match the hash in edge/config.json"):
        verify_checkpoint(ckpt)
    shutil.rmtree(ckpt / "edge")
    shutil.rmtree(ckpt / "cloud")
    verify_checkpoint(ckpt)  # no halves: nothing more to check


def test_verify_half_checks_shapes_and_payload():
    recorded = {"index": 2, "input_shape": [3], "z_shape": [4], "z_bytes": 16, "output_shape": [2]}
    edge, cloud = nn.Linear(3, 4), nn.Linear(4, 2)
    edge.train()
    verify_half(edge, recorded, "edge")
    verify_half(cloud, recorded, "cloud")
    assert edge.training  # back in the mode it was in
    verify_half(cloud, {**recorded, "z_bytes": 99}, "cloud")  # the payload is the edge's business
    with pytest.raises(VortexError) as err:
        verify_half(edge, {**recorded, "z_bytes": 20}, "edge")
    assert message(err) == (
        "the edge half at split 2 maps [3] to [4], but the checkpoint records [4] (20 payload bytes); "
        "it is not the recorded split"
    )
    with pytest.raises(VortexError) as err:
        verify_half(edge, {**recorded, "z_shape": [5]}, "edge")
    assert "the edge half at split 2 maps [3] to [4], but the checkpoint records [5] (16 payload bytes)" in message(err)
    with pytest.raises(VortexError) as err:
        verify_half(cloud, {**recorded, "output_shape": [3]}, "cloud")
    assert message(err) == (
        "the cloud half at split 2 maps [4] to [2], but the checkpoint records [3] (16 payload bytes); "
        "it is not the recorded split"
    )
    with pytest.raises(RuntimeError):  # the cloud runs on z's shape, not the image's
        verify_half(cloud, {**recorded, "z_shape": [3], "input_shape": [4]}, "cloud")
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    verify_half(bn, recorded, "edge")  # one sample through batch-norm: only in eval mode
    assert bn[1].num_batches_tracked.item() == 0


CUSTOM = """
from torch import nn


def build(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 16, 5), nn.ReLU(), nn.Linear(5, num_classes))
"""


def test_a_custom_architecture_is_built_only_when_trusted(tmp_path, monkeypatch):
    (tmp_path / "vortex_kills_custom.py").write_text(CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = "vortex_kills_custom:build"
    spec = ModelSpec(entry, 2, 1, 4)
    torch.manual_seed(0)
    model = build_model(spec, trust_code=[entry])
    names = [s.name for s in split_model(model, spec).splits]
    assert names == ["0", "2", "3"]
    out = save_checkpoint(tmp_path / "ck", model, spec, names, {"gpz": {"index": 2}}, card=False)
    for call in (
        lambda: load_checkpoint(out),
        lambda: load_half(out, "edge"),
        lambda: verify_checkpoint(out),
    ):
        with pytest.raises(VortexError, match=r"names code to import \('vortex_kills_custom:build'\)"):
            call()
    loaded, got_spec, got_names = load_checkpoint(out, trust_code=[entry])
    assert got_spec == spec and got_names == names
    x = torch.randn(3, 1, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
        edge = load_half(out, "edge", trust_code=[entry])
        torch.testing.assert_close(edge(x), model[2](model[1](model[0](x))), rtol=0, atol=0)
    verify_checkpoint(out, trust_code=[entry])
    sys.modules.pop("vortex_kills_custom", None)


def test_split_info_runs_on_the_model_s_device():
    model = tiny_model().to("meta")  # a device other than the default: the example must follow the weights
    info = split_info(split_model(model, SPEC), SPEC, 2)
    assert (info["z_shape"], info["z_bytes"]) == ([2, 4, 4], 4 * 2 * 4 * 4)


def test_load_checkpoint_names_the_config_that_does_not_fit(ckpt):
    edit_json(ckpt / "config.json", lambda c: c["options"].update(width=4))
    wide = build_model(ModelSpec("cnn", 3, 1, 8, {"width": 4}))
    try:
        wide.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)
    except RuntimeError as exc:
        last = str(exc).splitlines()[-1].strip()
    with pytest.raises(VortexError) as err:
        load_checkpoint(ckpt)
    assert (
        message(err) == f"'{ckpt / 'model.safetensors'}' does not fit a cnn model as config.json describes it: {last}"
    )
    edit_json(ckpt / "config.json", lambda c: c.pop("num_classes"))
    with pytest.raises(VortexError) as err:
        load_checkpoint(ckpt)
    assert (
        message(err) == f"'{ckpt / 'config.json'}' does not describe a model (KeyError: 'num_classes'); save it again"
    )


def test_a_half_config_that_does_not_describe_a_model_is_named(ckpt):
    edit_json(ckpt / "edge/config.json", lambda c: c.pop("architecture"))
    with pytest.raises(VortexError) as err:
        load_half(ckpt, "edge")
    assert message(err) == (
        f"'{ckpt / 'edge/config.json'}' does not describe a model (KeyError: 'architecture'); save it again"
    )


def test_halves_of_a_checkpoint_with_its_own_split_points(tmp_path):
    model = tiny_model(2).eval()
    names = ["block2", "block4", "logits"]
    out = save_checkpoint(tmp_path / "own", model, SPEC, names, {}, split=2)
    assert (out / "README.md").is_file()  # a card by default
    meta = json.loads((out / "vortex.json").read_text())
    assert meta["splits"] == names and (meta["halves"]["index"], meta["halves"]["name"]) == (2, "block4")
    assert meta["halves"]["edge_params"] == params_of(model, NAMES[:4])
    assert json.loads((out / "edge/config.json").read_text())["split_points"] == names
    edge, cloud = load_half(out, "edge"), load_half(out, "cloud")
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        z = model.block4(model.block3(model.block2(model.block1(x))))
        torch.testing.assert_close(edge(x), z, rtol=0, atol=0)
        torch.testing.assert_close(cloud(z), model(x), rtol=0, atol=0)
    assert load_checkpoint(out)[2] == names


def test_a_vit_checkpoint_keeps_transformers_config_and_vortex_s_description(tmp_path):
    options = {"num_hidden_layers": 1, "hidden_size": 8, "num_attention_heads": 2, "intermediate_size": 8}
    spec = ModelSpec("vit", 3, 1, 8, options)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    names = ["vit.embeddings", "vit.layers.0", "classifier"]
    out = save_checkpoint(tmp_path / "vit", model, spec, names, {"gpz": {"index": 2}}, card=False)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "vit" and config["architectures"] == ["ViTForImageClassification"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["image_size"], config["num_channels"]) == (
        8,
        1,
        8,
        1,
    )
    full = sha(out / "model.safetensors")
    halves = {"model": full, "edge": sha(out / "edge/model.safetensors"), "cloud": sha(out / "cloud/model.safetensors")}
    assert json.loads((out / "vortex.json").read_text())["config"] == {
        "model_type": "vortex",
        "vortex_version": __version__,
        "architecture": "vit",
        "num_classes": 3,
        "in_channels": 1,
        "image_size": 8,
        "options": options,
        "split_points": names,
        "weights_sha256": full,
        "halves_sha256": halves,
    }
    loaded, got_spec, got_names = load_checkpoint(out)
    assert got_spec == spec and got_names == names
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(load_half(out, "cloud")(load_half(out, "edge")(x)), model(x), rtol=1e-5, atol=1e-6)
