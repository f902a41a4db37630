"""IoU-guided NMS (IoU-Net, Algorithm 1) as a registered op: ``torch.ops.iounet.iou_nms``.

``iou_nms(boxes (N, 4), scores (N,), ious (N,), labels (N,) or None, iou_threshold)`` ->
``(keep, kept_scores)``. This is the algorithm every implementation (the C++ CPU code, the CUDA
kernels, the PyTorch reference) computes:

* the boxes are taken in decreasing predicted IoU ``ious``, ties lower index first;
* a box not yet eliminated is kept; it eliminates every remaining box of its label (one label
  when ``labels`` is None) whose IoU with it is greater than ``iou_threshold``, and takes the
  highest classification score among itself and the boxes it eliminates (a box is eliminated
  once, by the first kept box that overlaps it);
* the IoU of two boxes ``x0, y0, x1, y1`` is inter / (area_a + area_b - inter), and 0 when they
  have no union (two boxes of zero area): ``plugins/csrc/box_iou.h``.

``keep`` holds the int64 indices of the kept boxes in that order, ``kept_scores`` their updated
scores in the dtype of ``scores``. ``boxes``, ``scores`` and ``ious`` are float32 or float64 of one
dtype, ``labels`` integers, all on one device; the threshold is a number (not NaN). The op checks
shapes, dtypes and devices (ValueError / TypeError), not values: ``iounet.runtime.iou_nms`` does.

Kernels, chosen as for the PrRoIPool ops (:mod:`iounet.plugins.ops`): on the CPU the native
library (IoUs in float64), on CUDA the CUDA library where it is built (IoUs in the boxes' dtype, no
host round trip until the kept count is read), and the plain PyTorch reference
(:mod:`iounet.plugins.nms_reference`) everywhere else and inside
:func:`iounet.plugins.reference_kernels`. The fake kernel gives a data-dependent count.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor

from iounet.plugins import nms_reference
from iounet.plugins.arguments import check_iou_nms
from iounet.plugins.ops import cuda_library, native_library

__all__ = ["iou_nms"]


@torch.library.custom_op("iounet::iou_nms", mutates_args=())
def iou_nms(
    boxes: Tensor, scores: Tensor, ious: Tensor, labels: Tensor | None, iou_threshold: float
) -> tuple[Tensor, Tensor]:
    """``(keep, kept_scores)`` of IoU-guided NMS (see the module docstring)."""
    check_iou_nms(boxes, scores, ious, labels, iou_threshold)
    return nms_reference.iou_nms(boxes, scores, ious, labels, iou_threshold)


def _device_kernel(library_for: Callable[[torch.device], ModuleType | None]) -> Callable:
    """A kernel running ``library_for(device).iou_nms``, or the reference where that is None."""

    def kernel(
        boxes: Tensor, scores: Tensor, ious: Tensor, labels: Tensor | None, iou_threshold: float
    ) -> tuple[Tensor, Tensor]:
        check_iou_nms(boxes, scores, ious, labels, iou_threshold)
        library = library_for(boxes.device) or nms_reference
        return library.iou_nms(boxes, scores, ious, labels, iou_threshold)

    return kernel


iou_nms.register_kernel("cpu")(_device_kernel(lambda device: native_library()))
iou_nms.register_kernel("cuda")(_device_kernel(cuda_library))


@iou_nms.register_fake
def _fake(
    boxes: Tensor, scores: Tensor, ious: Tensor, labels: Tensor | None, iou_threshold: float
) -> tuple[Tensor, Tensor]:
    check_iou_nms(boxes, scores, ious, labels, iou_threshold)
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count,), dtype=torch.int64), scores.new_empty((count,))
