"""Share of training wall time the GPZ controller spends measuring.

    python benchmarks/controller_overhead.py [--recipe recipes/cnn_digits.yaml] [--target-gpz 6]

Trains the recipe with --target-gpz (no baseline run) and prints the time spent measuring (rho
on the probe set and the online attack at K, the privacy signal) against the wall time of the
training loop, and the same loop without a target for comparison (goal: at most 5% with the
default recipe).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from vortex.logs import show_logs
from vortex.train import TrainConfig, train


def run(recipe: str, out: Path, target: int | None) -> dict:
    train(TrainConfig(recipe=recipe, output_dir=out, target_gpz=target, baseline="none"))
    return json.loads((out / "vortex.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="recipes/cnn_digits.yaml")
    p.add_argument("--target-gpz", type=int, default=6)
    args = p.parse_args()
    show_logs()
    with tempfile.TemporaryDirectory() as tmp:
        plain = run(args.recipe, Path(tmp) / "plain", None)
        targeted = run(args.recipe, Path(tmp) / "targeted", args.target_gpz)
    history = targeted["controller"]["history"]
    share = targeted["measure_seconds"] / targeted["train_seconds"]
    privacy = targeted["privacy"]
    at_k = next(s["mse"] for s in privacy["splits"] if s["index"] == args.target_gpz)
    print(
        f"\nrecipe {args.recipe}, target split {args.target_gpz}: rho transition at {targeted['reached_gpz']}, "
        f"verdict attack MSE at split {args.target_gpz} {at_k:.4f} ({'reached' if privacy['reached'] else 'MISSED'}); "
        f"{len(history)} measurements of {targeted['controller']['config']['probe_samples']} probe samples"
    )
    print(f"  training loop without target : {plain['train_seconds']:7.2f} s")
    print(f"  training loop with controller: {targeted['train_seconds']:7.2f} s")
    print(f"  of which measuring           : {targeted['measure_seconds']:7.2f} s")
    print(f"    of which the online attack : {targeted['online_attack_seconds']:7.2f} s")
    print(f"  measuring share              : {share:7.1%}   (goal <= 5%)")
    print(f"  online attack share          : {targeted['online_attack_seconds'] / targeted['train_seconds']:7.1%}")
    print(f"  verdict attack after training: {targeted['privacy_seconds']:7.2f} s (splits K-1 and K)")


if __name__ == "__main__":
    main()
