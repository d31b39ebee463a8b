"""Command-line options shared by commands of several layers (argparse only: importing it is cheap)."""

from __future__ import annotations

import argparse
from typing import Any


def add_trust_code_option(parser: argparse.ArgumentParser, whose: str = "a checkpoint whose config names it") -> None:
    """`--trust-code PACKAGE.MODULE:FUNCTION`: the user's leave to import one named custom architecture."""
    parser.add_argument(
        "--trust-code",
        "--trust_code",
        action="append",
        default=[],
        metavar="PACKAGE.MODULE:FUNCTION",
        help=f"import this custom architecture for {whose} (repeatable); vortex never imports code named by a "
        "file otherwise",
    )


def add_input_options(parser: argparse.ArgumentParser) -> None:
    """How a command adapts a data set to the model: `--image-size`, `--channels`, `--data-seed`."""
    parser.add_argument("--image-size", type=int, help="resize images to this side (default: what the model needs)")
    parser.add_argument("--channels", type=int, choices=(1, 3), help="convert images to 1 or 3 channels")
    parser.add_argument(
        "--data-seed",
        type=int,
        default=0,
        help="seed of the train/test split of data sets without one (default: 0, as vortex train uses)",
    )


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """The config and the columns of a folder / .parquet / Hub data set (the HF example scripts' flag names)."""
    parser.add_argument(
        "--dataset_config_name", "--dataset-config-name", help="the config of a Hub dataset with several (e.g. 'gray')"
    )
    parser.add_argument(
        "--image_column_name", "--image-column-name", help="the column holding the images (default: guessed)"
    )
    parser.add_argument(
        "--label_column_name", "--label-column-name", help="the column holding the labels (default: guessed)"
    )


def data_options(args: argparse.Namespace) -> dict[str, Any]:
    """`vortex.data.load_data`'s keyword arguments from the options of add_data_options and add_input_options."""
    return {
        "config_name": args.dataset_config_name,
        "image_column": args.image_column_name,
        "label_column": args.label_column_name,
        "seed": args.data_seed,
    }
