"""Does `--target-gpz K` protect split K? Indicator and attacks side by side, for several K.

    python benchmarks/controller_privacy.py --recipe recipes/cnn_digits.yaml --targets 2 3 4 5 6 7
    python benchmarks/controller_privacy.py --targets 2 3 4 5 6 7 --budgets 0.01 0.02 0.05 --no-posthoc
    python benchmarks/controller_privacy.py --recipe recipes/resnet18_digits.yaml --targets 3 4
    python benchmarks/controller_privacy.py --targets 3 4 6 --no-posthoc --controller decorrelate=0

Trains the untargeted run once, then one run per K and accuracy budget (`--max-accuracy-drop`)
against it. Per run it prints: where the rho transition landed (the indicator), the verdict
attack's MSE at split K on the targeted model and, with the same attack, on the untargeted model
at the same split, the post-hoc GPZ (the split after the largest rise of attack MSE over all
splits of the targeted model, for the first budget; --no-posthoc skips it), test accuracy against the untargeted run,
the training run's own verdict and wall time. A target counts as reached only when the rho
transition is at K and split K's attack MSE is at least --privacy-mse.

Then the privacy-utility frontier: per K, the highest attack MSE at K among the runs that lost at
most 1, 2 and 5 accuracy points, drawn with the untargeted model's MSE and the protection line in
--plot (default benchmarks/results/controller_privacy.png).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import yaml

from vortex.attacks.base import AttackConfig
from vortex.attacks.sweep import attack_splits
from vortex.core.gpz import locate_posthoc
from vortex.data import data_shape, load_data, num_classes, take
from vortex.hub.loading import load_model
from vortex.train import TrainConfig, train
from vortex.training.config import load_recipe
from vortex.training.privacy import PrivacyCriterion


class Row(NamedTuple):
    """One targeted run of the benchmark."""

    k: int
    budget: float
    rho_gpz: int
    posthoc: int | None
    mse_k: float
    mse_untargeted: float
    accuracy: float
    seconds: float
    verdict: str


def attack(ckpt: Path, dataset: str, splits: list[int], criterion: PrivacyCriterion, seed: int) -> dict[int, float]:
    """Attack MSE per split, with the verdict's attack and budget (aux: train split, scored: test)."""
    data = load_data(dataset)
    channels, size, _ = data_shape(data["test"])
    loaded = load_model(str(ckpt), num_classes=num_classes(data["test"]), data_channels=channels, data_size=size)
    config = AttackConfig(
        attack=criterion.attack,
        epochs=criterion.epochs,
        seed=seed,
        progress=False,
        clusters=num_classes(data["test"]),
    )
    done = attack_splits(
        loaded.split,
        take(data["test"], criterion.private_samples, seed=seed),
        data["train"],
        splits,
        config,
        image_size=loaded.spec.image_size,
        channels=loaded.spec.in_channels,
        aux_samples=criterion.aux_samples,
        device=torch.device("cpu"),
    )
    return {a.index: a.metrics["mse"] for a in done}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="recipes/cnn_digits.yaml")
    p.add_argument("--targets", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7])
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--privacy-mse", type=float, default=0.02, help="attack MSE at K that counts as protected")
    p.add_argument("--no-posthoc", action="store_true", help="skip attacking every split of each targeted model")
    p.add_argument("--out", help="keep the runs here (default: a temporary directory)")
    p.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        default=[0.02],
        help="accuracy budgets (--max-accuracy-drop) to train each K with (default: 0.02)",
    )
    p.add_argument("--plot", default="benchmarks/results/controller_privacy.png", help="where the frontier plot goes")
    p.add_argument(
        "--controller",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override the recipe's controller settings for the targeted runs, e.g. decorrelate=0 pull=4",
    )
    args = p.parse_args()
    recipe = load_recipe(args.recipe)
    overrides = dict(item.split("=", 1) for item in args.controller)
    targeted = load_recipe(
        replace(recipe, controller={**recipe.controller, **{k: yaml.safe_load(v) for k, v in overrides.items()}})
    )
    criterion = PrivacyCriterion(min_mse=args.privacy_mse)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        start = time.perf_counter()
        base = train(
            TrainConfig(
                recipe=args.recipe, output_dir=root / "baseline", holdout_probe=True, num_train_epochs=args.epochs
            )
        )
        base_acc, n_splits = base.test_accuracy, len(base.profile.splits)
        untargeted = attack(root / "baseline", recipe.dataset, sorted(set(args.targets)), criterion, recipe.seed)
        print(
            f"untargeted run: rho transition at {base.profile.gpz.index}, accuracy {base_acc:.4f}, "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )
        rows = []
        for k, budget in ((k, b) for k in args.targets for b in args.budgets):
            out, start = root / f"k{k}_drop{budget}", time.perf_counter()
            run = train(
                TrainConfig(
                    recipe=targeted,
                    output_dir=out,
                    target_gpz=k,
                    baseline=root / "baseline",
                    privacy_mse=args.privacy_mse,
                    max_accuracy_drop=budget,
                    num_train_epochs=args.epochs,
                )
            )
            mse_k = next(s["mse"] for s in run.privacy["splits"] if s["index"] == k)
            posthoc = None
            if not args.no_posthoc and budget == args.budgets[0]:
                per_split = attack(out, recipe.dataset, list(range(1, n_splits + 1)), criterion, recipe.seed)
                indices = sorted(per_split)
                posthoc = locate_posthoc(indices, [per_split[i] for i in indices]).index
            verdict = "reached" if run.target_reached else "MISSED"
            rows.append(
                Row(
                    k,
                    budget,
                    run.profile.gpz.index,
                    posthoc,
                    mse_k,
                    untargeted[k],
                    run.test_accuracy,
                    time.perf_counter() - start,
                    verdict,
                )
            )
            print(f"K={k}, budget {budget}: {verdict} ({time.perf_counter() - start:.0f} s)", flush=True)
    print(
        f"\n{args.recipe} on {recipe.dataset}"
        + (f", {args.epochs} epochs" if args.epochs else "")
        + f"; protected at attack MSE >= {args.privacy_mse}; untargeted accuracy {base_acc:.4f}"
        + (f"; controller {' '.join(args.controller)}" if args.controller else "")
    )
    print(
        f"{'K':>3} {'budget':>7} {'rho GPZ':>8} {'post-hoc':>9} {'MSE@K targeted':>15} {'untargeted':>11} "
        f"{'test acc':>9} {'vs untargeted':>14} {'time':>7}  verdict"
    )
    for k, budget, rho_gpz, posthoc, mse_k, mse_u, acc, took, verdict in rows:
        print(
            f"{k:>3} {budget:>7} {rho_gpz:>8} {posthoc if posthoc else '-':>9} {mse_k:>15.4f} {mse_u:>11.4f} "
            f"{acc:>9.4f} {acc - base_acc:>+14.4f} {took:>6.0f}s  {verdict}"
        )
    frontier = {
        points: {
            k: max((r.mse_k for r in rows if r.k == k and base_acc - r.accuracy <= points / 100 + 1e-9), default=None)
            for k in args.targets
        }
        for points in (1, 2, 5)
    }
    print(f"\nfrontier: highest attack MSE at K within an accuracy loss of ... (protected at >= {args.privacy_mse})")
    print(f"{'K':>3} {'untargeted':>11} " + " ".join(f"{f'<= {n} pt':>9}" for n in frontier))
    for k in args.targets:
        cells = " ".join(f"{'-' if f[k] is None else f'{f[k]:.4f}':>9}" for f in frontier.values())
        print(f"{k:>3} {untargeted[k]:>11.4f} {cells}")
    plot_frontier(args.targets, untargeted, frontier, args.privacy_mse, args.recipe, Path(args.plot))
    print(f"wrote {args.plot}")


def plot_frontier(
    targets: list[int],
    untargeted: dict[int, float],
    frontier: dict[int, dict[int, float | None]],
    line: float,
    recipe: str,
    path: Path,
) -> None:
    """Attack MSE at K per accuracy budget, the untargeted model at the same split, the protection line."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(targets, [untargeted[k] for k in targets], "o--", color="gray", label="untargeted model")
    for points, best in frontier.items():
        ks = [k for k in targets if best[k] is not None]
        ax.plot(ks, [best[k] for k in ks], "o-", label=f"targeted, <= {points} accuracy pt lost")
    ax.axhline(line, color="red", ls=":", label=f"protected from here ({line})")
    ax.set_xlabel("split K (target of --target-gpz)")
    ax.set_ylabel("verdict attack MSE at split K")
    ax.set_title(f"privacy-utility frontier: {recipe}", fontsize=9)
    ax.set_xticks(targets)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
