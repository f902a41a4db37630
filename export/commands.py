"""`iounet export`: a training checkpoint -> an exported model folder (ONNX graphs + manifest)."""

from __future__ import annotations

import argparse
from pathlib import Path

from iounet.training.commands import add_output_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the export subcommand to the `iounet` parser."""
    export = subparsers.add_parser(
        "export", help="export a checkpoint to ONNX graphs and a manifest"
    )
    export.add_argument(
        "checkpoint",
        type=Path,
        help="IoU-Net checkpoint (iounet train) or pytracking checkpoint (.pth.tar)",
    )
    add_output_arguments(export, "model folder to create")
    export.add_argument(
        "--fp16", action="store_true", help="also write fp16 graphs (for fp16 TensorRT engines)"
    )
    export.add_argument(
        "--annotations", type=Path, help="COCO file whose category ids the classes get"
    )
    export.add_argument(
        "--opset",
        metavar="N",
        help="ONNX opset of the graphs: 20 (default; TensorRT 10+) or 17 (TensorRT 8.5/8.6)",
    )
    export.set_defaults(run=_export)


def _export(args: argparse.Namespace) -> int:
    from iounet.export.graph_export import parse_opset
    from iounet.export.onnx_export import export_model
    from iounet.export.tracking_commands import export_tracking

    opset = parse_opset(args.opset)
    status = export_tracking(args, opset)  # a pytracking checkpoint (ATOM, DiMP, PrDiMP)
    if status is not None:
        return status
    manifest = export_model(
        args.checkpoint,
        args.out,
        force=args.force,
        fp16=args.fp16,
        annotations=args.annotations,
        opset=opset,
    )
    graphs = ", ".join(
        manifest.graph(role, precision).file
        for precision in manifest.precisions()
        for role in manifest.roles()
    )
    print(f"exported {args.checkpoint} -> {args.out}: {graphs}, manifest.json")
    return 0
