"""GPU throughput: train, profile and attack images per second, vortex vs a plain PyTorch loop.

    python benchmarks/gpu.py [--device cuda] [--models cnn,resnet18,vgg16_bn,vit,resnet18_224] [--quick]

For vortex's built-in cnn, resnet18, vgg16_bn and vit at 32x32 and resnet18 at 224x224 (10 classes,
random weights; resnet18 keeps its small-input stem at 224, about 16x the compute of torchvision's),
on synthetic images held in device memory (labels i % 10), prints a header (torch, device) and one
row per model of images per second:
1. train: vortex's training step (forward through the model's tap, soft-target loss, AdamW, the loss
   read back every step as vortex/training/loop.py does) vs a plain loop (model(x), cross-entropy,
   AdamW) over the same batches, and the ratio of their times (1.00: no overhead);
2. profile: stream_stats over the batches (every split's class statistics, float64) vs a plain
   inference forward pass, and the ratio of their times (profile_overhead.py's goals on a CPU:
   at most 1.10 for cnn, 1.05 for torchvision's resnet18 at 224x224);
3. attack: aux images per second of decoder training at the middle split (attack_splits, a few
   epochs; decoder steps, held-out checks and inversion), and the attack's wall time (features,
   z standardisation and clustering included).
On cuda the loops of 1 and 2 run under bf16 autocast, profiling only where its statistics stay
float64 and no split's rho moves by more than 0.1% against float32 features: the row says whether,
with that largest relative change.
The attack runs in float32, as `vortex attack` does. Each time is the best of --repeats after a
warm-up. Meant for a lent GPU, never CI; --device cpu --quick checks the script end to end.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import datasets
import numpy as np
import torch
import torch.nn.functional as F

from vortex.attacks.base import AttackConfig
from vortex.attacks.sweep import SplitAttack, attack_splits, split_aux
from vortex.core.probe import stream_stats
from vortex.data import from_arrays
from vortex.hub.loading import LoadedModel, load_model
from vortex.training.loss import soft_target_loss

CLASSES = 10
CONFIGS = {  # name: built-in model, image side, batch size, aux images of the attack
    "cnn": ("cnn", 32, 256, 1024),
    "resnet18": ("resnet18", 32, 256, 1024),
    "vgg16_bn": ("vgg16_bn", 32, 256, 1024),
    "vit": ("vit", 32, 256, 1024),
    "resnet18_224": ("resnet18", 224, 64, 128),
}
FULL = {"batches": 20, "repeats": 3, "attack_epochs": 3}
QUICK = {"batches": 2, "repeats": 1, "attack_epochs": 1, "batch_size": 16, "aux": 64}
PRIVATE_IMAGES = 32  # scored by the attack
RHO_TOLERANCE = 0.001  # profiling uses bf16 autocast only if no split's rho moves more than this
Batches = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Bench:
    """The device and the budget every measurement shares."""

    device: torch.device
    repeats: int
    attack_epochs: int

    def autocast(self, on: bool = True) -> AbstractContextManager:
        """bf16 autocast on cuda when `on`; nothing on the CPU."""
        if on and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def seconds(self, fn: Callable[[], object]) -> float:
        """Wall time of `fn()`, the work it queued on the device included."""
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def best_pair(self, first: Callable[[], object], second: Callable[[], object]) -> tuple[float, float]:
        """Best time of each of two callables, run alternately `repeats` times after one warm-up each."""
        self.seconds(first)  # warm-up: cuDNN algorithms, the allocator, lazy initialisation
        self.seconds(second)
        times = [(self.seconds(first), self.seconds(second)) for _ in range(self.repeats)]
        return min(t[0] for t in times), min(t[1] for t in times)


def synthetic_batches(count: int, batch: int, size: int, device: torch.device) -> Batches:
    """`count` batches of random RGB images on `device`, labels i % CLASSES."""
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.rand(batch, 3, size, size, generator=g).to(device),
            (torch.arange(i * batch, (i + 1) * batch) % CLASSES).to(device),
        )
        for i in range(count)
    ]


def synthetic_dataset(n: int, size: int, seed: int) -> datasets.Dataset:
    """`n` random RGB images (labels i % CLASSES) as a canonical vortex dataset, in memory."""
    pixels = np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    return from_arrays(pixels, np.arange(n) % CLASSES, tuple(str(c) for c in range(CLASSES)))


def train_times(bench: Bench, loaded: LoadedModel, batches: Batches) -> tuple[float, float]:
    """Seconds of a pass of vortex's training step and of a plain loop over `batches`."""
    model = loaded.model.train()
    net = loaded.split.tap([])  # what vortex/training/loop.py trains through, without lever splits
    vortex_opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    plain_opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def vortex_pass() -> None:
        for x, y in batches:
            with bench.autocast():
                out, *_ = net(x)
                loss = soft_target_loss(out, y)
            loss.backward()
            vortex_opt.step()
            vortex_opt.zero_grad()
            loss.item()  # the loop checks every step's loss is finite

    def plain_pass() -> None:
        for x, y in batches:
            with bench.autocast():
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            plain_opt.step()
            plain_opt.zero_grad()

    return bench.best_pair(vortex_pass, plain_pass)


def profile_autocast(bench: Bench, loaded: LoadedModel, batches: Batches) -> tuple[bool, float | None]:
    """Whether to profile under bf16 autocast (cuda only): when the statistics stay float64 and no
    split's rho moves by more than RHO_TOLERANCE against float32 features; and that largest change
    (None when not tried)."""
    if bench.device.type != "cuda":
        return False, None
    exact, _ = stream_stats(loaded.split, batches[:2], num_classes=CLASSES, progress=False)
    with bench.autocast():
        fast, _ = stream_stats(loaded.split, batches[:2], num_classes=CLASSES, progress=False)
    float64 = all(t.dtype == torch.float64 for s in fast for t in (s.count, s.mean, s.m2))
    rhos = [(f.summary().rho, e.summary().rho) for f, e in zip(fast, exact)]
    change = max(abs(f - e) / max(abs(e), 1e-12) for f, e in rhos)
    return float64 and change <= RHO_TOLERANCE, change


def profile_times(bench: Bench, loaded: LoadedModel, batches: Batches, autocast: bool) -> tuple[float, float]:
    """Seconds of stream_stats over `batches` and of a plain inference forward pass over them."""

    def profile_pass() -> None:
        with bench.autocast(autocast):
            stream_stats(loaded.split, batches, num_classes=CLASSES, progress=False)

    def plain_pass() -> None:
        loaded.model.eval()
        with torch.inference_mode(), bench.autocast(autocast):
            for x, _ in batches:
                loaded.model(x)

    return bench.best_pair(profile_pass, plain_pass)


def attack_rate(bench: Bench, loaded: LoadedModel, size: int, n_aux: int) -> tuple[int, float, float]:
    """The middle split, aux images per second of its decoder's compute, and the attack's wall seconds."""
    sm = loaded.split
    k = max(1, sm.num_splits // 2)
    private, aux = synthetic_dataset(PRIVATE_IMAGES, size, seed=1), synthetic_dataset(n_aux, size, seed=2)

    def attack(epochs: int, samples: int) -> tuple[SplitAttack, float]:
        config = AttackConfig(epochs=epochs, patience=epochs, seed=0, progress=False)
        start = time.perf_counter()
        (result,) = attack_splits(sm, private, aux, [k], config, aux_samples=samples, device=bench.device)
        bench.sync()
        return result, time.perf_counter() - start

    attack(1, min(n_aux, 64))  # warm-up: cuDNN, k-means, lazy imports
    result, wall = attack(bench.attack_epochs, n_aux)
    trained = len(split_aux(aux, n_aux, 0, AttackConfig.val_fraction)[0]) * result.epochs_run
    return k, trained / result.compute_seconds, wall


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, bf16 autocast"
    return f"cpu, torch threads {torch.get_num_threads()}, no autocast"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--models", default=",".join(CONFIGS), help=f"comma-separated: {', '.join(CONFIGS)} (default: all)")
    p.add_argument("--batches", type=int, help=f"batches per timed pass (default {FULL['batches']})")
    p.add_argument("--repeats", type=int, help=f"timed passes, the best kept (default {FULL['repeats']})")
    p.add_argument("--attack-epochs", type=int, help=f"decoder epochs (default {FULL['attack_epochs']})")
    p.add_argument(
        "--quick", action="store_true", help="batches of 16, 2 a pass, 1 repeat, 64 aux images, 1 attack epoch"
    )
    args = p.parse_args()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not names or set(names) - set(CONFIGS):
        p.error(f"--models: choose from {', '.join(CONFIGS)}, got {args.models!r}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"gpu.py: --device {args.device} but torch.cuda.is_available() is False; "
            "run it where a GPU is lent (--device cpu --quick only checks the script)"
        )
    budget = {**FULL, **(QUICK if args.quick else {})}
    budget.update({k: v for k, v in vars(args).items() if k in FULL and v is not None})
    bench = Bench(device, budget["repeats"], budget["attack_epochs"])

    print(f"torch {torch.__version__}, {device_name(device)}")
    print(f"{budget['batches']} batches a pass, best of {bench.repeats}; attack: decoder epochs {bench.attack_epochs}")
    print(f"{'':20}{' train img/s ':-^28}  {' profile img/s ':-^44}  {' attack ':-^22}")
    print(
        f"{'config':<13} {'batch':>5} {'vortex':>9} {'plain':>9} {'time x':>8}  {'vortex':>9} {'plain':>9} "
        f"{'time x':>8} {'bf16':>5} {'rho chg':>9}  {'split':>5} {'img/s':>8} {'wall s':>7}"
    )
    for name in names:
        arch, size, batch, n_aux = CONFIGS[name]
        batch, n_aux = budget.get("batch_size", batch), budget.get("aux", n_aux)
        torch.manual_seed(0)
        loaded = load_model(arch, num_classes=CLASSES, data_channels=3, data_size=size)
        loaded.model.to(device)
        batches = synthetic_batches(budget["batches"], batch, size, device)
        n = budget["batches"] * batch
        train_v, train_p = train_times(bench, loaded, batches)
        autocast, change = profile_autocast(bench, loaded, batches)
        prof_v, prof_p = profile_times(bench, loaded, batches, autocast)
        split, rate, wall = attack_rate(bench, loaded, size, n_aux)
        print(
            f"{name:<13} {batch:>5} {n / train_v:>9.0f} {n / train_p:>9.0f} {train_v / train_p:>8.3f}  "
            f"{n / prof_v:>9.0f} {n / prof_p:>9.0f} {prof_v / prof_p:>8.3f} {'yes' if autocast else 'no':>5} "
            f"{'-' if change is None else f'{change:.2%}':>9}  {split:>5} {rate:>8.0f} {wall:>7.1f}",
            flush=True,
        )
    print(
        "time x: vortex time / plain time (1.00: no overhead; profile_overhead.py's CPU goals <= 1.10, <= 1.05)\n"
        "bf16: profiling under bf16 autocast (only where rho moves <= 0.1%); rho chg: largest relative\n"
        "change of a split's rho against float32 features (cuda only). attack: aux images per second of the\n"
        "decoder's compute at the middle split (float32, as vortex attack) and the attack's wall time"
    )


if __name__ == "__main__":
    main()
