"""Local stand-ins for the Hugging Face Hub used by the tests/test_hub_*.py modules.

FakeHub: a stdlib HTTP server in a thread implementing what huggingface_hub sends to push
(create repo, branch, validate-yaml, preupload, commit) and recording every request.
Olah: the `olah` mirror server (a subprocess) serving git repos under mirrors/models/ORG/NAME
(and mirrors/datasets/ORG/NAME) as a read-only Hub, for downloads.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from vortex.core.probe import profile_model
from vortex.data import load_data
from vortex.hub.checkpoint import save_checkpoint
from vortex.models import ModelSpec, build_model, split_model
from vortex.training.config import load_recipe

SECRET = "hf_vortex_test_token_0123_never_shown"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_checkpoint(out: Path, seed: int = 0, architecture: str = "cnn") -> Path:
    """A small (untrained) cnn checkpoint with a real profile on 200 digits, halves at its GPZ
    (`architecture="vit"`: a 2-layer vit on 16x16 digits, whose config.json is transformers')."""
    torch.manual_seed(seed)
    spec = (
        ModelSpec("cnn", 10, 1, 8, {"width": 8})
        if architecture == "cnn"
        else ModelSpec("vit", 10, 1, 16, {"num_hidden_layers": 2})
    )
    model = build_model(spec)
    sm = split_model(model, spec)
    profile = profile_model(
        sm,
        load_data("digits")["test"],
        model_name=architecture,
        dataset_name="digits",
        max_samples=200,
        image_size=spec.image_size,
        progress=False,
    )
    meta = {
        "recipe": load_recipe(None, label_smoothing=-0.05).to_dict(),
        "test_accuracy": profile.accuracy,
        "profile": profile.to_dict(),
        "gpz": profile.gpz.to_dict(),
    }
    return save_checkpoint(out, model, spec, [s.name for s in sm.splits], meta=meta)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@dataclass
class Commit:
    repo_id: str
    revision: str
    summary: str
    files: dict[str, bytes]


@dataclass
class FakeHub:
    """The write side of the Hub API, enough for HfApi.create_repo / create_branch / create_commit."""

    repos: set[str] = field(default_factory=set)
    commits: list[Commit] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    fail: dict[str, list[int]] = field(default_factory=dict)  # path regex -> statuses to answer first

    def __post_init__(self) -> None:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hub.requests.append((self.command, self.path))
                hub.auth.append(self.headers.get("Authorization", ""))
                status, payload = hub.answer(self.path.split("?")[0], body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status >= 400:
                    self.send_header("X-Error-Message", payload.get("error", ""))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, path: str, body: bytes) -> tuple[int, dict]:
        for pattern, statuses in self.fail.items():
            if re.search(pattern, path) and statuses:
                return statuses.pop(0), {"error": "Internal Error - the test asked for a failure"}
        if path == "/api/repos/create":
            req = json.loads(body)
            repo_id = f"{req.get('organization') or 'me'}/{req['name']}"
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
            self.repos.add(repo_id)
            return 200, {"url": f"{self.url}/{repo_id}"}
        if path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit|branch)/(.+)", path)
        if not m or m.group(1) not in self.repos:
            return 404, {"error": f"Repository not found or route not served: {path}"}
        repo_id, action, revision = m.groups()
        if action == "branch":
            return 200, {}
        if action == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(x["value"] for x in lines if x["key"] == "header")
        files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
        self.commits.append(Commit(repo_id, revision, header["summary"], files))
        oid = hashlib.sha1(repr((repo_id, len(self.commits))).encode()).hexdigest()
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=vortex-tests", "-c", "user.email=t@example.org", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def git_commit(
    mirrors: Path,
    repo_id: str,
    files: dict[str, bytes],
    message: str,
    tag: str | None = None,
    repo_type: str = "models",
) -> str:
    """Commit `files` into the git repo olah serves for `repo_id` (a model repo unless `repo_type` is
    "datasets"; created on first use); return the sha."""
    repo = mirrors / repo_type / repo_id
    if not (repo / ".git").is_dir():
        repo.mkdir(parents=True)
        git(repo, "init", "-q", "-b", "main")
    for path, data in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_bytes(data)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    if tag:
        git(repo, "tag", tag)
    return git(repo, "rev-parse", "HEAD")


DATASET_CARD = """---
configs:
- config_name: gray
  data_files:
  - split: train
    path: gray/train.parquet
  - split: test
    path: gray/test.parquet
- config_name: rgb
  data_files:
  - split: train
    path: rgb/train.parquet
---
# A tiny image data set for vortex's tests
"""


def dataset_repo() -> dict[str, bytes]:
    """Files of a small Hub dataset repo with two configs of parquet files: 'gray' (train 24 / test 9
    rows, 8x8 L) and 'rgb' (train 30 rows, 8x8 RGB, no test split). Images are in `picture` and classes
    (a, b, c) in `kind`; a smaller image `thumb` and an all-zero `label` are what a guess would pick."""
    import datasets  # a slow import, needed only here
    from PIL import Image

    features = datasets.Features(
        thumb=datasets.Image(),
        picture=datasets.Image(),
        kind=datasets.ClassLabel(names=["a", "b", "c"]),
        label=datasets.Value("int64"),
    )

    def parquet(rows: int, mode: str, offset: int) -> bytes:
        kinds = [(offset + i) % 3 for i in range(rows)]
        table = datasets.Dataset.from_dict(
            {
                "thumb": [Image.new(mode, (4, 4), 128) for _ in kinds],
                "picture": [Image.new(mode, (8, 8), (40 + 80 * k,) * len(mode)) for k in kinds],
                "kind": kinds,
                "label": [0] * rows,
            },
            features=features,
        )
        buffer = io.BytesIO()
        table.to_parquet(buffer)
        return buffer.getvalue()

    return {
        "README.md": DATASET_CARD.encode(),
        "gray/train.parquet": parquet(24, "L", 0),
        "gray/test.parquet": parquet(9, "L", 1),
        "rgb/train.parquet": parquet(30, "RGB", 2),
    }


class Olah:
    """olah on 127.0.0.1:PORT, offline, serving the git repos under ROOT/mirrors."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.mirrors = root / "mirrors"
        self.mirrors.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        config = self.root / "olah.toml"
        config.write_text(f"""[basic]
host = "127.0.0.1"
port = {self.port}
repos-path = "{self.root / "cache"}"
mirror-netloc = "127.0.0.1:{self.port}"
mirror-lfs-netloc = "127.0.0.1:{self.port}"
mirrors-path = ["{self.mirrors}"]

[accessibility]
offline = true
""")
        self.log = open(self.root / "olah.out", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "olah.server", "-c", str(config), "--log-path", str(self.root / "logs")],
            cwd=self.root,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"olah exited: {(self.root / 'olah.out').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("olah did not start listening in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
