"""PrRoIPool and IoU-guided NMS through the CUDA kernels (libiounet_prroi_cuda), via ctypes.

CMake builds the library whenever it finds nvcc (``plugins/csrc/prroi_pool_cuda_api.h`` is its
C API; the TensorRT plugins launch the same kernels). It is loaded on first use from the package's
lib folder (:mod:`iounet.plugins.libraries`), or from $IOUNET_PRROI_CUDA_LIB when set.

The functions take CUDA tensors, check their dtypes, shapes and devices, and launch on the
current stream of the tensors' device without synchronizing (``iou_nms`` reads the kept count
back: one synchronization). PrRoIPool: ``features`` (N, C, H, W) float32 or float16 (float32
arithmetic), ``rois`` (K, 5) float32 rows ``[batch_index, x0, y0, x1, y1]``; roi values are not
checked: a row whose batch index does not round into [0, N), or with a NaN/Inf value, pools to
zeros and has zero gradient. A status the library returns is raised as :class:`CudaLibraryError`
with the library's message.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import numbers
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from iounet.plugins.arguments import (
    SHAPE_FIELDS,
    check_iou_nms,
    check_spatial_scale,
    checked_grad_output,
)
from iounet.plugins.libraries import BUILD_HINT, POINTER, library_file, load_package_library

LIBRARY_NAME = "libiounet_prroi_cuda.so"
LIBRARY_ENV = "IOUNET_PRROI_CUDA_LIB"
_SUFFIX = {torch.float32: "f32", torch.float16: "f16"}
_NMS_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


class CudaLibraryError(RuntimeError):
    """The CUDA library is missing, fails to load, or returned an error status."""


class _Shape(ctypes.Structure):
    _fields_ = SHAPE_FIELDS


_P = POINTER
_SHAPE = ctypes.POINTER(_Shape)
_SIGNATURES = {
    "iounet_prroi_cuda_error_message": (ctypes.c_char_p, [ctypes.c_int]),
    "iounet_prroi_cuda_probe": (ctypes.c_int, []),
    "iounet_iou_nms_cuda_workspace_bytes": (ctypes.c_int64, [ctypes.c_int64]),
    **{
        f"iounet_prroi_cuda_forward_{s}": (ctypes.c_int, [_P, _P, _P, _SHAPE, _P])
        for s in ("f32", "f16")
    },
    **{
        f"iounet_prroi_cuda_coord_grad_{s}": (ctypes.c_int, [_P, _P, _P, _P, _SHAPE, _P])
        for s in ("f32", "f16")
    },
    "iounet_prroi_cuda_feature_grad_f32": (ctypes.c_int, [_P, _P, _P, _SHAPE, _P]),
    "iounet_prroi_cuda_feature_grad_f16": (ctypes.c_int, [_P, _P, _P, _P, _SHAPE, _P]),
    **{
        f"iounet_iou_nms_cuda_{s}": (
            ctypes.c_int,
            [_P, _P, _P, _P, ctypes.c_int64, ctypes.c_double, _P, _P, _P, _P, _P],
        )
        for s in ("f32", "f64")
    },
}


def library_path() -> Path:
    """Where the library is looked for: $IOUNET_PRROI_CUDA_LIB, else the package's lib folder."""
    return library_file(LIBRARY_NAME, LIBRARY_ENV)


@functools.cache
def load_library() -> ctypes.CDLL:
    """Load the CUDA library once; raise CudaLibraryError saying how to build it if missing."""
    return load_package_library(
        LIBRARY_NAME,
        LIBRARY_ENV,
        _SIGNATURES,
        "iounet_prroi_cuda_version",
        CudaLibraryError,
        f"{BUILD_HINT} on a machine with nvcc",
    )


def device_type() -> str:
    """The device type of the tensors the loaded library takes: ``"cuda"``, or ``"cpu"`` for the
    library built on the host emulation of the CUDA execution model (``plugins/cuda_host``), which
    the tests run the kernels on."""
    return _device_type(load_library())


@functools.cache
def _device_type(library: ctypes.CDLL) -> str:
    return "cpu" if hasattr(library, "iounet_cuda_host_emulation") else "cuda"


def library_version() -> str:
    """Version of the loaded CUDA library (the package's: load_library checks it)."""
    return load_library().iounet_prroi_cuda_version().decode()


def available(device: torch.device | int | None = None) -> bool:
    """Whether the library loads and its kernels run on `device` (default: the current one)."""
    try:
        library = load_library()
    except CudaLibraryError:
        return False
    if not torch.cuda.is_available():
        return False
    if isinstance(device, int):
        device = torch.device("cuda", device)
    if device is not None and torch.device(device).type != "cuda":
        return False
    index = None if device is None else torch.device(device).index
    return _probe(library, torch.cuda.current_device() if index is None else index)


@functools.cache
def _probe(library: ctypes.CDLL, device: int) -> bool:
    with torch.cuda.device(device):
        return library.iounet_prroi_cuda_probe() == 0


def prroi_pool(
    features: Tensor, rois: Tensor, pooled_height: int, pooled_width: int, spatial_scale: float
) -> Tensor:
    """PrRoIPool forward: (K, C, pooled_height, pooled_width) in the dtype of `features`."""
    features, rois, shape = _prepare(features, rois, pooled_height, pooled_width, spatial_scale)
    output = features.new_empty((shape.num_rois, shape.channels, pooled_height, pooled_width))
    _launch(f"iounet_prroi_cuda_forward_{_SUFFIX[features.dtype]}", features, rois, output, shape)
    return output


def _gradient(
    kernel: Callable[[Tensor, Tensor, Tensor, _Shape], Tensor], name: str, doc: str
) -> Callable[..., Tensor]:
    """The gradient function `name`: the arguments and checks both gradients share, then
    ``kernel(features, rois, grad_output, shape)`` on the checked tensors."""

    def gradient(
        features: Tensor,
        rois: Tensor,
        grad_output: Tensor,
        pooled_height: int,
        pooled_width: int,
        spatial_scale: float,
    ) -> Tensor:
        features, rois, shape = _prepare(features, rois, pooled_height, pooled_width, spatial_scale)
        grad = checked_grad_output(grad_output, features, shape)
        return kernel(features, rois, grad, shape)

    gradient.__name__ = gradient.__qualname__ = name
    gradient.__doc__ = doc
    return gradient


def _coord_grad(features: Tensor, rois: Tensor, grad: Tensor, shape: _Shape) -> Tensor:
    grad_rois = rois.new_empty((shape.num_rois, 5))
    name = f"iounet_prroi_cuda_coord_grad_{_SUFFIX[features.dtype]}"
    _launch(name, features, rois, grad, grad_rois, shape)
    return grad_rois


def _feature_grad(features: Tensor, rois: Tensor, grad: Tensor, shape: _Shape) -> Tensor:
    grad_features = torch.empty_like(features)
    if features.dtype == torch.float16:
        workspace = torch.empty(features.shape, dtype=torch.float32, device=features.device)
        name = "iounet_prroi_cuda_feature_grad_f16"
        _launch(name, rois, grad, grad_features, workspace, shape)
    else:
        name = "iounet_prroi_cuda_feature_grad_f32"
        _launch(name, rois, grad, grad_features, shape)
    return grad_features


prroi_pool_coord_grad = _gradient(
    _coord_grad,
    "prroi_pool_coord_grad",
    """Gradient of ``(prroi_pool(...) * grad_output).sum()`` w.r.t. rois: (K, 5) float32.

    Column 0 (the batch index) is zero.
    """,
)
prroi_pool_feature_grad = _gradient(
    _feature_grad,
    "prroi_pool_feature_grad",
    """Gradient w.r.t. the features: the shape and dtype of `features` (whose values are not read).

    Summed with float32 atomics (the last bits may vary between runs); for float16 in a float32
    workspace converted at the end.
    """,
)


def iou_nms(
    boxes: Tensor, scores: Tensor, ious: Tensor, labels: Tensor | None, threshold: float
) -> tuple[Tensor, Tensor]:
    """IoU-guided NMS on the GPU, the CUDA kernel of ``torch.ops.iounet.iou_nms``
    (:mod:`iounet.plugins.iou_nms` states the algorithm and the arguments): ``(keep, kept_scores)``.

    The tensors lie on one CUDA device; IoUs are computed in the boxes' dtype, the threshold
    rounded to it. The kernels do no host round trip; slicing the result to the kept count reads
    it back.
    """
    check_iou_nms(boxes, scores, ious, labels, threshold)
    _check_device("boxes", boxes)
    n = boxes.shape[0]
    device = boxes.device
    keep = torch.empty(n, dtype=torch.int64, device=device)
    kept_scores = torch.empty(n, dtype=scores.dtype, device=device)
    num_kept = torch.zeros(1, dtype=torch.int64, device=device)
    if n == 0:
        return keep, kept_scores
    library = load_library()
    size = library.iounet_iou_nms_cuda_workspace_bytes(n)
    if size < 0:
        raise ValueError(f"iou_nms: {n} boxes are too many for the CUDA kernels")
    context, stream = _on(device)
    with context:
        box_table = boxes.detach().contiguous()
        score_table = scores.detach().contiguous()
        order = torch.argsort(ious.detach(), descending=True, stable=True)
        workspace = torch.empty(size, dtype=torch.uint8, device=device)
        label64 = None if labels is None else labels.to(torch.int64).contiguous()
        name = f"iounet_iou_nms_cuda_{_NMS_SUFFIX[boxes.dtype]}"
        status = getattr(library, name)(
            box_table.data_ptr(),
            score_table.data_ptr(),
            order.data_ptr(),
            None if label64 is None else label64.data_ptr(),
            n,
            float(threshold),
            workspace.data_ptr(),
            keep.data_ptr(),
            kept_scores.data_ptr(),
            num_kept.data_ptr(),
            stream,
        )
        _raise_for(status, name)
    count = int(num_kept.item())
    return keep[:count], kept_scores[:count]


def _prepare(
    features: Tensor, rois: Tensor, pooled_height: int, pooled_width: int, spatial_scale: float
) -> tuple[Tensor, Tensor, _Shape]:
    if not isinstance(features, Tensor) or not isinstance(rois, Tensor):
        raise TypeError("features and rois must be torch.Tensors")
    _check_device("features", features)
    if features.dim() != 4:
        raise ValueError(f"features must be (N, C, H, W), got shape {tuple(features.shape)}")
    if features.dtype not in _SUFFIX:
        raise TypeError(f"features must be float32 or float16, got {features.dtype}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must have shape (K, 5), got {tuple(rois.shape)}")
    if rois.dtype != torch.float32:
        raise TypeError(f"rois must be float32, got {rois.dtype}")
    if rois.device != features.device:
        raise ValueError(f"rois are on {rois.device}, features on {features.device}")
    for name, value in (("pooled_height", pooled_height), ("pooled_width", pooled_width)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    scale = check_spatial_scale(spatial_scale)
    batch, channels, height, width = features.shape
    shape = _Shape(
        batch,
        channels,
        height,
        width,
        rois.shape[0],
        int(pooled_height),
        int(pooled_width),
        scale,
    )
    return features.detach().contiguous(), rois.detach().contiguous(), shape


def _launch(name: str, *arguments: Tensor | _Shape) -> None:
    """Call `name` with the tensors' pointers (and the shape) and their device's current stream."""
    device = next(a for a in arguments if isinstance(a, Tensor)).device
    values = [ctypes.byref(a) if isinstance(a, _Shape) else a.data_ptr() for a in arguments]
    context, stream = _on(device)
    with context:
        status = getattr(load_library(), name)(*values, stream)
    _raise_for(status, name)


def _check_device(name: str, tensor: Tensor) -> None:
    expected = device_type()
    if tensor.device.type != expected:
        kind = "a CUDA tensor" if expected == "cuda" else "a CPU tensor (host-emulation library)"
        raise ValueError(f"{name} must be {kind}, got one on {tensor.device}")


def _on(device: torch.device) -> tuple[contextlib.AbstractContextManager[object], int | None]:
    """A context making `device` current, and the handle of its current stream (the host
    emulation has one stream: None)."""
    if device.type != "cuda":
        return contextlib.nullcontext(), None
    return torch.cuda.device(device), torch.cuda.current_stream(device).cuda_stream


def _raise_for(status: int, name: str) -> None:
    if status != 0:
        message = load_library().iounet_prroi_cuda_error_message(status).decode()
        raise CudaLibraryError(f"{name} failed (status {status}): {message}")
