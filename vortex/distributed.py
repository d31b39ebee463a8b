"""The process group vortex runs in (one process, or several under torchrun / accelerate launch)."""

from __future__ import annotations

import torch
from accelerate.state import PartialState
from accelerate.utils import broadcast, parse_flag_from_env
from torch import nn


def process_state() -> PartialState:
    """Accelerate's process state. With ACCELERATE_USE_CPU=1, torchrun's CPU processes join through
    gloo (a plain `PartialState()` on a machine without GPUs would leave each one alone)."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm statistics) to every process, as DDP does; a no-op alone."""
    if process_state().num_processes > 1:
        with torch.no_grad():
            for buf in model.buffers():
                buf.copy_(broadcast(buf))
