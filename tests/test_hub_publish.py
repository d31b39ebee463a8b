"""Publishing, tested at the HTTP boundary: a local server records what huggingface_hub sends."""

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
from hub_helpers import SECRET, FakeHub, make_checkpoint, tree_bytes
from huggingface_hub import ModelCard, constants

from vortex.cli.main import main as vortex_main
from vortex.errors import HubError
from vortex.hub.model import VortexModel
from vortex.hub.repo import publish
from vortex.training.loop import main as train

EXPECTED = [
    "README.md",
    "cloud/config.json",
    "cloud/model.safetensors",
    "config.json",
    "edge/config.json",
    "edge/model.safetensors",
    "model.safetensors",
    "profile.json",
    "profile.png",
    "vortex.json",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    ckpt = make_checkpoint(tmp_path_factory.mktemp("publish") / "ckpt")
    (ckpt / "state" / "step_4").mkdir(parents=True)
    (ckpt / "state" / "step_4" / "optimizer.bin").write_bytes(b"\x80\x04 pickled optimiser state")
    (ckpt / "logs").mkdir()
    (ckpt / "logs" / "events.out.tfevents.1").write_bytes(b"tensorboard")
    (ckpt / "notes.pkl").write_bytes(b"\x80\x04 a stray pickle")
    return ckpt


@pytest.fixture
def fake_hub(monkeypatch):
    hub = FakeHub()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    yield hub
    hub.close()


def no_secret_anywhere(*texts: str, files: dict[str, bytes]) -> None:
    assert not any(SECRET in t for t in texts)
    assert not any(SECRET.encode() in data for data in files.values())


def test_publish_uploads_the_checkpoint_in_one_commit_without_leaking_the_token(checkpoint, fake_hub, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    before = tree_bytes(checkpoint)
    assert vortex_main(["publish", str(checkpoint), "--repo-id", "org/name"]) == 0
    out = capsys.readouterr()

    assert len(fake_hub.commits) == 1
    commit = fake_hub.commits[0]
    assert (commit.repo_id, commit.revision) == ("org/name", "main")
    assert sorted(commit.files) == EXPECTED  # no state/, logs/ or pickles
    for name in EXPECTED[1:]:
        assert commit.files[name] == before[name], name
    card = ModelCard(commit.files["README.md"].decode())
    assert card.data.model_name == "name" and card.data.eval_results
    assert 'vortex.from_pretrained("org/name", part="edge")' in card.text
    assert [p for m, p in fake_hub.requests if m == "POST"] == [
        "/api/repos/create",
        "/api/validate-yaml",
        "/api/models/org/name/preupload/main",
        "/api/models/org/name/commit/main",
    ]
    assert f"Bearer {SECRET}" in fake_hub.auth  # the token was sent to the Hub, and only there
    no_secret_anywhere(out.out, out.err, caplog.text, files={**commit.files, **tree_bytes(checkpoint)})
    assert tree_bytes(checkpoint) == before
    assert out.out.startswith(f"published {checkpoint} to org/name (main) in one commit: 10 files")
    assert "  commit  http://127.0.0.1:" in out.out and "  halves  split " in out.out


def test_transient_failure_is_retried(checkpoint, fake_hub, caplog):
    fake_hub.fail[r"/commit/"] = [500]
    done = publish(checkpoint, "org/name", backoff=0.01)
    assert len(fake_hub.commits) == 1 and done.commit_url.startswith(fake_hub.url)
    assert [p for m, p in fake_hub.requests if p.endswith("/commit/main")] == ["/api/models/org/name/commit/main"] * 2
    assert "retrying" in caplog.text and SECRET not in caplog.text


def test_persistent_failure_leaves_the_directory_intact(checkpoint, fake_hub, caplog):
    fake_hub.fail[r"/commit/"] = [503] * 10
    before = tree_bytes(checkpoint)
    with pytest.raises(HubError) as err:
        publish(checkpoint, "org/name", tries=3, backoff=0.01)
    message = str(err.value)
    assert "503 Service Unavailable" in message and f"the checkpoint is still complete in {checkpoint}" in message
    assert len(fake_hub.commits) == 0 and len([p for _, p in fake_hub.requests if "/commit/" in p]) == 3
    assert tree_bytes(checkpoint) == before
    no_secret_anywhere(message, caplog.text, files=before)


def test_a_failed_push_with_a_new_split_keeps_the_old_halves(checkpoint, fake_hub, tmp_path):
    """`publish --split K` cuts the halves in a copy: a failed push leaves the directory byte for byte,
    a successful one moves the new halves, configs and card in."""
    work = tmp_path / "ckpt"
    shutil.copytree(checkpoint, work)
    old = json.loads((work / "vortex.json").read_text())["halves"]["index"]
    new = 1 if old != 1 else 2
    before = tree_bytes(work)
    fake_hub.fail[r"/commit/"] = [503] * 10
    with pytest.raises(HubError, match="Nothing was changed"):
        publish(work, "org/name", split=new, tries=2, backoff=0.01)
    assert tree_bytes(work) == before
    fake_hub.fail.clear()
    done = publish(work, "org/name", split=new, backoff=0.01)
    assert done.halves["index"] == new == json.loads((work / "vortex.json").read_text())["halves"]["index"]
    assert json.loads((work / "edge" / "config.json").read_text())["split"]["index"] == new
    assert fake_hub.commits[-1].files["edge/model.safetensors"] == (work / "edge" / "model.safetensors").read_bytes()
    assert not list(work.glob(".publish-*"))


def test_refused_credentials_are_not_retried(checkpoint, fake_hub):
    fake_hub.fail[r"/api/repos/create"] = [403]
    with pytest.raises(HubError, match="hf auth login` or set HF_TOKEN to a token with write access"):
        publish(checkpoint, "org/name", backoff=0.01)
    assert [p for _, p in fake_hub.requests].count("/api/repos/create") == 1 and not fake_hub.commits


def test_publish_command_to_a_branch(checkpoint, tmp_path):
    hub = FakeHub()
    try:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": SECRET}
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "vortex",
                "publish",
                str(checkpoint),
                "--repo-id",
                "org/name",
                "--revision",
                "dev",
                "--private",
                "--commit-message",
                "first cut",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        hub.close()
    assert proc.returncode == 0, proc.stderr
    assert [(c.repo_id, c.revision, c.summary) for c in hub.commits] == [("org/name", "dev", "first cut")]
    assert ("POST", "/api/models/org/name/branch/dev") in hub.requests
    assert proc.stdout.startswith(f"published {checkpoint} to org/name (dev) in one commit")
    assert SECRET not in proc.stdout + proc.stderr


def test_train_push_to_hub(fake_hub, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "model: cnn\nmodel_options: {width: 8}\ndataset: digits\nepochs: 1\nbatch_size: 64\n"
        "max_train_samples: 128\nprobe: {max_samples: 100, batch_size: 100}\n"
    )
    out = tmp_path / "run"
    assert (
        train(["--recipe", str(recipe), "--output_dir", str(out), "--push_to_hub", "--hub_model_id", "org/trained"])
        == 0
    )
    [commit] = fake_hub.commits
    assert commit.repo_id == "org/trained" and sorted(commit.files) == EXPECTED
    assert (out / "state").is_dir()  # kept locally, not published
    assert ModelCard(commit.files["README.md"].decode()).data.eval_results


def test_only_the_model_repo_is_published_and_dry_run_pushes_nothing(checkpoint, fake_hub, tmp_path, capsys):
    work = tmp_path / "ckpt"
    shutil.copytree(checkpoint, work)
    for junk in (
        "baseline/model.safetensors",
        "best/model.safetensors",
        "state/step_3/optimizer.bin",
        "logs/events.out",
        "probe/profile.json",
        "privacy/recon_split3.png",
        "notes.txt",
        "edge/model.onnx",  # an old export: uploaded only with --with-onnx, and then exported afresh
    ):
        (work / junk).parent.mkdir(parents=True, exist_ok=True)
        (work / junk).write_bytes(b"not for the repo")
    assert vortex_main(["publish", str(work), "--repo-id", "org/name", "--dry-run"]) == 0
    out = capsys.readouterr().out
    listed = [line.strip() for line in out.splitlines()[1:]]
    assert listed == EXPECTED and not fake_hub.requests
    size = sum((work / f).stat().st_size for f in EXPECTED if f != "README.md")
    assert out.splitlines()[0].startswith(f"would publish {work} to org/name (main): {len(EXPECTED)} files")
    assert size < 3_000_000
    assert vortex_main(["publish", str(work), "--repo-id", "org/name", "--dry-run", "--with-onnx"]) == 0
    listed = [line.strip() for line in capsys.readouterr().out.splitlines()[1:]]
    assert listed == sorted([*EXPECTED, "edge/model.onnx", "cloud/model.onnx"]) and not fake_hub.requests
    assert (work / "edge" / "model.onnx").read_bytes() == b"not for the repo"  # a dry run changes nothing


def test_the_card_metadata_parses_back(checkpoint, fake_hub, tmp_path):
    work = tmp_path / "ckpt"
    shutil.copytree(checkpoint, work)
    meta = json.loads((work / "vortex.json").read_text())
    meta["recipe"]["license"], meta["profile"]["dataset"] = "mit", "org/digits"  # a Hub dataset id
    (work / "vortex.json").write_text(json.dumps(meta))
    for flags, license in (([], "mit"), (["--license", "apache-2.0"], "apache-2.0")):
        assert vortex_main(["publish", str(work), "--repo-id", "org/name", *flags]) == 0
        data = ModelCard(fake_hub.commits[-1].files["README.md"].decode()).data
        assert (data.license, data.library_name, data.datasets) == (license, "vortex", ["org/digits"])
        assert {"split-inference", "model-inversion"} <= set(data.tags)


def test_vortex_model_push_to_hub(checkpoint, fake_hub, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    edge = VortexModel.from_pretrained(checkpoint, part="edge")
    url = edge.push_to_hub("org/edge", token=SECRET, private=True)
    commit = fake_hub.commits[-1]
    assert url.startswith(f"{fake_hub.url}/org/edge/commit/") and commit.repo_id == "org/edge"
    assert sorted(commit.files) == ["config.json", "edge/config.json", "edge/model.safetensors", "vortex.json"]
    for name, data in commit.files.items():
        (tmp_path / "edge" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "edge" / name).write_bytes(data)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(VortexModel.from_pretrained(tmp_path / "edge", part="edge")(x), edge(x))
    VortexModel.from_pretrained(checkpoint).push_to_hub("org/full", token=SECRET, revision="dev")
    assert (fake_hub.commits[-1].repo_id, fake_hub.commits[-1].revision) == ("org/full", "dev")
    assert sorted(fake_hub.commits[-1].files) == EXPECTED
    out = capsys.readouterr()
    no_secret_anywhere(out.out, out.err, caplog.text, files={**commit.files, **fake_hub.commits[-1].files})
