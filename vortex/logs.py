"""Library code reports through `logging`; an entry point (a `vortex` command, `vortex/train.py`) calls
`show_logs()` to print it, from the main process only when several run (as `accelerator.print` would).

accelerate's own `get_logger` is not used: it prefixes every message with "[RANK n]", which would put
that prefix on every line a user reads and on every transcript in the README."""

from __future__ import annotations

import logging
import os
import sys


class _Console(logging.Handler):
    """Plain lines: information to stdout, warnings and errors to stderr (whatever they are at the time)."""

    def emit(self, record: logging.LogRecord) -> None:
        if os.environ.get("RANK", "0") != "0":  # torchrun / accelerate launch: rank 0 speaks
            return
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def show_logs(level: int = logging.INFO) -> None:
    """Print vortex's messages of `level` and above; once per process (a second call changes nothing)."""
    logger = logging.getLogger("vortex")
    if not any(isinstance(h, _Console) for h in logger.handlers):
        logger.addHandler(_Console())
        logger.setLevel(level)
