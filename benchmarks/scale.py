"""vortex at ImageNet scale: a 1,000-class profile at 224x224, exact statistics vs the count sketch.

    python benchmarks/scale.py [--images 128] [--subset-classes 20] [--subset-images 200] [--vit-images 32]

Random weights and synthetic images (no download); labels pair consecutive images (class i // 2).
Prints
1. per split of torchvision resnet50: the float64 class means exact statistics keep for 1,000
   classes (classes x dim x 8 bytes) and what the default keeps (`--sketch-dim` unset);
2. the memory of those means for every split together, exact and at several --sketch-dim widths;
3. a 1,000-class profile of resnet50 with the default, in a fresh process: peak resident memory
   (goal: under 4 GB), seconds per image, and seconds per image of a plain forward pass;
4. the sketch's error on rho against exact statistics on a subset where exact fits
   (--subset-classes classes, the same images for every width);
5. the same profile as 3 for a vit_b_16-sized transformers ViT (ViTConfig defaults: 12 layers,
   width 768, patch 16), split at its blocks through forward hooks (--vit-images 0 skips it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from profile_overhead import peak_rss_mb
from torch import nn

from vortex.core import stats as stats_module
from vortex.core.probe import build_profile, stream_stats
from vortex.core.stats import ClassStats, choose_sketch_dim

CLASSES = 1000
WIDTHS = (1024, 4096, 16384, 65536)


def build(arch: str, classes: int) -> nn.Module:
    """resnet50 (torch.fx splits) or a ViT-B/16 (forward-hook splits), random weights, eval mode."""
    torch.manual_seed(0)
    if arch == "resnet50":
        from torchvision.models import resnet50

        from vortex.core.splits import SplitModel

        return SplitModel(resnet50(weights=None, num_classes=classes).eval())
    from transformers import ViTConfig, ViTForImageClassification

    from vortex.core.hooks import HookSplitModel

    model = ViTForImageClassification(ViTConfig(num_labels=classes)).eval()
    return HookSplitModel(model, torch.rand(1, 3, 224, 224))


def synthetic(images: int, batch_size: int, classes: int):
    """Batches of random 224x224 images, made as they are read; class i // 2 for image i."""
    for start in range(0, images, batch_size):
        n = min(batch_size, images - start)
        yield torch.rand(n, 3, 224, 224), (torch.arange(start, start + n) // 2) % classes


def megabytes(classes: int, dims: list[int], width: int | None) -> float:
    return classes * sum(min(d, width or d) for d in dims) * 8 / 2**20


def child(arch: str, images: int, batch_size: int) -> None:
    """Profile with the default sketch choice, then time a plain forward pass; print one JSON line."""
    sm = build(arch, CLASSES)
    before = peak_rss_mb()

    def forward() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for x, _ in synthetic(images, batch_size, CLASSES):
                sm.model(x)
        return time.perf_counter() - start

    with torch.inference_mode():
        sm.model(torch.rand(2, 3, 224, 224))  # warm-up
    start = time.perf_counter()
    stats, acc = stream_stats(sm, synthetic(images, batch_size, CLASSES), num_classes=CLASSES, progress=False)
    profile = build_profile(
        sm,
        stats,
        model_name=arch,
        dataset_name="synthetic",
        labels="true",
        accuracy=acc,
        example=torch.rand(1, 3, 224, 224),
    )
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    sketched = [s.sketch_dim for s in profile.splits]
    out = {"before_mb": before, "peak_mb": peak, "seconds": seconds, "forward_seconds": forward()}
    print(json.dumps({**out, "splits": len(sketched), "sketch_dims": sketched}))


def run_child(arch: str, images: int, batch_size: int) -> dict:
    cmd = [sys.executable, __file__, "--child", arch, "--batch-size", str(batch_size), "--images", str(images)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report_child(arch: str, images: int, batch_size: int) -> None:
    r = run_child(arch, images, batch_size)
    widths = sorted({w for w in r["sketch_dims"] if w})
    used = f"sketch width {widths[0]} on {sum(1 for w in r['sketch_dims'] if w)} of {r['splits']} splits"
    print(f"model {arch}, {CLASSES} classes, {images} synthetic 224x224 images, batch {batch_size}, default statistics")
    print(f"  statistics           : {used if widths else 'exact on every split'}")
    before = f"{r['before_mb'] / 1024:.2f} GB with the model built"
    print(f"  peak resident memory : {r['peak_mb'] / 1024:7.2f} GB   (goal < 4 GB; {before})")
    print(f"  profile              : {r['seconds'] / images:7.3f} s per image")
    print(f"  plain forward pass   : {r['forward_seconds'] / images:7.3f} s per image")
    print(f"  ratio                : {r['seconds'] / r['forward_seconds']:7.3f}")


def sketch_error(classes: int, images: int, batch_size: int, widths: list[int]) -> None:
    """rho of resnet50 with exact statistics and with each sketch width, from the same forward passes."""
    sm = build("resnet50", classes)
    configs = {None: None, **{w: None for w in widths}}
    with torch.inference_mode():
        for x, y in synthetic(images, batch_size, classes):
            _, zs = sm.forward_all(x)
            for width in configs:
                if configs[width] is None:
                    configs[width] = [ClassStats(classes, z[0].numel(), sketch_dim=width) for z in zs]
                for s, z in zip(configs[width], zs):
                    s.update(z, y)
    exact = [s.summary().rho for s in configs[None]]
    print(f"\nmodel resnet50, {classes} classes, {images} synthetic images: sketch error on rho (exact fits here)")
    print("  --sketch-dim  sketched splits  max |rho error|  mean |rho error|")
    for width in widths:
        errors = [abs(s.summary().rho / e - 1) for s, e in zip(configs[width], exact) if s.sketch is not None]
        print(f"  {width:11d}  {len(errors):15d}  {max(errors):15.2%}  {sum(errors) / len(errors):16.2%}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=128, help="images profiled with 1,000 classes (resnet50)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--subset-classes", type=int, default=20, help="classes of the exact-vs-sketch comparison")
    p.add_argument("--subset-images", type=int, default=200)
    p.add_argument("--vit-images", type=int, default=32, help="images profiled with the ViT-B/16 (0: skip)")
    p.add_argument("--child", choices=("resnet50", "vit_b_16"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.images, args.batch_size)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    sm = build("resnet50", CLASSES)
    dims = [info["dim"] for info in sm.describe(torch.rand(1, 3, 224, 224))]
    default = choose_sketch_dim(None, CLASSES, dims)
    budget = stats_module.STATS_BYTES / 2**30
    print(f"\nmodel resnet50 at 224x224, {CLASSES} classes: float64 class means per split (budget {budget:g} GiB)")
    print("  split  name        dim        exact MB  default")
    for s, d in zip(sm.splits, dims):
        kept = f"sketch {default}: {megabytes(CLASSES, [d], default):.0f} MB" if default and d > default else "exact"
        print(f"  {s.index:5d}  {s.name:10s}  {d:9d}  {megabytes(CLASSES, [d], None):9.0f}  {kept}")
    print("  all splits together:")
    print(f"    exact             : {megabytes(CLASSES, dims, None) / 1024:8.2f} GB")
    widths = sorted({*WIDTHS, default} - {None})
    for width in widths:
        label = f"--sketch-dim {width}" + (" (default)" if width == default else "")
        print(f"    {label:18s}: {megabytes(CLASSES, dims, width) / 1024:8.2f} GB")
    del sm

    print()
    report_child("resnet50", args.images, args.batch_size)
    sketch_error(args.subset_classes, args.subset_images, args.batch_size, widths)
    if args.vit_images:
        print()
        report_child("vit_b_16", args.vit_images, min(args.batch_size, args.vit_images))


if __name__ == "__main__":
    main()
