"""Share of training wall time the GPZ controller spends measuring.

    python benchmarks/controller_overhead.py [--runs cnn_digits:6 resnet18_digits:4]

For each RECIPE:K (a recipe in recipes/ and a target split) trains with --target-gpz K (no
baseline run) and prints the time spent measuring against the wall time of the training loop,
split into rho (one eval-mode pass over the held-out probe set, which also gives the probe's z_K)
and the online attack at K (the privacy signal, read only when rho puts the GPZ at K), and the same
loop without a target for comparison. Goals: at most 5% with the default recipe (cnn_digits), at
most 2% with resnet18_digits.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from vortex.logs import show_logs
from vortex.train import TrainConfig, train

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
GOALS = {"cnn_digits": 0.05, "resnet18_digits": 0.02}


def run(recipe: Path, out: Path, target: int | None) -> dict:
    train(TrainConfig(recipe=str(recipe), output_dir=out, target_gpz=target, baseline="none"))
    return json.loads((out / "vortex.json").read_text())


def report(name: str, target: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        plain = run(RECIPES / f"{name}.yaml", Path(tmp) / "plain", None)
        targeted = run(RECIPES / f"{name}.yaml", Path(tmp) / "targeted", target)
    history = targeted["controller"]["history"]
    loop, measuring, attack = targeted["train_seconds"], targeted["measure_seconds"], targeted["online_attack_seconds"]
    privacy = targeted["privacy"]
    at_k = next(s["mse"] for s in privacy["splits"] if s["index"] == target)
    attacked = sum(h["attack_mse"] is not None for h in history)
    goal = f"(goal <= {GOALS[name]:.0%})" if name in GOALS else ""
    print(
        f"\nrecipe {name}, target split {target}: rho transition at {targeted['reached_gpz']}, verdict attack MSE "
        f"at split {target} {at_k:.4f} ({'reached' if privacy['reached'] else 'MISSED'}); {len(history)} "
        f"measurements of {targeted['controller']['config']['probe_samples']} probe samples, the online attack "
        f"read at {attacked}"
    )
    print(f"  training loop without target : {plain['train_seconds']:7.2f} s")
    print(f"  training loop with controller: {loop:7.2f} s")
    print(f"  of which measuring           : {measuring:7.2f} s")
    print(f"    rho (probe pass)           : {measuring - attack:7.2f} s   {(measuring - attack) / loop:6.1%}")
    print(f"    online attack at K         : {attack:7.2f} s   {attack / loop:6.1%}")
    print(f"  measuring share              : {measuring / loop:7.1%}   {goal}")
    print(f"  verdict attack after training: {targeted['privacy_seconds']:7.2f} s (splits K-1 and K)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["cnn_digits:6", "resnet18_digits:4"], metavar="RECIPE:K")
    args = p.parse_args()
    show_logs()
    for spec in args.runs:
        name, _, target = spec.partition(":")
        report(name, int(target))


if __name__ == "__main__":
    main()
