"""`Trainer(callbacks=[VortexCallback(probe_ds)], report_to=[...])`: rc2 / rho / gpz reach the trackers.

The report_to integrations get what the Trainer logs through their `on_log`; a recorder callback placed
after VortexCallback stands for any of them, and TensorBoard's event files are read back."""

import sys
from pathlib import Path

import pytest
from transformers import Trainer, TrainerCallback

from vortex.data import load_data
from vortex.training.callback import VortexCallback

sys.path.insert(0, str(Path(__file__).parent))
from test_callback import tiny_hf_resnet, trainer_for  # noqa: E402


class Recorder(TrainerCallback):
    """What a tracker sees: every `logs` dict handed to on_log."""

    def __init__(self):
        self.seen: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.seen.append(dict(logs or {}))


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def trainer_with(callbacks, digits, out: Path, report_to) -> Trainer:
    probe = digits["test"].select(range(64))
    steps = dict(max_steps=2, eval_strategy="steps", eval_steps=2, save_strategy="no")
    return trainer_for(tiny_hf_resnet(), out, digits["train"], probe, callbacks=callbacks, report_to=report_to, **steps)


def test_the_metrics_reach_the_callbacks_after_it(digits, tmp_path):
    probe = digits["test"].select(range(64))
    recorder = Recorder()
    trainer = trainer_with([VortexCallback(probe), recorder], digits, tmp_path, "none")
    trainer.train()
    profiled = [logs for logs in recorder.seen if "gpz" in logs]
    assert profiled, f"no gpz in what on_log received: {recorder.seen}"
    assert {k for k in profiled[-1] if k.startswith("rho/")} and {k for k in profiled[-1] if k.startswith("rc2/")}
    assert [h for h in trainer.state.log_history if "gpz" in h]  # once in the history as well
    metrics = trainer.evaluate()
    assert "gpz" in metrics


def test_add_callback_reaches_the_trackers_too(digits, tmp_path):
    recorder = Recorder()
    trainer = trainer_with([recorder], digits, tmp_path, "none")
    trainer.add_callback(VortexCallback(digits["test"].select(range(64))))  # after the recorder
    trainer.train()
    assert any("gpz" in logs for logs in recorder.seen)


def test_tensorboard_gets_rho_and_gpz(digits, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    trainer = trainer_with([VortexCallback(digits["test"].select(range(64)))], digits, tmp_path, ["tensorboard"])
    trainer.train()
    events = sorted((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {tmp_path / 'tb'}"
    tags = set()
    for event in events:
        acc = EventAccumulator(str(event))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert any(t.endswith("gpz") for t in tags) and any("rho/" in t for t in tags), sorted(tags)
