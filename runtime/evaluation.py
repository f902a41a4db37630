"""The paper's evaluation on one set of raw detections: COCO AP after NMS, Soft-NMS, IoU-NMS
and IoU-NMS + refinement (Tables 1-2), recall at IoU 0.5-0.95 (Fig. 7), AP per refinement
iteration (Fig. 4) and the Pearson correlations of Fig. 2; and Table 3's comparison of the
FPN baseline with the jointly trained IoU-Net (``joint_table``).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from torchvision.ops import box_iou

from iounet.runtime import iou_nms, nms, refine_boxes, soft_nms
from iounet.runtime.backend import Backend, FeaturesT, RefineParams
from iounet.runtime.budget import (
    DEFAULT_MEMORY_BUDGET,
    PAPER_BOX,
    boxes_per_call,
    bytes_per_box,
    chunks,
)
from iounet.runtime.detections import CocoResult, check_known, group_by_image, image_tensors
from iounet.runtime.torch_backend import TorchBackend
from iounet.training.coco_dataset import CocoDetection
from iounet.training.evaluation import (
    PredictorEvaluation,
    iou_with_same_class,
    pearson,
    save_figure,
    scatter_plot,
)
from iounet.training.images import SIZE_DIVISOR, pad_images
from iounet.training.joint_model import JointIoUNet
from iounet.training.model import IoUNet

#: Tables 1-2's rows: the raw detections after NMS, Soft-NMS, IoU-guided NMS, and IoU-guided NMS
#: + refinement.
TABLE_ROWS = ("nms", "soft_nms", "iou_nms", "iou_nms_refine")
#: Table 3's rows: the FPN baseline with its own NMS, then the joint IoU-Net with NMS, with
#: IoU-guided NMS, and with IoU-guided NMS + refinement.
JOINT_ROWS = {
    "fpn": "FPN (its own NMS)",
    "joint_nms": "IoU-Net, joint (NMS)",
    "joint_iou_nms": "+ IoU-NMS",
    "joint_iou_nms_refine": "+ IoU-NMS + refinement",
}
#: A detector on one resized image (3, H, W): raw boxes (D, 4) in its pixels, scores, labels.
Detector = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
AP_KEYS = ("AP", "AP50", "AP60", "AP70", "AP80", "AP90")
RECALL_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2).tolist())


@dataclass
class DetectionReport:
    """Everything `iounet eval --detections` prints and writes (the JSON of `as_json`)."""

    ap: dict[str, dict[str, float]]
    recall: dict[str, dict[str, float]]
    refine_iterations: list[dict[str, float]]
    pearson: dict[str, float]
    true_iou: list[float] = field(default_factory=list)
    predicted_iou: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def as_json(self) -> dict:
        return {
            **self.ap,
            "recall": self.recall,
            "refine_iterations": self.refine_iterations,
            "pearson": self.pearson,
        }


@torch.no_grad()
def evaluate_detections_table(
    backend: Backend | IoUNet | JointIoUNet,
    dataset: CocoDetection,
    detections: list[CocoResult],
    *,
    refine_top: int = 100,
    refinement: RefineParams | None = None,
    curve_iterations: int = 10,
    nms_threshold: float = 0.5,
    size_divisor: int = SIZE_DIVISOR,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> DetectionReport:
    """Post-process raw COCO-format detections four ways and score each with COCOeval.

    `backend` runs the backbone, the IoU head and the refinement objective (an ``IoUNet`` runs
    as the PyTorch backend). `refinement` and `size_divisor` are an exported model's settings
    (its manifest's); the defaults are those export writes. The refinement curve runs
    `curve_iterations` steps; the table's refinement row is the boxes after
    ``refinement.iterations`` of them. The IoU head takes at most the boxes that fit
    `memory_budget` per call (``iounet.runtime.budget``, sized for the paper's model).
    """
    refinement = refinement or RefineParams()
    per_call = boxes_per_call(memory_budget, bytes_per_box(*PAPER_BOX))

    def parts(count: int) -> list[slice]:
        return list(chunks(count, per_call))

    if isinstance(backend, (IoUNet, JointIoUNet)):
        backend = TorchBackend(backend, next(backend.parameters()).device)
    by_image = group_by_image(detections)
    index_of = {image_id: i for i, image_id in enumerate(dataset.image_ids)}
    check_known(list(detections), set(index_of), set(dataset.category_to_label))
    results: dict[str, list[CocoResult]] = {name: [] for name in TABLE_ROWS}
    raw_results: list[CocoResult] = []
    iteration_results: list[list[CocoResult]] = [[] for _ in range(curve_iterations + 1)]
    true_all, predicted_all, scores_all = [], [], []
    device = backend.device
    for image_id, items in by_image.items():
        image, target = dataset[index_of[image_id]]
        scale = float(target["scale"])
        height, width = image.shape[1:]
        boxes, scores, labels = image_tensors(
            items, scale, (height, width), dataset.category_to_label
        )
        maps = backend.features(pad_images([image], size_divisor).to(device))
        rois = torch.cat([boxes.new_zeros((len(boxes), 1)), boxes], dim=1).to(device)
        labels_on = labels.to(device)
        ious = torch.zeros(len(rois))  # filled per call (see Pipeline._run)
        for part in parts(len(rois)):
            ious[part] = backend.iou(maps, rois[part], labels_on[part]).cpu()

        true = iou_with_same_class(boxes, labels, target["boxes"], target["labels"])
        matched = true > 0.5
        true_all.append(true[matched])
        predicted_all.append(ious[matched])
        scores_all.append(scores[matched])

        emit = _Emitter(dataset, image_id, scale)
        emit(raw_results, boxes, scores, labels)
        keep = nms(boxes, scores, labels, nms_threshold)
        emit(results["nms"], boxes[keep], scores[keep], labels[keep])
        soft_keep, soft_scores = soft_nms(boxes, scores, labels)
        emit(results["soft_nms"], boxes[soft_keep], soft_scores, labels[soft_keep])
        keep, kept_scores = iou_nms(boxes, scores, ious, labels, nms_threshold)
        emit(results["iou_nms"], boxes[keep], kept_scores, labels[keep])

        # Refine the refine_top most confident kept boxes; the others stay as they are.
        order = torch.argsort(kept_scores, descending=True, stable=True)
        kept_boxes, kept_labels = boxes[keep][order], labels[keep][order]
        kept_scores = kept_scores[order]
        trajectory = _trajectory(
            backend,
            maps,
            kept_boxes[:refine_top],
            kept_labels[:refine_top],
            (height, width),
            refinement,
            curve_iterations,
        )
        for step, state in enumerate(trajectory):
            moved = torch.cat([state, kept_boxes[refine_top:]])
            emit(iteration_results[step], moved, kept_scores, kept_labels)
        final = trajectory[min(refinement.iterations, len(trajectory) - 1)]
        final = torch.cat([final, kept_boxes[refine_top:]])
        emit(results["iou_nms_refine"], final, kept_scores, kept_labels)

    ap = {name: coco_ap(dataset, results[name]) for name in TABLE_ROWS}
    curve = [coco_ap(dataset, step_results) for step_results in iteration_results]
    recall = {
        "no_nms": _recall(dataset, raw_results),
        "nms": _recall(dataset, results["nms"]),
        "iou_nms": _recall(dataset, results["iou_nms"]),
    }
    true_iou, predicted, scores = (
        torch.cat(x) if x else torch.zeros(0) for x in (true_all, predicted_all, scores_all)
    )
    return DetectionReport(
        ap=ap,
        recall=recall,
        refine_iterations=[{"iteration": i, **values} for i, values in enumerate(curve)],
        pearson={
            "predicted_iou": pearson(predicted, true_iou),
            "classification": pearson(scores, true_iou),
            "boxes": int(true_iou.numel()),
        },
        true_iou=true_iou.tolist(),
        predicted_iou=predicted.tolist(),
        scores=scores.tolist(),
    )


@torch.no_grad()
def detect_dataset(detector: Detector, dataset: CocoDetection) -> list[CocoResult]:
    """A detector's raw detections on every image of `dataset`, as COCO results (original
    pixels; ``iounet detect``'s format)."""
    results: list[CocoResult] = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        boxes, scores, labels = detector(image)
        emit = _Emitter(dataset, int(target["image_id"]), float(target["scale"]))
        emit(results, boxes.cpu(), scores.cpu(), labels.cpu())
    return results


def nms_ap(
    dataset: CocoDetection, detections: list[CocoResult], nms_threshold: float = 0.5
) -> dict[str, float]:
    """COCO AP of raw detections after class-wise NMS (a detector's own post-processing)."""
    kept: list[CocoResult] = []
    for items in group_by_image(detections).values():
        boxes = torch.tensor([d["bbox"] for d in items], dtype=torch.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        scores = torch.tensor([float(d["score"]) for d in items], dtype=torch.float64)
        labels = torch.tensor([dataset.category_to_label[d["category_id"]] for d in items])
        keep = nms(boxes, scores, labels, nms_threshold).tolist()
        kept.extend(items[i] for i in keep)
    return coco_ap(dataset, kept)


def joint_table(fpn: dict[str, float], joint: DetectionReport) -> dict[str, dict[str, float]]:
    """Table 3: the FPN baseline's AP (``nms_ap`` of its raw detections) and the joint
    IoU-Net's AP with NMS, IoU-NMS and IoU-NMS + refinement (``evaluate_detections_table`` of
    its raw detections), keyed as ``JOINT_ROWS``."""
    return {
        "fpn": fpn,
        "joint_nms": joint.ap["nms"],
        "joint_iou_nms": joint.ap["iou_nms"],
        "joint_iou_nms_refine": joint.ap["iou_nms_refine"],
    }


def format_joint_table(table: dict[str, dict[str, float]]) -> str:
    """Table 3 in percent, one row per ``JOINT_ROWS`` entry."""
    lines = [f"{'method':<26}" + "".join(f"{key:>7}" for key in AP_KEYS)]
    for key, title in JOINT_ROWS.items():
        lines.append(f"{title:<26}" + "".join(f"{100 * table[key][k]:7.1f}" for k in AP_KEYS))
    return "\n".join(lines)


def _trajectory(
    backend: Backend[FeaturesT],
    maps: FeaturesT,
    boxes: Tensor,
    labels: Tensor,
    size: tuple[int, int],
    refinement: RefineParams,
    iterations: int,
) -> list[Tensor]:
    """The boxes before and after each of `iterations` steps of Algorithm 2 (iterations + 1)."""
    labels = labels.to(backend.device)
    trajectory: list[Tensor] = []

    def recording(current: Tensor) -> tuple[Tensor, Tensor]:
        trajectory.append(current.detach().cpu())
        rois = torch.cat([current.new_zeros((len(current), 1)), current], dim=1)
        return backend.iou_and_grad(maps, rois, labels)

    refine_boxes(
        boxes.to(backend.device),
        recording,
        step=refinement.step,
        iterations=iterations,
        early_stop=refinement.early_stop,
        degrade_tolerance=refinement.degrade_tolerance,
        image_size=size,
    )
    return trajectory


@dataclass
class _Emitter:
    """Appends one image's boxes (resized pixels) to a list of COCO results (original pixels)."""

    dataset: CocoDetection
    image_id: int
    scale: float

    def __call__(
        self, store: list[CocoResult], boxes: Tensor, scores: Tensor, labels: Tensor
    ) -> None:
        store.extend(_coco_results(self.dataset, self.image_id, boxes / self.scale, scores, labels))


def _coco_results(
    dataset: CocoDetection, image_id: int, boxes: Tensor, scores: Tensor, labels: Tensor
) -> list[CocoResult]:
    return [
        {
            "image_id": image_id,
            "category_id": dataset.label_to_category[int(label)],
            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
            "score": float(score),
        }
        for b, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True)
    ]


def coco_ap(dataset: CocoDetection, results: list[CocoResult]) -> dict[str, float]:
    """AP (0.5:0.95) and AP at 0.5, 0.6, 0.7, 0.8, 0.9, as fractions (100 detections per image)."""
    if not results:
        return dict.fromkeys(AP_KEYS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(dataset.coco, dataset.coco.loadRes(results), "bbox")
        evaluation.params.imgIds = list(dataset.image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][
        :, :, :, 0, -1
    ]  # iou, recall, class; all areas, 100 dets

    def mean_ap(index: slice | int) -> float:
        values = precision[index]
        values = values[values > -1]
        return float(values.mean()) if values.size else 0.0

    thresholds = evaluation.params.iouThrs
    at = {round(float(t), 2): i for i, t in enumerate(thresholds)}
    return {
        "AP": mean_ap(slice(None)),
        "AP50": mean_ap(at[0.5]),
        "AP60": mean_ap(at[0.6]),
        "AP70": mean_ap(at[0.7]),
        "AP80": mean_ap(at[0.8]),
        "AP90": mean_ap(at[0.9]),
    }


def _recall(dataset: CocoDetection, results: list[CocoResult]) -> dict[str, float]:
    """Fraction of ground-truth boxes covered by a detection of their class at each IoU."""
    best: list[float] = []
    by_key: dict[tuple[int, int], list[list[float]]] = {}
    for r in results:
        by_key.setdefault((r["image_id"], r["category_id"]), []).append(r["bbox"])
    for annotation in dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=list(dataset.image_ids))):
        if annotation.get("iscrowd", 0):
            continue
        found = by_key.get((annotation["image_id"], annotation["category_id"]), [])
        if not found:
            best.append(0.0)
            continue
        gt = torch.tensor([annotation["bbox"]], dtype=torch.float64)
        det = torch.tensor(found, dtype=torch.float64)
        gt[:, 2:] += gt[:, :2]
        det[:, 2:] += det[:, :2]
        best.append(float(box_iou(gt, det).max()))
    values = np.array(best)
    return {
        f"{t:.2f}": float((values >= t).mean()) if values.size else 0.0 for t in RECALL_THRESHOLDS
    }


def plot_report(report: DetectionReport, folder: Path) -> list[Path]:
    """The scatter plot of predicted IoU and classification score vs true IoU on the detector's
    boxes, and the curves of ``plot_curves``."""
    detected = PredictorEvaluation(
        torch.tensor(report.predicted_iou),
        torch.tensor(report.true_iou),
        report.pearson["predicted_iou"],
        torch.tensor(report.scores),
        report.pearson["classification"],
    )
    scatter = scatter_plot(folder / "pearson_detections.png", detected, "detector boxes, IoU > 0.5")
    return [scatter, *plot_curves(report, folder)]


def plot_curves(report: DetectionReport, folder: Path) -> list[Path]:
    """PNG plots of recall vs IoU threshold (Fig. 7) and AP per refinement iteration (Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    written = []
    figure, axis = pyplot.subplots(figsize=(5, 4))
    for name, values in report.recall.items():
        axis.plot([float(t) for t in values], list(values.values()), marker="o", label=name)
    axis.set_xlabel("IoU threshold")
    axis.set_ylabel("recall")
    axis.legend()
    written.append(save_figure(figure, folder / "recall.png"))
    figure, axis = pyplot.subplots(figsize=(5, 4))
    steps = [entry["iteration"] for entry in report.refine_iterations]
    for key in ("AP", "AP70", "AP90"):
        axis.plot(steps, [entry[key] for entry in report.refine_iterations], marker="o", label=key)
    axis.set_xlabel("refinement iteration")
    axis.set_ylabel("AP")
    axis.legend()
    written.append(save_figure(figure, folder / "refine_iterations.png"))
    return written


def format_table(report: DetectionReport) -> str:
    """The AP table (percent), one row per post-processing."""
    lines = [f"{'method':<16}" + "".join(f"{key:>7}" for key in AP_KEYS)]
    for name in TABLE_ROWS:
        lines.append(f"{name:<16}" + "".join(f"{100 * report.ap[name][k]:7.1f}" for k in AP_KEYS))
    return "\n".join(lines)
