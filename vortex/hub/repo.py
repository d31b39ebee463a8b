"""The Hugging Face Hub: publish a checkpoint, download it whole or pre-partitioned.

    vortex.from_pretrained("org/name", part="edge")   # downloads edge/ only, never cloud weights
    publish("runs/demo", "org/name")                  # create the repo, upload in one commit

Every Hub call goes through huggingface_hub, so HF_ENDPOINT, HF_TOKEN, HF_HUB_CACHE and
HF_HUB_OFFLINE=1 work as usual. Weights load from safetensors only; pickle files and custom
(code-defined) architectures in a downloaded repo are refused. Downloads and pushes that meet transient
failures (408, 429, 5xx, timeouts, dropped connections) are tried again: RETRY_TRIES tries in all, the
first retry after RETRY_BACKOFF seconds, each next one after twice the wait before it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

from vortex.errors import HubError, VortexError
from vortex.hub.checkpoint import (
    file_sha256,
    load_checkpoint,
    load_half,
    spec_of,
    split_info,
    verify_checkpoint,
    write_halves,
)
from vortex.hub.hf_classifier import SHARDS_INDEX, is_transformers_model, to_checkpoint
from vortex.hub.layout import (
    CARD,
    CONFIG,
    META,
    META_CONFIG,
    ONNX_FILE,
    PARTS,
    WEIGHTS,
    gpz_index,
    is_checkpoint,
    model_description,
    read_config,
    read_half_config,
    read_json_object,
    read_meta,
)
from vortex.models import BUILTIN_MODELS, TRANSFORMERS, ModelSpec, split_model
from vortex.report.tables import human_size, shape_text

log = logging.getLogger(__name__)
T = TypeVar("T")

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# the top-level files a model repo gets (the halves' files are added per part)
PUBLISHED = (
    WEIGHTS,
    CONFIG,
    META,
    CARD,
    ONNX_FILE,
    "profile.json",
    "profile.png",
    "vortex.png",
    "attack.json",
    "attack.png",
    "attack/attack.json",
    "attack/attack.png",
)
# what each part needs from a repo; None: everything (a whole checkpoint)
PATTERNS: dict[str, list[str] | None] = {
    "edge": [CONFIG, "edge/*"],
    "cloud": [CONFIG, "cloud/*"],
    "weights": [CONFIG, META, WEIGHTS],
    "edge-onnx": [CONFIG, f"edge/{CONFIG}", f"edge/{ONNX_FILE}"],  # what a device with onnxruntime needs
    "cloud-onnx": [CONFIG, f"cloud/{CONFIG}", f"cloud/{ONNX_FILE}"],
    "full": None,
}
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
RETRY_TRIES = 3  # tries of a Hub download or push that meets transient failures (`with_retries`)
RETRY_BACKOFF = 2.0  # seconds before the first retry, doubled before each next one
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_repo_id(text: str) -> bool:
    """Whether `text` reads as a Hub repo id `org/name` (and is not an existing local path)."""
    return bool(_REPO_ID.fullmatch(text)) and not Path(text).exists()


# Download ------------------------------------------------------------------------------------------------


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection and timeout errors of the HTTP client huggingface_hub uses."""
    try:
        import httpx2 as httpx
    except ImportError:
        import httpx
    return (httpx.TransportError,)


@contextmanager
def _hub_errors(repo_id: str, revision: str | None) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one-line HubErrors that say what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        try:
            yield
        except LocalEntryNotFoundError as exc:  # snapshot_download's wrapping of a request that failed: say which
            if exc.__cause__ is not None and _is_transient(exc.__cause__):
                raise exc.__cause__ from None
            raise
    except GatedRepoError:
        raise HubError(
            f"Hub repo '{repo_id}' is gated: accept its conditions on the Hub and log in (`hf auth login` or HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:  # also what some mirrors answer for a missing revision
        what = f"Hub repo '{repo_id}'" + (f" (revision {revision})" if revision else "")
        check = "the id and the revision" if revision else "the id"
        raise HubError(
            f"{what} not found at {_endpoint()}: check {check}; for a private repo log in (`hf auth login` or HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise HubError(
            f"revision '{revision}' does not exist in Hub repo '{repo_id}': use one of its branches, tags or commits"
        ) from None
    except LocalEntryNotFoundError:
        raise HubError(
            f"'{repo_id}' (revision {revision or 'main'}) is not in the local Hub cache and the Hub "
            f"cannot be used (local_files_only, HF_HUB_OFFLINE=1 or {_endpoint()} unreachable): load it once online to "
            "cache it, or load a directory written by `vortex pull`"
        ) from None
    except HfHubHTTPError as exc:
        raise HubError(
            f"the Hub at {_endpoint()} refused the request for '{repo_id}': {str(exc).splitlines()[0]}"
        ) from None
    except _transport_errors() as exc:
        raise HubError(
            f"cannot reach the Hub at {_endpoint()} ({type(exc).__name__}: {exc}); check the network "
            "or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the local cache"
        ) from None


def _refuse_unsafe(repo_id: str, files: list[str]) -> None:
    pickles = [f for f in files if f.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise HubError(
            f"Hub repo '{repo_id}' holds pickle files ({', '.join(pickles[:3])}); vortex loads "
            "safetensors only and refuses repos that ship pickled weights"
        )


def download(
    repo_id: str,
    part: str = "full",
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_dir: str | Path | None = None,
    trust_code: Sequence[str] = (),
    token: str | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    with_meta: bool = False,
) -> Path:
    """Download what `part` needs from a Hub repo ('edge', 'cloud', 'weights' or 'full') and return its folder.

    'edge' fetches config.json and edge/ only, so a device never receives cloud weights
    (and vortex.json when `with_meta`, or when config.json is a transformers config and the model
    description is there). The repo is refused if it holds pickle files, is not a vortex checkpoint,
    or names a custom (non built-in) architecture the caller did not trust by name: that would mean
    importing code a download names. `token`, `local_files_only` and `force_download` are
    huggingface_hub's. Transient failures are retried (`with_retries`), then reported as one HubError line.
    """
    from huggingface_hub import HfApi, constants, snapshot_download

    if part not in PATTERNS:
        raise HubError(f"unknown part '{part}': use one of {', '.join(PATTERNS)}")
    patterns = PATTERNS[part]
    if patterns is not None and with_meta and META not in patterns:
        patterns = [*patterns, META]

    def fetch(allow: list[str] | None) -> Path:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=allow,
                ignore_patterns=[f"*{s}" for s in PICKLE_SUFFIXES],
                cache_dir=cache_dir,
                local_dir=local_dir,
                token=token,
                local_files_only=local_files_only,
                force_download=force_download,
            )
        )

    def fetch_all() -> Path:
        if not (constants.is_offline_mode() or local_files_only):
            info = HfApi(token=token).model_info(repo_id, revision=revision or "main")
            _refuse_unsafe(repo_id, [s.rfilename for s in info.siblings or []])
        path = fetch(patterns)
        if patterns is not None and META not in patterns and not model_description(path):
            path = fetch([*patterns, META])  # a transformers config.json: the model description is in vortex.json
        return path

    with _hub_errors(repo_id, revision):
        path = with_retries(fetch_all, f"download of {repo_id}")
    _check_vortex(path, repo_id, part, remote=True, trust_code=trust_code)
    return path


def _read_json(path: Path) -> dict[str, Any]:
    """A config of a download ({} when absent; one line naming the file when it is not a JSON object)."""
    return read_json_object(path) if path.is_file() else {}


def _check_vortex(path: Path, source: str, part: str, remote: bool = False, trust_code: Sequence[str] = ()) -> None:
    """Refuse what is not a vortex checkpoint or lacks the part asked for, and any config (the
    top-level one or a half's) naming an architecture that is neither built in nor trusted by
    name (building it would import code a file names)."""
    where = f"Hub repo '{source}'" if remote else f"'{source}'"
    description = model_description(path)
    if not description:
        raise HubError(
            f"{where} is not a vortex checkpoint (no {CONFIG} with model_type 'vortex', nor a {META} describing "
            "the model); write one with `vortex train --output_dir DIR` and publish it with `vortex publish`"
        )
    top = CONFIG if _read_json(path / CONFIG).get("model_type") == "vortex" else META
    configs = {top: description, **{f"{p}/{CONFIG}": _read_json(path / p / CONFIG) for p in PARTS}}
    for config, found in configs.items():
        arch = found.get("architecture", BUILTIN_MODELS[0])  # TRANSFORMERS: built by transformers, from a config
        if arch not in (*BUILTIN_MODELS, TRANSFORMERS) and arch not in trust_code:
            raise HubError(
                f"{where}: {config} names the architecture '{arch}', which is not built in "
                f"({', '.join(BUILTIN_MODELS)}); vortex never imports code a file names. If you trust that "
                f"function, pass --trust-code {arch} (trust_code=['{arch}'] in Python)"
            )
    if part in PARTS and not (path / part / WEIGHTS).is_file():
        raise HubError(
            f"{where} has no {part}/ half; its publisher can add the halves with "
            "`vortex publish DIR --repo-id ORG/NAME --split K`"
        )
    if part == "weights" and not (path / WEIGHTS).is_file():
        raise HubError(f"{where} has no full weights ({WEIGHTS}); load its halves with part='edge' or 'cloud'")
    if part.endswith("-onnx") and not (path / part.removesuffix("-onnx") / ONNX_FILE).is_file():
        half = part.removesuffix("-onnx")
        raise HubError(
            f"{where} has no {half}/{ONNX_FILE}; its publisher can add it with `vortex publish DIR --repo-id "
            "ORG/NAME --with-onnx`, or pull the safetensors half without --format onnx"
        )


def fetch_checkpoint(repo_id: str, revision: str | None = None, trust_code: Sequence[str] = ()) -> Path:
    """Download a repo's full weights and configs (not its halves) for loading as a checkpoint directory."""
    return download(repo_id, "weights", revision=revision, trust_code=trust_code)


def fetch_model(repo_id: str, revision: str | None = None, trust_code: Sequence[str] = ()) -> Path:
    """Download what `--model ORG/NAME` needs: a vortex checkpoint's full weights and configs, or a transformers
    model's config.json, vortex.json and safetensors weights (never its pickle files)."""
    from huggingface_hub import snapshot_download

    def fetch(patterns: list[str]) -> Path:
        with _hub_errors(repo_id, revision):
            return with_retries(
                lambda: Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns)),
                f"download of {repo_id}",
            )

    if not is_transformers_model(fetch([CONFIG, META])):
        return fetch_checkpoint(repo_id, revision, trust_code)
    path = fetch([CONFIG, META, WEIGHTS, SHARDS_INDEX, "model-*.safetensors"])
    if not (path / WEIGHTS).is_file() and not (path / SHARDS_INDEX).is_file():
        raise HubError(
            f"Hub repo '{repo_id}' holds a transformers model without {WEIGHTS}; vortex loads weights from "
            "safetensors only, never pickle files such as pytorch_model.bin: use a repo with safetensors weights"
        )
    return path


def from_pretrained(
    repo_or_dir: str | Path,
    part: str = "full",
    *,
    revision: str | None = None,
    split: int | str | None = None,
    cache_dir: str | Path | None = None,
    trust_code: Sequence[str] = (),
    token: str | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
) -> nn.Module:
    """Load a vortex checkpoint from the Hub (`org/name`) or a local directory, in eval mode.

    part='edge': the edge half (image -> z); 'cloud': the cloud half (z -> logits); 'full': the
    whole model. The halves are those stored in the checkpoint (cut at its GPZ), checked against
    the recorded split before they are returned; from the Hub, part='edge' downloads edge/ only.
    A `split` other than the stored one cuts the full weights there (and so downloads them).
    Never unpickles; a custom (`package.module:function`) architecture is built only when its
    name is in `trust_code`. The bare module of `vortex.VortexModel.from_pretrained` (which adds
    `.config`, `save_pretrained` and `push_to_hub`).
    """
    return load_pretrained(
        repo_or_dir,
        part,
        revision=revision,
        split=split,
        cache_dir=cache_dir,
        trust_code=trust_code,
        token=token,
        local_files_only=local_files_only,
        force_download=force_download,
    ).module


@dataclass
class Pretrained:
    """What `load_pretrained` loaded: the module (eval mode) and what describes it."""

    module: nn.Module
    part: str
    path: Path  # the directory its files are in (for the Hub: the download)
    spec: ModelSpec
    split_points: list[str]
    split: dict[str, Any] | None  # where it is cut (`split_info`); the whole model: the stored halves' split, if any
    model_sha256: str | None  # a half: the hash of the full weights it was cut from


def load_pretrained(
    repo_or_dir: str | Path,
    part: str = "full",
    *,
    revision: str | None = None,
    split: int | str | None = None,
    cache_dir: str | Path | None = None,
    trust_code: Sequence[str] = (),
    token: str | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    with_meta: bool = False,
) -> Pretrained:
    """`from_pretrained`, also returning where the module's files are and where it is cut (`with_meta`: a
    half's download brings vortex.json too)."""
    if part not in (*PARTS, "full"):
        raise VortexError(f"part must be 'edge', 'cloud' or 'full', not '{part}'")
    local = Path(repo_or_dir)
    remote = not local.is_dir()
    if remote and not is_repo_id(str(repo_or_dir)):
        raise VortexError(f"'{repo_or_dir}' is neither a checkpoint directory nor a Hub repo id (org/name)")
    hub = {"token": token, "local_files_only": local_files_only, "force_download": force_download}

    def fetch(what: str) -> Path:
        if remote:
            return download(
                str(repo_or_dir),
                what,
                revision=revision,
                cache_dir=cache_dir,
                trust_code=trust_code,
                with_meta=with_meta,
                **hub,
            )
        _check_vortex(local, str(local), what, trust_code=trust_code)
        return local

    if part != "full":
        path = fetch(part)
        config = read_half_config(path, part)
        recorded = config["split"]
        if split is None or str(split) in (str(recorded["index"]), recorded["name"]):
            module = load_half(path, part, trust_code=trust_code)
            spec = spec_of(config, path / part / CONFIG)
            model_sha256 = config["sha256"]["model"]
            return Pretrained(module, part, path, spec, config["split_points"], recorded, model_sha256)
        if not remote and not is_checkpoint(local):
            raise VortexError(
                f"'{local}' holds only the {part} half at split {recorded['index']} "
                f"({recorded['name']}); load that split, or the full checkpoint to cut at {split}"
            )
    path = fetch("weights")
    model, spec, names = load_checkpoint(path, trust_code=trust_code)
    model.eval()
    if split is None:  # the whole model (a half without `split` was returned above)
        return Pretrained(model, part, path, spec, names, read_meta(path).get("halves"), None)
    sm = split_model(model, spec, names)
    cut = split_info(sm, spec, split)
    if part == "full":
        return Pretrained(model, part, path, spec, names, cut, None)
    module = (sm.edge(split) if part == "edge" else sm.cloud(split)).eval()
    return Pretrained(module, part, path, spec, names, cut, file_sha256(path / WEIGHTS))


# Publish -------------------------------------------------------------------------------------------------


@dataclass
class Published:
    """What `publish` pushed: the repo, the commit and the files in it."""

    repo_id: str
    revision: str
    commit_url: str
    files: list[str]
    size: int
    halves: dict[str, Any] | None

    def summary(self, directory: str | Path) -> str:
        """What a user is told after a push: files, size, commit, halves and how to load them (never the token)."""
        if not self.commit_url:  # a dry run
            return "\n".join(
                [
                    f"would publish {directory} to {self.repo_id} ({self.revision}): {len(self.files)} files, "
                    f"{human_size(self.size)}",
                    *(f"  {name}" for name in self.files),
                ]
            )
        lines = [
            f"published {directory} to {self.repo_id} ({self.revision}) in one commit: "
            f"{len(self.files)} files, {human_size(self.size)}",
            f"  commit  {self.commit_url}",
        ]
        h = self.halves
        if h:
            lines.append(
                f"  halves  split {h['index']} ({h['name']}): edge {h['edge_params']} params, image "
                f"{shape_text(h['input_shape'])} -> z {shape_text(h['z_shape'])} ({h['z_bytes']} bytes); "
                f"cloud {h['cloud_params']} params"
            )
        lines += [
            f'  load    vortex.from_pretrained("{self.repo_id}", part="edge")',
            f"          vortex pull {self.repo_id} --part edge --out edge_model",
        ]
        return "\n".join(lines)


def files_to_publish(directory: str | Path, with_onnx: bool = False) -> list[str]:
    """Repo paths of the files `publish` uploads: what a model repo needs and nothing else (weights,
    configs, vortex.json, card, profile, the plots and attack summary the card shows, both halves,
    their ONNX files only `with_onnx`); never training state, logs, the baseline run or best-point weights."""
    root = Path(directory)
    wanted = [*PUBLISHED, *(f"{p}/{n}" for p in PARTS for n in (WEIGHTS, CONFIG, ONNX_FILE))]
    return sorted(n for n in wanted if (root / n).is_file() and (with_onnx or Path(n).name != ONNX_FILE))


def _is_transient(exc: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if isinstance(exc, LocalEntryNotFoundError):  # snapshot_download's wrapping of a failed request, if one failed
        return exc.__cause__ is not None and _is_transient(exc.__cause__)
    if isinstance(exc, HfHubHTTPError):
        return exc.response is not None and exc.response.status_code in TRANSIENT_STATUS
    return isinstance(exc, _transport_errors())


def with_retries(action: Callable[[], T], what: str, *, tries: int | None = None, backoff: float | None = None) -> T:
    """Run `action`, retrying transient Hub failures (408, 429, 5xx, timeouts, dropped connections) with
    exponential backoff: `tries` in all (default RETRY_TRIES), `backoff` seconds before the first retry
    (default RETRY_BACKOFF), doubled before each next one."""
    tries = RETRY_TRIES if tries is None else tries
    backoff = RETRY_BACKOFF if backoff is None else backoff
    attempt = 1
    while True:
        try:
            return action()
        except Exception as exc:
            if attempt >= tries or not _is_transient(exc):
                raise
            wait = backoff * 2 ** (attempt - 1)
            log.warning(
                "%s failed (%s); retrying in %.3gs (try %d of %d)",
                what,
                str(exc).splitlines()[0],
                wait,
                attempt + 1,
                tries,
            )
            time.sleep(wait)
            attempt += 1


def publish(
    directory: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    split: int | str | None = None,
    token: str | None = None,
    tries: int | None = None,
    backoff: float | None = None,
    trust_code: Sequence[str] = (),
    dry_run: bool = False,
    with_onnx: bool = False,
    license: str | None = None,
) -> Published:
    """Push a checkpoint directory to a Hub model repo in one commit (`dry_run`: only say what).

    Creates the repo if needed (and the branch `revision`), uploads `files_to_publish` (never
    training state or logs), with README.md rendered fresh for `repo_id`. Transient failures are retried;
    if the push still fails the directory is left as it was. `split` first re-cuts the
    halves in the directory at that split (they are written there too when missing). Nothing
    is pushed unless the weights match their hash and config and the kept halves were cut from them.
    ONNX files go only `with_onnx` (both halves exported fresh); `license` goes in the card's metadata
    (default: the recipe's, else "other"). A transformers model directory (save_pretrained, Trainer) is
    published as the vortex checkpoint it makes (`to_checkpoint`, in a temporary directory: it stays as it was).
    """
    from vortex.hub.cards import render_card, write_card

    if is_transformers_model(directory):
        if split is None and gpz_index(read_meta(directory)) is None:
            raise HubError(
                f"'{directory}' is a transformers model whose vortex.json records no GPZ (a VortexCallback "
                "writes one) to cut the halves at: pass --split K"
            )
        with tempfile.TemporaryDirectory(prefix="vortex-publish-") as tmp:
            return publish(
                to_checkpoint(directory, Path(tmp) / "checkpoint", split=split),
                repo_id,
                private=private,
                revision=revision,
                commit_message=commit_message,
                token=token,
                tries=tries,
                backoff=backoff,
                dry_run=dry_run,
                with_onnx=with_onnx,
                license=license,
            )
    root = Path(directory)
    recut = split is not None or not all((root / p / WEIGHTS).is_file() for p in PARTS)
    verify_checkpoint(root, halves=not recut, trust_code=trust_code)  # named as the user's files; re-cut: new
    staged = recut or with_onnx
    with tempfile.TemporaryDirectory(dir=root, prefix=".publish-") if staged else nullcontext() as staging:
        source = root
        if staged:  # cut / export in a copy; the directory changes only once the push has succeeded
            source = Path(staging)
            for name in files_to_publish(root, with_onnx):  # the halves' ONNX files are exported again below
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / name, source / name)
            if recut:
                _recut(source, split, trust_code)
                write_card(source)
            if with_onnx:
                from vortex.hub.export import export

                for part in PARTS:
                    export(source, part, trust_code=trust_code)
        meta = read_meta(source)
        card = str(render_card(source, repo_id, license)).encode()
        files = files_to_publish(source, with_onnx)
        files = files if CARD in files else sorted([*files, CARD])
        size = sum(len(card) if f == CARD else (source / f).stat().st_size for f in files)
        if dry_run:
            return Published(repo_id, revision or "main", "", files, size, meta.get("halves"))
        repo, url = commit_to_hub(
            repo_id,
            {f: card if f == CARD else source / f for f in files},
            token=token,
            private=private,
            revision=revision,
            message=commit_message or f"Upload vortex checkpoint ({len(files)} files)",
            failure=f"push of '{root}' to Hub repo '{repo_id}' failed",
            advice=f"Nothing was changed: the checkpoint is still complete in {root}; run "
            f"`vortex publish {root} --repo-id {repo_id}` again",
            tries=tries,
            backoff=backoff,
        )
        done = Published(repo, revision or "main", url, files, size, meta.get("halves"))
        if staged:  # what was pushed becomes the directory's: the new halves (and ONNX), configs and card
            for name in (*PARTS, CONFIG, META, CARD):
                if not (source / name).exists():
                    continue
                if (root / name).is_dir():
                    shutil.rmtree(root / name)
                os.replace(source / name, root / name)
        return done


def commit_to_hub(
    repo_id: str,
    files: dict[str, bytes | Path],
    *,
    token: str | None,
    private: bool,
    revision: str | None,
    message: str,
    failure: str,
    advice: str,
    tries: int | None = None,
    backoff: float | None = None,
) -> tuple[str, str]:
    """Upload `files` (repo path -> content or local file) to `repo_id` in one commit, creating the repo (in
    the user's namespace when it names none) and the branch; transient failures are retried. Returns the
    repo id and the commit URL; a failure is one HubError line: `failure`, the reason, then `advice`."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)

    def push() -> tuple[str, str]:
        repo = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision:
            api.create_branch(repo, branch=revision, exist_ok=True)
        ops = [CommitOperationAdd(name, data if isinstance(data, bytes) else str(data)) for name, data in files.items()]
        return repo, api.create_commit(repo, ops, commit_message=message, revision=revision).commit_url

    try:
        return with_retries(push, f"push to {repo_id}", tries=tries, backoff=backoff)
    except (ValueError, *_hub_exceptions()) as exc:
        raise HubError(f"{failure}: {_reason(exc)}. {advice}") from None


def _hub_exceptions() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    return (HfHubHTTPError, OfflineModeIsEnabled, *_transport_errors())


def _reason(exc: BaseException) -> str:
    from huggingface_hub.errors import HfHubHTTPError

    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, HfHubHTTPError) and exc.response is not None and exc.response.status_code in (401, 403):
        return f"{first} (log in with `hf auth login` or set HF_TOKEN to a token with write access)"
    return first


def _recut(root: Path, split: int | str | None, trust_code: Sequence[str] = ()) -> None:
    """Write the halves of the checkpoint in `root` at `split` (default: its GPZ) and record them."""
    from vortex.files import write_json

    meta = read_meta(root)
    model, spec, names = load_checkpoint(root, trust_code=trust_code)
    sm = split_model(model, spec, names)
    k = split if split is not None else gpz_index(meta)
    if k is None:
        raise HubError(f"'{root}' records no GPZ to cut the halves at: pass --split K")
    meta["halves"] = write_halves(root, sm, spec, k)
    config = {**read_config(root), "halves_sha256": meta["halves"]["sha256"]}
    if META_CONFIG in meta:  # beside a transformers config.json (vit): the description is in vortex.json
        meta[META_CONFIG] = config
    else:
        write_json(root / CONFIG, config)
    write_json(root / META, meta)


# Pull ----------------------------------------------------------------------------------------------------


def pull(
    repo_id: str,
    out: str | Path,
    part: str = "edge",
    *,
    revision: str | None = None,
    trust_code: Sequence[str] = (),
    fmt: str = "safetensors",
) -> Path:
    """Download one part ('edge', 'cloud' or 'full': the whole checkpoint) into `out` and verify it loads.

    `fmt="onnx"` downloads only the half's ONNX file and the configs, and checks it in onnxruntime.
    """
    if part not in (*PARTS, "full"):
        raise VortexError(f"--part must be edge, cloud or full, not '{part}'")
    if fmt not in ("safetensors", "onnx") or (fmt == "onnx" and part == "full"):
        raise VortexError(f"--format must be safetensors, or onnx with --part edge or cloud; got {fmt} for {part}")
    if fmt == "onnx":
        path = download(repo_id, f"{part}-onnx", revision=revision, local_dir=out, trust_code=trust_code)
        verify_onnx_half(path, part)
        return path
    path = download(repo_id, part, revision=revision, local_dir=out, trust_code=trust_code)
    if part == "full":
        verify_checkpoint(path, trust_code=trust_code)  # the weights and the halves cut from them
    else:
        load_half(path, part, trust_code=trust_code)
    return path


def verify_onnx_half(path: Path, part: str) -> None:
    """Run a half's ONNX file on zeros of its recorded input shape; its output must have the recorded shape."""
    import numpy as np
    import onnxruntime

    split = read_half_config(path, part, weights=ONNX_FILE)["split"]
    shape_in, expected = (
        (split["input_shape"], split["z_shape"]) if part == "edge" else (split["z_shape"], split["output_shape"])
    )
    session = onnxruntime.InferenceSession(str(path / part / ONNX_FILE), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = list(session.run(None, {name: np.zeros((1, *shape_in), np.float32)})[0].shape[1:])
    if got != list(expected):
        raise HubError(f"'{path / part / ONNX_FILE}' maps {shape_in} to {got}, not the recorded {expected}")


def folder_size(path: str | Path) -> tuple[int, int]:
    """Number and total bytes of the files under `path` (hidden ones, e.g. the download cache, excluded)."""
    files = [
        p
        for p in Path(path).rglob("*")
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts)
    ]
    return len(files), sum(p.stat().st_size for p in files)
