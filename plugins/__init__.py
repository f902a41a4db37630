"""PrRoIPool in every backend: registered PyTorch ops (``torch.ops.iounet.*``, with the native CPU
kernels, the CUDA kernels where built and a plain PyTorch reference), the functional API and
module, ONNX Runtime sessions that run the exported nodes, and the TensorRT plugins (built by
CMake, see plugins/tensorrt/README.md). IoU-guided NMS is the op ``torch.ops.iounet.iou_nms``
(:mod:`iounet.plugins.iou_nms`), with the same kernels and the same choice of them."""

from iounet.plugins import iou_nms as iou_nms  # registers torch.ops.iounet.iou_nms
from iounet.plugins.onnxruntime import onnxruntime_session
from iounet.plugins.ops import reference_kernels
from iounet.plugins.pytorch import (
    PrRoIPool,
    prroi_pool,
    prroi_pool_coord_grad,
    prroi_pool_feature_grad,
)

__all__ = [
    "PrRoIPool",
    "onnxruntime_session",
    "prroi_pool",
    "prroi_pool_coord_grad",
    "prroi_pool_feature_grad",
    "reference_kernels",
]
