"""IoU-guided NMS in plain PyTorch: the reference kernel of ``torch.ops.iounet.iou_nms``
(:mod:`iounet.plugins.iou_nms`, which states the algorithm), and the box helpers Soft-NMS shares.

It runs on any device torchvision's ``nms`` runs on. IoUs are computed in float64 (float32 on
MPS), after moving each label's boxes by a multiple of the coordinate range so that labels never
meet (torchvision's coordinate trick); on a GPU the threshold is rounded to float32, as
torchvision's GPU kernels compare. The greedy pass is torchvision's ``nms`` over the boxes in
predicted-IoU order, then each kept box takes the scores of the boxes it eliminated.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["box_columns", "iou_nms", "paired_iou", "precise_dtype"]

# On the CPU the greedy pass runs torchvision's nms on groups of whole classes of about this many
# boxes (its cost grows with the square of the boxes in one call); on other devices it runs once
# on all classes.
CPU_GROUP_SIZE = 256
# Each kept box is compared with the suppressed boxes after it of its label, at most about this
# many pairs at a time (a bound on memory: some 100 bytes a pair).
PAIR_CHUNK = 2**18


def iou_nms(
    boxes: Tensor, scores: Tensor, ious: Tensor, labels: Tensor | None, iou_threshold: float
) -> tuple[Tensor, Tensor]:
    """``(keep, kept_scores)`` of IoU-guided NMS; arguments as ``torch.ops.iounet.iou_nms``."""
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device), scores[:0].clone()
    threshold = iou_threshold
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


def precise_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (not on MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


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
    boxes = boxes.to(precise_dtype(boxes.device))
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
    columns = box_columns(boxes)
    eliminator = torch.full_like(suppressed_place, kept_place.numel())
    for lo, hi, pair_end in _pair_chunks(count):
        pair_start = pair_end - count[lo:hi]
        pairs = int(pair_end[-1])
        source = torch.bincount(pair_start, minlength=pairs + 1)[:pairs].cumsum_(0).sub_(1)
        target = torch.arange(pairs, device=boxes.device)
        target += (first[lo:hi] - pair_start).index_select(0, source)
        source += lo
        overlap = paired_iou(
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


def box_columns(boxes: Tensor) -> list[Tensor]:
    """``[x0, y0, x1, y1, area]`` of (N, 4) boxes as contiguous (N,) tensors."""
    x0, y0, x1, y1 = boxes.t().contiguous()
    return [x0, y0, x1, y1, (x1 - x0) * (y1 - y0)]


def paired_iou(
    first: list[Tensor],
    first_index: Tensor,
    second: list[Tensor],
    second_index: Tensor | None = None,
) -> Tensor:
    """IoU of box ``first_index[k]`` of ``first`` with box ``second_index[k]`` of ``second``.

    Columns as from :func:`box_columns`; without ``second_index`` the k-th box of ``second``.
    torchvision's formula and operation order; two boxes of zero area give NaN (0 / 0).
    """
    a = [column.index_select(0, first_index) for column in first]
    b = second if second_index is None else [c.index_select(0, second_index) for c in second]
    width = torch.minimum(a[2], b[2]).sub_(torch.maximum(a[0], b[0])).clamp_min_(0)
    height = torch.minimum(a[3], b[3]).sub_(torch.maximum(a[1], b[1])).clamp_min_(0)
    inter = width.mul_(height)
    return inter / (a[4] + b[4] - inter)
