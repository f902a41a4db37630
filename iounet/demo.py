"""`make demo`: the whole stack on the bundled synthetic benchmark, on the CPU.

Generates the data, trains the detector once (Faster R-CNN + FPN, recipe fpn-cpu-demo), then
only its IoU branch on the frozen detector (iou-branch-cpu-demo), exports the resulting IoU-Net
with its detector, runs ``iounet infer`` on the validation images alone (the exported detector
finds the boxes; ONNX Runtime), and shows, on that one detector, the paper's claims: its own
NMS -> IoU-NMS -> + refinement (AP, AP50..AP90), Pearson of the predicted IoU with the true
IoU next to the classification score's, recall at IoU 0.9, each claim marked met or missed;
then the exported detector's parity with PyTorch and Table 4 (latency per stage, image in,
boxes out). Each step reuses what an earlier run left in the work folder. ``OUT/report.json``
holds all of it (``claims`` among it); ``OUT/plots`` the figures. Table 3 (the FPN baseline vs
the jointly trained IoU-Net, over seeds) is ``make reproduce``'s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from iounet.export.manifest import Manifest
    from iounet.runtime.evaluation import Detector
    from iounet.runtime.pipeline import Pipeline
    from iounet.training.coco_dataset import CocoDetection
    from iounet.training.joint_model import JointIoUNet

TRAIN_IMAGES = 1200
VAL_IMAGES = 100
IMAGE_SIZE = 256
BENCH_DETECTIONS = 1000
#: Table 4's image sizes besides the model's own: the paper's 800 x 1216 (padded 1200 x 800).
LARGE_IMAGE = (800, 1216)
#: Validation images of the parity check of the exported detector against PyTorch.
PARITY_IMAGES = 20
#: Scores closer than this are ties that top-k may order either way in two implementations.
SCORE_TIE = 1e-5
DETECTOR_RECIPE = "fpn-cpu-demo"
IOU_BRANCH_RECIPE = "iou-branch-cpu-demo"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m iounet.demo", description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("demo-work"), help="data and models")
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="report and plots")
    parser.add_argument("--seed", type=int, default=0, help="seed of both trainings")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per backend")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    work, out = args.work, args.out
    data = prepare_data(work, started)
    runs = work / f"seed-{args.seed}"
    detector, branch, model = runs / "fpn", runs / "iou-branch", runs / "model"
    val_images, val_annotations = data / "val" / "images", data / "val" / "annotations.json"
    train_run(data, detector, DETECTOR_RECIPE, args.seed, started,
              "the detector (Faster R-CNN + FPN, PrRoIPool)")  # fmt: skip
    train_run(data, branch, IOU_BRANCH_RECIPE, args.seed, started,
              "its IoU branch on the frozen detector", "--from", detector / "last.pt")  # fmt: skip
    if not _exported_from(model, branch / "last.pt"):
        _step("export the IoU-Net with its detector to ONNX", started)
        _cli("export", branch / "last.pt", "--out", model, "--annotations", val_annotations,
             "--force")  # fmt: skip
    _step("ONNX Runtime pipeline on the validation images alone (iounet infer)", started)
    out.mkdir(parents=True, exist_ok=True)
    _cli("infer", "--model", model, "--images", val_images, "--annotations", val_annotations,
         "--out", out / "detections.json", "--force")  # fmt: skip
    _step("evaluate (ONNX Runtime) and benchmark", started)
    report = _report(args, branch / "last.pt", model, val_images, val_annotations)
    minutes = (time.perf_counter() - started) / 60
    report["seed"], report["minutes"] = args.seed, minutes
    from iounet.files import write_json

    write_json(out / "report.json", report, indent=2)
    print(f"\nreport: {out / 'report.json'}, plots: {out / 'plots'}")
    print(f"demo finished in {minutes:.1f} min")
    return 0


def prepare_data(work: Path, started: float) -> Path:
    """The synthetic benchmark in `work`/synthetic (generated unless there)."""
    data = work / "synthetic"
    if not (data / "val" / "annotations.json").is_file():
        _step("generate the synthetic benchmark", started)
        _cli("data", "synth", "--out", data, "--train", TRAIN_IMAGES, "--val", VAL_IMAGES,
             "--size", IMAGE_SIZE, "--force")  # fmt: skip
    return data


def train_run(
    data: Path, folder: Path, recipe: str, seed: int, started: float, what: str, *extra: object
) -> None:
    """Train `recipe` with `seed` into `folder` unless it holds that finished run (a run of it
    that stopped is resumed)."""
    if _trained(folder, recipe, seed):
        return
    _step(f"train {what} (recipe {recipe}, seed {seed})", started)
    _cli("train", "--data", data, "--out", folder, "--recipe", recipe, "--seed", seed,
         "--device", "cpu", *extra, *_resume(folder))  # fmt: skip


def _report(
    args: argparse.Namespace,
    checkpoint: Path,
    model: Path,
    images: Path,
    annotations: Path,
) -> dict:
    import torch

    from iounet.export.manifest import load_manifest
    from iounet.runtime.bench import format_latency_table, measure, synthetic_inputs
    from iounet.runtime.claims import format_claims, paper_claims
    from iounet.runtime.evaluation import (
        coco_ap,
        detect_dataset,
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

    ort = OnnxRuntimeBackend(manifest)
    pipeline = Pipeline.for_manifest(manifest, ort)
    raw = detect_dataset(pipeline.detect_resized, dataset)
    table = evaluate_detections_table(
        ort,
        dataset,
        raw,
        refinement=manifest.refinement,
        size_divisor=manifest.input.size_divisor,
    )
    claims = paper_claims(table)
    pipeline_ap = coco_ap(dataset, json.loads((args.out / "detections.json").read_text()))
    parity = _detector_parity(pipeline, torch_model, dataset, size.size_divisor)
    plot_report(table, plots)

    inputs = synthetic_inputs(size.min_size, size.min_size, BENCH_DETECTIONS, manifest.num_classes)
    latency = {}
    for name in ("torch", "torch-native", "ort"):
        backend = open_backend(
            manifest, name, **({} if name == "ort" else {"checkpoint": checkpoint})
        )
        latency[name] = measure(Pipeline.for_manifest(manifest, backend), inputs, 3, args.runs)
    table4 = _table4(args, manifest, checkpoint, dataset)

    print("\nOne detector, its post-processing (COCO AP %, validation images; the exported")
    print("detector and IoU-Net in ONNX Runtime):")
    print(format_table(table))
    print(
        f"iounet infer (image in, boxes out) output: AP {100 * pipeline_ap['AP']:.1f}, "
        f"AP90 {100 * pipeline_ap['AP90']:.1f} (= the iou_nms_refine row)"
    )
    print(
        f"recall at IoU 0.9: NMS {100 * table.recall['nms']['0.90']:.1f} %, IoU-NMS "
        f"{100 * table.recall['iou_nms']['0.90']:.1f} %"
    )
    print(
        f"\nPearson(predicted IoU, true IoU): held-out jittered boxes {jittered.pearson:.3f} "
        f"({len(jittered.true)} boxes); detector boxes with IoU > 0.5: predicted IoU "
        f"{table.pearson['predicted_iou']:.3f} vs classification score "
        f"{table.pearson['classification']:.3f} ({table.pearson['boxes']} boxes)"
    )
    print("\nThe paper's claims on this detector:")
    print(format_claims(claims))
    print(
        f"\nexported detector (ONNX Runtime) vs PyTorch on {parity['images']} images: "
        f"{parity['detections']} raw detections, counts equal: {parity['counts_equal']}, "
        f"boxes max |diff| {parity['boxes_max_abs']:.2e} px, scores max |diff| "
        f"{parity['scores_max_abs']:.2e}, labels equal: {parity['labels_equal']} (rows "
        f"matched within score ties; {parity['reordered']} tied rows came out in another order)"
    )
    print(
        f"\nlatency of the post-processing alone, one {size.min_size}x{size.min_size} image "
        f"with {BENCH_DETECTIONS} given raw detections, top-100 refined "
        f"({torch.get_num_threads()} threads):"
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
        "claims": [claim.as_json() for claim in claims],
        "pipeline": pipeline_ap,
        "latency_ms": latency,
        "detector_parity": parity,
        "table4_ms": table4,
    }


def torch_detector(model: JointIoUNet, size_divisor: int) -> Detector:
    """A PyTorch detector on one resized image: raw boxes, scores, labels (padding dropped)."""

    from iounet.training.images import pad_images

    def detect(image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        size = (int(image.shape[1]), int(image.shape[2]))
        return model.detect(pad_images([image], size_divisor), size)

    return detect


def _detector_parity(
    pipeline: Pipeline, model: JointIoUNet, dataset: CocoDetection, divisor: int
) -> dict:
    """Raw detections of the exported detector vs the PyTorch model on the first images.

    Rows are matched, not compared by position: each exported row with the reference row of its
    label whose score is within SCORE_TIE and whose box is nearest, since two detections whose
    scores differ by float rounding alone may come out of top-k in either order
    (``reordered`` counts the rows that did).
    """
    detect = torch_detector(model, divisor)
    boxes_diff = scores_diff = 0.0
    counts_equal = labels_equal = True
    total = reordered = 0
    count = min(PARITY_IMAGES, len(dataset))
    for index in range(count):
        image, _ = dataset[index]
        exported = pipeline.detect_resized(image)
        reference = detect(image)
        total += len(reference[0])
        if len(exported[0]) != len(reference[0]):
            counts_equal = False
            continue
        if len(reference[0]):
            boxes, scores, matched, order = _match_rows(exported, reference)
            boxes_diff = max(boxes_diff, boxes)
            scores_diff = max(scores_diff, scores)
            labels_equal &= matched
            reordered += order
    return {
        "images": count,
        "detections": total,
        "counts_equal": counts_equal,
        "boxes_max_abs": boxes_diff,
        "scores_max_abs": scores_diff,
        "labels_equal": labels_equal,
        "reordered": reordered,
    }


def _match_rows(
    exported: tuple[Tensor, Tensor, Tensor], reference: tuple[Tensor, Tensor, Tensor]
) -> tuple[float, float, bool, int]:
    """Max box and score difference over matched rows, whether the rows match one to one (each
    to one of its label), and how many rows matched another position than their own."""
    import torch

    score_gap = (exported[1][:, None] - reference[1][None, :]).abs()
    box_gap = (exported[0][:, None, :] - reference[0][None, :, :]).abs().amax(2)
    allowed = (score_gap <= SCORE_TIE) & (exported[2][:, None] == reference[2][None, :])
    box_gap = torch.where(allowed, box_gap, torch.inf)
    nearest = box_gap.argmin(1)
    rows = torch.arange(len(nearest))
    found = bool(allowed[rows, nearest].all()) and len(nearest.unique()) == len(nearest)
    return (
        float(box_gap[rows, nearest].max()) if found else float("inf"),
        float(score_gap[rows, nearest].max()),
        found,
        int((nearest != rows).sum()),
    )


def _table4(
    args: argparse.Namespace, manifest: Manifest, checkpoint: Path, dataset: CocoDetection
) -> dict:
    """Table 4: latency per stage from image to final boxes, FPN alone (its NMS) vs IoU-Net on
    the same backbone, for the model's image size and 800 x 1216, ONNX Runtime and PyTorch."""
    from iounet.runtime.bench import format_latency_table, image_inputs, measure, overhead_line
    from iounet.runtime.pipeline import Pipeline, PipelineConfig, open_backend

    image, _ = dataset[0]
    tables = {}
    small = manifest.input.min_size
    for height, width in ((small, small), LARGE_IMAGE):
        inputs = image_inputs(image, height, width)
        runs = args.runs if height == small else max(2, args.runs // 5)
        results = {}
        for name in ("ort", "torch-native"):
            options = {} if name == "ort" else {"checkpoint": checkpoint}
            backend = open_backend(manifest, name, **options)
            for method, title in (("nms", "FPN"), ("iou-nms", "IoU-Net")):
                config = PipelineConfig(refine=manifest.refinement, method=method)
                pipeline = Pipeline.for_manifest(manifest, backend, config)
                results[f"{name} {title}"] = measure(pipeline, inputs, 1, runs)
        print(f"\nTable 4: latency per stage, image in ({height}x{width}), boxes out, {runs} runs:")
        print(format_latency_table(results))
        for name in ("ort", "torch-native"):
            print(overhead_line(results, f"{name} FPN", f"{name} IoU-Net"))
        tables[f"{height}x{width}"] = results
    return tables


def _trained(folder: Path, recipe: str, seed: int = 0) -> bool:
    """Whether `folder` holds a finished run of `recipe` with `seed` (then it is reused)."""
    from iounet.training.checkpoint import LAST_NAME, load_checkpoint
    from iounet.training.config import RECIPES

    if not (folder / LAST_NAME).is_file():
        return False
    state = load_checkpoint(folder / LAST_NAME)
    config = state["config"]
    return (
        config.get("recipe") == recipe
        and config.get("seed") == seed
        and state["step"] >= RECIPES[recipe].optim.steps
    )


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
