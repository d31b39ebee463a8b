"""One pass over labelled data captures every split and yields the R_c^2 profile and the GPZ."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import datasets
import torch
from datasets.distributed import split_dataset_by_node
from tqdm.auto import tqdm

from vortex import __version__
from vortex.core.bounds import entropy_bounds
from vortex.core.gpz import locate_gpz
from vortex.core.splits import SplitModel, evaluating
from vortex.core.stats import ClassStats, choose_sketch_dim
from vortex.data import make_loader, take
from vortex.data import num_classes as data_num_classes
from vortex.distributed import process_state
from vortex.errors import ProfileError
from vortex.records import Profile, SplitStats

GPZ_QUANTITIES = ("rho", "rc2")
CAPTURE_BYTES = 2**30  # a batch runs in chunks whose captured splits take at most about this much memory


def collect_stats(
    sm: SplitModel,
    ds: datasets.Dataset,
    *,
    num_classes: int,
    image_size: int | None,
    channels: int | None,
    labels: str = "true",
    batch_size: int = 256,
    max_samples: int | None = None,
    progress: bool = True,
    sketch_dim: int | str | None = None,
) -> tuple[list[ClassStats], float]:
    """Stream `ds` once through the model; return per-split class statistics and accuracy.

    With several processes each takes its own shard (no padding duplicates) and the
    statistics are reduced exactly at the end.
    """
    loader = shard_loader(ds, batch_size, image_size=image_size, channels=channels, max_samples=max_samples)
    return stream_stats(sm, loader, num_classes=num_classes, labels=labels, progress=progress, sketch_dim=sketch_dim)


def shard_loader(
    ds: datasets.Dataset,
    batch_size: int,
    *,
    image_size: int | None,
    channels: int | None,
    max_samples: int | None = None,
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of this process's shard of the first `max_samples` rows (seeded) of `ds`."""
    state = process_state()
    shard = split_dataset_by_node(take(ds, max_samples), rank=state.process_index, world_size=state.num_processes)
    return make_loader(shard, batch_size, image_size=image_size, channels=channels)


def stream_stats(
    sm: SplitModel,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    labels: str = "true",
    progress: bool = True,
    sketch_dim: int | str | None = None,
    on_batch: Callable[[list[torch.Tensor]], None] | None = None,
) -> tuple[list[ClassStats], float]:
    """Stream this process's (x, y) batches through the model; reduce the statistics across processes.

    Every process must call it (with its own shard of the data): the reduction is collective.
    Splits wider than the sketch width are count-sketched to it (see `stats.CountSketch`): `sketch_dim`
    if a number, else chosen so the class means fit in `stats.STATS_BYTES` ("exact": never).
    `on_batch`, if given, receives z at every split of each chunk of samples, in order.
    """
    if labels not in ("true", "predicted"):
        raise ProfileError(f"--labels must be 'true' or 'predicted', not '{labels}'")
    state = process_state()
    device = next(sm.model.parameters()).device
    stats: list[ClassStats] | None = None
    correct = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.inference_mode(), evaluating(sm.model):
        shown = tqdm(batches, desc="profiling", unit="batch", disable=not (progress and state.is_main_process))
        for y, logits, zs in _captures(sm, shown, device):
            if logits.ndim != 2 or logits.shape[1] != num_classes:
                raise ProfileError(
                    f"the model outputs shape {tuple(logits.shape[1:])} but the data set has {num_classes} "
                    "classes; use a model whose head has one output per class"
                )
            pred = logits.argmax(1)
            correct += torch.stack([(pred == y).sum(), torch.tensor(len(y), device=device)]).double()
            target = y if labels == "true" else pred
            if stats is None:
                odd = [s.name for s, z in zip(sm.splits, zs) if not isinstance(z, torch.Tensor)]
                if odd:
                    raise ProfileError(f"split {', '.join(odd)} does not output one tensor")
                dims = [z[0].numel() for z in zs]
                width = choose_sketch_dim(sketch_dim, num_classes, dims)
                stats = [ClassStats(num_classes, d, device, width) for d in dims]
            if on_batch is not None:
                on_batch(zs)
            for split, (s, z) in enumerate(zip(stats, zs), start=1):
                if not s.update(z, target):
                    raise ProfileError(
                        f"split {split} ({sm.splits[split - 1].name}) produced NaN or Inf features; "
                        "check the model weights and the input scaling"
                    )
    if stats is None:
        raise ProfileError("no samples to profile: the data set (or this process's shard) is empty")
    for s in stats:
        s.sync()
    if state.num_processes > 1:
        from accelerate.utils import reduce

        correct = reduce(correct, reduction="sum")
    return stats, float(correct[0] / correct[1])


def _captures(
    sm: SplitModel, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]]:
    """(y, logits, z at every split) of each batch, run in chunks whose captured splits take at most
    CAPTURE_BYTES (measured on one sample first)."""
    most = None  # samples per chunk
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        if most is None:
            _, zs = sm.forward_all(x[:1])
            most = max(1, CAPTURE_BYTES // max(1, sum(z.numel() * z.element_size() for z in zs if torch.is_tensor(z))))
        size = -(-len(x) // -(-len(x) // most))  # equal chunks
        for start in range(0, len(x), size):
            logits, zs = sm.forward_all(x[start : start + size])
            yield y[start : start + size], logits, zs


def build_profile(
    sm: SplitModel,
    stats: list[ClassStats],
    *,
    model_name: str,
    dataset_name: str,
    labels: str,
    accuracy: float,
    example: torch.Tensor,
    gpz_quantity: str = "rho",
) -> Profile:
    """Turn per-split statistics into the profile (profile.json, see vortex/records.py)."""
    if gpz_quantity not in GPZ_QUANTITIES:
        raise ProfileError(f"GPZ quantity must be one of {GPZ_QUANTITIES}, not '{gpz_quantity}'")
    splits, small = [], {}
    for info, s in zip(sm.describe(example), stats):
        summ = s.summary()
        small.update(summ.small_classes)
        splits.append(
            SplitStats(
                **info,
                rc2=summ.rc2,
                rc2_per_class=summ.rc2_per_class,
                global_var=summ.global_var,
                rho=summ.rho,
                sketch_dim=s.dim if s.sketch is not None else None,
                **entropy_bounds(summ.rc2_per_class, summ.counts, summ.global_var, info["dim"]),
            )
        )
    counts = stats[0].summary().counts
    gpz = locate_gpz([getattr(s, gpz_quantity) for s in splits], gpz_quantity)
    gpz.by_quantity = {q: locate_gpz([getattr(s, q) for s in splits], q).index for q in GPZ_QUANTITIES}
    return Profile(
        vortex_version=__version__,
        model=model_name,
        dataset=dataset_name,
        num_samples=int(sum(counts)),
        num_classes=len(counts),
        labels=labels,
        accuracy=accuracy,
        class_counts=counts,
        small_classes={str(c): n for c, n in small.items()},
        splits=splits,
        gpz=gpz,
    )


def profile_model(
    sm: SplitModel,
    ds: datasets.Dataset,
    *,
    model_name: str,
    dataset_name: str,
    image_size: int | None = None,
    channels: int | None = None,
    labels: str = "true",
    batch_size: int = 256,
    max_samples: int | None = None,
    progress: bool = True,
    gpz_quantity: str = "rho",
    sketch_dim: int | str | None = None,
) -> Profile:
    """Profile every split of `sm` on `ds` in one pass and locate the GPZ a priori.

    Splits wider than the sketch width (`sketch_dim`; by default exact unless the class means of all
    splits would exceed `stats.STATS_BYTES`; "exact": always exact) are estimated on a count sketch of z.
    """
    k = data_num_classes(ds)
    stats, acc = collect_stats(
        sm,
        ds,
        num_classes=k,
        image_size=image_size,
        channels=channels,
        labels=labels,
        batch_size=batch_size,
        max_samples=max_samples,
        progress=progress,
        sketch_dim=sketch_dim,
    )
    example, _ = next(iter(make_loader(ds.select([0]), 1, image_size=image_size, channels=channels)))
    example = example.to(next(sm.model.parameters()).device)
    return build_profile(
        sm,
        stats,
        model_name=model_name,
        dataset_name=dataset_name,
        labels=labels,
        accuracy=acc,
        example=example,
        gpz_quantity=gpz_quantity,
    )
