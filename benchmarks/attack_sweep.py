"""Does the a-priori GPZ agree with what inversion attacks find? cnn and resnet18 on Fashion-MNIST.

    python benchmarks/attack_sweep.py [--quick] [--out runs/attack_sweep]

Trains each model with vortex/train.py on part of the Fashion-MNIST train split (checkpoints
under OUT are reused on a rerun), profiles it, and runs the decoder attack at every split with
two auxiliary sets: train rows the model never saw (same domain) and mnist-5k (cross domain).
Prints per split MSE / PSNR / SSIM, the a-priori and post-hoc GPZ, MSE(GPZ) / MSE(split 1)
(the paper reports more than 4x) and the time of the sweep vs the time of the probe; writes
OUT/<model>_<aux>/attack.json and attack.png. For each sweep it also prints the decoder compute
of every split (training steps, held-out checks, inversion), their sum, the sweep's wall time
(features, attack preparation and scoring included) and the ratio of the two, goal at most 1.2:
the decoders of all splits train together from one pass over the auxiliary data per epoch, so
the sweep should cost little beyond its decoders' compute. Measured on a 2-core CPU shared with other jobs
(OMP_NUM_THREADS=1, which avoids thread oversubscription there): full 42 min (resnet18 training
10 of them), --quick 11 min. Needs the Debian package dataset-fashion-mnist.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import yaml

from vortex.attacks.base import AttackConfig
from vortex.attacks.sweep import SplitAttack, attack_report, attack_splits, unseen_train_rows
from vortex.core.probe import profile_model
from vortex.data import load_data, take
from vortex.distributed import process_state
from vortex.files import write_json
from vortex.hub.layout import is_checkpoint, read_meta
from vortex.hub.loading import LoadedModel, load_model
from vortex.logs import show_logs
from vortex.records import AttackReport, Profile
from vortex.report.plots import plot_attack
from vortex.report.tables import attack_table
from vortex.train import TrainConfig, train

SETTINGS = {  # train images, train epochs, aux images, private images, decoder epochs
    "full": {"cnn": (12000, 3), "resnet18": (5000, 2), "aux": 2000, "private": 500, "epochs": 10},
    "quick": {"cnn": (3000, 2), "resnet18": (1500, 2), "aux": 600, "private": 200, "epochs": 4},
}
SWEEP_GOAL = 1.2  # sweep wall time / sum of per-split decoder compute, on a CPU
MODELS = {
    "cnn": {"model_options": {"width": 32}, "optimizer": {"name": "adamw", "lr": 0.003}},
    "resnet18": {"optimizer": {"name": "adamw", "lr": 0.001}},
}


def trained(model: str, out: Path, samples: int, epochs: int) -> Path:
    """A checkpoint of `model` trained on the first `samples` rows of the seed-0 shuffled train split."""
    ckpt = out / f"{model}_fashion"
    if is_checkpoint(ckpt) and read_meta(ckpt).get("recipe", {}).get("max_train_samples") == samples:
        return ckpt
    recipe = {
        "model": model,
        "dataset": "fashion-mnist",
        "seed": 0,
        "epochs": epochs,
        "batch_size": 64,
        "max_train_samples": samples,
        "scheduler": "cosine",
        "probe": {"max_samples": 1000, "batch_size": 256},
        **MODELS[model],
    }
    path = out / f"{model}_recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    start = time.perf_counter()
    train(TrainConfig(recipe=path, output_dir=ckpt))
    print(f"trained {model} in {time.perf_counter() - start:.0f} s")
    return ckpt


@dataclass
class Target:
    """A trained checkpoint ready to attack: loaded once, with its private test images and their profile."""

    model: str
    ckpt: Path
    loaded: LoadedModel
    private: datasets.Dataset
    profile: Profile
    probe_seconds: float

    @property
    def image_kw(self) -> dict:
        return dict(image_size=self.loaded.spec.image_size, channels=self.loaded.spec.in_channels)


def prepare(model: str, ckpt: Path, setting: dict, fashion) -> Target:
    """Load the checkpoint, take the private test images and profile them (once for every attacker)."""
    loaded = load_model(str(ckpt), num_classes=10, data_channels=1, data_size=28)
    loaded.model.to(process_state().device)
    private = take(fashion["test"], setting["private"], seed=0)
    kw = dict(image_size=loaded.spec.image_size, channels=loaded.spec.in_channels)
    start = time.perf_counter()
    profile = profile_model(loaded.split, private, model_name=model, dataset_name="fashion-mnist", progress=False, **kw)
    return Target(model, ckpt, loaded, private, profile, time.perf_counter() - start)


def aux_sets(target: Target, fashion, mnist) -> dict[str, tuple[datasets.Dataset, str]]:
    """The attacker's images: Fashion-MNIST train rows the model never saw, and mnist-5k."""
    return {
        "fashion-mnist": unseen_train_rows(fashion["train"], read_meta(target.ckpt), "fashion-mnist"),
        "mnist-5k": (mnist, "train split"),
    }


def sweep(target: Target, aux_name: str, aux: tuple[datasets.Dataset, str], setting: dict, out: Path) -> dict:
    """Attack every split of `target` with the decoder; returns the attack.json dict with timings and ratios."""
    config = AttackConfig(epochs=setting["epochs"], seed=0)
    split = target.loaded.split
    start = time.perf_counter()
    attacks = attack_splits(
        split,
        target.private,
        aux[0],
        [s.index for s in split.splits],
        config,
        aux_samples=setting["aux"],
        **target.image_kw,
    )
    sweep_s = time.perf_counter() - start
    report = attack_report(
        attacks,
        model=target.model,
        dataset="fashion-mnist",
        aux_dataset=aux_name,
        attack="decoder",
        profile=target.profile,
        aux_source=aux[1],
    )
    result = {
        **report.to_dict(),
        "probe_seconds": target.probe_seconds,
        "sweep_seconds": sweep_s,
        "timing": sweep_timing(attacks, sweep_s),
        "accuracy": target.profile.accuracy,
    }
    mse = report.mse()
    for key, gpz in (("gpz", report.gpz_predicted), ("posthoc", report.gpz_posthoc)):
        result[f"mse_ratio_{key}_to_split1"] = mse[gpz.index] / mse[1] if gpz.index else None
    run_dir = out / f"{target.model}_{aux_name}"
    write_json(run_dir / "attack.json", result)
    plot_attack(report, run_dir / "attack.png")
    return result


def sweep_timing(attacks: Sequence[SplitAttack], sweep_seconds: float) -> dict:
    """Per-split decoder compute, their sum, the sweep's wall time and the ratio of the two; and
    where the rest went: each split's own preparation (z statistics, clustering) and scoring, and
    what the splits share (loading the images, capturing their features)."""
    compute = {a.index: a.compute_seconds or 0.0 for a in attacks}
    total = sum(compute.values())
    own = sum(a.seconds for a in attacks)
    return {
        "compute_seconds": compute,
        "compute_sum": total,
        "sweep_seconds": sweep_seconds,
        "ratio": sweep_seconds / total if total else None,
        "prepare_and_score_seconds": own - total,
        "shared_seconds": sweep_seconds - own,
    }


def timing_lines(timing: dict) -> list[str]:
    """The timing of one sweep as printed lines, with the goal beside the ratio."""
    per_split = ", ".join(f"{k}: {s:.2f}" for k, s in timing["compute_seconds"].items())
    ratio = "n/a" if timing["ratio"] is None else f"{timing['ratio']:.3f}"
    return [
        f"  decoder compute per split (s): {per_split}",
        f"  sum of decoder compute       : {timing['compute_sum']:7.2f} s  (training, held-out checks, inversion)",
        f"  sweep wall time              : {timing['sweep_seconds']:7.2f} s",
        f"  sweep / sum of compute       : {ratio:>7}    (goal <= {SWEEP_GOAL})",
        f"  rest: per-split preparation and scoring {timing['prepare_and_score_seconds']:.2f} s, "
        f"images and features {timing['shared_seconds']:.2f} s",
    ]


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def main() -> None:
    show_logs()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller models, data and budgets (a few minutes)")
    parser.add_argument(
        "--out", default="runs/attack_sweep", help="checkpoints and results (default: runs/attack_sweep)"
    )
    parser.add_argument("--models", default="cnn,resnet18", help="comma-separated: cnn, resnet18 (default: both)")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        parser.error(f"--models: choose from {', '.join(MODELS)}, got {args.models!r}")
    setting = SETTINGS["quick" if args.quick else "full"]
    out = Path(args.out) / ("quick" if args.quick else "full")
    fashion, mnist = load_data("fashion-mnist"), load_data("mnist-5k")["train"]
    summary = []
    for model in models:
        target = prepare(model, trained(model, out, *setting[model]), setting, fashion)
        for aux_name, aux in aux_sets(target, fashion, mnist).items():
            result = sweep(target, aux_name, aux, setting, out)
            print(
                f"\n== {model} on fashion-mnist (accuracy {result['accuracy']:.3f}), aux {aux_name} "
                f"({result['aux_source']}, {setting['aux']} images), {setting['private']} private test images"
            )
            print(attack_table(AttackReport.from_dict(result)))
            print("\n".join(timing_lines(result["timing"])))
            summary.append(result)
    print(
        f"\n{'model':<9} {'aux':<14} {'acc':>5} {'GPZ a priori':>12} {'post hoc':>8} {'agree':>5} "
        f"{'MSE(GPZ)/MSE(1)':>15} {'MSE(post)/MSE(1)':>16} {'sweep s':>8} {'probe s':>8} {'ratio':>6} "
        f"{'compute s':>9} {'sweep/compute':>13}"
    )
    for r in summary:
        gpz, post = r["gpz_predicted"]["index"], r["gpz_posthoc"]["index"]
        print(
            f"{r['model']:<9} {r['aux_dataset']:<14} {r['accuracy']:>5.3f} {gpz:>12} {str(post):>8} "
            f"{str(r['agreement']):>5} {_ratio(r['mse_ratio_gpz_to_split1']):>15} "
            f"{_ratio(r['mse_ratio_posthoc_to_split1']):>16} {r['sweep_seconds']:>8.1f} {r['probe_seconds']:>8.2f} "
            f"{r['sweep_seconds'] / r['probe_seconds']:>5.0f}x {r['timing']['compute_sum']:>9.1f} "
            f"{_ratio(r['timing']['ratio']):>13}"
        )
    print(f"sweep/compute: sweep wall time over the sum of per-split decoder compute, goal <= {SWEEP_GOAL}")


if __name__ == "__main__":
    main()
