"""`iounet build-engine`: TensorRT engines of an exported model."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the build-engine subcommand to the `iounet` parser."""
    build = subparsers.add_parser(
        "build-engine", help="build the TensorRT engines of an exported model"
    )
    build.add_argument("model", type=Path, metavar="DIR", help="model folder of `iounet export`")
    build.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    build.add_argument(
        "--boxes",
        required=True,
        metavar="MIN:OPT:MAX",
        help="boxes per engine call (N for a fixed count)",
    )
    build.add_argument(
        "--image-size",
        required=True,
        metavar="HxW[:HxW:HxW]",
        help="image size, or min:opt:max sizes, in pixels",
    )
    build.add_argument("--workspace", type=int, metavar="MB", help="TensorRT workspace limit")
    build.add_argument(
        "--timing-cache", type=Path, metavar="FILE", help="TensorRT timing cache (read, updated)"
    )
    build.add_argument("--force", action="store_true", help="replace existing engines")
    build.set_defaults(run=_build_engine)


def _build_engine(args: argparse.Namespace) -> int:
    from iounet.export.engine import build_engines, parse_image_size, parse_range, tensorrt_note
    from iounet.export.model_folder import load_model_manifest

    boxes = parse_range(args.boxes, "--boxes")
    image_size = parse_image_size(args.image_size)
    try:
        folder = build_engines(
            args.model,
            args.precision,
            boxes,
            image_size,
            workspace_mb=args.workspace,
            timing_cache=args.timing_cache,
            force=args.force,
        )
    except ImportError as error:  # no TensorRT here: say what to install, in one line
        raise ValueError(str(error)) from error
    print(f"{args.precision} engines -> {folder}")
    print(tensorrt_note(load_model_manifest(args.model, verify=False).opset))
    return 0
