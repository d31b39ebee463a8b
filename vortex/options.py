"""Command-line options shared by commands of several layers (argparse only: importing it is cheap)."""

from __future__ import annotations

import argparse


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
