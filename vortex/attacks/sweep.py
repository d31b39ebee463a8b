"""Attack many splits of one model: shared feature extraction, one attack per split, attack.json.

The attacker's data never meets the scored images: decoders train on auxiliary images (by
default the train split, minus the rows the checkpoint was trained on when it says which)
with a held-out part of them for early stopping, and are scored on private images of the
test split. The decoders of all splits train together, one pass over the auxiliary data per
epoch (vortex.attacks.base.train_together), each with its own optimiser and seeds, so a split's
result does not depend on which others are attacked with it. With several processes (torchrun /
accelerate launch) each attacks its own splits and the results are gathered on the main process.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm

from vortex import __version__
from vortex.attacks.base import REGISTRY, Attack, AttackConfig, AuxPairs, Training, train_together
from vortex.attacks.decoder import DecoderAttack, EnhancedAttack
from vortex.attacks.metrics import image_metrics, summarize
from vortex.attacks.optimize import OptimizeAttack
from vortex.core.gpz import locate_posthoc
from vortex.core.splits import SplitModel, evaluating
from vortex.data import make_loader, take
from vortex.distributed import process_state
from vortex.errors import AttackError
from vortex.records import AttackReport, AttackResult, Gpz, PosthocGpz, PredictedGpz, Profile

BUILT_IN = (DecoderAttack, EnhancedAttack, OptimizeAttack)  # registered by name on import
MIN_AUX_IMAGES = 32  # enough to train on and hold out 8 for early stopping
MIN_VAL_IMAGES = 8
EVAL_BATCH = 256  # images per forward pass for features on an accelerator
CPU_EVAL_BATCH = 32  # and on a CPU, where a small batch's activations stay in cache (resnet18: ~20% faster)

log = logging.getLogger(__name__)


@dataclass
class SplitAttack:
    """The outcome at one split: mean metrics, held-out MSE, cost, and images for the grid.

    `seconds` is the time spent on this split alone (preparing its attack, its share of the
    training, inverting and scoring); `compute_seconds` the part of it the attack's model took
    (decoder training steps, held-out checks and inversion)."""

    index: int
    name: str
    shape: list[int]
    metrics: dict[str, float]
    seconds: float
    originals: torch.Tensor = field(repr=False)
    recons: torch.Tensor = field(repr=False)
    epochs_run: int | None = None
    val_mse: float | None = None
    compute_seconds: float | None = None

    def record(self) -> AttackResult:
        """The attack.json entry for this split."""
        return AttackResult(
            index=self.index,
            name=self.name,
            **self.metrics,
            shape=list(self.shape),
            seconds=round(self.seconds, 3),
            compute_seconds=None if self.compute_seconds is None else round(self.compute_seconds, 3),
            epochs_run=self.epochs_run,
            aux_val_mse=self.val_mse if self.epochs_run is not None else None,
        )


def select_splits(sm: SplitModel, spec: str, gpz: Gpz | None = None) -> list[int]:
    """Split indices for `--splits`: "all", "gpz" (the a-priori zone and one split either side)
    or a comma-separated list of indices or names."""
    spec = spec.strip()
    if spec == "all":
        return [s.index for s in sm.splits]
    if spec == "gpz":
        if gpz is None:
            raise AttackError(
                "--splits gpz needs an a-priori GPZ, and none could be computed for this model "
                "(see the note above): list the splits to attack instead, e.g. --splits 1,3,5"
            )
        zone = gpz.zone or [gpz.index]
        return list(range(max(1, min(zone) - 1), min(sm.num_splits, max(zone) + 1) + 1))
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise AttackError(f"--splits '{spec}' names no split: use all, gpz or a list like 1,3,5")
    return sorted({sm.resolve(s) for s in items})


def unseen_train_rows(train: datasets.Dataset, meta: dict, dataset: str) -> tuple[datasets.Dataset, str]:
    """The train rows a checkpoint was not trained on, when its recipe says (`max_train_samples`
    of `vortex train`, which takes the first N of a seed-0 shuffle); else the whole train split."""
    recipe = meta.get("recipe") or {}
    if recipe.get("dataset") != dataset:
        return train, "train split"
    n = recipe.get("max_train_samples")
    if n and n < len(train):
        return train.shuffle(seed=0).select(range(n, len(train))), "train split rows the model was not trained on"
    return train, "train split (the model was trained on it too)"


def split_aux(
    aux: datasets.Dataset, max_samples: int | None, seed: int, val_fraction: float
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """A seeded sample of at most `max_samples` aux images, cut into (train, held-out) parts."""
    n = len(aux) if max_samples is None else min(max_samples, len(aux))
    if n < MIN_AUX_IMAGES:
        raise AttackError(
            f"the auxiliary set has {n} images; a decoder attack needs at least {MIN_AUX_IMAGES} "
            f"(most to train the decoder, {MIN_VAL_IMAGES}+ held out for early stopping). "
            "Raise --aux-samples or pass a larger --aux-dataset"
        )
    aux = take(aux, n, seed=seed)
    n_val = max(MIN_VAL_IMAGES, round(val_fraction * n))
    return aux.select(range(n - n_val)), aux.select(range(n - n_val, n))


def _memory_budget() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 2 << 30


def plan_passes(dims: dict[int, int], num_images: int, budget: int) -> list[list[int]]:
    """Group splits so that the float32 z of `num_images` images of a group fit in `budget` bytes;
    each group costs one forward pass over the data (a split too big alone gets its own)."""
    groups: list[list[int]] = []
    used = budget + 1
    for k, d in dims.items():
        need = 4 * d * num_images
        if used + need > budget:
            groups.append([])
            used = 0
        groups[-1].append(k)
        used += need
    return groups


def _check_z(sm: SplitModel, k: int, z: Any) -> torch.Tensor:
    name = sm.splits[k - 1].name
    if not isinstance(z, torch.Tensor):
        raise AttackError(
            f"split {k} ({name}) outputs a {type(z).__name__}, not one tensor; an attacker "
            "intercepts one tensor z. Choose split points where a single tensor crosses the cut"
        )
    if not z.is_floating_point():
        raise AttackError(f"split {k} ({name}) outputs {z.dtype} values; the attacks need floating-point z")
    if z.numel() and not torch.isfinite(torch.stack(torch.aminmax(z))).all():  # min and max: one pass, NaN shows
        raise AttackError(
            f"split {k} ({name}) produced NaN or Inf features; check the model weights and the input scaling"
        )
    return z


@torch.no_grad()
def extract_features(
    sm: SplitModel,
    ds: datasets.Dataset,
    splits: Sequence[int],
    *,
    image_size: int | None,
    channels: int | None,
    device: torch.device,
    desc: str = "features",
    progress: bool = True,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Images (as the model sees them) and z at each of `splits`, from one pass, kept on the CPU.

    Each batch is copied into place as it comes (no second copy to concatenate the batches)."""
    x_all: torch.Tensor | None = None
    z_all: dict[int, torch.Tensor] = {}
    done = 0
    batch = CPU_EVAL_BATCH if torch.device(device).type == "cpu" else EVAL_BATCH
    loader = make_loader(ds, batch, image_size=image_size, channels=channels)
    with evaluating(sm.model):
        for x, _ in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
            _, all_z = sm.forward_all(x.to(device))
            zs = {k: _check_z(sm, k, all_z[k - 1]) for k in splits}
            if x_all is None:
                x_all = x.new_empty(len(ds), *x.shape[1:])
                z_all = {k: torch.empty(len(ds), *z.shape[1:], dtype=torch.float32) for k, z in zs.items()}
            rows = slice(done, done + len(x))
            x_all[rows] = x
            for k, z in zs.items():
                z_all[k][rows] = z
            done += len(x)
    if x_all is None:
        raise AttackError(f"{desc}: the data set is empty")
    return x_all, z_all


def get_attack(name: str) -> type[Attack]:
    """The attack registered as `name` (decoder, enhanced, optimize), or the Attack subclass the
    user named as `package.module:Class`."""
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" not in name:
        raise AttackError(
            f"unknown attack '{name}': choose one of {', '.join(REGISTRY)}, or name your own Attack "
            "subclass as package.module:Class"
        )
    module, _, attr = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise AttackError(f"cannot load attack '{name}': {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise AttackError(f"'{name}' is not a subclass of vortex.attacks.base.Attack")
    return cls


def _attack_group(
    sm: SplitModel,
    group: Sequence[int],
    config: AttackConfig,
    x_priv: torch.Tensor,
    z_priv: dict[int, torch.Tensor],
    aux_z: dict[int, AuxPairs] | None,
) -> list[SplitAttack]:
    """Attack each split of `group` and score it; attacks that train in steps train together."""
    attacks: dict[int, Attack] = {}
    trainings: dict[int, Training] = {}
    own = dict.fromkeys(group, 0.0)  # seconds spent on each split alone
    compute = dict.fromkeys(group, 0.0)
    for k in group:
        start, name = time.perf_counter(), sm.splits[k - 1].name
        attack = get_attack(config.attack)(
            config, tuple(x_priv.shape[1:]), seed=config.seed + k, desc=f"split {k} ({name})"
        )
        aux = aux_z.pop(k) if aux_z else None
        training = attack.fit_stepwise(sm.edge(k), aux)
        if training is None:
            fit_start = time.perf_counter()
            attack.fit(sm.edge(k), aux)
            compute[k] += time.perf_counter() - fit_start
        else:
            trainings[k] = training
        attacks[k] = attack
        own[k] += time.perf_counter() - start
    if trainings:
        desc = attacks[next(iter(trainings))].desc if len(trainings) == 1 else f"{len(trainings)} splits together"
        train_together(list(trainings.values()), desc=desc, progress=config.progress)
        for k, training in trainings.items():
            own[k] += training.seconds
            compute[k] += training.seconds
    results = []
    for k in group:
        start = time.perf_counter()
        attack, z = attacks.pop(k), z_priv.pop(k)
        recon = attack.invert(z)
        compute[k] += time.perf_counter() - start
        metrics = summarize(image_metrics(recon, x_priv))
        g = config.grid_images
        own[k] += time.perf_counter() - start
        results.append(
            SplitAttack(
                k,
                sm.splits[k - 1].name,
                list(z.shape[1:]),
                metrics,
                own[k],
                x_priv[:g].clone(),
                recon[:g].clone(),
                attack.epochs_run,
                attack.val_mse,
                compute[k],
            )
        )
    return results


def attack_splits(
    sm: SplitModel,
    private: datasets.Dataset,
    aux: datasets.Dataset | None,
    splits: Sequence[int],
    config: AttackConfig,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    aux_samples: int | None = None,
    device: torch.device | str | None = None,
) -> list[SplitAttack]:
    """Attack each of `splits` and score it on `private`; this process's share when there are several.

    Decoder attacks train on a seeded sample of `aux` (at most `aux_samples`), stopping early on
    its held-out part. Features of all splits come from one pass over each data set, or a few
    passes when they do not fit in `config.feature_memory` together; the decoders of the splits
    of one pass train together, one pass over the auxiliary data per epoch.
    """
    start = time.perf_counter()
    state = process_state()
    device = torch.device(device or state.device)
    config = replace(config, device=str(device))
    mine = list(splits)[state.process_index :: state.num_processes]
    aux_parts = None
    if get_attack(config.attack).needs_aux:
        if aux is None:
            raise AttackError(f"the {config.attack} attack needs auxiliary images")
        aux_parts = split_aux(aux, aux_samples, config.seed, config.val_fraction)
    n_images = len(private) + sum(len(p) for p in aux_parts or ())
    shapes, outputs = _z_shapes(sm, private, mine, image_size, channels, device)
    if config.clusters is None:  # centre z on as many clusters as the model has classes
        config = replace(config, clusters=outputs)
    dims = {k: math.prod(shape) for k, shape in shapes.items()}
    results = []
    kw = dict(image_size=image_size, channels=channels, device=device, progress=config.progress)
    for group in plan_passes(dims, n_images, config.feature_memory or _memory_budget()):
        x_priv, z_priv = extract_features(sm, private, group, desc="private features", **kw)
        aux_z = None
        if aux_parts:
            x_tr, z_tr = extract_features(sm, aux_parts[0], group, desc="aux features", **kw)
            x_val, z_val = extract_features(sm, aux_parts[1], group, desc="aux held-out features", **kw)
            aux_z = {k: AuxPairs(z_tr[k], x_tr, z_val[k], x_val) for k in group}
        results += _attack_group(sm, group, config, x_priv, z_priv, aux_z)
    log.info(
        "attacked %d split%s in %.1f s, of which %.1f s the %s attack's own compute (training, inversion)",
        len(results),
        "" if len(results) == 1 else "s",
        time.perf_counter() - start,
        sum(r.compute_seconds or 0.0 for r in results),
        config.attack,
    )
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        results = gather_object(results)
    return sorted(results, key=lambda r: r.index)


def _z_shapes(
    sm: SplitModel,
    ds: datasets.Dataset,
    splits: Sequence[int],
    image_size: int | None,
    channels: int | None,
    device: torch.device,
) -> tuple[dict[int, tuple[int, ...]], int]:
    """The shape of one sample's z at each of `splits` (checked to be one finite float tensor), and
    the width of the model's output (its class count for a classifier)."""
    if len(ds) == 0:
        raise AttackError("there are no private images to score: the test split is empty")
    x, _ = next(iter(make_loader(ds.select([0]), 1, image_size=image_size, channels=channels)))
    with torch.no_grad(), evaluating(sm.model):
        out, zs = sm.forward_all(x.to(device))
    return {k: tuple(_check_z(sm, k, zs[k - 1]).shape[1:]) for k in splits}, int(out.reshape(1, -1).shape[1])


def gpz_agreement(zone: Sequence[int], posthoc: PosthocGpz) -> bool:
    """Whether the predicted zone meets the splits where the attack MSE rose most: (previous attacked
    split, post-hoc split]. With consecutive splits that is: the post-hoc split is in the zone."""
    low, high = posthoc.interval
    return any(low <= k <= high for k in zone)


def attack_report(
    attacks: Sequence[SplitAttack],
    *,
    model: str,
    dataset: str,
    aux_dataset: str | None,
    attack: str,
    profile: Profile | None,
    profile_source: str | None = None,
    aux_source: str | None = None,
    settings: dict[str, Any] | None = None,
    processes: int | None = None,
    seconds: float | None = None,
) -> AttackReport:
    """The attack.json record: per-split metrics, the a-priori and post-hoc GPZ and their agreement."""
    splits = [a.record() for a in attacks]
    if profile is not None:
        for s in splits:
            s.rho = profile.splits[s.index - 1].rho
    gpz = profile.gpz if profile is not None else None
    predicted = (
        PredictedGpz(index=gpz.index, zone=gpz.zone, quantity=gpz.quantity, source=profile_source)
        if gpz
        else PredictedGpz(index=None, source=profile_source)
    )
    posthoc, agreement = PosthocGpz(index=None, reason="a post-hoc GPZ needs attacks at 2 or more splits"), None
    if len(attacks) >= 2:
        found = locate_posthoc([a.index for a in attacks], [a.metrics["mse"] for a in attacks])
        if max(found.rises) > 0:
            posthoc, agreement = found, gpz_agreement(gpz.zone, found) if gpz else None
        else:
            posthoc = PosthocGpz(
                index=None, reason="attack MSE never rises from one attacked split to the next", rises=found.rises
            )
    return AttackReport(
        vortex_version=__version__,
        model=model,
        dataset=dataset,
        aux_dataset=aux_dataset,
        attack=attack,
        aux_source=aux_source,
        settings=settings,
        processes=processes,
        seconds=seconds,
        splits=splits,
        gpz_predicted=predicted,
        gpz_posthoc=posthoc,
        agreement=agreement,
    )
