"""The GPZ controller: levers, decisions, target runs end to end, resume, two processes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vortex.core.stats import ClassStats
from vortex.errors import VortexError
from vortex.records import AttackResult
from vortex.training.controller import ControllerConfig, GPZController, check_target
from vortex.training.levers import Levers, batch_rho, lever_loss, smoothing_at
from vortex.training.loop import BEST_WEIGHTS, RUN_STATE, TARGET_MISSED, read_best_weights
from vortex.training.loop import main as train
from vortex.training.privacy import PrivacyCriterion, PrivacyVerdict

NAMES = [f"s{i}" for i in range(1, 9)]
RECIPE = """
model: cnn
model_options: {width: 16}
dataset: digits
seed: 0
epochs: 6
batch_size: 64
optimizer: {name: adamw, lr: 0.003, weight_decay: 0.0005}
controller: {every: 15, probe_samples: 300, pull: 8.0}
"""


def test_batch_rho_equals_streaming_rho():
    z, y = torch.randn(60, 3, 4) + torch.arange(60).remainder(3).view(-1, 1, 1), torch.arange(60).remainder(3)
    stats = ClassStats(3, 12)
    stats.update(z, y)
    assert batch_rho(z, y, 3).item() == pytest.approx(stats.summary().rho, rel=1e-5)


def numpy_rho(z: np.ndarray, y: np.ndarray) -> float:
    """mean over classes of the mean squared distance to the class mean, over the global variance."""
    within = [((z[y == c] - z[y == c].mean(0)) ** 2).sum(1).mean() for c in np.unique(y)]
    return float(np.mean(within) / ((z - z.mean(0)) ** 2).sum(1).mean())


def test_pull_acts_on_unit_length_samples_so_a_per_sample_scale_cannot_meet_it():
    z, y = torch.randn(30, 6) + torch.arange(30).remainder(3).view(-1, 1), torch.arange(30).remainder(3)
    unit = z.numpy() / np.linalg.norm(z.numpy(), axis=1, keepdims=True)
    assert batch_rho(z, y, 3, unit=True).item() == pytest.approx(numpy_rho(unit, y.numpy()), rel=1e-5)
    assert batch_rho(z, y, 3).item() == pytest.approx(numpy_rho(z.numpy(), y.numpy()), rel=1e-5)
    scaled = z * torch.rand(30, 1).add(0.1).mul(50)  # any per-sample scale leaves it unchanged
    assert batch_rho(scaled, y, 3, unit=True).item() == pytest.approx(batch_rho(z, y, 3, unit=True).item(), rel=1e-4)


def test_lever_loss_by_hand():
    z_prev, z_at, y = torch.randn(20, 5), torch.randn(20, 5), torch.arange(20).remainder(2)
    levers = Levers(pull=2.0, hold=3.0, hold_floor=0.9)
    unit_at = z_at.numpy() / np.linalg.norm(z_at.numpy(), axis=1, keepdims=True)
    expected = 2.0 * numpy_rho(unit_at, y.numpy()) + 3.0 * max(0.0, 0.9 - numpy_rho(z_prev.numpy(), y.numpy()))
    assert lever_loss([z_prev, z_at], y, 2, 4, levers).item() == pytest.approx(expected, rel=1e-5)
    assert lever_loss([z_prev, z_at], y, 2, None, levers).item() == 0.0


def test_smoothing_schedules():
    assert smoothing_at(0.1, 0.7) == 0.1
    assert smoothing_at({"start": 0.0, "end": 0.3}, 0.5) == pytest.approx(0.15)
    assert torch.equal(smoothing_at([0.1, -0.05], 0.2), torch.tensor([0.1, -0.05]))
    with pytest.raises(VortexError, match="'start' and 'end'"):
        smoothing_at({"begin": 0.1}, 0.0)


@pytest.mark.parametrize("target", [0, 1, 9])
def test_target_outside_range_is_refused_with_the_range(target):
    with pytest.raises(VortexError, match="valid range 2..8"):
        check_target(target, NAMES)


def curve(drop_at: int) -> list[float]:
    rho = [0.6, 0.55, 0.5, 0.47, 0.45, 0.43, 0.41, 0.40]
    return rho[: drop_at - 1] + [r * 0.2 for r in rho[drop_at - 1 :]]


def test_decisions_follow_the_measured_profile():
    ctrl = GPZController(4, NAMES, ControllerConfig(pull=1.0, hold=0.0, hold_start=1.0))
    late = ctrl.observe(10, curve(6), 0.9, 0.1)
    assert late.gpz == 6 and ctrl.levers.pull > 1.0 and "after K" in late.decision
    pull = ctrl.levers.pull
    early = ctrl.observe(20, curve(2), 0.9, 0.2)
    assert early.gpz == 2 and ctrl.levers.hold >= 1.0 and ctrl.levers.pull == pull
    hold = ctrl.levers.hold
    on = ctrl.observe(30, curve(4), 0.9, 0.3)
    assert on.reached and (ctrl.levers.pull, ctrl.levers.hold) == (pull, hold)
    assert [h.step for h in ctrl.history] == [10, 20, 30]


def test_rho_on_target_is_not_enough_while_the_online_attack_reads_split_k():
    ctrl = GPZController(4, NAMES, ControllerConfig(pull=1.0, gain=4.0, every=10), min_mse=0.02)
    leak = ctrl.observe(10, curve(4), 0.9, 0.1, attack_mse=0.005)
    # shortfall (0.02 - 0.005) / 0.02 = 0.75 -> factor 2 ** min(4 * 0.75, 2) = 4
    assert leak.rho_on_target and leak.protected is False and not leak.reached
    assert ctrl.levers.pull == 4.0 and "leaks (online attack MSE 0.0050 < 0.02): pull x4.00" in leak.decision
    small = ctrl.observe(20, curve(4), 0.9, 0.2, attack_mse=0.019)  # step clipped below at 2 ** 0.5
    assert ctrl.levers.pull == pytest.approx(4.0 * 2**0.5) and not small.reached
    safe = ctrl.observe(30, curve(4), 0.9, 0.3, attack_mse=0.021)
    assert safe.reached and safe.protected and ctrl.levers.pull == pytest.approx(4.0 * 2**0.5)
    assert ctrl.next_step == 40  # the first protected reading is not yet steady
    off = ctrl.observe(40, curve(6), 0.9, 0.4, attack_mse=0.03)  # protected, but rho is not at K
    assert not off.reached and "after K" in off.decision


def test_without_a_privacy_signal_rho_alone_decides():
    ctrl = GPZController(4, NAMES, ControllerConfig(pull=1.0), min_mse=0.02)
    entry = ctrl.observe(10, curve(4), 0.9, 0.1)  # the Trainer callback runs no attack
    assert entry.reached and entry.protected is None and entry.attack_mse is None
    assert GPZController(4, NAMES, ControllerConfig()).observe(10, curve(4), 0.9, 0.1, attack_mse=0.001).reached


def test_best_point_prefers_the_split_that_resists_more_then_the_clearer_lead():
    ctrl = GPZController(4, NAMES, ControllerConfig(), min_mse=0.02)
    assert ctrl.is_better(ctrl.observe(10, curve(6), 0.9, 0.1, attack_mse=0.05))
    assert ctrl.is_better(ctrl.observe(20, curve(4), 0.9, 0.2, attack_mse=0.010))  # at K beats anything off K
    assert ctrl.is_better(ctrl.observe(30, curve(4), 0.9, 0.3, attack_mse=0.015))
    assert not ctrl.is_better(ctrl.observe(40, curve(4), 0.9, 0.4, attack_mse=0.012))  # later, but leaks more
    assert ctrl.is_better(ctrl.observe(50, curve(4), 0.9, 0.5, attack_mse=0.025))
    # above the line, more MSE is no better: the later point (same lead) wins
    assert ctrl.is_better(ctrl.observe(60, curve(4), 0.9, 0.6, attack_mse=0.021))
    assert ctrl.best.step == 60 and ctrl.best.attack_mse == 0.021


def test_interval_doubles_on_target_and_resets_off_target():
    ctrl = GPZController(4, NAMES, ControllerConfig(every=10, max_every=30))
    assert not ctrl.due(9) and ctrl.due(10)
    ctrl.observe(10, curve(4), 0.9, 0.1)
    assert ctrl.next_step == 20  # one on-target reading is not yet steady
    ctrl.observe(20, curve(4), 0.9, 0.1)
    assert ctrl.next_step == 40
    ctrl.observe(40, curve(4), 0.9, 0.2)
    assert ctrl.next_step == 70  # capped at max_every
    ctrl.observe(70, curve(6), 0.9, 0.3)
    assert ctrl.next_step == 80


def test_accuracy_guard_halves_levers_late_in_training():
    ctrl = GPZController(4, NAMES, ControllerConfig(pull=4.0, hold=2.0), baseline_accuracy=0.98, max_accuracy_drop=0.02)
    ctrl.observe(10, curve(6), 0.90, 0.8)
    assert (ctrl.levers.pull, ctrl.levers.hold) == (2.0, 1.0)
    assert not ctrl.is_better(ctrl.history[-1])  # too inaccurate to be kept as the best point


def test_state_round_trip():
    ctrl = GPZController(3, NAMES, ControllerConfig())
    entry = ctrl.observe(5, curve(5), 0.9, 0.5)
    ctrl.is_better(entry)
    other = GPZController(3, NAMES, ControllerConfig())
    other.load_state_dict(json.loads(json.dumps(ctrl.state_dict())))
    assert other.state_dict() == ctrl.state_dict()


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "ctrl.yaml"
    path.write_text(RECIPE)
    return path


def probe_gpz(ckpt) -> int:
    out = ckpt.parent / f"{ckpt.name}_probe"
    subprocess.run(
        [sys.executable, "-m", "vortex", "probe", "--model", str(ckpt), "--dataset", "digits", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return json.loads((out / "profile.json").read_text())["gpz"]["index"]


@pytest.fixture(scope="module")
def targeted(tmp_path_factory, recipe):
    out = tmp_path_factory.mktemp("gpz") / "k3"
    status = train(
        ["--recipe", str(recipe), "--output_dir", str(out), "--target-gpz", "3", "--checkpointing_steps", "30"]
    )
    return out, status


def test_target_run_moves_rho_but_a_leaking_split_is_a_miss(targeted):
    """The lever moves the rho transition to split 3, but split 3 of a digits cnn stays invertible:
    the run must say the target was missed (the indicator moved, the protection did not)."""
    out, status = targeted
    meta = json.loads((out / "vortex.json").read_text())
    assert meta["target_gpz"] == 3 and meta["reached_gpz"] == 3  # the indicator moved
    privacy = meta["privacy"]
    assert [s["index"] for s in privacy["splits"]] == [2, 3]
    mse = privacy["splits"][1]["mse"]
    assert mse < 0.02 and privacy["protected"] is False and privacy["criterion"]["min_mse"] == 0.02
    assert status == TARGET_MISSED and meta["target_reached"] is False
    for k in (2, 3):
        assert (out / "privacy" / f"recon_split{k}.png").stat().st_size > 1000
    history = meta["controller"]["history"]
    assert len(history) >= 5 and {"step", "gpz", "rho", "levers", "decision", "attack_mse"} <= set(history[0])
    # the online attack runs exactly where it can change the decision or the best point: rho's GPZ at K
    assert all((h["attack_mse"] is not None) == (h["gpz"] == 3) for h in history)
    assert any(h["gpz"] == 3 for h in history)
    assert all(0 < h["attack_mse"] < 0.1 for h in history if h["gpz"] == 3)
    assert meta["test_accuracy"] >= meta["baseline"]["test_accuracy"] - 0.02
    assert probe_gpz(out) == 3  # what a user measures on the held-out test split
    assert (out / "vortex.png").stat().st_size > 10_000


def test_resume_with_controller_state_matches_uninterrupted(targeted, recipe, tmp_path):
    out, _ = targeted
    resumed = tmp_path / "resumed"
    shutil.copytree(out / "state" / "step_60", resumed / "state" / "step_60")
    shutil.copytree(out / "baseline", resumed / "baseline")
    status = train(
        [
            "--recipe",
            str(recipe),
            "--output_dir",
            str(resumed),
            "--target-gpz",
            "3",
            "--resume_from_checkpoint",
            "latest",
            "--checkpointing_steps",
            "30",
        ]
    )
    a, b = (json.loads((d / "vortex.json").read_text()) for d in (out, resumed))
    assert status == targeted[1] and b["privacy"]["protected"] == a["privacy"]["protected"]
    assert b["reached_gpz"] == a["reached_gpz"] and b["test_accuracy"] == a["test_accuracy"]
    assert [h["gpz"] for h in b["controller"]["history"]] == [h["gpz"] for h in a["controller"]["history"]]
    # float32 CPU kernels may round differently from run to run (buffer alignment); the
    # resume is still held to the same GPZ history, accuracy and rho to 0.1%
    np.testing.assert_allclose(
        [s["rho"] for s in b["profile"]["splits"]], [s["rho"] for s in a["profile"]["splits"]], rtol=1e-3
    )


def test_the_best_point_is_saved_with_the_state_that_knows_it(targeted, recipe, tmp_path):
    """Every state whose controller has a best point holds that point's weights (read back exactly);
    a state that lacks them is refused before any training."""
    out, _ = targeted
    states = sorted((out / "state").iterdir(), key=lambda d: int(d.name.split("_")[1]))
    with_best = [d for d in states if json.loads((d / RUN_STATE).read_text())["controller"]["best"]]
    assert with_best and all((d / BEST_WEIGHTS).is_file() == (d in with_best) for d in states)
    for d in with_best:  # the model's every tensor; where the best point is the state's own step, its weights
        best, model = read_best_weights(d), load_file(d / "model.safetensors")  # the latter: Accelerate's copy
        assert best.keys() == model.keys()
        if json.loads((d / RUN_STATE).read_text())["controller"]["best"]["step"] == int(d.name.split("_")[1]):
            assert all(torch.equal(best[k], model[k]) for k in model)
    broken = tmp_path / "broken"
    shutil.copytree(with_best[-1], broken / "state" / with_best[-1].name)
    shutil.copytree(out / "baseline", broken / "baseline")
    (broken / "state" / with_best[-1].name / BEST_WEIGHTS).unlink()
    args = ["--recipe", str(recipe), "--target-gpz", "3", "--resume_from_checkpoint", "latest"]
    with pytest.raises(VortexError, match="cannot read the controller's best weights"):
        train([*args, "--output_dir", str(broken)])
    assert not (broken / "model.safetensors").exists()


def test_missed_target_says_so_and_still_saves(recipe, tmp_path, capsys):
    stuck = tmp_path / "stuck.yaml"  # levers pinned at zero: the GPZ stays where training puts it
    stuck.write_text(
        RECIPE.replace(
            "controller: {every: 15, probe_samples: 300}",
            "controller: {every: 40, probe_samples: 300, pull: 0.0, hold_start: 0.0, max_weight: 0.0}",
        )
    )
    status = train(
        ["--recipe", str(stuck), "--output_dir", str(tmp_path / "o"), "--target-gpz", "7", "--baseline", "none"]
    )
    assert status == TARGET_MISSED
    assert "TARGET MISSED: rho transition at split" in capsys.readouterr().out
    meta = json.loads((tmp_path / "o" / "vortex.json").read_text())
    assert meta["target_reached"] is False and meta["reached_gpz"] != 7


def test_bad_target_exits_before_training(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vortex", "train", "--target-gpz", "12", "--output_dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "valid range 2..8" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_two_processes_reach_the_same_gpz(targeted, recipe, tmp_path, torchrun):
    out = tmp_path / "two"
    proc = torchrun(
        str(Path(__file__).resolve().parents[1] / "vortex" / "train.py"),
        "--recipe",
        str(recipe),
        "--output_dir",
        str(out),
        "--target-gpz",
        "3",
        "--baseline",
        "none",
        check=False,
    )
    # torchrun exits 1 when its workers exit 3 (target missed), and says so
    assert (proc.returncode == 0) if targeted[1] == 0 else "exitcode: 3" in proc.stderr, proc.stderr[-2000:]
    two = json.loads((out / "vortex.json").read_text())
    one = json.loads((targeted[0] / "vortex.json").read_text())
    assert two["optimizer_steps_this_session"] < one["optimizer_steps_this_session"]  # really two processes
    assert [s["index"] for s in two["privacy"]["splits"]] == [2, 3]  # both processes attacked, one verdict
    assert two["privacy"]["protected"] == one["privacy"]["protected"]
    # every measurement with rho at K carries the online attack's number (main process computes, all receive)
    history = two["controller"]["history"]
    assert any(h["gpz"] == 3 for h in history)
    assert all((h["attack_mse"] is not None and h["attack_mse"] > 0) == (h["gpz"] == 3) for h in history)
    assert two["test_accuracy"] >= one["test_accuracy"] - 0.03


def verdict(rho_gpz: int, mse_k: float, min_mse: float = 0.02) -> PrivacyVerdict:
    metrics = dict(psnr=20.0, ssim=0.5, cosine=0.9, num_images=10, shape=[8], seconds=1.0)
    records = [
        AttackResult(index=2, name="s2", mse=0.004, **metrics),
        AttackResult(index=3, name="s3", mse=mse_k, **metrics),
    ]
    return PrivacyVerdict(3, rho_gpz, PrivacyCriterion(min_mse=min_mse), records)


@pytest.mark.parametrize(
    "rho_gpz,mse_k,reached,problem",
    [
        (3, 0.031, True, None),
        (3, 0.008, False, "rho transition at 3 but split 3 still leaks (attack MSE 0.0080 < 0.02)"),
        (5, 0.031, False, "rho transition at split 5, not 3 (split 3 resists: attack MSE 0.0310)"),
        (5, 0.008, False, "rho transition at split 5, not 3, and split 3 still leaks (attack MSE 0.0080 < 0.02)"),
        (3, 0.02, True, None),  # the line itself counts as protected
    ],
)
def test_privacy_verdict_needs_the_transition_and_a_failed_attack(rho_gpz, mse_k, reached, problem):
    v = verdict(rho_gpz, mse_k)
    assert v.reached is reached and v.problem() == problem
    assert v.to_dict()["reached"] is reached and v.to_dict()["criterion"]["min_mse"] == 0.02


def test_privacy_criterion_is_checked_before_any_work():
    with pytest.raises(VortexError, match="--privacy-mse must be between 0 and 1"):
        PrivacyCriterion(min_mse=0)
    with pytest.raises(VortexError, match="--privacy-attack must be 'decoder' or 'enhanced'"):
        PrivacyCriterion(attack="optimize")


def test_a_target_whose_split_resists_the_attack_is_reached(targeted, recipe, tmp_path, capsys):
    """Same run, a line the attack at split 3 clears: reached, exit 0, said with the attack figures."""
    out, _ = targeted
    again = tmp_path / "again"
    shutil.copytree(out / "baseline", again / "baseline")
    # rho levers only: with decorrelate as well this small run's final transition is not steady from run to run
    rho_only = tmp_path / "rho_only.yaml"
    rho_only.write_text(recipe.read_text().replace("pull: 8.0}", "pull: 8.0, decorrelate: 0.0}"))
    assert "decorrelate: 0.0" in rho_only.read_text()
    status = train(
        ["--recipe", str(rho_only), "--output_dir", str(again), "--target-gpz", "3", "--privacy-mse", "0.001"]
    )
    text = capsys.readouterr().out
    meta = json.loads((again / "vortex.json").read_text())
    assert status == 0 and meta["target_reached"] is True and meta["privacy"]["protected"] is True
    assert (
        "target reached: rho transition at split 3 and split 3 resists inversion (decoder attack: split 2 MSE" in text
    )
