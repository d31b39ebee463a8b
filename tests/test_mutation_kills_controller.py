"""A decision table for the GPZ controller (vortex/training/controller.py): exact lever values, caps,
the accuracy guard's timing, the hold floor, the interval, the best point's tie-breaks and the state,
each worked out by hand from the curve. Fast (no training); run by `make mutation`."""

import json

import pytest

from vortex.errors import VortexError
from vortex.records import BestPoint, ControllerEntry
from vortex.training.controller import ControllerConfig, GPZController, check_target

NAMES = [f"s{i}" for i in range(1, 9)]
SQRT2 = 2**0.5
BEFORE_3 = "transition before K (drop at 3 competes): hold x1.41"


def curve(drops: list[float], start: float = 1.0) -> list[float]:
    """rho at splits 1..len(drops)+1 whose relative drop into split i + 2 is drops[i]."""
    values = [start]
    for d in drops:
        values.append(values[-1] * (1 - d))
    return values


#              into split:  2     3     4     5     6     7     8
LATE = curve([0.01, 0.01, 0.10, 0.01, 0.50, 0.01, 0.01])  # GPZ 6, ratio 0.1 / 0.5 = 0.2
AT_K_LATER_RIVAL = curve([0.01, 0.01, 0.50, 0.01, 0.48, 0.01, 0.01])  # GPZ 4, ratio 1.04 < 1.1, rival at 6
AT_K_EARLIER_RIVAL = curve([0.01, 0.48, 0.50, 0.01, 0.01, 0.01, 0.01])  # GPZ 4 (zone 3-4), rival at 3
EARLY = curve([0.50, 0.01, 0.10, 0.01, 0.01, 0.01, 0.01])  # GPZ 2, ratio 0.2
ON = curve([0.01, 0.01, 0.50, 0.01, 0.10, 0.01, 0.01])  # GPZ 4, ratio 5
HALF_SHORT = curve([0.01, 0.01, 0.33, 0.01, 0.40, 0.01, 0.01])  # GPZ 6, ratio 0.825: shortfall exactly 1/4


def controller(target: int = 4, **kwargs) -> GPZController:
    extra = {k: kwargs.pop(k) for k in ("baseline_accuracy", "max_accuracy_drop", "min_mse") if k in kwargs}
    return GPZController(target, NAMES, ControllerConfig(**kwargs), **extra)


def test_levers_start_from_the_config_with_no_hold_floor_until_measured():
    # before the first measurement the loss runs with these: the hold must not act on a floor not yet measured
    ctrl = controller(pull=3.0, hold=2.0, hold_floor=0.8)
    assert ctrl.levers.to_dict() == {"pull": 3.0, "hold": 2.0, "hold_floor": 0.0, "decorrelate": 0.0}
    assert ctrl.history == [] and ctrl.best is None


def test_assessment_reads_ratio_and_runner_up():
    ctrl = controller()
    a = ctrl.assess(LATE)
    assert (a.gpz, a.zone, a.runner_up, a.rho_on_target, a.protected, a.reached) == (6, [6], 6, False, None, False)
    assert a.ratio == pytest.approx(0.2)
    b = ctrl.assess(AT_K_EARLIER_RIVAL)
    assert (b.gpz, b.zone, b.runner_up, b.rho_on_target) == (4, [3, 4], 3, False)
    assert b.ratio == pytest.approx(0.5 / 0.48)
    c = ctrl.assess(ON, attack_mse=0.5)
    assert (c.gpz, c.runner_up, c.rho_on_target, c.protected, c.reached) == (4, 6, True, None, True)
    assert c.ratio == pytest.approx(5.0)
    tied = ctrl.assess(curve([0.1, 0.1, 0.5, 0.1, 0.1, 0.1, 0.1]))  # equal rivals: the later split is named
    assert tied.runner_up == 8 and tied.ratio == pytest.approx(5.0)


def test_ratio_exactly_at_the_margin_is_on_target():
    ctrl = controller(margin=2.0)
    a = ctrl.assess([1.0, 1.0, 1.0, 0.5, 0.5, 0.375, 0.375, 0.375])  # drops 0.5 at K, 0.25 at 6: exact
    assert a.ratio == 2.0 and a.rho_on_target and a.reached


def test_two_splits_have_no_rival():
    ctrl = GPZController(2, ["a", "b"], ControllerConfig())
    a = ctrl.assess([1.0, 0.5])
    assert (a.gpz, a.runner_up, a.rho_on_target) == (2, 2, True)
    assert a.ratio == pytest.approx(0.5 / 1e-6)


def test_two_splits_without_a_drop_at_k_pull():
    # no rival to hold back: a flat or rising rho at K needs its own drop, so pull (a hold on split 1 cannot make one)
    for rho in ([1.0, 1.0], [1.0, 1.2]):
        ctrl = GPZController(2, ["a", "b"], ControllerConfig(pull=1.0, hold=0.0))
        entry = ctrl.observe(10, rho, 0.9, 0.3)
        assert entry.decision == "transition after K (largest drop at 2): pull x4.00"
        assert (ctrl.levers.pull, ctrl.levers.hold) == (4.0, 0.0)


def test_protected_needs_both_a_signal_and_a_criterion():
    assert controller(min_mse=0.02).assess(ON, attack_mse=0.02).protected is True  # at the line: protected
    assert controller(min_mse=0.02).assess(ON, attack_mse=0.0199).protected is False
    assert controller(min_mse=0.02).assess(ON).protected is None
    assert controller().assess(ON, attack_mse=0.001).protected is None


@pytest.mark.parametrize(
    "rho, pull, hold, config, new_pull, new_hold, decision",
    [
        # transition after K: pull from at least 0.25, step clipped to x4
        (LATE, 0.0, 0.0, {}, 1.0, 0.0, "transition after K (largest drop at 6): pull x4.00"),
        (LATE, 1.0, 0.5, {}, 4.0, 0.5, "transition after K (largest drop at 6): pull x4.00"),
        (LATE, 30.0, 0.0, {}, 64.0, 0.0, "transition after K (largest drop at 6): pull x4.00"),  # max_weight
        (LATE, 30.0, 0.0, {"max_weight": 100.0}, 100.0, 0.0, "transition after K (largest drop at 6): pull x4.00"),
        # shortfall 1/4 with gain 4: x2; gain 6: x2 ** 1.5; gain 1: clipped up to x2 ** 0.5
        (HALF_SHORT, 1.0, 0.0, {}, 2.0, 0.0, "transition after K (largest drop at 6): pull x2.00"),
        (HALF_SHORT, 1.0, 0.0, {"gain": 6.0}, 2**1.5, 0.0, "transition after K (largest drop at 6): pull x2.83"),
        (HALF_SHORT, 1.0, 0.0, {"gain": 1.0}, SQRT2, 0.0, "transition after K (largest drop at 6): pull x1.41"),
        # GPZ at K but a later drop competes: still pull (small shortfall: x2 ** 0.5)
        (AT_K_LATER_RIVAL, 2.0, 1.0, {}, 2.0 * SQRT2, 1.0, "transition after K (largest drop at 4): pull x1.41"),
        # GPZ at K but an earlier drop competes: hold, from hold_start
        (AT_K_EARLIER_RIVAL, 2.0, 0.0, {}, 2.0, 1.0, BEFORE_3),
        (AT_K_EARLIER_RIVAL, 2.0, 2.0, {}, 2.0, 2.0 * SQRT2, BEFORE_3),
        (AT_K_EARLIER_RIVAL, 2.0, 0.0, {"hold_start": 3.0}, 2.0, 3.0, BEFORE_3),
        # transition before K
        (EARLY, 2.0, 1.0, {}, 2.0, 4.0, "transition before K (drop at 2 competes): hold x4.00"),
        (EARLY, 2.0, 20.0, {"max_weight": 50.0}, 2.0, 50.0, "transition before K (drop at 2 competes): hold x4.00"),
        # on target
        (ON, 2.0, 1.0, {}, 2.0, 1.0, "on target: keep levers"),
    ],
)
def test_decision_table(rho, pull, hold, config, new_pull, new_hold, decision):
    ctrl = controller(pull=pull, hold=hold, **config)
    entry = ctrl.observe(10, rho, 0.9, 0.3)
    assert entry.decision == decision
    assert ctrl.levers.pull == pytest.approx(new_pull) and ctrl.levers.hold == pytest.approx(new_hold)
    assert entry.levers == ctrl.levers.to_dict()


def test_a_leak_at_k_pulls_by_the_attack_shortfall():
    # shortfall (0.02 - 0.015) / 0.02 = 1/4, gain 4: x2, from at least 0.25; decorrelate is not the controller's
    ctrl = controller(pull=0.0, hold=1.5, min_mse=0.02, decorrelate=0.5)
    entry = ctrl.observe(10, ON, 0.9, 0.3, attack_mse=0.015)
    assert ctrl.levers.pull == pytest.approx(0.5) and ctrl.levers.hold == 1.5 and ctrl.levers.decorrelate == 0.0
    assert entry.decision == "rho at K but split K leaks (online attack MSE 0.0150 < 0.02): pull x2.00"
    assert (entry.rho_on_target, entry.protected, entry.reached) == (True, False, False)
    capped = controller(pull=40.0, min_mse=0.02)
    capped.observe(10, ON, 0.9, 0.3, attack_mse=0.001)
    assert capped.levers.pull == 64.0


@pytest.mark.parametrize(
    "target, baseline_gpz, start", [(4, 6, 1.5), (5, 6, 1.5), (6, 6, 0.0), (7, 6, 0.0), (4, None, 0.0)]
)
def test_decorrelate_starts_on_when_k_lies_before_the_untargeted_transition(target, baseline_gpz, start):
    ctrl = GPZController(target, NAMES, ControllerConfig(decorrelate=1.5), baseline_gpz=baseline_gpz)
    assert ctrl.levers.decorrelate == start
    assert ctrl.levers.to_dict() == {"pull": 2.0, "hold": 0.0, "hold_floor": 0.0, "decorrelate": start}


def test_accuracy_guard_from_half_of_training_strictly_below_the_bound():
    def run(accuracy, progress, rho=LATE, **kw):
        ctrl = controller(pull=4.0, hold=2.0, **({"baseline_accuracy": 0.75, "max_accuracy_drop": 0.25} | kw))
        ctrl.levers.decorrelate = 3.0
        entry = ctrl.observe(10, rho, accuracy, progress)
        assert ctrl.levers.decorrelate == (1.5 if entry.decision.startswith("accuracy") else 3.0)
        return (ctrl.levers.pull, ctrl.levers.hold), entry.decision

    assert run(0.4, 0.5) == ((2.0, 1.0), "accuracy 0.400 below baseline 0.750: halve the levers")
    assert run(0.4, 0.5, rho=ON) == ((2.0, 1.0), "accuracy 0.400 below baseline 0.750: halve the levers")
    assert run(0.4, 0.4999)[0] == (16.0, 2.0)  # first half of training: no guard, pull x4
    assert run(0.5, 0.9)[0] == (16.0, 2.0)  # exactly at the bound: allowed
    assert run(0.4, 0.9, max_accuracy_drop=None)[0] == (16.0, 2.0)
    assert run(0.4, 0.9, baseline_accuracy=None)[0] == (16.0, 2.0)


@pytest.mark.parametrize("target, floor", [(4, 0.9 * 0.8), (3, 0.9 * 0.5), (2, 0.9 * 0.5), (5, 0.9 * 0.95)])
def test_hold_floor_is_a_share_of_the_highest_rho_before_k_minus_1(target, floor):
    rho = [0.5, 0.8, 0.95, 0.96, 0.4, 0.3, 0.2, 0.1]  # splits 1..K-2 set the floor
    ctrl = controller(target)
    entry = ctrl.observe(10, rho, 0.9, 0.3)
    assert ctrl.levers.hold_floor == pytest.approx(floor) and entry.levers["hold_floor"] == pytest.approx(floor)
    assert controller(4, hold_floor=0.5).observe(10, rho, 0.9, 0.3).levers["hold_floor"] == pytest.approx(0.4)


def test_interval_doubles_while_steady_up_to_max_and_resets():
    ctrl = controller(every=10, max_every=30)
    assert ctrl.next_step == 10 and ctrl.interval == 10
    assert not ctrl.due(9) and ctrl.due(10) and ctrl.due(11)
    steps = []
    for step, rho in ((10, LATE), (20, ON), (30, ON), (50, ON), (80, ON), (110, LATE), (120, ON), (130, ON)):
        ctrl.observe(step, rho, 0.9, 0.3)
        steps.append((ctrl.interval, ctrl.next_step))
    assert steps == [(10, 20), (10, 30), (20, 50), (30, 80), (30, 110), (10, 120), (10, 130), (20, 150)]


def test_entry_records_the_measurement():
    ctrl = controller(min_mse=0.02)
    entry = ctrl.observe(17, ON, 0.875, 0.123456, attack_mse=0.03)
    assert entry.to_dict() == {
        "step": 17,
        "progress": 0.1235,
        "gpz": 4,
        "zone": [4],
        "ratio": pytest.approx(5.0),
        "rho_on_target": True,
        "attack_mse": 0.03,
        "protected": True,
        "reached": True,
        "accuracy": 0.875,
        "rho": ON,
        "drops": pytest.approx([0.01, 0.01, 0.5, 0.01, 0.1, 0.01, 0.01]),
        "levers": {"pull": 2.0, "hold": 0.0, "hold_floor": pytest.approx(0.9), "decorrelate": 0.0},
        "decision": "on target: keep levers",
    }
    assert ctrl.history == [entry] and ctrl.lever_splits == [3, 4]


def entry(step, gpz, ratio, attack_mse=None, accuracy=0.9):
    return ControllerEntry(
        step=step,
        progress=0.5,
        gpz=gpz,
        zone=[gpz],
        ratio=ratio,
        rho_on_target=False,
        attack_mse=attack_mse,
        protected=None,
        reached=False,
        accuracy=accuracy,
        rho=[],
        drops=[],
        levers={},
        decision="",
    )


def test_best_point_order_and_tie_breaks():
    ctrl = controller(min_mse=0.02, baseline_accuracy=0.75, max_accuracy_drop=0.25)
    assert ctrl.is_better(entry(10, 6, 3.0, 0.05))
    assert ctrl.best == BestPoint(key=[-2, 0.02, 1.1, 10], step=10, gpz=6, ratio=3.0, attack_mse=0.05, accuracy=0.9)
    assert ctrl.is_better(entry(20, 3, 0.5, 0.001))  # one split off beats two off, whatever else
    assert ctrl.is_better(entry(30, 5, 0.5, 0.001))  # as far on the other side: the later one
    assert not ctrl.is_better(entry(25, 5, 0.5, 0.001))  # an earlier step on an equal key is not better
    assert ctrl.is_better(entry(30, 5, 0.5, 0.001))  # an equal key at the same step replaces it
    assert ctrl.is_better(entry(40, 4, 0.2, None))  # at K beats off K, even with no attack reading
    assert ctrl.best.key == [0, 0.0, 0.2, 40] and ctrl.best.attack_mse is None
    assert ctrl.is_better(entry(35, 4, 0.2, 0.01))  # harder to invert beats later
    assert not ctrl.is_better(entry(50, 4, 3.0, 0.005))  # easier to invert loses to a clearer lead
    assert ctrl.is_better(entry(45, 4, 1.5, 0.03))  # above min_mse the privacy is capped at 0.02
    assert not ctrl.is_better(entry(44, 4, 3.0, 0.5))  # above the margin the ratio is capped at 1.1
    assert ctrl.is_better(entry(46, 4, 1.1, 0.02))
    assert not ctrl.is_better(entry(90, 4, 9.0, 0.9, accuracy=0.4999))  # below the accuracy bound
    assert ctrl.is_better(entry(90, 4, 9.0, 0.9, accuracy=0.5))  # exactly at the bound: kept
    assert ctrl.best.key == [0, 0.02, 1.1, 90] and ctrl.best.accuracy == 0.5


def test_best_point_without_a_privacy_criterion_ignores_the_attack():
    ctrl = controller()
    assert ctrl.is_better(entry(10, 4, 0.5, 0.05))
    assert ctrl.best.key == [0, 0.0, 0.5, 10]
    assert ctrl.is_better(entry(20, 4, 0.5, 0.0))
    assert ctrl.is_better(entry(5, 4, 0.6, None))  # no accuracy bound, clearer lead


def test_state_dict_round_trip_continues_identically():
    ctrl = controller(pull=1.0, min_mse=0.02, every=10)
    for step, rho, mse in ((10, LATE, 0.01), (20, ON, 0.03), (30, ON, 0.03)):
        ctrl.is_better(ctrl.observe(step, rho, 0.9, step / 100, attack_mse=mse))
    state = json.loads(json.dumps(ctrl.state_dict()))
    assert state["levers"] == {"pull": 4.0, "hold": 0.0, "hold_floor": pytest.approx(0.9), "decorrelate": 0.0}
    assert (state["interval"], state["next_step"], len(state["history"])) == (20, 50, 3)
    assert state["best"]["step"] == 30 and state["history"][1] == ctrl.history[1].to_dict()
    resumed = controller(pull=1.0, min_mse=0.02, every=10)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == ctrl.state_dict()
    assert resumed.levers == ctrl.levers and resumed.best == ctrl.best and resumed.history == ctrl.history
    for c in (ctrl, resumed):
        c.is_better(c.observe(50, HALF_SHORT, 0.9, 0.5, attack_mse=0.01))
    assert resumed.state_dict() == ctrl.state_dict()
    fresh = controller()
    fresh.load_state_dict(json.loads(json.dumps(fresh.state_dict())))
    assert fresh.best is None and fresh.history == [] and (fresh.interval, fresh.next_step) == (15, 15)


def test_summary_records_target_settings_and_history():
    ctrl = controller(pull=3.0, baseline_accuracy=0.9, max_accuracy_drop=0.05, min_mse=0.02)
    ctrl.is_better(ctrl.observe(10, ON, 0.88, 0.2, attack_mse=0.03))
    s = ctrl.summary()
    assert (s.target_gpz, s.baseline_accuracy, s.max_accuracy_drop, s.min_mse) == (4, 0.9, 0.05, 0.02)
    assert s.config == {**ControllerConfig().__dict__, "pull": 3.0}
    assert s.levers == ctrl.levers.to_dict() and s.best == ctrl.best and s.history == ctrl.history
    assert s.history is not ctrl.history


def test_config_from_dict():
    assert ControllerConfig.from_dict(None) == ControllerConfig()
    assert ControllerConfig.from_dict({"every": 5, "gain": 2.0}) == ControllerConfig(every=5, gain=2.0)
    with pytest.raises(VortexError) as info:
        ControllerConfig.from_dict({"every": 5, "zz": 1, "aa": 2})
    known = sorted(ControllerConfig().__dict__)
    assert str(info.value) == f"unknown controller keys ['aa', 'zz']; known: {known}"


def test_check_target_bounds_and_message():
    check_target(2, ["a", "b", "c"])
    check_target(3, ["a", "b", "c"])
    with pytest.raises(VortexError) as info:
        check_target(4, ["a", "b", "c"])
    assert str(info.value) == (
        "--target-gpz 4 is outside the valid range 2..3 for this model (splits: 1=a, 2=b, 3=c); the GPZ starts "
        "at the split after a drop, so split 1 cannot hold it"
    )
    with pytest.raises(VortexError, match="valid range 2..3"):
        GPZController(1, ["a", "b", "c"], ControllerConfig())
