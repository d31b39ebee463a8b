"""Pre-partitioned downloads from a real Hub-compatible server: olah serving git repos of published checkpoints.

Two checkpoints are published through the FakeHub (v1, tagged, then v2 on main) and their
commits become a git repo that olah serves; the client side runs in fresh processes with
HF_ENDPOINT (and HF_HUB_OFFLINE) set, as a user's would.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_helpers import SECRET, FakeHub, git_commit, make_checkpoint, tree_bytes
from huggingface_hub import constants
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification

from vortex.cli.main import main as vortex_main
from vortex.errors import HubError
from vortex.hub.checkpoint import load_checkpoint
from vortex.hub.layout import read_meta
from vortex.hub.model import VortexModel
from vortex.hub.repo import from_pretrained, publish
from vortex.models import split_model

WORKER = Path(__file__).with_name("hub_worker.py")
REPO = "org/name"


@pytest.fixture(scope="module")
def hub(tmp_path_factory, local_hub):
    root = tmp_path_factory.mktemp("hub")
    fake, olah = FakeHub(), local_hub
    v1, v2 = make_checkpoint(root / "v1", seed=1), make_checkpoint(root / "v2", seed=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "ENDPOINT", fake.url)
        for ckpt, tag in ((v1, "v1"), (v2, None)):
            publish(ckpt, REPO, token=SECRET)
            git_commit(olah.mirrors, REPO, fake.commits[-1].files, f"publish {ckpt.name}", tag=tag)
        vit = make_checkpoint(root / "vit", architecture="vit")
        publish(vit, "org/vit", token=SECRET, split=1)  # re-cut: the description in vortex.json records it
        git_commit(olah.mirrors, "org/vit", fake.commits[-1].files, "publish a vit")
        shutil.copytree(v2, root / "v2onnx")
        publish(root / "v2onnx", "org/onnx", token=SECRET, with_onnx=True)
        git_commit(olah.mirrors, "org/onnx", fake.commits[-1].files, "publish with ONNX halves")
    published = fake.commits[-1].files
    git_commit(
        olah.mirrors, "org/plain", {"config.json": b'{"model_type": "bert"}', "README.md": b"# a model\n"}, "not vortex"
    )
    git_commit(olah.mirrors, "org/pickled", {**published, "pytorch_model.bin": b"\x80\x04K\x01."}, "with a pickle")
    git_commit(
        olah.mirrors,
        "org/nohalves",
        {k: v for k, v in published.items() if not k.startswith(("edge/", "cloud/"))},
        "without halves",
    )
    for name, config in (
        ("org/rce-top", "config.json"),
        ("org/rce-edge", "edge/config.json"),
        ("org/rce-cloud", "cloud/config.json"),
    ):
        planted = {
            **json.loads(published[config]),
            "architecture": "os:system",
            "options": {"command": f"touch {root / 'ran'}"},
        }
        git_commit(olah.mirrors, name, {**published, config: json.dumps(planted).encode()}, "names code")
    swapped = {**published, "model.safetensors": (v1 / "model.safetensors").read_bytes()}
    git_commit(olah.mirrors, "org/swapped", swapped, "full weights of another checkpoint")
    yield {"root": root, "olah": olah, "v1": v1, "v2": v2, "vit": vit}
    fake.close()


def reference(ckpt: Path, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of the original model, its halves at the GPZ and at split 1, computed locally."""
    model, spec, names = load_checkpoint(ckpt)
    model.eval()
    sm = split_model(model, spec, names)
    k = read_meta(ckpt)["halves"]["index"]
    with torch.no_grad():
        z = sm.edge(k)(x)
        return {"full": model(x), "edge": z, "z": z, "cloud": sm.cloud(k)(z), "edge1": sm.edge(1)(x), "k": k}


def run_worker(hub, name: str, steps: list[dict], **env) -> tuple[dict, dict]:
    out = hub["root"] / name
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    inputs = {"x": x, "z": reference(hub["v2"], x)["z"]}
    out.mkdir()
    save_file(inputs, str(out / "inputs.safetensors"))
    (out / "plan.json").write_text(json.dumps({"inputs": str(out / "inputs.safetensors"), "steps": steps}))
    environ = {**os.environ, "HF_ENDPOINT": hub["olah"].url, **env}
    environ.pop("HF_TOKEN", None)
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out / "plan.json"), str(out)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "results.json").read_text()), load_file(out / "outputs.safetensors")


def cache_files(cache: Path) -> list[str]:
    """Files of every snapshot in a huggingface_hub cache, as repo paths."""
    return sorted(
        p.relative_to(snap).as_posix()
        for snap in cache.glob("models--*/snapshots/*")
        for p in snap.rglob("*")
        if p.is_file()
    )


@pytest.fixture(scope="module")
def online(hub):
    c = {name: str(hub["root"] / f"cache_{name}") for name in ("edge", "full", "v1")}
    steps = [
        {"name": "edge", "repo_or_dir": REPO, "part": "edge", "cache_dir": c["edge"]},
        {"name": "full", "repo_or_dir": REPO, "part": "full", "cache_dir": c["full"]},
        {"name": "cloud", "repo_or_dir": REPO, "part": "cloud", "cache_dir": c["full"], "input": "z"},
        {"name": "edge1", "repo_or_dir": REPO, "part": "edge", "split": "block1", "cache_dir": c["full"]},
        {"name": "v1_edge", "repo_or_dir": REPO, "part": "edge", "revision": "v1", "cache_dir": c["v1"]},
        {"name": "v1_full", "repo_or_dir": REPO, "part": "full", "revision": "v1", "cache_dir": c["v1"]},
        {"name": "probe_model", "call": "load_model", "repo": REPO},
        {"name": "not_vortex", "repo_or_dir": "org/plain", "part": "edge"},
        {"name": "pickled", "repo_or_dir": "org/pickled", "part": "edge"},
        {"name": "no_half", "repo_or_dir": "org/nohalves", "part": "edge"},
        {"name": "no_split", "repo_or_dir": REPO, "part": "edge", "split": 99, "cache_dir": c["full"]},
        {"name": "no_repo", "repo_or_dir": "org/missing", "part": "edge"},
        {"name": "no_revision", "repo_or_dir": REPO, "part": "edge", "revision": "v9"},
        *(
            {"name": f"rce_{where}_{part}", "repo_or_dir": f"org/rce-{where}", "part": part}
            for where in ("top", "edge")
            for part in ("edge", "full")
        ),
        {"name": "rce_probe_model", "call": "load_model", "repo": "org/rce-top"},
        {"name": "rce_cloud_cloud", "repo_or_dir": "org/rce-cloud", "part": "cloud"},
        {"name": "rce_top_cloud", "repo_or_dir": "org/rce-top", "part": "cloud"},
        {"name": "swapped_full", "repo_or_dir": "org/swapped", "part": "full"},
    ]
    results, outputs = run_worker(hub, "online", steps, HF_HUB_CACHE=str(hub["root"] / "default_cache"))
    return results, outputs, {k: Path(v) for k, v in c.items()}


def test_edge_download_equals_edge_of_original_and_fetches_no_cloud_weights(hub, online):
    results, outputs, caches = online
    x = load_file(hub["root"] / "online" / "inputs.safetensors")["x"]
    ref = reference(hub["v2"], x)
    assert results["edge"] == {"ok": True, "type": "GraphModule"}
    torch.testing.assert_close(outputs["edge"], ref["edge"])
    assert cache_files(caches["edge"]) == ["config.json", "edge/config.json", "edge/model.safetensors"]
    published = tree_bytes(hub["v2"])
    blobs = {p.read_bytes() for p in caches["edge"].glob("models--*/blobs/*")}
    assert published["cloud/model.safetensors"] not in blobs and published["model.safetensors"] not in blobs
    assert blobs == {published["config.json"], published["edge/config.json"], published["edge/model.safetensors"]}


def test_full_and_cloud_round_trip(hub, online):
    results, outputs, _ = online
    x = load_file(hub["root"] / "online" / "inputs.safetensors")["x"]
    ref = reference(hub["v2"], x)
    assert results["full"]["ok"] and results["cloud"]["ok"] and results["probe_model"]["ok"]
    torch.testing.assert_close(outputs["full"], ref["full"])
    torch.testing.assert_close(outputs["probe_model"], ref["full"])
    torch.testing.assert_close(outputs["cloud"], ref["cloud"])
    torch.testing.assert_close(outputs["edge1"], ref["edge1"])  # re-cut from the full weights


def test_revision_selects_the_tagged_checkpoint(hub, online):
    results, outputs, _ = online
    x = load_file(hub["root"] / "online" / "inputs.safetensors")["x"]
    v1, v2 = reference(hub["v1"], x), reference(hub["v2"], x)
    assert not torch.allclose(v1["full"], v2["full"])
    torch.testing.assert_close(outputs["v1_full"], v1["full"])
    torch.testing.assert_close(outputs["v1_edge"], v1["edge"])


@pytest.mark.parametrize(
    "step,message",
    [
        ("not_vortex", "Hub repo 'org/plain' is not a vortex checkpoint"),
        ("pickled", "holds pickle files (pytorch_model.bin); vortex loads safetensors only"),
        ("no_half", "Hub repo 'org/nohalves' has no edge/ half"),
        ("no_split", "split 99 does not exist: valid splits are 1..8"),
        ("no_repo", "Hub repo 'org/missing' not found at http://127.0.0.1:"),
        ("no_revision", "Hub repo 'org/name' (revision v9) not found"),  # olah's answer; the Hub's is handled too
    ],
)
def test_unusable_repos_get_clear_errors(online, step, message):
    results, _, _ = online
    assert "error" in results[step], results[step]
    assert message in results[step]["message"]


def test_a_repo_naming_code_is_refused_and_the_code_never_runs(hub, online):
    results, _, _ = online
    names = ("rce_top_edge", "rce_top_full", "rce_edge_edge", "rce_edge_full", "rce_probe_model")
    for name in (*names, "rce_cloud_cloud", "rce_top_cloud"):
        assert results[name]["error"] == "HubError", results[name]
        assert "names the architecture 'os:system'" in results[name]["message"]
    out = hub["root"] / "rce_pulled"
    env = {**os.environ, "HF_ENDPOINT": hub["olah"].url, "HF_HUB_CACHE": str(hub["root"] / "rce_cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "vortex", "pull", "org/rce-edge", "--part", "edge", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "edge/config.json names the architecture 'os:system'" in proc.stderr
    assert not (hub["root"] / "ran").exists()


def test_full_weights_that_do_not_match_their_hash_are_refused(hub, online, tmp_path):
    results, _, _ = online
    assert "model.safetensors' does not match the hash in config.json" in results["swapped_full"]["message"]
    env = {**os.environ, "HF_ENDPOINT": hub["olah"].url, "HF_HUB_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "vortex", "pull", "org/swapped", "--part", "full", "--out", str(tmp_path / "full")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "verified" not in proc.stdout, proc.stderr
    assert "full/model.safetensors' does not match the hash in config.json" in proc.stderr


def test_offline_mode_loads_from_the_cache(hub, online):
    _, _, caches = online
    steps = [
        {"name": "edge", "repo_or_dir": REPO, "part": "edge", "cache_dir": str(caches["edge"])},
        {"name": "v1_edge", "repo_or_dir": REPO, "part": "edge", "revision": "v1", "cache_dir": str(caches["v1"])},
        {"name": "cloud", "repo_or_dir": REPO, "part": "cloud", "cache_dir": str(caches["edge"]), "input": "z"},
    ]
    results, outputs = run_worker(hub, "offline", steps, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    x = load_file(hub["root"] / "offline" / "inputs.safetensors")["x"]
    torch.testing.assert_close(outputs["edge"], reference(hub["v2"], x)["edge"])
    torch.testing.assert_close(outputs["v1_edge"], reference(hub["v1"], x)["edge"])
    assert "is not in the local Hub cache" in results["cloud"]["message"]


def test_pull_cli_downloads_the_edge_half_only(hub):
    out = hub["root"] / "pulled"
    env = {**os.environ, "HF_ENDPOINT": hub["olah"].url, "HF_HUB_CACHE": str(hub["root"] / "pull_cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "vortex", "pull", REPO, "--part", "edge", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    k = read_meta(hub["v2"])["halves"]["index"]
    assert f"pulled the edge half of {REPO} (main) into {out}: 3 files" in proc.stdout
    assert f"split {k} (" in proc.stdout and "verified" in proc.stdout
    assert sorted(tree_bytes(out).keys() - {p for p in tree_bytes(out) if p.startswith(".cache/")}) == [
        "config.json",
        "edge/config.json",
        "edge/model.safetensors",
    ]
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained(out, part="edge")(x), reference(hub["v2"], x)["edge"])

    bad = subprocess.run(
        [sys.executable, "-m", "vortex", "pull", "org/nohalves", "--part", "cloud", "--out", str(hub["root"] / "bad")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert bad.stderr.splitlines()[-1].startswith("vortex: error: Hub repo 'org/nohalves' has no cloud/ half")


def test_a_device_pulls_only_the_onnx_edge_and_runs_it_with_onnxruntime(hub):
    out = hub["root"] / "onnx_pulled"
    env = {**os.environ, "HF_ENDPOINT": hub["olah"].url, "HF_HUB_CACHE": str(hub["root"] / "onnx_cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "vortex", "pull", "org/onnx", "--part", "edge", "--format", "onnx", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "pulled the edge half of org/onnx (main)" in proc.stdout and "onnxruntime.InferenceSession" in proc.stdout
    files = sorted(p for p in tree_bytes(out) if not p.startswith(".cache/"))
    assert files == ["config.json", "edge/config.json", "edge/model.onnx"]  # no weights, no cloud
    device = (  # the README's device-side example: onnxruntime and numpy only
        "import json, sys\nimport numpy as np\nimport onnxruntime as ort\n"
        "edge = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "meta = edge.get_modelmeta().custom_metadata_map\n"
        "x = np.load(sys.argv[2])\n"
        "np.save(sys.argv[3], edge.run(None, {'pixel_values': x})[0])\n"
        "print(meta['split'], meta['z_bytes'])\n"
    )
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    np.save(hub["root"] / "x.npy", x.numpy())
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            device,
            str(out / "edge" / "model.onnx"),
            str(hub["root"] / "x.npy"),
            str(hub["root"] / "z.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    ref = reference(hub["v2"], x)
    assert run.stdout.split() == [str(ref["k"]), str(4 * int(np.prod(ref["z"].shape[1:])))]
    np.testing.assert_allclose(np.load(hub["root"] / "z.npy"), ref["edge"].numpy(), atol=1e-5)


def point_at(mp: pytest.MonkeyPatch, url: str) -> None:
    """huggingface_hub in this process talks to `url`, as HF_ENDPOINT would make it."""
    mp.setattr(constants, "ENDPOINT", url)
    mp.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def olah_endpoint(hub, monkeypatch):
    point_at(monkeypatch, hub["olah"].url)
    return monkeypatch


def run(model, x):
    with torch.no_grad():
        return model(x)


def test_vortex_model_through_the_hub(hub, olah_endpoint, tmp_path, capsys, caplog):
    cache = tmp_path / "cache"
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    ref, meta = reference(hub["v2"], x), read_meta(hub["v2"])
    edge = VortexModel.from_pretrained(REPO, part="edge", cache_dir=cache, token=SECRET)
    assert cache_files(cache) == ["config.json", "edge/config.json", "edge/model.safetensors", "vortex.json"]
    torch.testing.assert_close(run(edge, x), ref["edge"])
    assert (edge.config.split_index, edge.config.gpz) == (ref["k"], meta["gpz"]["index"])
    assert edge.config.payload_bytes == meta["halves"]["z_bytes"] and edge.config.z_shape == meta["halves"]["z_shape"]
    cloud = VortexModel.from_pretrained(REPO, part="cloud", cache_dir=cache, token=SECRET, force_download=True)
    full = VortexModel.from_pretrained(REPO, cache_dir=cache, token=SECRET)
    torch.testing.assert_close(run(cloud, run(edge, x)), ref["full"])
    torch.testing.assert_close(run(full, x), ref["full"])

    edge.save_pretrained(tmp_path / "saved")
    back = VortexModel.from_pretrained(tmp_path / "saved", part="edge")
    torch.testing.assert_close(run(back, x), ref["edge"])
    assert back.config == edge.config

    point_at(olah_endpoint, "http://127.0.0.1:9")  # no Hub: the cache alone
    cached = VortexModel.from_pretrained(REPO, part="edge", cache_dir=cache, local_files_only=True)
    torch.testing.assert_close(run(cached, x), ref["edge"])
    with pytest.raises(HubError) as err:
        VortexModel.from_pretrained(REPO, part="edge", cache_dir=tmp_path / "empty", local_files_only=True)
    message = str(err.value)
    assert "\n" not in message and "is not in the local Hub cache" in message and "local_files_only" in message

    out = capsys.readouterr()
    assert SECRET not in out.out + out.err + caplog.text + message
    assert not any(SECRET.encode() in data for data in tree_bytes(tmp_path).values())


def test_transformers_loads_a_published_vit_and_vortex_pulls_its_halves(hub, olah_endpoint, tmp_path, capsys):
    assert vortex_main(["pull", "org/vit", "--part", "edge", "--out", str(tmp_path / "edge")]) == 0
    assert "split 1 (vit.embeddings) of vit" in capsys.readouterr().out
    pulled = sorted(p for p in tree_bytes(tmp_path / "edge") if not p.startswith(".cache/"))
    assert pulled == ["config.json", "edge/config.json", "edge/model.safetensors", "vortex.json"]  # no cloud
    assert vortex_main(["pull", "org/vit", "--part", "full", "--out", str(tmp_path / "full")]) == 0
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    hf = AutoModelForImageClassification.from_pretrained(tmp_path / "full").eval()
    ours = VortexModel.from_pretrained("org/vit", cache_dir=tmp_path / "cache")
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).logits, ours(x), atol=1e-5, rtol=0)
    edge = VortexModel.from_pretrained(tmp_path / "edge", part="edge")
    cloud = VortexModel.from_pretrained("org/vit", part="cloud", cache_dir=tmp_path / "cache")
    torch.testing.assert_close(run(cloud, run(edge, x)), run(ours, x))
    assert edge.config.split_index == 1 == read_meta(hub["vit"])["halves"]["index"]
