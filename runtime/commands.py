"""`iounet infer` (the pipeline over a folder of images), `iounet bench` (stage latency) and
`iounet eval` (the predictor's Pearson and the NMS / IoU-NMS / refinement table)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from iounet.runtime.image_folder import IMAGE_EXTENSIONS
from iounet.runtime.names import BACKENDS, CHECKPOINT_BACKENDS
from iounet.training.commands import add_output_arguments

if TYPE_CHECKING:
    from iounet.export.manifest import Manifest
    from iounet.runtime.bench import BenchInputs


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the runtime subcommands to the `iounet` parser."""
    infer = subparsers.add_parser(
        "infer",
        help="IoU-Net on a folder of images: the model's detector or a detector's raw detections",
        description=(
            "Run the pipeline on the images of --images and write COCO results with the "
            "predicted IoU. Without --annotations every image file in the folder is used "
            f"(extensions {', '.join(IMAGE_EXTENSIONS)}; other files are skipped and "
            "reported) and image ids are the file names; with --annotations the images it "
            "lists, with their COCO ids. Without --detections the model's own detector runs "
            "(a model exported from a joint IoU-Net)."
        ),
    )
    infer.add_argument("--model", type=Path, required=True, help="exported model folder")
    infer.add_argument("--images", type=Path, required=True, help="folder of the images")
    infer.add_argument(
        "--annotations",
        type=Path,
        help="COCO file listing the images (results then name COCO image ids)",
    )
    infer.add_argument(
        "--detections",
        type=Path,
        help="raw COCO results of another detector (needs --annotations)",
    )
    add_output_arguments(infer, "COCO results JSON to write")
    add_max_pixels_argument(infer)
    add_backend_arguments(infer, "ort")
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
    bench.add_argument(
        "--detections",
        type=int,
        help="time the post-processing of this many synthetic raw detections (default: the "
        "model's detector on the image, FPN alone vs IoU-Net; 1000 for a model without one)",
    )
    bench.add_argument(
        "--image", type=Path, help="an image file, resized to --image-size (default: random)"
    )
    add_max_pixels_argument(bench)
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


def add_backend_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """Add ``--backend`` (default `default`), ``--checkpoint`` and ``--precision``."""
    parser.add_argument("--backend", default=default, choices=BACKENDS)
    parser.add_argument("--checkpoint", type=Path, help="the checkpoint (torch backends only)")
    parser.add_argument(
        "--precision", default="fp32", choices=("fp32", "fp16"), help="trt only (engines)"
    )


def backend_options(
    name: str, args: argparse.Namespace, chosen: tuple[str, ...] | list[str] = ()
) -> dict:
    """The options of backend `name` from the command line; ValueError for an option that
    none of the command's backends (`chosen`, default: `name` alone) takes."""
    chosen = tuple(chosen) or (name,)
    if getattr(args, "precision", "fp32") != "fp32" and name != "trt":
        raise ValueError(f"--precision {args.precision} is for the trt backend only, not {name}")
    if getattr(args, "checkpoint", None) is not None and not set(chosen) & set(CHECKPOINT_BACKENDS):
        raise ValueError(
            f"--checkpoint is for the {', '.join(CHECKPOINT_BACKENDS)} backends only, not "
            f"{' or '.join(chosen)}"
        )
    if name in CHECKPOINT_BACKENDS:
        return {"checkpoint": args.checkpoint}
    if name == "trt":
        return {"precision": getattr(args, "precision", "fp32")}
    if name.startswith("ort") and getattr(args, "threads", None):
        return {"threads": args.threads}
    return {}


def add_max_pixels_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--max-image-pixels``."""
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        help="refuse images with more pixels (decompression bombs; default 200 million, "
        "iounet.training.images.MAX_IMAGE_PIXELS)",
    )


def _infer(args: argparse.Namespace) -> int:
    """`iounet infer`: everything that can be checked is checked before the model is opened
    (options, --out, the detections file, the folder's images, the manifest); the output is
    written once every image has run, or not at all."""
    from iounet.export.manifest import load_manifest
    from iounet.files import check_output, is_coco_results
    from iounet.runtime.detections import read_detections
    from iounet.runtime.image_folder import list_images

    backend_options(args.backend, args)
    if args.detections is not None and args.annotations is None:
        raise ValueError(
            "--detections needs --annotations: raw detections name COCO image ids, which the "
            "annotations map to image files"
        )
    output = check_output(args.out, args.force, is_coco_results, "COCO results file")
    detections = read_detections(args.detections) if args.detections is not None else None
    listing = list_images(args.images) if args.annotations is None else None
    manifest = load_manifest(args.model)
    if detections is None and not manifest.has_detector:
        raise ValueError(
            f"the model has no detector ({args.model}): pass --detections, or export a "
            "joint IoU-Net"
        )

    from iounet.runtime.inference import (
        check_images,
        coco_entries,
        folder_entries,
        infer_images,
        write_results,
    )
    from iounet.runtime.pipeline import Pipeline, open_backend

    if listing is not None:
        entries = folder_entries(listing)
        note = listing.skipped_note()
        if note:
            print(note)
    else:
        entries = coco_entries(args.images, args.annotations, manifest)
    check_images(entries, manifest, detections, args.max_image_pixels)
    backend = open_backend(manifest, args.backend, **backend_options(args.backend, args))
    pipeline = Pipeline.for_manifest(manifest, backend)
    count = write_results(
        output, infer_images(pipeline, manifest, entries, detections, args.max_image_pixels)
    )
    source = (
        f"{len(detections)} raw detections"
        if detections is not None
        else f"{len(entries)} images (the model's detector)"
    )
    print(f"{source} -> {count} after IoU-NMS and refinement ({args.backend}) -> {args.out}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import dataclasses

    from iounet.files import check_output, is_bench_table, write_json

    names = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if not names or unknown:
        raise ValueError(f"--backends: unknown {unknown or names}; choose from {BACKENDS}")
    counts = {name: names.count(name) for name in names}
    repeated = [f"{n} {'twice' if c == 2 else f'{c} times'}" for n, c in counts.items() if c > 1]
    if repeated:
        raise ValueError(f"--backends lists {' and '.join(repeated)}")
    if any(name in CHECKPOINT_BACKENDS for name in names) and args.checkpoint is None:
        raise ValueError("--checkpoint is needed for the torch backends (the exported checkpoint)")
    for name in names:
        backend_options(name, args, names)
    json_output = None
    if args.json:
        json_output = check_output(args.json, args.force, is_bench_table, "bench table")

    if args.detections is not None and args.detections <= 0:
        raise ValueError(f"--detections must be positive, got {args.detections}")
    if args.image is not None and not args.image.is_file():
        raise FileNotFoundError(f"--image not found: {args.image}")

    from iounet.export.manifest import load_manifest
    from iounet.runtime.bench import (
        format_latency_table,
        measure,
        overhead_line,
        synthetic_inputs,
    )
    from iounet.runtime.pipeline import Pipeline, PipelineConfig, open_backend

    manifest = load_manifest(args.model)
    height, width = _image_size(args.image_size, manifest)
    detect = args.detections is None and manifest.has_detector
    if detect:
        inputs = _bench_image(args.image, height, width, args.max_image_pixels)
        methods = {"FPN": "nms", "IoU-Net": "iou-nms"}
    else:
        count = args.detections or 1000
        inputs = synthetic_inputs(height, width, count, manifest.num_classes)
        if args.image is not None:
            image = _bench_image(args.image, height, width, args.max_image_pixels).image
            inputs = dataclasses.replace(inputs, image=image)
        methods = {"": "iou-nms"}
    results = {}
    for name in names:
        backend = open_backend(manifest, name, **backend_options(name, args, names))
        for title, method in methods.items():
            config = PipelineConfig(refine=manifest.refinement, method=method)
            pipeline = Pipeline.for_manifest(manifest, backend, config)
            key = f"{name} {title}" if title else name
            results[key] = measure(pipeline, inputs, args.warmup, args.runs)
    what = (
        "the model's detector (FPN: its NMS; IoU-Net: IoU head, IoU-NMS, refinement)"
        if detect
        else f"{len(inputs.boxes)} raw detections"
    )
    print(
        f"image {height}x{width}, {what}, top-100 refined, {args.warmup} warm-up + {args.runs} runs"
    )
    print(format_latency_table(results, "torch" if "torch" in results else None))
    if detect:
        for name in names:
            print(overhead_line(results, f"{name} FPN", f"{name} IoU-Net"))
    if json_output is not None:
        write_json(json_output, results, indent=2)
    return 0


def _bench_image(
    path: Path | None, height: int, width: int, max_pixels: int | None = None
) -> BenchInputs:
    """The image of `iounet bench`: the file at `path` (or random pixels) at height x width."""
    import torch

    from iounet.runtime.bench import image_inputs

    if path is None:
        image = torch.rand((3, height, width), generator=torch.Generator().manual_seed(0))
    else:
        from iounet.training.images import load_image

        image = load_image(path, max_pixels)
    return image_inputs(image, height, width)


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
    import contextlib

    from iounet.devices import check_device
    from iounet.files import check_output, holds_only, is_json_object_with, write_json

    check_device(args.device)
    json_output = plots_output = None
    if args.json:
        json_output = check_output(
            args.json, args.force, is_json_object_with("pearson"), "eval report"
        )
    if args.plots:
        plots_output = check_output(
            args.plots, args.force, holds_only(".png"), "plots folder", folder=True
        )
    with contextlib.ExitStack() as stack:
        plots = None if plots_output is None else stack.enter_context(plots_output.staged())
        report = _evaluate(args, plots)
    if json_output is not None:
        write_json(json_output, report, indent=2)
    return 0


def _evaluate(args: argparse.Namespace, plots: Path | None) -> dict:
    """`iounet eval`'s figures (printed, and returned for --json); plots into `plots`."""
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
    if plots is not None:
        scatter_plot(plots / "pearson_jittered.png", jittered, "held-out jittered boxes")
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
        if plots is not None:
            plot_report(table, plots)
    return report
