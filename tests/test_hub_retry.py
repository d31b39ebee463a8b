"""Transient Hub failures, for real: a stdlib HTTP proxy in front of the local Hub (olah, for downloads) and the
recording fake Hub (for pushes) answers 429 (Retry-After: 0) or drops the connection without an answer.

A few such failures are retried and the download or push succeeds; failures that do not stop end, after
`RETRY_TRIES` tries, in one VortexError line naming the failure, within seconds (the backoff is made small here,
and huggingface_hub's own retries, which wait at least a second each, are not what the requests here reach).
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from hub_helpers import SECRET, FakeHub, git_commit
from huggingface_hub import constants

from vortex.cli.main import main as vortex_main
from vortex.errors import HubError, VortexError
from vortex.hub import repo
from vortex.hub.loading import load_model
from vortex.hub.repo import files_to_publish, from_pretrained, publish, pull

pytestmark = pytest.mark.hub

REPO = "retry/edge-net"
ANY = "^/(api/models/)?retry/edge-net/"  # every request for REPO (its info, listing and files)
PUSH = "^/api/(repos|models)/"  # every request of a push
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "host"}
DROPPED = "RemoteProtocolError: Server disconnected without sending a response"
RATE_LIMITED = "429 Too Many Requests"


class FlakyProxy:
    """An HTTP proxy in front of `upstream` that fails requests as told, then forwards them.

    `fail(mode, times, only)`: the next `times` requests whose path matches the regex `only` get `mode`: "429"
    (Too Many Requests, Retry-After: 0) or "drop" (the connection closed without an answer); `times=None`: every
    such request from now on. `seen` records (method, path, what was done) for every request; `matching()` those
    `only` matches (huggingface_hub also asks the Hub for things of its own, e.g. /api/agent-harnesses)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.seen: list[tuple[str, str, str]] = []
        self.mode, self.left, self.only = "", 0, "^$"
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                action = proxy.decide(self.command, self.path)
                if action == "drop":
                    self.close_connection = True  # nothing written: the client sees the connection close
                    return
                if action == "429":
                    self.send_response(429, "Too Many Requests")
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                proxy.forward(self, body)

            do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def fail(self, mode: str, times: int | None, only: str) -> None:
        with self.lock:
            self.mode, self.left, self.only = mode, times, only

    def decide(self, method: str, path: str) -> str:
        with self.lock:
            action = "forwarded"
            if (self.left is None or self.left > 0) and re.search(self.only, path):
                action = self.mode
                if self.left is not None:
                    self.left -= 1
            self.seen.append((method, path, action))
            return action

    def forward(self, handler: BaseHTTPRequestHandler, body: bytes | None) -> None:
        up = urlsplit(self.upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        conn.request(handler.command, handler.path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        handler.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                handler.send_header(name, value.replace(self.upstream, self.url))
        length = response.getheader("Content-Length") if handler.command == "HEAD" else None
        handler.send_header("Content-Length", length if length is not None else str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)

    def matching(self) -> list[tuple[str, str, str]]:
        with self.lock:
            return [s for s in self.seen if re.search(self.only, s[1])]

    def actions(self) -> list[str]:
        return [action for _, _, action in self.matching()]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def point_at(mp: pytest.MonkeyPatch, url: str) -> None:
    """huggingface_hub in this process talks to `url`, as HF_ENDPOINT would make it."""
    mp.setattr(constants, "ENDPOINT", url)
    mp.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture(scope="module")
def served(local_hub, tiny_checkpoint):
    """The published files of a small checkpoint, served by the local Hub as REPO."""
    files = {name: (tiny_checkpoint / name).read_bytes() for name in files_to_publish(tiny_checkpoint)}
    git_commit(local_hub.mirrors, REPO, files, "a checkpoint to download through a flaky proxy")
    return files


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(repo, "RETRY_BACKOFF", 0.01)


@pytest.fixture
def hub_proxy(local_hub, monkeypatch, tmp_path):
    """A FlakyProxy in front of the local Hub, and an empty Hub cache: every download asks the Hub."""
    proxy = FlakyProxy(local_hub.url)
    point_at(monkeypatch, proxy.url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    yield proxy
    proxy.close()


@pytest.fixture
def push_proxy(monkeypatch):
    fake = FakeHub()
    proxy = FlakyProxy(fake.url)
    point_at(monkeypatch, proxy.url)
    yield proxy, fake
    proxy.close()
    fake.close()


def first_retried(proxy: FlakyProxy, mode: str, times: int) -> None:
    """The first `times` requests failed as told and the same request then went through."""
    seen = proxy.matching()
    method, path, _ = seen[0]
    assert seen[: times + 1] == [(method, path, mode)] * times + [(method, path, "forwarded")], seen


@pytest.mark.parametrize("mode", ["429", "drop"])
def test_a_download_is_retried_after_transient_failures(served, hub_proxy, tmp_path, caplog, mode):
    hub_proxy.fail(mode, times=2, only=ANY)
    path = pull(REPO, tmp_path / "edge", part="edge")
    assert (path / "edge" / "model.safetensors").read_bytes() == served["edge/model.safetensors"]
    assert not (path / "cloud").exists() and not (path / "model.safetensors").exists()
    first_retried(hub_proxy, mode, 2)
    assert caplog.text.count(f"download of {REPO} failed") == 2 and "retrying in 0.02s (try 3 of 3)" in caplog.text


def test_a_connection_dropped_in_the_middle_of_a_download_is_retried(served, hub_proxy, tmp_path, caplog):
    """The repo's info and listing went through; the first request for a file is dropped (huggingface_hub
    lets that error out: vortex retries the download)."""
    hub_proxy.fail("drop", times=1, only="/resolve/")
    model = from_pretrained(REPO, part="edge", cache_dir=tmp_path / "cache")
    assert model.training is False and hub_proxy.actions()[0] == "drop" and hub_proxy.actions()[1:]
    assert set(hub_proxy.actions()[1:]) == {"forwarded"}
    assert caplog.text.count(f"download of {REPO} failed (Server disconnected without sending a response.)") == 1


@pytest.mark.parametrize("mode", ["429", "drop"])
def test_a_model_argument_from_the_hub_is_retried(served, hub_proxy, mode):
    """`--model ORG/NAME` downloads through snapshot_download alone, which wraps a 429 in LocalEntryNotFoundError."""
    hub_proxy.fail(mode, times=2, only=ANY)
    loaded = load_model(REPO, num_classes=10, data_channels=1, data_size=8)
    assert loaded.spec.architecture == "cnn" and len(loaded.split.splits) >= 6
    first_retried(hub_proxy, mode, 2)


@pytest.mark.parametrize("mode,reason", [("429", RATE_LIMITED), ("drop", DROPPED)])
def test_a_model_argument_that_keeps_failing_names_the_failure(served, hub_proxy, mode, reason):
    """Not 'not in the local Hub cache', which is what snapshot_download's LocalEntryNotFoundError would say."""
    hub_proxy.fail(mode, times=None, only=ANY)
    with pytest.raises(HubError) as err:
        load_model(REPO, num_classes=10, data_channels=1, data_size=8)
    message = str(err.value)
    assert message.startswith(f"'{REPO}' is not a local directory, and as a Hub repo id: ") and reason in message
    assert "\n" not in message and "local Hub cache" not in message and hub_proxy.actions() == [mode] * 3


@pytest.mark.parametrize("mode,reason", [("429", RATE_LIMITED), ("drop", DROPPED)])
def test_a_download_that_keeps_failing_ends_in_one_line(served, hub_proxy, tmp_path, mode, reason):
    hub_proxy.fail(mode, times=None, only=ANY)
    started = time.monotonic()
    with pytest.raises(VortexError) as err:
        pull(REPO, tmp_path / "edge", part="edge")
    message = str(err.value)
    assert isinstance(err.value, HubError) and "\n" not in message, message
    assert reason in message and hub_proxy.url in message, message
    assert hub_proxy.actions() == [mode] * repo.RETRY_TRIES == [mode] * 3
    assert time.monotonic() - started < 5
    assert not (tmp_path / "edge" / "edge").exists()


def test_vortex_pull_that_keeps_failing_prints_one_line(served, hub_proxy, tmp_path, capsys):
    hub_proxy.fail("drop", times=None, only=ANY)
    assert vortex_main(["pull", REPO, "--part", "edge", "--out", str(tmp_path / "edge")]) == 2
    *retries, error = capsys.readouterr().err.strip().splitlines()
    assert error.startswith(f"vortex: error: cannot reach the Hub at {hub_proxy.url} ({DROPPED}.)"), error
    assert retries == [
        f"download of {REPO} failed (Server disconnected without sending a response.); retrying in {wait}s "
        f"(try {n} of 3)"
        for wait, n in (("0.01", 2), ("0.02", 3))
    ]
    assert hub_proxy.actions() == ["drop"] * 3


@pytest.mark.parametrize("mode", ["429", "drop"])
def test_a_push_is_retried_after_transient_failures(tiny_checkpoint, push_proxy, caplog, mode):
    proxy, fake = push_proxy
    proxy.fail(mode, times=2, only=PUSH)
    done = publish(tiny_checkpoint, "org/retried", token=SECRET)
    assert len(fake.commits) == 1 and done.commit_url.startswith(f"{fake.url}/org/retried/commit/")
    assert sorted(fake.commits[0].files) == done.files
    first_retried(proxy, mode, 2)
    assert proxy.matching()[0][1] == "/api/repos/create" and caplog.text.count("push to org/retried failed") == 2


@pytest.mark.parametrize("mode,reason", [("429", RATE_LIMITED), ("drop", "Server disconnected without sending")])
def test_a_push_that_keeps_failing_ends_in_one_line(tiny_checkpoint, push_proxy, mode, reason):
    proxy, fake = push_proxy
    proxy.fail(mode, times=None, only=PUSH)
    started = time.monotonic()
    with pytest.raises(VortexError) as err:
        publish(tiny_checkpoint, "org/refused", token=SECRET)
    message = str(err.value)
    assert isinstance(err.value, HubError) and "\n" not in message, message
    assert message.startswith(f"push of '{tiny_checkpoint}' to Hub repo 'org/refused' failed: ") and reason in message
    assert "Nothing was changed" in message and SECRET not in message
    assert proxy.actions() == [mode] * 3 and not fake.commits
    assert time.monotonic() - started < 5
