"""The typed records behind profile.json, attack.json and the controller history: round trips, old files,
and malformed files as one-line errors."""

import json

import pytest
import torch

from vortex.core.probe import profile_model
from vortex.data import load_data
from vortex.files import write_json
from vortex.models import ModelSpec, build_model, split_model
from vortex.records import SCHEMA_VERSION, ControllerEntry, Profile, RecordError
from vortex.training.controller import ControllerConfig, GPZController


@pytest.fixture(scope="module")
def profile() -> Profile:
    torch.manual_seed(0)
    digits = load_data("digits")
    spec = ModelSpec("cnn", 10, 1, 8)
    sm = split_model(build_model(spec), spec)
    return profile_model(sm, digits["test"].select(range(100)), model_name="cnn", dataset_name="digits", progress=False)


def test_a_profile_survives_the_json_file(profile, tmp_path):
    write_json(tmp_path / "profile.json", {"profile": profile})  # records nested in plain JSON too
    raw = json.loads((tmp_path / "profile.json").read_text())["profile"]
    assert raw["schema_version"] == SCHEMA_VERSION
    assert Profile.from_dict(raw) == profile
    assert raw["gpz"]["by_quantity"] == {"rho": profile.gpz.by_quantity["rho"], "rc2": profile.gpz.by_quantity["rc2"]}
    assert [s["sketch_dim"] for s in raw["splits"]] == [None] * len(profile.splits)  # None kept where it means exact


def test_a_file_without_a_schema_version_reads_as_version_1(profile):
    old = profile.to_dict()
    del old["schema_version"]
    assert Profile.from_dict(old) == profile


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "schema version 2; this vortex reads up to 1: upgrade"),
        (lambda d: d.pop("gpz"), "a Profile record lacks gpz"),
        (lambda d: d["splits"][0].update(rho="high"), "'rho' must be float, got 'high'"),
        (lambda d: d["splits"][1].pop("rc2"), "a SplitStats record lacks rc2"),
        (lambda d: d.update(splits={"1": 0}), "'splits' must be a list"),
        (lambda d: d["gpz"].update(index=True), "'index' must be int, got True"),
    ],
)
def test_a_malformed_record_is_one_line(profile, change, message):
    data = json.loads(json.dumps(profile.to_dict()))
    change(data)
    with pytest.raises(RecordError, match=message.replace("(", r"\(")) as info:
        Profile.from_dict(data)
    assert "\n" not in str(info.value)


def test_controller_entries_round_trip_exactly():
    ctrl = GPZController(3, [f"s{i}" for i in range(1, 9)], ControllerConfig(), min_mse=0.02)
    entry = ctrl.observe(10, [0.6, 0.5, 0.1, 0.09, 0.08, 0.07, 0.06, 0.05], 0.9, 0.25, attack_mse=0.01)
    ctrl.is_better(entry)
    again = ControllerEntry.from_dict(json.loads(json.dumps(entry.to_dict())))
    assert again == entry and again.attack_mse == 0.01 and again.protected is False
    summary = json.loads(json.dumps(ctrl.summary().to_dict()))
    assert summary["best"]["key"] == [0, 0.01, ctrl.best.key[2], 10]  # ints stay ints in the file
    assert summary["history"] == [entry.to_dict()]
