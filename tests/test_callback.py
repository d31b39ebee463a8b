"""VortexCallback inside transformers.Trainer: logged profile = direct probe, the levers in the loss,
checkpoints with the controller, probe data forms, default split points, two processes."""

import json
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    Trainer,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
)

from vortex.core.hooks import HookSplitModel, default_split_points
from vortex.core.probe import build_profile, collect_stats
from vortex.data import adapt_images, load_data
from vortex.errors import VortexError
from vortex.training.callback import VortexCallback
from vortex.training.levers import Levers, batch_rho
from vortex.training.loss import soft_target_loss

sys.path.insert(0, str(Path(__file__).parent))
from callback_worker import collate, tiny_resnet  # noqa: E402
from reference import numpy_reference  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def tiny_vit() -> ViTForImageClassification:
    torch.manual_seed(0)
    return ViTForImageClassification(
        ViTConfig(
            image_size=16,
            patch_size=4,
            num_channels=1,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=10,
        )
    )


def tiny_hf_resnet() -> ResNetForImageClassification:
    torch.manual_seed(0)
    return ResNetForImageClassification(
        ResNetConfig(
            num_channels=1,
            embedding_size=16,
            hidden_sizes=[16, 32, 64, 64],
            depths=[1, 1, 1, 1],
            layer_type="basic",
            downsample_in_first_stage=False,
            num_labels=10,
        )
    )


def gray(rows: list[dict]) -> dict[str, torch.Tensor]:
    batch = collate(rows)
    return {**batch, "pixel_values": batch["pixel_values"][:, :1]}


def trainer_for(model, out: Path, train_ds, eval_ds=None, callbacks=None, **kwargs) -> Trainer:
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=32,
        learning_rate=2e-3,
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=0,
        use_cpu=True,
        **{"report_to": "none", **kwargs},
    )
    return Trainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=gray, callbacks=callbacks
    )


def test_vit_logs_the_profile_a_direct_probe_computes(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    probe = digits["test"]
    trainer = trainer_for(
        tiny_vit(),
        tmp_path,
        digits["train"],
        probe.select(range(64)),
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        save_steps=4,
        report_to=["tensorboard"],
    )
    cb = VortexCallback(probe).attach(trainer)  # 16x16, 1 channel: from the model's config
    trainer.train()

    logged = [h for h in trainer.state.log_history if "gpz" in h]
    assert [h["step"] for h in logged] == [2, 4]  # at each evaluation
    model = trainer.model
    sm = HookSplitModel(model, torch.zeros(1, 1, 16, 16))
    stats, acc = collect_stats(sm, probe, num_classes=10, image_size=16, channels=1, progress=False)
    direct = build_profile(
        sm,
        stats,
        model_name="vit",
        dataset_name="digits",
        labels="true",
        accuracy=acc,
        example=torch.zeros(1, 1, 16, 16),
    )
    names = [s.name for s in direct.splits]
    assert names == ["vit.embeddings", "vit.layers.0", "vit.layernorm", "classifier"]
    last = logged[-1]
    for s in direct.splits:
        assert last[f"rc2/{s.name}"] == pytest.approx(s.rc2, rel=1e-6)
        assert last[f"rho/{s.name}"] == pytest.approx(s.rho, rel=1e-6)
        assert logged[0][f"rc2/{s.name}"] != pytest.approx(s.rc2, rel=1e-3)  # trained in between
    assert last["gpz"] == direct.gpz.index and last["probe_accuracy"] == pytest.approx(acc)

    # the hooks capture what the model itself reports as layer 0's hidden state
    x = adapt_images(torch.tensor(np.asarray(probe.with_format("numpy")["pixels"], dtype=np.uint8)), 16, 1)
    model.eval()
    with torch.no_grad():
        hidden = model(x, output_hidden_states=True).hidden_states[1].numpy()
    ref = numpy_reference(hidden, np.asarray(probe["label"]), 10)
    assert last["rc2/vit.layers.0"] == pytest.approx(ref["rc2"], rel=1e-4)

    saved = json.loads((tmp_path / "checkpoint-4" / "profile.json").read_text())
    assert [s["rc2"] for s in saved["splits"]] == pytest.approx([s.rc2 for s in direct.splits], rel=1e-6)
    assert json.loads((tmp_path / "vortex.json").read_text())["splits"] == names
    assert cb.last_profile.gpz == direct.gpz

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    tag = "train/rc2/vit.layers.0"
    assert [e.step for e in events.Scalars(tag)] == [2, 4]
    assert events.Scalars(tag)[-1].value == pytest.approx(last["rc2/vit.layers.0"], rel=1e-6)


def test_levers_enter_the_training_loss(digits, tmp_path):
    model = tiny_hf_resnet()
    trainer = trainer_for(model, tmp_path, digits["train"], max_steps=1)
    cb = VortexCallback(digits["test"], target_gpz=3).attach(trainer)
    assert trainer.compute_loss_func == cb.compute_loss
    assert cb.split_names[1:3] == ["resnet.encoder.stages.0", "resnet.encoder.stages.1"]
    cb.controller.levers = Levers(pull=2.0, hold=3.0, hold_floor=0.9)
    cb.on_train_begin(trainer.args, trainer.state, trainer.control, model=model)
    batch = gray([digits["train"][i] for i in range(64)])
    x, y = batch["pixel_values"], batch["labels"]

    model.train()
    out = model(x, output_hidden_states=True)
    before, at = out.hidden_states[1], out.hidden_states[2]  # outputs of stages 0 and 1
    expected = (
        soft_target_loss(out.logits, y)
        + 2.0 * batch_rho(at, y, 10, unit=True)
        + 3.0 * torch.relu(0.9 - batch_rho(before, y, 10))
    )
    assert cb.compute_loss(out, y).item() == pytest.approx(expected.item(), rel=1e-5)
    out = model(x)
    assert cb.compute_loss(out, y, num_items_in_batch=torch.tensor(128)).item() == pytest.approx(
        expected.item() / 2, rel=1e-5
    )
    with torch.no_grad():  # evaluation: no lever
        out = model(x)
    assert cb.compute_loss(out, y).item() == pytest.approx(soft_target_loss(out.logits, y).item(), rel=1e-5)


def test_resnet_target_saves_gpz_and_controller_history(digits, tmp_path):
    trainer = trainer_for(tiny_hf_resnet(), tmp_path, digits["train"], max_steps=8, save_steps=4)
    cb = VortexCallback(digits["test"], target_gpz=3, every=3, max_samples=200).attach(trainer)
    trainer.train()

    meta = json.loads((tmp_path / "checkpoint-8" / "vortex.json").read_text())
    history = meta["controller"]["history"]
    assert [h["step"] for h in history] == [3, 6, 8]  # every 3 steps, and the last step
    assert meta["target_gpz"] == 3 and meta["reached_gpz"] == meta["profile"]["gpz"]["index"] == history[-1]["gpz"]
    assert meta["target_reached"] is None  # rho alone: never reported as reached without an attack
    assert json.loads((tmp_path / "checkpoint-4" / "vortex.json").read_text())["controller"]["history"] == history[:1]
    final = json.loads((tmp_path / "vortex.json").read_text())
    assert final["controller"]["history"] == history and (tmp_path / "vortex.png").is_file()
    levers = [h for h in trainer.state.log_history if "lever/pull" in h]
    assert [h["step"] for h in levers] == [3, 6, 8] and levers[-1]["lever/pull"] == cb.controller.levers.pull

    # resumed from checkpoint-4, the controller continues from its saved state to the same end
    resumed = trainer_for(tiny_hf_resnet(), tmp_path, digits["train"], max_steps=8, save_steps=4)
    VortexCallback(digits["test"], target_gpz=3, every=3, max_samples=200).attach(resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    again = json.loads((tmp_path / "vortex.json").read_text())["controller"]["history"]
    assert [(h["step"], h["gpz"]) for h in again] == [(h["step"], h["gpz"]) for h in history]
    np.testing.assert_allclose([h["rho"] for h in again], [h["rho"] for h in history], rtol=1e-4)


def test_probe_accepts_pixel_values_datasets(digits):
    model = tiny_vit().eval()
    canonical = digits["test"].select(range(100))
    rows = [gray([r]) for r in canonical]
    pixel_values = datasets.Dataset.from_dict(
        {"pixel_values": [r["pixel_values"][0].numpy() for r in rows], "labels": [int(r["labels"][0]) for r in rows]}
    )
    on_the_fly = canonical.with_transform(lambda b: gray([dict(zip(b, v)) for v in zip(*b.values())]))
    reference = VortexCallback(canonical).profile(model)
    for ds in (pixel_values, on_the_fly):
        got = VortexCallback(ds, batch_size=32).profile(model)
        assert [s.rc2 for s in got.splits] == pytest.approx([s.rc2 for s in reference.splits], rel=1e-5)
        assert got.num_samples == 100
    with pytest.raises(VortexError, match="need 'pixel_values'"):
        VortexCallback(datasets.Dataset.from_dict({"x": [1.0]})).profile(model)


def test_default_split_points_follow_the_blocks():
    torch.manual_seed(0)
    convnext = ConvNextForImageClassification(
        ConvNextConfig(num_channels=1, patch_size=2, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], num_labels=10)
    )
    x1, x3 = torch.rand(2, 1, 16, 16), torch.rand(2, 3, 16, 16)
    assert default_split_points(convnext, x1) == [
        "convnext.embeddings",
        "convnext.encoder.stages.0",
        "convnext.encoder.stages.1",
        "convnext.encoder.stages.2",
        "convnext.layernorm",
        "classifier",
    ]
    assert default_split_points(tiny_hf_resnet(), x1) == [
        "resnet.embedder",
        "resnet.encoder.stages.0",
        "resnet.encoder.stages.1",
        "resnet.encoder.stages.2",
        "resnet.pooler",
        "classifier",
    ]
    wrapped = tiny_resnet()
    assert default_split_points(wrapped, x3) == [
        "net.maxpool",
        "net.layer1",
        "net.layer2",
        "net.layer3",
        "net.avgpool",
        "net.fc",
    ]
    sm = HookSplitModel(wrapped, x3, ["net.layer2", "net.fc"])
    assert [d["edge_params"] for d in sm.describe(x3)] == [
        sum(
            p.numel()
            for m in (wrapped.net.conv1, wrapped.net.bn1, wrapped.net.layer1, wrapped.net.layer2)
            for p in m.parameters()
        ),
        sum(p.numel() for p in wrapped.parameters()),
    ]
    with pytest.raises(VortexError, match="execution order"):
        HookSplitModel(wrapped, x3, ["net.fc", "net.layer2"])
    with pytest.raises(VortexError, match="not modules"):
        HookSplitModel(wrapped, x3, ["net.layer9"])


def test_bad_set_ups_are_refused_before_training(digits, tmp_path):
    trainer = trainer_for(tiny_hf_resnet(), tmp_path, digits["train"], max_steps=1)
    with pytest.raises(VortexError, match="outside the valid range 2..6"):
        VortexCallback(digits["test"], target_gpz=7).attach(trainer)
    trainer.compute_loss_func = lambda outputs, labels, num_items_in_batch=None: outputs.logits.sum()
    with pytest.raises(VortexError, match="has a compute_loss_func already"):
        VortexCallback(digits["test"], target_gpz=3).attach(trainer)
    unattached = trainer_for(tiny_hf_resnet(), tmp_path, digits["train"], max_steps=1)
    unattached.add_callback(VortexCallback(digits["test"], target_gpz=3))
    with pytest.raises(
        VortexError, match=r"changes the Trainer's loss: write `VortexCallback\(probe_ds, ...\)\.attach"
    ):
        unattached.train()


def test_the_standard_callbacks_argument_profiles_without_any_other_call(digits, tmp_path):
    """`Trainer(callbacks=[VortexCallback(probe_ds)])`: rc2 / rho / gpz reach the log history and the
    metrics trainer.evaluate() returns; the numbers are the ones a direct profile gives."""
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=32,
        learning_rate=2e-3,
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=0,
        use_cpu=True,
        report_to="none",
        max_steps=2,
        eval_strategy="steps",
        eval_steps=2,
    )
    probe = digits["test"].select(range(64))
    cb = VortexCallback(probe)
    trainer = Trainer(
        model=tiny_hf_resnet(),
        args=args,
        train_dataset=digits["train"],
        eval_dataset=probe,
        data_collator=gray,
        callbacks=[cb],
    )
    trainer.train()
    logged = [h for h in trainer.state.log_history if "gpz" in h]
    assert logged and logged[-1]["step"] == 2 and {k for k in logged[-1] if k.startswith("rho/")}
    metrics = trainer.evaluate()
    direct = cb.profile(trainer.model)
    assert metrics["gpz"] == direct.gpz.index
    for s in direct.splits:
        assert metrics[f"rho/{s.name}"] == pytest.approx(s.rho, rel=1e-6)


def test_two_processes_measure_what_one_process_measures(tmp_path, torchrun):
    torchrun(str(Path(__file__).parent / "callback_worker.py"), str(tmp_path))
    model = tiny_resnet()
    from safetensors.torch import load_model

    load_model(model, str(tmp_path / "model.safetensors"))
    data = load_data("digits")["test"]
    single = VortexCallback(data, image_size=16, channels=3, max_samples=200).profile(model)
    multi = json.loads((tmp_path / "vortex.json").read_text())
    assert multi["profile"]["num_samples"] == 200
    assert [s["rc2"] for s in multi["profile"]["splits"]] == pytest.approx([s.rc2 for s in single.splits], rel=1e-6)
    assert [h["step"] for h in multi["controller"]["history"]] == [2, 4]
    logged = json.loads((tmp_path / "log_history.json").read_text())
    assert [h["step"] for h in logged if "lever/pull" in h] == [2, 4]
