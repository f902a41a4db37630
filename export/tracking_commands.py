"""`iounet export` of a pytracking checkpoint: recognized by its contents, no extra flag."""

from __future__ import annotations

import argparse


def export_tracking(args: argparse.Namespace, opset: int) -> int | None:
    """Export `args.checkpoint` as a tracking model (graphs at ONNX opset `opset`) when it is a
    pytracking checkpoint (a dict with a ``net`` state dict); None for any other checkpoint (the
    IoU-Net export takes it)."""
    from iounet.export.model_folder import check_model_output
    from iounet.export.tracking_export import export_tracking_model
    from iounet.training.pytracking_checkpoint import is_pytracking_checkpoint, read_checkpoint

    # The overwrite rule first (before reading the checkpoint), as the IoU-Net export does.
    check_model_output(args.out, args.force)
    contents = read_checkpoint(args.checkpoint)
    if not is_pytracking_checkpoint(contents):
        return None
    for option in ("fp16", "annotations"):
        if getattr(args, option, None):
            raise ValueError(f"--{option} does not apply to a pytracking (tracking) checkpoint")
    manifest = export_tracking_model(
        args.checkpoint, args.out, force=args.force, contents=contents, opset=opset
    )
    graphs = ", ".join(entry.file for entry in manifest.graphs.values())
    print(
        f"exported {args.checkpoint} (pytracking {manifest.backbone} IoU-Net) -> {args.out}: "
        f"{graphs}, manifest.json"
    )
    return 0
