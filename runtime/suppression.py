"""Non-maximum suppression: standard NMS, IoU-guided NMS (IoU-Net, Algorithm 1) and Soft-NMS.

All three take boxes (N, 4) as ``x0, y0, x1, y1`` and run per class when ``labels`` are given
(boxes of different labels never suppress each other) on any device torchvision's ``nms`` runs
on. Arguments are checked: ``boxes``, ``scores`` and ``ious`` are float32 or float64 tensors of
one dtype on one device, finite, with ``x1 >= x0`` and ``y1 >= y0``; ``labels`` is an integer
(N,) tensor; thresholds are real numbers in [0, 1]. A bad argument raises TypeError or
ValueError naming it. A box of zero area is valid: its IoU with any box is 0.

IoUs use torchvision's formula and the comparison with ``iou_threshold`` is strict: a box is
suppressed when its IoU is greater than the threshold. ``nms`` is torchvision's and computes in
the boxes' dtype; ``iou_nms`` is the op ``torch.ops.iounet.iou_nms`` (:mod:`iounet.plugins.iou_nms`)
and ``soft_nms`` computes IoUs and scores in float64.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from iounet.plugins.iou_nms import iou_nms as iou_nms_op
from iounet.plugins.nms_reference import box_columns, paired_iou, precise_dtype

__all__ = ["iou_nms", "nms", "soft_nms"]

FLOAT_DTYPES = (torch.float32, torch.float64)
INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
SOFT_NMS_METHODS = ("gaussian", "linear")


def nms(
    boxes: Tensor, scores: Tensor, labels: Tensor | None = None, iou_threshold: float = 0.5
) -> Tensor:
    """Indices (int64) of the boxes kept by greedy NMS, in decreasing order of score.

    The result is torchvision's: ``torchvision.ops.nms`` without labels,
    ``torchvision.ops.batched_nms`` with labels. The one difference: with labels, boxes with a
    negative coordinate are first translated so that the smallest coordinate is 0, because
    torchvision's coordinate trick assumes non-negative coordinates (without the translation,
    boxes of different labels could suppress each other).
    """
    _check_boxes(boxes)
    _check_scores("scores", scores, boxes)
    _check_labels(labels, boxes)
    threshold = _check_fraction("iou_threshold", iou_threshold)
    import torchvision  # here, not at import: torchvision loads PIL and its datasets

    if labels is None:
        return torchvision.ops.nms(boxes, scores, threshold)
    if boxes.numel() and bool(boxes.min() < 0):
        boxes = boxes - boxes.min()
    return torchvision.ops.batched_nms(boxes, scores, labels, threshold)


def iou_nms(
    boxes: Tensor,
    scores: Tensor,
    ious: Tensor,
    labels: Tensor | None = None,
    iou_threshold: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """IoU-guided NMS (IoU-Net, Algorithm 1): ``(keep, kept_scores)``, by the op
    ``torch.ops.iounet.iou_nms`` (:mod:`iounet.plugins.iou_nms` states the algorithm).

    Returns ``keep``, int64 indices of the kept boxes in decreasing ``ious`` (ties: lower index
    first), and ``kept_scores``, their updated classification scores (dtype of ``scores``).

    On the CPU this runs in the native library when it is built (`make native`; IoUs in
    float64); on a GPU in the CUDA library when it is built (IoUs in the boxes' dtype, no host
    round trip until the kept count is read); otherwise, and inside
    :func:`iounet.plugins.reference_kernels`, on the PyTorch reference
    (:mod:`iounet.plugins.nms_reference`). All of them keep the same boxes except where an IoU
    lies within rounding of the threshold.
    """
    _check_boxes(boxes)
    _check_scores("scores", scores, boxes)
    _check_scores("ious", ious, boxes)
    _check_labels(labels, boxes)
    threshold = _check_fraction("iou_threshold", iou_threshold)
    return iou_nms_op(boxes, scores, ious, labels, threshold)


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor | None = None,
    sigma: float = 0.5,
    iou_threshold: float = 0.3,
    method: str = "gaussian",
    score_threshold: float = 0.001,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al. 2017): ``(keep, new_scores)``.

    Repeatedly selects the remaining box with the highest current score (ties: lower index
    first) and decays the scores of the remaining boxes of its label by ``exp(-iou**2 / sigma)``
    (``method="gaussian"``) or, where ``iou > iou_threshold``, by ``1 - iou``
    (``method="linear"``). A box whose current score is below ``score_threshold`` is dropped;
    that includes a box whose score starts below it. Scores and IoUs are computed in float64.

    Returns ``keep``, int64 indices of the selected boxes in selection order (decreasing new
    score), and ``new_scores``, their scores when selected (dtype of ``scores``).
    """
    _check_boxes(boxes)
    _check_scores("scores", scores, boxes)
    _check_labels(labels, boxes)
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise TypeError(f"sigma must be a real number, got {sigma!r}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be finite and positive, got {sigma!r}")
    threshold = _check_fraction("iou_threshold", iou_threshold)
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"method must be one of {SOFT_NMS_METHODS}, got {method!r}")
    if isinstance(score_threshold, bool) or not isinstance(score_threshold, numbers.Real):
        raise TypeError(f"score_threshold must be a real number, got {score_threshold!r}")
    if not math.isfinite(score_threshold):
        raise ValueError(f"score_threshold must be finite, got {score_threshold!r}")

    dtype = precise_dtype(boxes.device)
    index = (scores >= score_threshold).nonzero().squeeze(1)
    current = scores.index_select(0, index).to(dtype)
    columns = box_columns(boxes.index_select(0, index).to(dtype))
    label = _class_ids(labels, boxes.shape[0], boxes.device).index_select(0, index)
    classes = int(label.max()) + 1 if index.numel() else 0
    selected, selected_scores = [], []
    while index.numel():
        # Every label's top box (lowest index among ties) is selected in this round.
        top = torch.full((classes,), -math.inf, dtype=dtype, device=boxes.device)
        top.scatter_reduce_(0, label, current, "amax")
        at_top = (current == top.index_select(0, label)).nonzero().squeeze(1)
        winner = torch.full((classes,), index.numel(), device=boxes.device)
        winner.scatter_reduce_(0, label.index_select(0, at_top), at_top, "amin")
        chosen = winner[winner < index.numel()]
        selected.append(index.index_select(0, chosen))
        selected_scores.append(current.index_select(0, chosen))
        overlap = paired_iou(columns, winner.index_select(0, label), columns).nan_to_num_(0.0)
        if method == "gaussian":
            current = current * overlap.square_().div_(-sigma).exp_()
        else:
            current = current * (1 - overlap.masked_fill_(overlap <= threshold, 0.0))
        rest = (current >= score_threshold).index_fill_(0, chosen, False).nonzero().squeeze(1)
        index, current, label = (t.index_select(0, rest) for t in (index, current, label))
        columns = [column.index_select(0, rest) for column in columns]
    if not selected:
        return torch.empty(0, dtype=torch.int64, device=boxes.device), scores[:0].clone()
    keep, new_scores = torch.cat(selected), torch.cat(selected_scores)
    # The labels run independently: the one-label-at-a-time order is by (score desc, index).
    by_index = keep.argsort()
    keep, new_scores = keep[by_index], new_scores[by_index]
    by_score = new_scores.argsort(descending=True, stable=True)
    return keep[by_score], new_scores[by_score].to(scores.dtype)


def _class_ids(labels: Tensor | None, n: int, device: torch.device) -> Tensor:
    """Each box's label as its rank among the distinct labels (all 0 without labels)."""
    if labels is None:
        return torch.zeros(n, dtype=torch.int64, device=device)
    return torch.unique(labels, return_inverse=True)[1]


def _check_boxes(boxes: Tensor) -> None:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"boxes must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    if boxes.dtype not in FLOAT_DTYPES:
        raise TypeError(f"boxes must be float32 or float64, got {boxes.dtype}")
    if boxes.numel() == 0:
        return
    if not _all_finite(boxes):
        raise ValueError("boxes must be finite (no NaN or Inf)")
    if bool((boxes[:, 2:] < boxes[:, :2]).any()):
        raise ValueError("boxes must have x1 >= x0 and y1 >= y0")


def _check_scores(name: str, scores: Tensor, boxes: Tensor) -> None:
    if not isinstance(scores, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(scores).__name__}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"{name} must have shape ({boxes.shape[0]},) like boxes, got {tuple(scores.shape)}"
        )
    if scores.dtype != boxes.dtype:
        raise TypeError(f"{name} dtype {scores.dtype} does not match boxes dtype {boxes.dtype}")
    if scores.device != boxes.device:
        raise ValueError(
            f"{name} device {scores.device} does not match boxes device {boxes.device}"
        )
    if not _all_finite(scores):
        raise ValueError(f"{name} must be finite (no NaN or Inf)")


def _all_finite(values: Tensor) -> bool:
    """Whether no value is NaN or infinite.

    A finite sum proves it cheaply; a sum that is not finite may be an overflow, so then every
    value is checked.
    """
    return math.isfinite(float(values.sum())) or bool(torch.isfinite(values).all())


def _check_labels(labels: Tensor | None, boxes: Tensor) -> None:
    if labels is None:
        return
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor or None, got {type(labels).__name__}")
    if labels.dtype not in INTEGER_DTYPES:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.shape != boxes.shape[:1]:
        raise ValueError(
            f"labels must have shape ({boxes.shape[0]},) like boxes, got {tuple(labels.shape)}"
        )
    if labels.device != boxes.device:
        raise ValueError(
            f"labels device {labels.device} does not match boxes device {boxes.device}"
        )


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)
