"""Does `--target-gpz K` land the GPZ at K? A table over several K for one recipe.

    python benchmarks/controller_targets.py --recipe recipes/cnn_digits.yaml --targets 3 5 7
    python benchmarks/controller_targets.py --recipe recipes/resnet18_digits.yaml --targets 4 7 --epochs 8

Trains the untargeted run once, then one run per K against it, and re-measures each saved
model with `vortex probe` on the held-out test split. Prints K, the GPZ probe finds, test
accuracy (untargeted for comparison) and wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vortex.recipe import load_recipe


def vortex(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vortex", *args], capture_output=True, text=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="recipes/cnn_digits.yaml")
    p.add_argument("--targets", type=int, nargs="+", default=[3, 5, 7])
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    args = p.parse_args()
    dataset = load_recipe(args.recipe).dataset
    extra = ["--epochs", str(args.epochs)] if args.epochs else []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        start = time.perf_counter()
        base = vortex("train", "--recipe", args.recipe, "--output_dir", str(root / "baseline"), "--holdout-probe",
                      *extra)
        if base.returncode:
            sys.exit(base.stderr)
        base_time = time.perf_counter() - start
        base_meta = json.loads((root / "baseline" / "vortex.json").read_text())
        rows = [("none", base_meta["gpz"]["index"], base_meta["test_accuracy"], base_time, "untargeted")]
        for k in args.targets:
            out = root / f"k{k}"
            start = time.perf_counter()
            run = vortex("train", "--recipe", args.recipe, "--output_dir", str(out), "--target-gpz", str(k),
                         "--baseline", str(root / "baseline"), *extra)
            took = time.perf_counter() - start
            if not (out / "vortex.json").is_file():
                sys.exit(run.stderr)
            probe = vortex("probe", "--model", str(out), "--dataset", dataset, "--out", str(out / "probe"))
            if probe.returncode:
                sys.exit(probe.stderr)
            gpz = json.loads((out / "probe" / "profile.json").read_text())["gpz"]["index"]
            meta = json.loads((out / "vortex.json").read_text())
            rows.append((k, gpz, meta["test_accuracy"], took, "reached" if gpz == k else "MISSED"))
    print(f"\n{args.recipe} on {dataset}" + (f", {args.epochs} epochs" if args.epochs else ""))
    print(f"{'target K':>8} {'GPZ (vortex probe, test)':>25} {'test acc':>9} {'vs untargeted':>14} {'time':>8}")
    for k, gpz, acc, took, verdict in rows:
        print(f"{k!s:>8} {gpz:>25} {acc:>9.4f} {acc - rows[0][2]:>+14.4f} {took:>7.1f}s  {verdict}")


if __name__ == "__main__":
    main()
