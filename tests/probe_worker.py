"""Run by tests/test_probe.py under torchrun: profile a seeded cnn on digits, write the profile."""

import sys

import torch

from vortex.core.probe import profile_model
from vortex.data import load_data
from vortex.files import write_json
from vortex.models import ModelSpec, build_model, split_model
from vortex.records import Profile


def seeded_profile(batch_size: int = 64) -> Profile:
    torch.manual_seed(0)
    spec = ModelSpec("cnn", 10, 1, 8)
    sm = split_model(build_model(spec), spec)
    ds = load_data("digits")["test"]
    return profile_model(sm, ds, model_name="cnn", dataset_name="digits", batch_size=batch_size, progress=False)


if __name__ == "__main__":
    from accelerate.state import PartialState

    profile = seeded_profile(batch_size=int(sys.argv[2]))
    state = PartialState()
    if state.is_main_process:
        write_json(sys.argv[1], {**profile.to_dict(), "processes": state.num_processes})
