"""Atomic file writes (a reader never sees half a file, a crash never leaves one), output directories
checked before any work, and a lock so two runs never write into one directory."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vortex.errors import VortexError
from vortex.records import to_plain

LOCK = ".vortex.lock"  # held by the process writing into an output directory


def write_atomic(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` (typed records included) as indented JSON, atomically."""

    def dump(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(to_plain(obj), f, indent=2, allow_nan=False)
            f.write("\n")

    return write_atomic(path, dump)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` atomically."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def check_output_dir(path: str | Path, flag: str) -> Path:
    """Refuse, before any work, an output directory that is a file or cannot be created or written
    (it is not created here: a run refused later for another reason leaves nothing behind)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VortexError(f"{flag} {path} is a file, not a directory: pass a directory (it is created if missing)")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "cannot be written" if existing == path else f"cannot be created in {existing}"
        raise VortexError(f"{flag} {path} {what}: pick a directory you can write to")
    return path


@contextmanager
def locked(directory: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `directory` (a `.vortex.lock` file in it) while the block runs; a
    second writer fails at once with one line naming the process that holds it."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / LOCK
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise VortexError(
                f"{directory} is in use by {holder}: wait for it to finish, or choose another {what}"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"vortex pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
