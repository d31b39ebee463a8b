"""The process group vortex runs in (one process, or several under torchrun / accelerate launch)."""

from __future__ import annotations

from accelerate.state import PartialState
from accelerate.utils import parse_flag_from_env


def process_state() -> PartialState:
    """Accelerate's process state. With ACCELERATE_USE_CPU=1, torchrun's CPU processes join through
    gloo (a plain `PartialState()` on a machine without GPUs would leave each one alone)."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
