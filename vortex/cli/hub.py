"""`vortex publish` and `vortex pull`: the Hub commands of the `vortex` CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

from vortex.hub.layout import ONNX_FILE, WEIGHTS, read_half_config
from vortex.options import add_trust_code_option
from vortex.report.tables import human_size, shape_text


def add_publish_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "publish",
        help="push a checkpoint (card, profile, halves) to a Hub model repo in one commit",
        description="Create the Hub repo if needed and upload the checkpoint directory in one commit: "
        "weights, config, vortex.json, plots, edge/ and cloud/ halves and a freshly "
        "rendered model card. Training state and logs stay local. Uses HF_TOKEN or the "
        "login of `hf auth login`; HF_ENDPOINT selects the Hub.",
    )
    p.add_argument(
        "directory",
        help="checkpoint directory written by `vortex train`, or a transformers model directory "
        "(save_pretrained, transformers.Trainer) to publish as the vortex checkpoint it makes",
    )
    p.add_argument("--repo-id", "--repo_id", required=True, help="ORG/NAME (or NAME for your own namespace)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", help="branch to push to (created from main if missing; default: main)")
    p.add_argument("--commit-message", "--commit_message", help="commit message (default: a summary)")
    p.add_argument(
        "--split",
        help="re-cut the edge/ and cloud/ halves at this split (index or name) first; "
        "default: keep them (written at the GPZ if missing)",
    )
    p.add_argument(
        "--dry-run", "--dry_run", action="store_true", help="list the files and their total size; push nothing"
    )
    p.add_argument(
        "--with-onnx",
        "--with_onnx",
        action="store_true",
        help="also export both halves to ONNX (edge/model.onnx, cloud/model.onnx), checked against PyTorch, and "
        "upload them (without it no ONNX file is uploaded)",
    )
    p.add_argument("--license", help="license id for the card's metadata (default: the recipe's license, else other)")
    add_trust_code_option(p)
    p.set_defaults(func=cmd_publish)


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish a checkpoint directory and print what was pushed (never the token)."""
    from vortex.hub.repo import publish

    done = publish(
        args.directory,
        args.repo_id,
        dry_run=args.dry_run,
        with_onnx=args.with_onnx,
        license=args.license,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        split=args.split,
        trust_code=args.trust_code,
    )
    print(done.summary(args.directory))
    return 0


def add_pull_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pull",
        help="download one half (or the whole checkpoint) of a Hub repo and verify it",
        description="Download the edge half, the cloud half or the whole checkpoint of a vortex Hub "
        "repo into a directory and check that it loads: the edge device fetches edge/ "
        "only, never the cloud weights. HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE=1 "
        "work as usual.",
    )
    p.add_argument("repo_id", help="ORG/NAME of a repo published with `vortex publish`")
    p.add_argument(
        "--part",
        choices=("edge", "cloud", "full"),
        default="edge",
        help="edge (default): edge/ only; cloud: cloud/ only; full: the whole checkpoint",
    )
    p.add_argument("--out", required=True, help="directory to download into")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument(
        "--format",
        choices=("safetensors", "onnx"),
        default="safetensors",
        help="onnx: download only the half's model.onnx and configs (a device needs only onnxruntime)",
    )
    add_trust_code_option(p)
    p.set_defaults(func=cmd_pull)


def cmd_pull(args: argparse.Namespace) -> int:
    from vortex.hub.repo import folder_size, pull

    path = pull(args.repo_id, args.out, args.part, revision=args.revision, trust_code=args.trust_code, fmt=args.format)
    count, size = folder_size(path)
    what = "the whole checkpoint" if args.part == "full" else f"the {args.part} half"
    print(
        f"pulled {what} of {args.repo_id} ({args.revision or 'main'}) into {args.out}: {count} files, "
        f"{human_size(size)}, verified"
    )
    if args.part != "full":
        cfg = read_half_config(path, args.part, weights=ONNX_FILE if args.format == "onnx" else WEIGHTS)
        s = cfg["split"]
        io = (
            f"image {shape_text(s['input_shape'])} -> z {shape_text(s['z_shape'])} ({s['z_bytes']} bytes)"
            if args.part == "edge"
            else f"z {shape_text(s['z_shape'])} -> {shape_text(s['output_shape'])} logits"
        )
        print(f"  split {s['index']} ({s['name']}) of {cfg['architecture']}: {io}, {cfg['params']} params")
    if args.format == "onnx":
        print(f'  run     onnxruntime.InferenceSession("{Path(args.out) / args.part / ONNX_FILE}")')
        return 0
    part = "" if args.part == "full" else f', part="{args.part}"'
    print(f'  load    vortex.from_pretrained("{args.out}"{part})')
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export the edge half, the cloud half or the whole model to ONNX, checked against PyTorch",
        description="Write PART of a checkpoint as ONNX (dynamic batch axis, split recorded in the file's metadata) "
        "after onnxruntime matched PyTorch on images of the checkpoint's data set. Default output: "
        "DIR/edge/model.onnx, DIR/cloud/model.onnx or DIR/model.onnx.",
    )
    p.add_argument("directory", help="checkpoint directory written by `vortex train`")
    p.add_argument("--part", choices=("edge", "cloud", "full"), default="edge", help="what to export (default: edge)")
    p.add_argument(
        "--format",
        choices=("onnx", "pte"),
        default="onnx",
        help="onnx (onnxruntime, default) or pte (an ExecuTorch program, XNNPACK on CPU)",
    )
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    p.add_argument("--out", help="output file (default: beside the part's weights)")
    add_trust_code_option(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from vortex.hub.export import export

    done = export(
        args.directory, args.part, fmt=args.format, out=args.out, opset=args.opset, trust_code=args.trust_code
    )
    print(
        f"exported the {done.part} of {args.directory} to {done.path} ({human_size(done.path.stat().st_size)}); "
        f"{'ExecuTorch' if args.format == 'pte' else 'onnxruntime'} vs PyTorch on {done.inputs}: "
        f"max abs diff {done.max_abs_diff:.2e}"
    )
    return 0
