"""IoU-guided NMS (IoU-Net, Algorithm 1) on the CPU library (libiounet_prroi_cpu), via ctypes."""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from iounet.plugins.native import NativeLibraryError, load_library


def iou_nms_cpu(
    boxes: Tensor, scores: Tensor, ious: Tensor, labels: Tensor | None, iou_threshold: float
) -> tuple[Tensor, Tensor]:
    """IoU-guided NMS on the CPU library (arguments already checked by iounet.runtime.iou_nms).

    Returns the kept indices (int64) in decreasing predicted IoU and their updated scores in the
    dtype of `scores`.
    """
    count = boxes.shape[0]
    box64 = boxes.detach().to(torch.float64).contiguous()
    score64 = scores.detach().to(torch.float64).contiguous()
    iou64 = ious.detach().to(torch.float64).contiguous()
    label64 = None if labels is None else labels.detach().to(torch.int64).contiguous()
    keep = torch.empty(count, dtype=torch.int64)
    kept_scores = torch.empty(count, dtype=torch.float64)
    kept = ctypes.c_int64(0)
    status = load_library().iounet_iou_nms_f64(
        ctypes.c_void_p(box64.data_ptr()),
        ctypes.c_void_p(score64.data_ptr()),
        ctypes.c_void_p(iou64.data_ptr()),
        None if label64 is None else ctypes.c_void_p(label64.data_ptr()),
        ctypes.c_int64(count),
        ctypes.c_double(iou_threshold),
        ctypes.c_void_p(keep.data_ptr()),
        ctypes.c_void_p(kept_scores.data_ptr()),
        ctypes.byref(kept),
    )
    if status != 0:
        raise NativeLibraryError(f"iounet_iou_nms_f64 rejected its arguments (status {status})")
    return keep[: kept.value].clone(), kept_scores[: kept.value].to(scores.dtype)
