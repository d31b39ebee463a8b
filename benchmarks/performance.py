"""vortex's own costs, in one run: profile vs forward, memory vs samples, controller share, a priori vs post hoc.

    python benchmarks/performance.py [--quick]

1. time to profile every split / time of a plain forward pass over the same samples
   (cnn, Fashion-MNIST; goal at most 1.10; torchvision resnet18 at 224x224, goal at most 1.05),
2. peak resident memory profiling 6,000 vs 60,000 Fashion-MNIST samples (goal within 10%),
3. share of training wall time the GPZ controller spends measuring (default recipe, goal <= 5%;
   resnet18_digits, goal <= 2%),
4. time to locate the GPZ a priori (one profile) vs the decoder-attack sweep over every split
   that finds it post hoc (cnn on digits), and the sweep's wall time over the sum of its per-split
   decoder compute (goal at most 1.2; benchmarks/attack_sweep.py prints it for larger sweeps),
5. a 1,000-class profile at 224x224 (resnet50, a ViT-B/16): peak memory (goal under 4 GB), time
   per image, and the count sketch's error on rho against exact statistics (benchmarks/scale.py),
6. on a machine with a GPU only: train / profile / attack images per second against plain PyTorch
   loops (benchmarks/gpu.py; without one it says so).
Prints figures only; there are no pass/fail thresholds. Needs dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vortex.attacks.base import AttackConfig
from vortex.attacks.sweep import attack_splits
from vortex.core.probe import profile_model
from vortex.data import load_data, take
from vortex.hub.loading import load_model
from vortex.training.loop import main as train

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from attack_sweep import sweep_timing, timing_lines  # noqa: E402


def run_script(name: str, *args: str, keep: tuple[str, ...] | None = ("  ", "model", "recipe", "peak")) -> None:
    """Run a benchmark script and print its figures (the lines starting with `keep`; None: every line)."""
    print(f"\n$ python benchmarks/{name} {' '.join(args)}", flush=True)
    out = subprocess.run([sys.executable, str(HERE / name), *args], capture_output=True, text=True, check=True)
    print("\n".join(line for line in out.stdout.splitlines() if keep is None or line.startswith(keep)))


def a_priori_vs_post_hoc(epochs: int) -> None:
    print("\n== locating the GPZ: a priori (one profile) vs post hoc (attack every split), cnn on digits")
    with tempfile.TemporaryDirectory() as tmp:
        train(["--output_dir", tmp])
        data = load_data("digits")
        loaded = load_model(tmp, num_classes=10, data_channels=1, data_size=8)
        kw = dict(image_size=loaded.spec.image_size, channels=loaded.spec.in_channels)
        start = time.perf_counter()
        profile = profile_model(
            loaded.split, data["test"], model_name="cnn", dataset_name="digits", progress=False, **kw
        )
        prior = time.perf_counter() - start
        aux = take(data["train"], 1000, seed=1)
        start = time.perf_counter()
        attacks = attack_splits(
            loaded.split,
            data["test"],
            aux,
            [s.index for s in loaded.split.splits],
            AttackConfig(epochs=epochs, progress=False),
            **kw,
        )
        sweep = time.perf_counter() - start
    mse = [round(a.metrics["mse"], 4) for a in attacks]
    print(
        f"  a-priori GPZ {profile.gpz.index} in {prior:.2f} s; attack sweep over {len(attacks)} splits "
        f"({epochs} decoder epochs max) in {sweep:.1f} s: {sweep / prior:.0f}x longer; MSE per split {mse}"
    )
    print("\n".join(timing_lines(sweep_timing(attacks, sweep))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer samples and decoder epochs")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    run_script("profile_overhead.py", "--samples", "3000" if args.quick else "10000")
    figures = ("recipe", "  training", "  of which", "    rho", "    online", "  measuring", "  verdict")
    run_script("controller_overhead.py", keep=figures)  # not the training log's tables
    run_script("scale.py", *(["--images", "64", "--subset-images", "80", "--vit-images", "8"] if args.quick else []))
    a_priori_vs_post_hoc(epochs=5 if args.quick else 30)
    if torch.cuda.is_available():
        run_script("gpu.py", *(["--quick"] if args.quick else []), keep=None)
    else:
        print("\n== GPU throughput (benchmarks/gpu.py): no GPU on this machine, not measured")


if __name__ == "__main__":
    main()
