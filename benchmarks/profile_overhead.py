"""How much a profile costs: time vs a plain forward pass, and peak memory vs number of samples.

    python benchmarks/profile_overhead.py [--model cnn] [--samples 10000]

Prints (1) the time to profile every split in one pass divided by the time of a plain forward
pass over the same samples (goal: at most 1.25) and (2) the peak resident memory of profiling
6,000 vs 60,000 Fashion-MNIST samples, each in a fresh process (goal: within 10%).
Needs the Debian package dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from vortex.core.probe import profile_model
from vortex.data import data_shape, load_data, make_loader, num_classes, take
from vortex.hub.loading import load_model


def setup(model: str):
    ds = load_data("fashion-mnist")["train"]
    c, h, _ = data_shape(ds)
    torch.manual_seed(0)
    loaded = load_model(model, num_classes=num_classes(ds), data_channels=c, data_size=h)
    return ds, loaded


def plain_forward(loaded, ds, n: int, batch_size: int) -> float:
    loader = make_loader(take(ds, n), batch_size, image_size=loaded.spec.image_size, channels=loaded.spec.in_channels)
    loaded.model.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for x, _ in loader:
            loaded.model(x)
    return time.perf_counter() - start


def profile_time(loaded, ds, n: int, batch_size: int) -> float:
    start = time.perf_counter()
    profile_model(
        loaded.split,
        ds,
        model_name="bench",
        dataset_name="fashion-mnist",
        image_size=loaded.spec.image_size,
        channels=loaded.spec.in_channels,
        batch_size=batch_size,
        max_samples=n,
        progress=False,
    )
    return time.perf_counter() - start


def peak_memory_child(model: str, n: int, batch_size: int) -> None:
    ds, loaded = setup(model)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    profile_time(loaded, ds, n, batch_size)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_mb": before / 1024, "peak_mb": after / 1024}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn")
    p.add_argument("--samples", type=int, default=10000, help="samples for the timing comparison")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        return peak_memory_child(args.model, args.memory_child, args.batch_size)

    ds, loaded = setup(args.model)
    plain_forward(loaded, ds, args.batch_size * 2, args.batch_size)  # warm-up
    fwd = min(plain_forward(loaded, ds, args.samples, args.batch_size) for _ in range(args.repeats))
    prof = min(profile_time(loaded, ds, args.samples, args.batch_size) for _ in range(args.repeats))
    print(
        f"model {args.model}, {loaded.split.num_splits} splits, {args.samples} Fashion-MNIST samples, "
        f"batch {args.batch_size}, {torch.get_num_threads()} threads"
    )
    print(f"  plain forward pass : {fwd:7.2f} s")
    print(f"  profile, all splits: {prof:7.2f} s")
    print(f"  ratio              : {prof / fwd:7.3f}   (goal <= 1.25)")

    peaks = {}
    for n in (6000, 60000):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--model",
                args.model,
                "--batch-size",
                str(args.batch_size),
                "--memory-child",
                str(n),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])
    print("peak resident memory while profiling (fresh process each):")
    for n, m in peaks.items():
        print(f"  {n:>6} samples: {m['peak_mb']:8.1f} MB   (after loading model and data: {m['before_mb']:.1f} MB)")
    growth = peaks[60000]["peak_mb"] / peaks[6000]["peak_mb"] - 1
    print(f"  60k vs 6k        : {growth:+.1%}   (goal within 10%)")


if __name__ == "__main__":
    main()
