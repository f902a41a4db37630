"""`iounet infer` (the pipeline over a folder of images), `iounet bench` (stage latency) and
`iounet eval` (the predictor's Pearson and the NMS / IoU-NMS / refinement table)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from iounet.runtime.names import BACKENDS

if TYPE_CHECKING:
    from iounet.export.manifest import Manifest


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the runtime subcommands to the `iounet` parser."""
    infer = subparsers.add_parser(
        "infer", help="IoU-guided NMS and refinement of a detector's raw detections"
    )
    infer.add_argument("--model", type=Path, required=True, help="exported model folder")
    infer.add_argument("--images", type=Path, required=True, help="folder of the images")
    infer.add_argument(
        "--annotations", type=Path, required=True, help="COCO file listing the images"
    )
    infer.add_argument("--detections", type=Path, required=True, help="raw COCO results")
    infer.add_argument("--out", type=Path, required=True, help="COCO results JSON to write")
    infer.add_argument("--force", action="store_true", help="replace an existing --out")
    _backend_arguments(infer, "ort")
    infer.set_defaults(run=_infer)

    bench = subparsers.add_parser("bench", help="per-stage latency of the backends")
    bench.add_argument("--model", type=Path, required=True, help="exported model folder")
    bench.add_argument(
        "--backends", default="torch,ort", help=f"comma-separated, of {', '.join(BACKENDS)}"
    )
    bench.add_argument(
        "--checkpoint", type=Path, help="the exported checkpoint (for the torch backends)"
    )
    bench.add_argument("--image-size", default=None, help="HxW (default: the model's input size)")
    bench.add_argument("--detections", type=int, default=1000, help="raw detections per image")
    bench.add_argument("--warmup", type=int, default=3)
    bench.add_argument("--runs", type=int, default=20)
    bench.add_argument("--threads", type=int, help="CPU threads of ONNX Runtime")
    bench.add_argument("--json", type=Path, help="write backend -> stage -> p50/p90/p99 here")
    bench.add_argument("--force", action="store_true", help="replace an existing --json")
    bench.set_defaults(run=_bench)

    evaluate = subparsers.add_parser("eval", help="evaluate the IoU predictor")
    evaluate.add_argument("--images", type=Path, required=True)
    evaluate.add_argument("--annotations", type=Path, required=True)
    evaluate.add_argument("--checkpoint", type=Path, required=True)
    evaluate.add_argument("--detections", type=Path, help="COCO results of a detector")
    evaluate.add_argument("--json", type=Path, help="write the figures here")
    evaluate.add_argument("--plots", type=Path, help="folder for scatter plots")
    evaluate.add_argument(
        "--force", action="store_true", help="replace an existing --json / --plots"
    )
    evaluate.add_argument("--max-images", type=int)
    evaluate.add_argument("--device", default="cpu")
    evaluate.set_defaults(run=_eval)


def _backend_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--backend", default=default, choices=BACKENDS)
    parser.add_argument("--checkpoint", type=Path, help="the checkpoint (torch backends only)")
    parser.add_argument(
        "--precision", default="fp32", choices=("fp32", "fp16"), help="trt only (engines)"
    )


def _backend_options(name: str, args: argparse.Namespace) -> dict:
    if getattr(args, "precision", "fp32") != "fp32" and name != "trt":
        raise ValueError(f"--precision {args.precision} is for the trt backend only, not {name}")
    if name.startswith("torch"):
        return {"checkpoint": args.checkpoint}
    if name == "trt":
        return {"precision": getattr(args, "precision", "fp32")}
    if name.startswith("ort") and getattr(args, "threads", None):
        return {"threads": args.threads}
    return {}


def _infer(args: argparse.Namespace) -> int:
    from iounet.export.manifest import load_manifest
    from iounet.files import check_output, is_coco_results, write_json
    from iounet.runtime.detections import read_detections

    _backend_options(args.backend, args)
    check_output(args.out, args.force, is_coco_results, "COCO results file")
    detections = read_detections(args.detections)
    manifest = load_manifest(args.model)

    from iounet.runtime.inference import infer_dataset
    from iounet.runtime.pipeline import Pipeline, open_backend

    backend = open_backend(manifest, args.backend, **_backend_options(args.backend, args))
    pipeline = Pipeline.for_manifest(manifest, backend)
    results = infer_dataset(pipeline, manifest, args.images, args.annotations, detections)
    write_json(args.out, results)
    print(
        f"{len(detections)} raw detections -> {len(results)} after IoU-NMS and refinement "
        f"({args.backend}) -> {args.out}"
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from iounet.files import check_output, is_bench_table, write_json

    names = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if not names or unknown:
        raise ValueError(f"--backends: unknown {unknown or names}; choose from {BACKENDS}")
    if any(name.startswith("torch") for name in names) and args.checkpoint is None:
        raise ValueError("--checkpoint is needed for the torch backends (the exported checkpoint)")
    if args.json:
        check_output(args.json, args.force, is_bench_table, "bench table")

    from iounet.export.manifest import load_manifest
    from iounet.runtime.bench import format_latency_table, measure, synthetic_inputs
    from iounet.runtime.pipeline import Pipeline, open_backend

    manifest = load_manifest(args.model)
    height, width = _image_size(args.image_size, manifest)
    inputs = synthetic_inputs(height, width, args.detections, manifest.num_classes)
    results = {}
    for name in names:
        backend = open_backend(manifest, name, **_backend_options(name, args))
        results[name] = measure(
            Pipeline.for_manifest(manifest, backend), inputs, args.warmup, args.runs
        )
    baseline = "torch" if "torch" in results else None
    print(
        f"image {height}x{width}, {args.detections} raw detections, top-100 refined, "
        f"{args.warmup} warm-up + {args.runs} runs"
    )
    print(format_latency_table(results, baseline))
    if args.json:
        write_json(args.json, results, indent=2)
    return 0


def _image_size(text: str | None, manifest: Manifest) -> tuple[int, int]:
    if text is None:
        size = manifest.input.min_size
        return size, size
    from iounet.export.engine import parse_image_size

    sizes = parse_image_size(text)
    if len(set(sizes)) != 1:
        raise ValueError(f"--image-size takes one size HxW here, got {text!r}")
    return sizes[0]


def _eval(args: argparse.Namespace) -> int:
    from iounet.files import check_output, holds_only, is_json_object_with, write_json

    if args.json:
        check_output(args.json, args.force, is_json_object_with("pearson"), "eval report")
    if args.plots:
        check_output(args.plots, args.force, holds_only(".png"), "plots folder", folder=True)
    detections = None
    if args.detections:
        from iounet.runtime.detections import read_detections

        detections = read_detections(args.detections)

    from iounet.training.checkpoint import load_model
    from iounet.training.coco_dataset import dataset_for_checkpoint
    from iounet.training.evaluation import evaluate_jittered, scatter_plot

    model, state = load_model(args.checkpoint, args.device)
    dataset = dataset_for_checkpoint(args.images, args.annotations, state, args.checkpoint)
    report: dict = {}
    jittered = evaluate_jittered(model, dataset, max_images=args.max_images)
    report["pearson"] = {
        "jittered_predicted_iou": jittered.pearson,
        "jittered_boxes": len(jittered.true),
    }
    print(
        f"jittered boxes: {len(jittered.true)}, Pearson(predicted, true IoU) {jittered.pearson:.3f}"
    )
    if args.plots:
        scatter_plot(args.plots / "pearson_jittered.png", jittered, "held-out jittered boxes")
    if detections is not None:
        from iounet.runtime.evaluation import (
            evaluate_detections_table,
            format_table,
            plot_report,
        )

        table = evaluate_detections_table(model, dataset, detections)
        report = {**table.as_json(), "pearson": {**report["pearson"], **table.pearson}}
        print(format_table(table))
        figures = table.pearson
        print(
            f"detections with IoU > 0.5: {figures['boxes']}, Pearson predicted IoU "
            f"{figures['predicted_iou']:.3f}, classification {figures['classification']:.3f}"
        )
        if args.plots:
            plot_report(table, args.plots)
    if args.json:
        write_json(args.json, report, indent=2)
    return 0
