"""Training boxes for the IoU predictor (IoU-Net Sec. 3.1): jittered ground truth, IoU-balanced.

Every ground-truth box is jittered with random shift and scale; candidates whose IoU with their
best-matching ground truth is below `min_iou` are dropped, and the rest are sampled uniformly
w.r.t. that IoU: equally many from each of `bins` IoU bins over [min_iou, 1].
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.ops import box_iou


class JitteredBoxes(NamedTuple):
    """Sampled boxes (M, 4), index of the matched ground truth (M,), and their IoU (M,)."""

    boxes: Tensor
    gt_index: Tensor
    iou: Tensor


def jitter_boxes(
    gt_boxes: Tensor,
    num_boxes: int,
    generator: torch.Generator,
    *,
    min_iou: float = 0.5,
    bins: int = 10,
    max_shift: float = 0.3,
    max_scale: float = 1.6,
    image_size: tuple[int, int] | None = None,
    oversample: int = 16,
) -> JitteredBoxes:
    """Sample `num_boxes` jittered boxes of `gt_boxes` (G, 4), balanced over IoU in [min_iou, 1].

    Shifts of the center are uniform in +-max_shift of the box size, scales of width and height
    log-uniform in [1/max_scale, max_scale], both times a per-candidate strength in [0, 1] so that
    small perturbations (IoU near 1) are as easy to draw as large ones. A bin with too few
    candidates gives all it has and the other bins fill the remainder. Boxes are clipped to
    `image_size` (height, width) when given. No ground truth gives no boxes.
    """
    if gt_boxes.dim() != 2 or gt_boxes.shape[1] != 4:
        raise ValueError(f"gt_boxes must have shape (G, 4), got {tuple(gt_boxes.shape)}")
    if num_boxes < 0 or bins <= 0 or not 0.0 <= min_iou < 1.0:
        raise ValueError(
            f"need num_boxes >= 0, bins > 0, 0 <= min_iou < 1; got {num_boxes}, {bins}, {min_iou}"
        )
    gt = gt_boxes.float()
    empty = JitteredBoxes(gt.new_zeros((0, 4)), torch.zeros(0, dtype=torch.long), gt.new_zeros(0))
    if gt.shape[0] == 0 or num_boxes == 0:
        return empty
    candidates = _jittered_candidates(gt, num_boxes * oversample, generator, max_shift, max_scale)
    if image_size is not None:
        height, width = image_size
        candidates[:, 0::2] = candidates[:, 0::2].clamp(0, width)
        candidates[:, 1::2] = candidates[:, 1::2].clamp(0, height)
    iou, matched = box_iou(candidates, gt).max(dim=1)
    usable = iou >= min_iou
    candidates, matched, iou = candidates[usable], matched[usable], iou[usable]
    chosen = _balanced_choice(iou, num_boxes, generator, min_iou, bins)
    return JitteredBoxes(candidates[chosen], matched[chosen], iou[chosen])


def _jittered_candidates(
    gt: Tensor, count: int, generator: torch.Generator, max_shift: float, max_scale: float
) -> Tensor:
    source = gt[torch.randint(0, gt.shape[0], (count,), generator=generator)]
    size = (source[:, 2:] - source[:, :2]).clamp_min(1e-3)
    center = (source[:, 2:] + source[:, :2]) / 2
    strength = torch.rand((count, 1), generator=generator)
    shift = (torch.rand((count, 2), generator=generator) * 2 - 1) * max_shift * strength
    log_scale = (torch.rand((count, 2), generator=generator) * 2 - 1) * strength
    new_size = size * torch.exp(log_scale * torch.log(torch.tensor(max_scale)))
    new_center = center + shift * size
    return torch.cat([new_center - new_size / 2, new_center + new_size / 2], dim=1)


def _balanced_choice(
    iou: Tensor, count: int, generator: torch.Generator, min_iou: float, bins: int
) -> Tensor:
    """Indices of `count` entries (fewer if there are not enough), equally many per IoU bin."""
    if iou.numel() <= count:
        return torch.randperm(iou.numel(), generator=generator)
    bin_of = ((iou - min_iou) / (1 - min_iou) * bins).long().clamp(0, bins - 1)
    # Shuffle, then stably group by bin: each bin's entries in random order, bins in order.
    shuffled = torch.randperm(iou.numel(), generator=generator)
    order = shuffled[torch.argsort(bin_of[shuffled], stable=True)]
    sizes = torch.bincount(bin_of, minlength=bins)
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.arange(iou.numel()) - starts[bin_of[order]]
    quota = _quotas(sizes, count)
    taken = rank < quota[bin_of[order]]
    return order[taken]


def _quotas(sizes: Tensor, count: int) -> Tensor:
    """Per-bin counts summing to `count`: as equal as possible, never more than a bin holds."""
    quota = torch.zeros_like(sizes)
    remaining = count
    open_bins = sizes > quota
    while remaining > 0 and bool(open_bins.any()):
        share = max(1, remaining // int(open_bins.sum()))
        grant = torch.minimum(sizes - quota, torch.full_like(sizes, share)) * open_bins
        if int(grant.sum()) > remaining:
            # Hand out the last few one per open bin, lowest IoU bins first.
            grant = (torch.cumsum(open_bins.long(), 0) <= remaining).long() * open_bins
        quota += grant
        remaining -= int(grant.sum())
        open_bins = sizes > quota
    return quota
