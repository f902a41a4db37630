"""Non-maximum suppression: standard NMS, IoU-guided NMS (IoU-Net, Algorithm 1) and Soft-NMS.

All three take boxes (N, 4) as ``x0, y0, x1, y1`` and run per class when ``labels`` are given
(boxes of different labels never suppress each other) on any device torchvision's ``nms`` runs
on. Arguments are checked: ``boxes``, ``scores`` and ``ious`` are float32 or float64 tensors of
one dtype on one device, finite, with ``x1 >= x0`` and ``y1 >= y0``; ``labels`` is an integer
(N,) tensor; thresholds are real numbers in [0, 1]. A bad argument raises TypeError or
ValueError naming it. A box of zero area is valid: its IoU with any box is 0.

IoUs use torchvision's formula and the comparison with ``iou_threshold`` is strict: a box is
suppressed when its IoU is greater than the threshold. ``nms`` is torchvision's and computes in
the boxes' dtype; ``iou_nms`` and ``soft_nms`` compute IoUs and scores in float64.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from iounet.plugins import cuda, native
from iounet.plugins.iou_nms import iou_nms_cpu

__all__ = ["iou_nms", "nms", "soft_nms"]

FLOAT_DTYPES = (torch.float32, torch.float64)
INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
SOFT_NMS_METHODS = ("gaussian", "linear")
# On the CPU the greedy pass of iou_nms runs torchvision's nms on groups of whole classes of
# about this many boxes (its cost grows with the square of the boxes in one call); on other
# devices it runs once on all classes.
CPU_GROUP_SIZE = 256
# iou_nms on the CPU uses the native library when it loads (tests switch it off to check both).
USE_NATIVE = True
# iou_nms compares each kept box with the suppressed boxes after it of its label, at most about
# this many pairs at a time (a bound on memory: some 100 bytes a pair).
PAIR_CHUNK = 2**18


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
    """IoU-guided NMS (IoU-Net, Algorithm 1): ``(keep, kept_scores)``.

    Boxes are taken in decreasing order of predicted IoU ``ious``; ties go to the lower index
    first. A box not yet eliminated is kept; it eliminates every remaining box of its label
    whose IoU with it is greater than ``iou_threshold`` and takes the highest classification
    score among itself and the boxes it eliminated (a box is eliminated once, by the first kept
    box that overlaps it).

    Returns ``keep``, int64 indices of the kept boxes in that order (decreasing ``ious``), and
    ``kept_scores``, their updated classification scores (dtype of ``scores``).

    On the CPU this runs in the native library when it is built (`make native`; IoUs in
    float64 on the raw coordinates); on a GPU in the CUDA library when it is built (IoUs in the
    boxes' dtype, no host round trip until the kept count is read). Otherwise IoUs are computed
    in float64 (float32 on MPS), after moving each label's boxes by a multiple of the coordinate
    range so that labels never meet (torchvision's coordinate trick); on a GPU the threshold is
    rounded to float32, as torchvision's GPU kernels do.
    """
    _check_boxes(boxes)
    _check_scores("scores", scores, boxes)
    _check_scores("ious", ious, boxes)
    _check_labels(labels, boxes)
    threshold = _check_fraction("iou_threshold", iou_threshold)
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device), scores[:0].clone()
    if boxes.device.type == "cpu" and USE_NATIVE and native.available():
        return iou_nms_cpu(boxes, scores, ious, labels, threshold)
    if boxes.device.type == "cuda" and USE_NATIVE and cuda.available(boxes.device):
        return cuda.iou_nms(boxes, scores, ious.to(boxes.dtype), labels, threshold)
    if boxes.device.type != "cpu":  # as torchvision's GPU kernels compare
        threshold = torch.tensor(threshold, dtype=torch.float32).item()
    entries, position, class_id, class_end = _class_major_order(ious, labels)
    bounds = _groups(class_end, boxes.device)
    separated = _separate_classes(boxes.index_select(0, entries), class_id)
    kept = _greedy_keep(separated, position, bounds, threshold)
    kept_place = kept.nonzero().squeeze(1)
    kept_scores = _absorbed_scores(
        separated,
        scores.index_select(0, entries),
        class_end.index_select(0, class_id),
        kept,
        kept_place,
        threshold,
    )
    greedy = position.index_select(0, kept_place).argsort()
    keep = entries.index_select(0, kept_place.index_select(0, greedy))
    return keep, kept_scores.index_select(0, greedy)


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

    dtype = _precise_dtype(boxes.device)
    index = (scores >= score_threshold).nonzero().squeeze(1)
    current = scores.index_select(0, index).to(dtype)
    columns = _box_columns(boxes.index_select(0, index).to(dtype))
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
        overlap = _paired_iou(columns, winner.index_select(0, label), columns).nan_to_num_(0.0)
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


def _precise_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (not on MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _class_ids(labels: Tensor | None, n: int, device: torch.device) -> Tensor:
    """Each box's label as its rank among the distinct labels (all 0 without labels)."""
    if labels is None:
        return torch.zeros(n, dtype=torch.int64, device=device)
    return torch.unique(labels, return_inverse=True)[1]


def _class_major_order(ious: Tensor, labels: Tensor | None) -> tuple[Tensor, ...]:
    """The boxes grouped by label, each label's boxes in greedy order.

    Returns ``entries`` (N,), the box at each place; ``position`` (N,), its place in the greedy
    order (decreasing ``ious``, lower index first); ``class_id`` (N,), the rank of its label
    (non-decreasing along the places); ``class_end`` (C,), the place after each label's last.
    """
    order = ious.argsort(descending=True, stable=True)
    if labels is None:
        n = order.numel()
        everything = torch.full((1,), n, device=order.device)
        return order, torch.arange(n, device=order.device), torch.zeros_like(order), everything
    label, position = labels.index_select(0, order).sort(stable=True)
    _, class_id, count = torch.unique_consecutive(label, return_inverse=True, return_counts=True)
    return order.index_select(0, position), position, class_id, count.cumsum(0)


def _groups(class_end: Tensor, device: torch.device) -> list[int]:
    """Bounds [0, ..., N] of the runs of whole labels that the greedy pass treats in one call."""
    n = int(class_end[-1])
    if device.type != "cpu":
        return [0, n]
    return [0, *class_end.index_select(0, _run_starts(class_end, CPU_GROUP_SIZE) - 1).tolist(), n]


def _run_starts(ends: Tensor, size: int) -> Tensor:
    """Where to split items of cumulative sizes ``ends`` into runs of about ``size`` or one item.

    The indices k > 0 where a run starts: ``(ends[k] - 1) // size`` differs from item k - 1's.
    """
    bucket = torch.div(ends - 1, size, rounding_mode="floor")
    return (bucket[1:] != bucket[:-1]).nonzero().squeeze(1) + 1


def _separate_classes(boxes: Tensor, class_id: Tensor) -> Tensor:
    """The boxes in float64, the k-th label's moved by k * (coordinate range + 1) in x and y.

    Boxes of different labels then never overlap. In float64 the move rounds a coordinate by
    2e-8 at most while coordinates and the number of labels stay below 10**4.
    """
    boxes = boxes.to(_precise_dtype(boxes.device))
    step = boxes.max() - boxes.min() + 1
    return boxes + (class_id.to(boxes.dtype) * step)[:, None]


def _greedy_keep(boxes: Tensor, position: Tensor, bounds: list[int], threshold: float) -> Tensor:
    """Greedy NMS of class-separated boxes in ``position`` order, per group: a kept mask.

    (Within a group, taking the boxes in global rather than place order lets early boxes
    suppress more boxes before they are compared with the next kept box: less work.)
    """
    from torchvision.ops import nms as torchvision_nms

    n = boxes.shape[0]
    score = (n - position).to(boxes.dtype)
    keep = [
        torchvision_nms(boxes[lo:hi], score[lo:hi], threshold) + lo
        for lo, hi in itertools.pairwise(bounds)
    ]
    kept = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    return kept.index_fill_(0, torch.cat(keep), True)


def _absorbed_scores(
    boxes: Tensor,
    scores: Tensor,
    class_end: Tensor,
    kept: Tensor,
    kept_place: Tensor,
    threshold: float,
) -> Tensor:
    """Each kept box's score maxed with the scores of the boxes it eliminated, in place order.

    ``boxes``, ``scores``, ``class_end`` (the end of each place's label run) and ``kept`` are in
    class-major greedy order; ``kept_place`` are the places of the kept boxes. A suppressed box
    was eliminated by the first kept box before it in its label run whose IoU with it is above
    the threshold; only such pairs are formed.
    """
    kept_scores = scores.index_select(0, kept_place)
    suppressed = ~kept
    suppressed_place = suppressed.nonzero().squeeze(1)
    if suppressed_place.numel() == 0:
        return kept_scores
    # Pairs: each kept box with the suppressed boxes after it in its label run.
    suppressed_until = suppressed.cumsum(0)
    first = suppressed_until.index_select(0, kept_place)
    count = suppressed_until.index_select(0, class_end.index_select(0, kept_place) - 1) - first
    columns = _box_columns(boxes)
    eliminator = torch.full_like(suppressed_place, kept_place.numel())
    for lo, hi, pair_end in _pair_chunks(count):
        pair_start = pair_end - count[lo:hi]
        pairs = int(pair_end[-1])
        source = torch.bincount(pair_start, minlength=pairs + 1)[:pairs].cumsum_(0).sub_(1)
        target = torch.arange(pairs, device=boxes.device)
        target += (first[lo:hi] - pair_start).index_select(0, source)
        source += lo
        overlap = _paired_iou(
            columns,
            kept_place.index_select(0, source),
            columns,
            suppressed_place.index_select(0, target),
        )
        hit = (overlap > threshold).nonzero().squeeze(1)
        source, target = source.index_select(0, hit), target.index_select(0, hit)
        eliminator.scatter_reduce_(0, target, source, "amin")
    absorbed = F.pad(kept_scores, (0, 1), value=-math.inf)
    absorbed.scatter_reduce_(0, eliminator, scores.index_select(0, suppressed_place), "amax")
    return absorbed[:-1]


def _pair_chunks(count: Tensor) -> Iterator[tuple[int, int, Tensor]]:
    """Runs ``lo:hi`` of kept boxes with about ``PAIR_CHUNK`` pairs in all (``count`` pairs per
    kept box), each with the cumulative pair counts of its boxes."""
    pair_end = count.cumsum(0)
    if int(pair_end[-1]) <= PAIR_CHUNK:
        yield 0, count.numel(), pair_end
        return
    bounds = [0, *_run_starts(pair_end, PAIR_CHUNK).tolist(), count.numel()]
    for lo, hi in itertools.pairwise(bounds):
        yield lo, hi, count[lo:hi].cumsum(0)


def _box_columns(boxes: Tensor) -> list[Tensor]:
    """``[x0, y0, x1, y1, area]`` of (N, 4) boxes as contiguous (N,) tensors."""
    x0, y0, x1, y1 = boxes.t().contiguous()
    return [x0, y0, x1, y1, (x1 - x0) * (y1 - y0)]


def _paired_iou(
    first: list[Tensor],
    first_index: Tensor,
    second: list[Tensor],
    second_index: Tensor | None = None,
) -> Tensor:
    """IoU of box ``first_index[k]`` of ``first`` with box ``second_index[k]`` of ``second``.

    Columns as from :func:`_box_columns`; without ``second_index`` the k-th box of ``second``.
    torchvision's formula and operation order; two boxes of zero area give NaN (0 / 0).
    """
    a = [column.index_select(0, first_index) for column in first]
    b = second if second_index is None else [c.index_select(0, second_index) for c in second]
    width = torch.minimum(a[2], b[2]).sub_(torch.maximum(a[0], b[0])).clamp_min_(0)
    height = torch.minimum(a[3], b[3]).sub_(torch.maximum(a[1], b[1])).clamp_min_(0)
    inter = width.mul_(height)
    return inter / (a[4] + b[4] - inter)


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
