"""How much a profile costs: time vs a plain forward pass, and peak memory vs number of samples.

    python benchmarks/profile_overhead.py [--model cnn] [--samples 10000] [--resnet-images 256]

Prints (1) the time to profile every split in one pass divided by the time of a plain forward
pass over the same samples, data loading included in both (cnn on Fashion-MNIST, goal: at most
1.10), (2) the same for torchvision's resnet18 at 224x224 on synthetic images held in memory
(goal: at most 1.05; --resnet-images 0 skips it) and (3) the peak resident memory of profiling
6,000 vs 60,000 Fashion-MNIST samples, each in a fresh process (goal: within 10%). Forward and
profile runs alternate and the best of --repeats is kept, as other processes share the CPU.
Needs the Debian package dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from vortex.core.probe import build_profile, profile_model, stream_stats
from vortex.core.splits import SplitModel
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


def alternate(first, second, repeats: int) -> tuple[float, float]:
    """Best time of each of two callables, run alternately `repeats` times."""
    times = [(first(), second()) for _ in range(repeats)]
    return min(t[0] for t in times), min(t[1] for t in times)


def resnet18_224(images: int, batch_size: int, repeats: int) -> None:
    """Profile vs plain forward of torchvision resnet18 (random weights, 10 classes) at 224x224."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    sm = SplitModel(resnet18(weights=None, num_classes=10).eval())
    labels = torch.arange(batch_size) % 10
    batches = [(torch.rand(batch_size, 3, 224, 224), labels) for _ in range(images // batch_size)]

    def forward() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for x, _ in batches:
                sm.model(x)
        return time.perf_counter() - start

    def profile() -> float:
        start = time.perf_counter()
        stats, acc = stream_stats(sm, batches, num_classes=10, progress=False)
        build_profile(
            sm,
            stats,
            model_name="resnet18",
            dataset_name="synthetic",
            labels="true",
            accuracy=acc,
            example=batches[0][0][:1],
        )
        return time.perf_counter() - start

    forward()  # warm-up
    fwd, prof = alternate(forward, profile, repeats)
    print(
        f"model resnet18 (torchvision) at 224x224, {sm.num_splits} splits, {images} synthetic images, "
        f"batch {batch_size}"
    )
    print(f"  plain forward pass : {fwd:7.2f} s")
    print(f"  profile, all splits: {prof:7.2f} s")
    print(f"  ratio              : {prof / fwd:7.3f}   (goal <= 1.05)")


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (VmHWM; ru_maxrss would include the parent's, across fork)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def peak_memory_child(model: str, n: int, batch_size: int) -> None:
    ds, loaded = setup(model)
    before = peak_rss_mb()
    profile_time(loaded, ds, n, batch_size)
    print(json.dumps({"before_mb": before, "peak_mb": peak_rss_mb()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn")
    p.add_argument("--samples", type=int, default=10000, help="samples for the timing comparison")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--resnet-images", type=int, default=256, help="synthetic 224x224 images for resnet18 (0: skip)")
    p.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        return peak_memory_child(args.model, args.memory_child, args.batch_size)

    ds, loaded = setup(args.model)
    plain_forward(loaded, ds, args.batch_size * 2, args.batch_size)  # warm-up
    fwd, prof = alternate(
        lambda: plain_forward(loaded, ds, args.samples, args.batch_size),
        lambda: profile_time(loaded, ds, args.samples, args.batch_size),
        args.repeats,
    )
    print(
        f"model {args.model}, {loaded.split.num_splits} splits, {args.samples} Fashion-MNIST samples, "
        f"batch {args.batch_size}, {torch.get_num_threads()} threads"
    )
    print(f"  plain forward pass : {fwd:7.2f} s")
    print(f"  profile, all splits: {prof:7.2f} s")
    print(f"  ratio              : {prof / fwd:7.3f}   (goal <= 1.10)")
    if args.resnet_images:
        resnet18_224(args.resnet_images, 64, args.repeats)

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
