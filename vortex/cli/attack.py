"""`vortex attack`: invert z at each split, score on private test images, compare with the a-priori GPZ."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vortex.errors import ProfileError
from vortex.options import add_data_options, add_input_options, add_trust_code_option, data_options
from vortex.records import Profile

HELP = """\
Attack z at each split and measure how well the input can be rebuilt.

  decoder   black box (the paper's threat model): query the edge with auxiliary images, standardise
            their z per dimension (so rescaling z cannot hide what it holds), train a decoder
            z -> x (stopping early on a held-out part of them), score it on private images
  optimize  white box (He et al. 2019 rMLE): optimise x' in [0, 1] so edge(x') matches z, with a
            total-variation prior; needs no auxiliary data
  enhanced  the decoder attack strengthened: standardised z plus its FFT amplitude, a deeper
            decoder with attention blocks
  NAME      package.module:Class, your own subclass of vortex.attacks.base.Attack

Auxiliary images come from the train split of --dataset (leaving out the rows a checkpoint was
trained on when its recipe says which) or of --aux-dataset, adapted to the model's input size
and channels; scored images come from the test split, so the attacker never sees them.
--splits gpz attacks the a-priori zone and one split either side (the stored profile of a
checkpoint, else a profile of the scored images). The post-hoc GPZ is the split after the
largest rise of attack MSE; they agree when the predicted zone meets the splits where that
rise happened. Writes OUT/attack.json, OUT/attack.png and OUT/recon_split<k>.png.
"""


def add_attack_parser(sub: argparse._SubParsersAction) -> None:
    """Register `vortex attack` on the `vortex` command's subparsers."""
    p = sub.add_parser(
        "attack",
        help="invert z at each split (decoder, rMLE or strengthened attacker) and "
        "check the a-priori GPZ against the attacks",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="built-in name, checkpoint directory, transformers model (directory or Hub id) or package.module:function",
    )
    p.add_argument(
        "--dataset",
        required=True,
        help="private data: its test split is scored (digits, fashion-mnist, mnist-5k, folder, ...)",
    )
    p.add_argument("--out", required=True, help="output directory for attack.json, attack.png and the grids")
    p.add_argument(
        "--aux-dataset",
        help="the attacker's own images (its train split; default: the train split "
        "of --dataset), e.g. mnist-5k against fashion-mnist",
    )
    p.add_argument(
        "--splits",
        default="all",
        help="all (default), gpz (the a-priori zone and its neighbours), "
        "or a comma-separated list of indices or names, e.g. 1,3,5",
    )
    p.add_argument(
        "--attack",
        default="decoder",
        help="decoder (black box, default), optimize (white-box rMLE), enhanced (strengthened decoder), or your "
        "own Attack subclass as package.module:Class (see vortex/attacks/base.py)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=30,
        help="most decoder training epochs per split (default: 30; "
        "training stops earlier when the held-out MSE stalls)",
    )
    p.add_argument(
        "--patience", type=int, default=5, help="stop after this many epochs without a better held-out MSE (default: 5)"
    )
    p.add_argument("--steps", type=int, default=300, help="optimisation steps of the rMLE attack (default: 300)")
    p.add_argument(
        "--tv-weight",
        type=float,
        default=0.01,
        help="weight of the total-variation prior in the rMLE attack (default: 0.01)",
    )
    p.add_argument(
        "--max-samples", type=int, default=1000, help="private test images scored (default: 1000, a seeded sample)"
    )
    p.add_argument(
        "--aux-samples",
        type=int,
        default=5000,
        help="auxiliary images used, 10%% of them held out for early stopping (default: 5000)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the samples, decoders and shuffles (default: 0)")
    p.add_argument("--batch-size", type=int, default=64, help="decoder training batch (default: 64)")
    add_trust_code_option(p)
    add_data_options(p)  # for --dataset; --aux-dataset is read with its defaults
    add_input_options(p)
    p.set_defaults(func=cmd_attack)


def _note(message: str) -> None:
    from vortex.distributed import process_state

    if process_state().is_main_process:
        print(f"vortex: note: {message}")


def same_data(args: argparse.Namespace, meta: dict) -> bool:
    """Whether the checkpoint was trained on the data this attack scores: its name and its Hub config."""
    recipe = meta.get("recipe") or {}
    return recipe.get("dataset", args.dataset) == args.dataset and (
        recipe.get("dataset_config_name") == args.dataset_config_name
    )


def _a_priori_profile(args: argparse.Namespace, loaded: Any, private: Any, meta: dict) -> tuple[Profile | None, str]:
    """The checkpoint's stored profile when it matches this data and these splits, else a fresh one."""
    from vortex.core.probe import profile_model

    stored = Profile.from_dict(meta["profile"]) if meta.get("profile") else None
    if (
        stored
        and stored.dataset == args.dataset
        and same_data(args, meta)
        and [s.name for s in stored.splits] == [s.name for s in loaded.split.splits]
    ):
        return stored, "checkpoint profile"
    spec = loaded.spec
    try:
        profile = profile_model(
            loaded.split,
            private,
            model_name=args.model,
            dataset_name=args.dataset,
            image_size=spec.image_size,
            channels=spec.in_channels,
            progress=False,
        )
    except ProfileError as exc:
        _note(f"no a-priori GPZ ({exc})")
        return None, "none"
    return profile, "profiled on the scored images"


def cmd_attack(args: argparse.Namespace) -> int:
    """Run `vortex attack`: see HELP."""
    from vortex.attacks.base import AttackConfig
    from vortex.attacks.sweep import attack_report, attack_splits, get_attack, select_splits, unseen_train_rows
    from vortex.data import data_shape, load_data, num_classes, take
    from vortex.distributed import process_state
    from vortex.files import check_output_dir, write_json
    from vortex.hub.layout import read_meta
    from vortex.hub.loading import load_model
    from vortex.report.plots import plot_attack, plot_reconstructions
    from vortex.report.tables import attack_table

    start = time.perf_counter()
    config = AttackConfig(
        attack=args.attack,
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        steps=args.steps,
        tv_weight=args.tv_weight,
        seed=args.seed,
    )
    get_attack(config.attack)  # an unknown attack or an unusable --out is refused before any work
    check_output_dir(args.out, "--out")
    data = load_data(args.dataset, **data_options(args))
    test = data["test"]
    channels, height, _ = data_shape(test)
    loaded = load_model(
        args.model,
        num_classes=num_classes(test),
        data_channels=channels,
        data_size=height,
        image_size=args.image_size,
        channels=args.channels,
        trust_code=args.trust_code,
    )
    state = process_state()
    loaded.model.to(state.device)
    private = take(test, args.max_samples, seed=args.seed)
    meta = read_meta(args.model) if Path(args.model).is_dir() else {}
    profile, profile_source = _a_priori_profile(args, loaded, private, meta)
    splits = select_splits(loaded.split, args.splits, profile and profile.gpz)

    aux = aux_name = aux_source = None
    if args.attack != "optimize":
        aux_name = args.aux_dataset or args.dataset
        if aux_name == args.dataset:
            aux, aux_source = unseen_train_rows(data["train"], meta if same_data(args, meta) else {}, args.dataset)
        else:
            aux, aux_source = load_data(aux_name, seed=args.data_seed)["train"], "train split"
        if data_shape(aux) != data_shape(test):
            _note(
                f"auxiliary images {'x'.join(map(str, data_shape(aux)))} are adapted to the model's input "
                f"{loaded.spec.in_channels}x{loaded.spec.image_size}x{loaded.spec.image_size}"
            )
    attacks = attack_splits(
        loaded.split,
        private,
        aux,
        splits,
        config,
        image_size=loaded.spec.image_size,
        channels=loaded.spec.in_channels,
        aux_samples=args.aux_samples,
        device=state.device,
    )
    if not state.is_main_process:
        return 0
    settings = {k: v for k, v in asdict(config).items() if k not in ("progress", "feature_memory")}
    result = attack_report(
        attacks,
        model=args.model,
        dataset=args.dataset,
        aux_dataset=aux_name,
        attack=args.attack,
        profile=profile,
        profile_source=profile_source,
        aux_source=aux_source,
        settings=settings,
        processes=state.num_processes,
        seconds=round(time.perf_counter() - start, 2),
    )
    out = Path(args.out)
    write_json(out / "attack.json", result)
    plot_attack(result, out / "attack.png")
    for a in attacks:
        plot_reconstructions(
            a.originals,
            a.recons,
            out / f"recon_split{a.index}.png",
            title=f"split {a.index} ({a.name}): MSE {a.metrics['mse']:.4f}, PSNR {a.metrics['psnr']:.1f} dB",
        )
    print(attack_table(result))
    print(f"wrote {out / 'attack.json'}, {out / 'attack.png'} and {len(attacks)} reconstruction grids")
    return 0
