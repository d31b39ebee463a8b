"""The `vortex` command: probe a model's splits, attack them, train with Accelerate."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from vortex.cli.attack import add_attack_parser
from vortex.cli.hub import add_export_parser, add_publish_parser, add_pull_parser
from vortex.errors import VortexError
from vortex.logs import show_logs
from vortex.options import add_data_options, add_input_options, add_trust_code_option, data_options

DESCRIPTION = """\
vortex: find where a vision model may be split for private edge-cloud inference.

  vortex probe  --model cnn --dataset digits --out runs/probe      R_c^2 / rho profile and a-priori GPZ
  vortex attack --model DIR --dataset digits --out runs/attack     inversion attack at every split vs the GPZ
  vortex train  --recipe recipes/cnn_digits.yaml --output_dir DIR   Accelerate training -> checkpoint
  vortex publish DIR --repo-id ORG/NAME                            push a checkpoint to the Hub (one commit)
  vortex pull   ORG/NAME --part edge --out DIR                     download the edge half only, verified
  vortex export DIR --part edge --format onnx                      the edge half as ONNX, for onnxruntime

Models: a built-in (cnn, resnet18, vgg16_bn, vit), a checkpoint directory written by vortex,
a Hub repo id ORG/NAME, a transformers image classifier (a save_pretrained or Trainer directory,
or its Hub repo id), or package.module:function returning an nn.Module. Data: digits,
fashion-mnist, mnist-5k, an image folder (one sub-folder per class), a .parquet file, or a Hub dataset id.
"""


def _split_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _sketch_dim(text: str) -> int | str:
    return text if text == "exact" else int(text)


def add_probe_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="profile every split (R_c^2, rho, bounds, payload) and locate the GPZ",
        description="Profile every split of a model in one pass over labelled data and locate the "
        "Golden Partition Zone a priori. Writes OUT/profile.json and OUT/profile.png.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="built-in name, checkpoint directory, transformers model (directory or Hub id) or package.module:function",
    )
    p.add_argument("--dataset", required=True, help="digits, fashion-mnist, mnist-5k, image folder, .parquet or Hub id")
    p.add_argument("--out", required=True, help="output directory for profile.json and profile.png")
    p.add_argument(
        "--data-split",
        "--split",
        dest="data_split",
        default="test",
        help="which split of the data set to profile on (default: test, held out); --split is the old name",
    )
    p.add_argument(
        "--split-points",
        type=_split_list,
        help="comma-separated module or fx node names to cut after (default: found automatically)",
    )
    p.add_argument(
        "--labels",
        choices=("true", "predicted"),
        default="true",
        help="group samples by true labels (default) or by the model's predictions (the paper's code)",
    )
    p.add_argument(
        "--gpz-quantity",
        choices=("rho", "rc2"),
        default="rho",
        help="curve the GPZ rule reads: rho (scale-free, default) or raw R_c^2 as in the paper",
    )
    p.add_argument("--max-samples", type=int, help="profile at most N samples (default: all)")
    p.add_argument(
        "--sketch-dim",
        type=_sketch_dim,
        help="estimate splits wider than W from a count sketch of width W (memory classes x W per split), "
        "or 'exact'; default: exact unless the class means of all splits would take over 2 GiB "
        "(classes x dims x 8 bytes), then the widest power-of-two W that fits",
    )
    p.add_argument("--batch-size", type=int, default=256, help="samples per forward pass (default: 256)")
    add_trust_code_option(p)
    add_data_options(p)
    add_input_options(p)
    p.set_defaults(func=cmd_probe)


def cmd_probe(args: argparse.Namespace) -> int:
    from vortex.core.probe import profile_model
    from vortex.data import data_shape, load_data, num_classes
    from vortex.distributed import process_state
    from vortex.files import check_output_dir, write_json
    from vortex.hub.loading import load_model
    from vortex.report.plots import plot_profile
    from vortex.report.tables import profile_table

    check_output_dir(args.out, "--out")
    # --max-samples rows are chosen before any image is converted
    data = load_data(args.dataset, **data_options(args), max_samples={args.data_split: args.max_samples})
    if args.data_split not in data:
        raise VortexError(f"data set '{args.dataset}' has no split '{args.data_split}'; it has {list(data)}")
    ds = data[args.data_split]
    channels, height, _ = data_shape(ds)
    loaded = load_model(
        args.model,
        num_classes=num_classes(ds),
        data_channels=channels,
        data_size=height,
        image_size=args.image_size,
        channels=args.channels,
        split_points=args.split_points,
        trust_code=args.trust_code,
    )
    state = process_state()
    loaded.model.to(state.device)
    profile = profile_model(
        loaded.split,
        ds,
        model_name=args.model,
        dataset_name=args.dataset,
        image_size=loaded.spec.image_size,
        channels=loaded.spec.in_channels,
        labels=args.labels,
        batch_size=args.batch_size,
        gpz_quantity=args.gpz_quantity,
        sketch_dim=args.sketch_dim,
    )
    if state.is_main_process:
        out = Path(args.out)
        write_json(out / "profile.json", profile)
        plot_profile(profile, out / "profile.png")
        print(profile_table(profile))
        print(f"wrote {out / 'profile.json'} and {out / 'profile.png'}")
    return 0


def cmd_train(argv: list[str]) -> int:
    from vortex.training.loop import main as train_main

    return train_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vortex", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from vortex import __version__

    parser.add_argument("--version", action="version", version=f"vortex {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_probe_parser(sub)
    add_attack_parser(sub)
    add_publish_parser(sub)
    add_pull_parser(sub)
    add_export_parser(sub)
    sub.add_parser(
        "train",
        add_help=False,
        help="train with Accelerate (same as accelerate launch vortex/train.py); "
        "`vortex train --help` lists its options",
    )
    return parser


def run_guarded(func: Callable[..., int], *args: object) -> int:
    """Run a command; report a VortexError as one clear line and exit status 2, not a traceback."""
    try:
        return func(*args)
    except VortexError as exc:
        print(f"vortex: error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    show_logs()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        return run_guarded(cmd_train, argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    return run_guarded(args.func, args)
