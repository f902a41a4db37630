"""NMS with a score threshold as a registered op: ``torch.ops.iounet.nms``.

``nms(boxes (N, 4), scores (N,), iou_threshold, score_threshold)`` -> the indices (M,) of the
boxes kept, most confident first: boxes scoring at most `score_threshold` are dropped, then a
box is suppressed when its IoU with a kept, more confident box exceeds `iou_threshold`
(torchvision's NMS on the rest). It is ONNX's ``NonMaxSuppression`` for one batch and one class,
which is what the exporter writes (``iounet.plugins.onnx_translation``): the score threshold
lets a graph drop boxes by masking their scores, with no data-dependent filter (``NonZero``)
before the NMS, which TensorRT's NMS layer then runs as it is.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor


@torch.library.custom_op("iounet::nms", mutates_args=())
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    """Indices (M,) int64 of the boxes kept, most confident first (see the module docstring)."""
    if boxes.dim() != 2 or boxes.shape[1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"need boxes (N, 4) and scores (N,), got {tuple(boxes.shape)} and {tuple(scores.shape)}"
        )
    candidates = torch.nonzero(scores > score_threshold).flatten()
    kept = torchvision.ops.nms(boxes[candidates], scores[candidates], iou_threshold)
    return candidates[kept]


@nms.register_fake
def _(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count,), dtype=torch.int64)
