"""`make demo`: the whole stack on the bundled synthetic benchmark, on the CPU.

Generates the data, trains the detector and IoU-Net with the CPU recipes (each step reuses what
an earlier run left in the work folder), exports the model, runs the ONNX Runtime pipeline over
the validation images and prints the COCO table, the Pearson figures and the latency table.
``OUT/report.json`` holds the ``iounet eval --json`` figures plus ``latency_ms``; ``OUT/plots``
the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

TRAIN_IMAGES = 1200
VAL_IMAGES = 100
IMAGE_SIZE = 256
BENCH_DETECTIONS = 1000


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m iounet.demo", description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("demo-work"), help="data and models")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="report and plots")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per backend")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    work, out = args.work, args.out
    data = work / "synthetic"
    detector, predictor = work / "detector", work / "iounet"
    detections, model = work / "val_detections.json", work / "model"
    val_images, val_annotations = data / "val" / "images", data / "val" / "annotations.json"

    if not (data / "val" / "annotations.json").is_file():
        _step("generate the synthetic benchmark", started)
        _cli("data", "synth", "--out", data, "--train", TRAIN_IMAGES, "--val", VAL_IMAGES,
             "--size", IMAGE_SIZE, "--force")  # fmt: skip
    if not _trained(detector, "detector-cpu-demo"):
        _step("train the detector (recipe detector-cpu-demo)", started)
        _cli("train-detector", "--data", data, "--out", detector, "--device", "cpu",
             "--no-progress", *_resume(detector))  # fmt: skip
    if not _trained(predictor, "cpu-demo"):
        _step("train IoU-Net on the detector's FPN (recipe cpu-demo)", started)
        _cli("train", "--data", data, "--out", predictor, "--recipe", "cpu-demo",
             "--device", "cpu", "--backbone-from", detector / "last.pt", "--no-progress",
             *_resume(predictor))  # fmt: skip
    if not detections.is_file():
        _step("raw detections on the validation images", started)
        _cli("detect", "--checkpoint", detector / "last.pt", "--images", val_images,
             "--annotations", val_annotations, "--out", detections)  # fmt: skip
    if not _exported_from(model, predictor / "last.pt"):
        _step("export to ONNX", started)
        _cli("export", predictor / "last.pt", "--out", model, "--annotations", val_annotations,
             "--force")  # fmt: skip
    _step("ONNX Runtime pipeline over the validation images (iounet infer)", started)
    out.mkdir(parents=True, exist_ok=True)
    _cli("infer", "--model", model, "--images", val_images, "--annotations", val_annotations,
         "--detections", detections, "--out", out / "detections.json", "--force")  # fmt: skip
    _step("evaluate (COCO table through ONNX Runtime) and benchmark", started)
    report = _report(args, predictor / "last.pt", model, val_images, val_annotations, detections)
    from iounet.files import atomic_path

    with atomic_path(out / "report.json") as temporary:
        temporary.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nreport: {out / 'report.json'}, plots: {out / 'plots'}")
    print(f"demo finished in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


def _report(
    args: argparse.Namespace,
    checkpoint: Path,
    model: Path,
    images: Path,
    annotations: Path,
    detections: Path,
) -> dict:
    import torch

    from iounet.export.manifest import load_manifest
    from iounet.runtime.bench import format_latency_table, measure, synthetic_inputs
    from iounet.runtime.detections import read_detections
    from iounet.runtime.evaluation import (
        coco_ap,
        evaluate_detections_table,
        format_table,
        plot_report,
    )
    from iounet.runtime.ort_backend import OnnxRuntimeBackend
    from iounet.runtime.pipeline import Pipeline, open_backend
    from iounet.training.checkpoint import load_model
    from iounet.training.coco_dataset import CocoDetection
    from iounet.training.evaluation import evaluate_jittered, scatter_plot

    manifest = load_manifest(model)
    size = manifest.input
    dataset = CocoDetection(images, annotations, size.min_size, size.max_size)
    plots = args.out / "plots"
    torch_model, _ = load_model(checkpoint)
    jittered = evaluate_jittered(torch_model, dataset)
    scatter_plot(plots / "pearson_jittered.png", jittered, "held-out jittered boxes")

    table = evaluate_detections_table(
        OnnxRuntimeBackend(manifest),
        dataset,
        read_detections(detections),
        refinement=manifest.refinement,
        size_divisor=manifest.input.size_divisor,
    )
    pipeline_ap = coco_ap(dataset, json.loads((args.out / "detections.json").read_text()))
    plot_report(table, plots)

    inputs = synthetic_inputs(size.min_size, size.min_size, BENCH_DETECTIONS, manifest.num_classes)
    latency = {}
    for name in ("torch", "torch-native", "ort"):
        backend = open_backend(
            manifest, name, **({} if name == "ort" else {"checkpoint": checkpoint})
        )
        latency[name] = measure(Pipeline.for_manifest(manifest, backend), inputs, 3, args.runs)

    print("\nCOCO AP (%) on the validation images, ONNX Runtime backend:")
    print(format_table(table))
    print(
        f"iounet infer (the pipeline) output: AP {100 * pipeline_ap['AP']:.1f}, "
        f"AP90 {100 * pipeline_ap['AP90']:.1f} (= the iou_nms_refine row)"
    )
    print(
        f"\nPearson(predicted IoU, true IoU): held-out jittered boxes {jittered.pearson:.3f} "
        f"({len(jittered.true)} boxes); detector boxes with IoU > 0.5: predicted IoU "
        f"{table.pearson['predicted_iou']:.3f} vs classification score "
        f"{table.pearson['classification']:.3f} ({table.pearson['boxes']} boxes)"
    )
    print(
        f"\nlatency, one {size.min_size}x{size.min_size} image with {BENCH_DETECTIONS} raw "
        f"detections, top-100 refined ({torch.get_num_threads()} threads):"
    )
    print(format_latency_table(latency, "torch"))
    pearson = {
        "jittered_predicted_iou": jittered.pearson,
        "jittered_boxes": len(jittered.true),
        **table.pearson,
    }
    return {
        **table.as_json(),
        "pearson": pearson,
        "pipeline": pipeline_ap,
        "latency_ms": latency,
    }


def _trained(folder: Path, recipe: str) -> bool:
    """Whether `folder` holds a finished run of `recipe` (then it is reused)."""
    from iounet.training.checkpoint import LAST_NAME, load_checkpoint
    from iounet.training.config import RECIPES

    if not (folder / LAST_NAME).is_file():
        return False
    return load_checkpoint(folder / LAST_NAME)["step"] >= RECIPES[recipe].optim.steps


def _resume(folder: Path) -> list[str]:
    return ["--resume"] if (folder / "last.pt").is_file() else []


def _exported_from(model: Path, checkpoint: Path) -> bool:
    """Whether `model` is a sound export of `checkpoint` (then it is reused)."""
    from iounet.export.manifest import load_manifest, sha256_file

    try:
        manifest = load_manifest(model)
    except (OSError, ValueError):
        return False
    return manifest.checkpoint.sha256 == sha256_file(checkpoint)


def _cli(*arguments: object) -> None:
    from iounet.cli import main as iounet

    status = iounet([str(a) for a in arguments])
    if status:
        raise SystemExit(f"demo: `iounet {' '.join(map(str, arguments))}` failed ({status})")


def _step(what: str, started: float) -> None:
    print(f"\n[{(time.perf_counter() - started) / 60:4.1f} min] {what}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
