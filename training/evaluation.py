"""How well the IoU predictor ranks boxes (IoU-Net Fig. 2): Pearson correlation with the true IoU.

Two sets of boxes: jittered ground truth held out from training (IoU-balanced over [0.5, 1]),
and a detector's boxes with IoU > 0.5, where the classification confidence is compared too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torchvision.ops import box_iou

from iounet.files import atomic_path
from iounet.training.images import pad_images
from iounet.training.jitter import jitter_boxes
from iounet.training.joint_model import JointIoUNet
from iounet.training.model import IoUNet, to_iou
from iounet.training.trainer import step_generator

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class PredictorEvaluation:
    """Predicted and true IoU of the evaluated boxes, and their Pearson correlation."""

    predicted: Tensor
    true: Tensor
    pearson: float
    scores: Tensor | None = None
    score_pearson: float | None = None


def pearson(x: Tensor, y: Tensor) -> float:
    """Pearson correlation of two 1-D tensors; NaN when either is constant or has < 2 values."""
    if x.shape != y.shape or x.dim() != 1:
        raise ValueError(
            f"pearson needs two 1-D tensors of one length, got {x.shape} and {y.shape}"
        )
    if x.numel() < 2:
        return math.nan
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = float(x.norm() * y.norm())
    return float((x * y).sum()) / denominator if denominator > 0 else math.nan


@torch.no_grad()
def evaluate_jittered(
    model: IoUNet | JointIoUNet,
    dataset: Sequence,
    *,
    boxes_per_image: int = 64,
    max_images: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
) -> PredictorEvaluation:
    """Predictor quality on jittered ground-truth boxes of `dataset` (held out from training),
    for an IoU-Net or the IoU branch of a joint IoU-Net."""
    device = next(model.parameters()).device
    model.eval()
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    predicted, true = [], []
    for first in range(0, count, batch_size):
        items = [dataset[i] for i in range(first, min(first + batch_size, count))]
        images = [image for image, _ in items]
        rois, labels, ious = [], [], []
        for index, (image, target) in enumerate(items):
            generator = step_generator(seed, first + index, salt=2)
            size = (int(image.shape[1]), int(image.shape[2]))
            sample = jitter_boxes(target["boxes"], boxes_per_image, generator, image_size=size)
            rois.append(
                torch.cat(
                    [sample.boxes.new_full((len(sample.boxes), 1), float(index)), sample.boxes], 1
                )
            )
            labels.append(target["labels"][sample.gt_index])
            ious.append(sample.iou)
        rois_all = torch.cat(rois)
        if rois_all.shape[0] == 0:
            continue
        maps = model.backbone(pad_images(images).to(device))
        prediction = model.head(maps, rois_all.to(device), torch.cat(labels).to(device))
        predicted.append(to_iou(prediction).cpu())
        true.append(torch.cat(ious))
    predicted_all = torch.cat(predicted) if predicted else torch.zeros(0)
    true_all = torch.cat(true) if true else torch.zeros(0)
    return PredictorEvaluation(predicted_all, true_all, pearson(predicted_all, true_all))


def iou_with_same_class(
    boxes: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor
) -> Tensor:
    if gt_boxes.shape[0] == 0 or boxes.shape[0] == 0:
        return boxes.new_zeros(boxes.shape[0])
    iou = box_iou(boxes, gt_boxes)
    iou[labels[:, None] != gt_labels[None, :]] = 0
    return iou.max(dim=1).values


def scatter_plot(path: str | Path, evaluation: PredictorEvaluation, title: str) -> Path:
    """Write a PNG of predicted (and, if present, classification confidence) vs true IoU."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    path = Path(path)
    panels = [("predicted IoU", evaluation.predicted, evaluation.pearson)]
    if evaluation.scores is not None:
        panels.append(("classification confidence", evaluation.scores, evaluation.score_pearson))
    figure, axes = pyplot.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.2), squeeze=False)
    for axis, (name, values, correlation) in zip(axes[0], panels, strict=True):
        axis.scatter(evaluation.true.numpy(), values.numpy(), s=3, alpha=0.35)
        axis.set_xlabel("IoU with ground truth")
        axis.set_ylabel(name)
        axis.set_xlim(0.5, 1.0)
        axis.set_ylim(0.0, 1.0)
        axis.set_title(f"{name}: Pearson {correlation:.3f}")
    figure.suptitle(title)
    return save_figure(figure, path)


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    from matplotlib import pyplot

    figure.tight_layout()
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=110, format="png")
    finally:
        pyplot.close(figure)
    return Path(path)
