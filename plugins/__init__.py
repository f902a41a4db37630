"""The PrRoIPool ops in every backend: the PyTorch op (the reference), the native CPU kernels
(`iounet.plugins.native`), ONNX Runtime sessions that run them, and the TensorRT plugins
(built by CMake, see plugins/tensorrt/README.md)."""

from iounet.plugins.onnxruntime import onnxruntime_session
from iounet.plugins.pytorch import PrRoIPool, prroi_pool, prroi_pool_coord_grad

__all__ = ["PrRoIPool", "onnxruntime_session", "prroi_pool", "prroi_pool_coord_grad"]
