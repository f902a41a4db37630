"""PrRoIPool and IoU-guided NMS on the native CPU kernels (libiounet_prroi_cpu, built by CMake), via
ctypes.

The functions take and return CPU tensors of float32 or float64 with the arguments of
:func:`iounet.plugins.prroi_pool`; the library is loaded on first use from the package's lib
folder (:mod:`iounet.plugins.libraries`), or from $IOUNET_PRROI_CPU_LIB when set. With
``check_values=False`` the roi values are not checked and the kernels' defined result applies
instead: a row with a batch index outside [0, N) or a NaN/Inf value pools to zeros and has zero
gradient. The functions have no autograd: with ``check_values`` (the default) they refuse
tensors that require grad while grad mode is on, instead of dropping the gradient. `layout`
("auto", "planar" or "channels_last") only changes how the features are read, and so the speed.
:func:`iou_nms` is the CPU kernel of ``torch.ops.iounet.iou_nms`` (:mod:`iounet.plugins.iou_nms`).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from iounet.plugins.arguments import SHAPE_FIELDS, checked_call, checked_grad_output
from iounet.plugins.libraries import POINTER, library_file, load_package_library

LIBRARY_NAME = "libiounet_prroi_cpu.so"
#: How the kernels read the features; changes the speed only (see prroi_pool_cpu.h).
LAYOUTS = {"auto": 0, "planar": 1, "channels_last": 2}
LIBRARY_ENV = "IOUNET_PRROI_CPU_LIB"
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


class NativeLibraryError(RuntimeError):
    """The native library is missing, fails to load or rejected its arguments."""


class _Shape(ctypes.Structure):
    _fields_ = [*SHAPE_FIELDS, ("layout", ctypes.c_int64)]


_P = POINTER
_KERNEL = (ctypes.POINTER(_Shape), ctypes.c_int)  # the trailing arguments: shape, num_threads
_SIGNATURES = {
    **{
        f"iounet_prroi_forward_{s}": (ctypes.c_int, (_P, _P, _P, *_KERNEL))
        for s in _SUFFIX.values()
    },
    **{
        f"iounet_prroi_coord_grad_{s}": (ctypes.c_int, (_P, _P, _P, _P, *_KERNEL))
        for s in _SUFFIX.values()
    },
    **{
        f"iounet_prroi_feature_grad_{s}": (ctypes.c_int, (_P, _P, _P, *_KERNEL))
        for s in _SUFFIX.values()
    },
    "iounet_iou_nms_f64": (
        ctypes.c_int,
        (_P, _P, _P, _P, ctypes.c_int64, ctypes.c_double, _P, _P, _P),
    ),
}


def library_path() -> Path:
    """Where the CPU library is looked for: $IOUNET_PRROI_CPU_LIB, else the package's lib folder."""
    return library_file(LIBRARY_NAME, LIBRARY_ENV)


@functools.cache
def load_library() -> ctypes.CDLL:
    """Load the CPU library once; raise NativeLibraryError saying how to build it if missing."""
    return load_package_library(
        LIBRARY_NAME, LIBRARY_ENV, _SIGNATURES, "iounet_prroi_version", NativeLibraryError
    )


def library_version() -> str:
    """Version string of the loaded CPU library (the package's: load_library checks it)."""
    return load_library().iounet_prroi_version().decode()


def prroi_pool(
    input: Tensor,
    rois: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    *,
    num_threads: int | None = None,
    check_values: bool = True,
    layout: str = "auto",
) -> Tensor:
    """PrRoIPool forward on the CPU kernels: (K, C, PH, PW), as `iounet.plugins.prroi_pool`."""
    features, table, shape = _prepare(input, rois, output_size, spatial_scale, check_values, layout)
    output = features.new_empty(
        (shape.num_rois, shape.channels, shape.pooled_height, shape.pooled_width)
    )
    _call("forward", features.dtype, num_threads, features, table, output, shape=shape)
    return output


def prroi_pool_coord_grad(
    input: Tensor,
    rois: Tensor | Sequence[Tensor],
    grad_output: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    *,
    num_threads: int | None = None,
    check_values: bool = True,
    layout: str = "auto",
) -> Tensor:
    """Gradient w.r.t. the boxes on the CPU kernels: (K, 5), column 0 zero."""
    features, table, shape = _prepare(input, rois, output_size, spatial_scale, check_values, layout)
    grad = checked_grad_output(grad_output, features, shape)
    grad_rois = features.new_empty((shape.num_rois, 5))
    _call("coord_grad", features.dtype, num_threads, features, table, grad, grad_rois, shape=shape)
    return grad_rois


def prroi_pool_feature_grad(
    input: Tensor,
    rois: Tensor | Sequence[Tensor],
    grad_output: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    *,
    num_threads: int | None = None,
    check_values: bool = True,
    layout: str = "auto",
) -> Tensor:
    """Gradient w.r.t. the features on the CPU kernels: the shape of `input`."""
    features, table, shape = _prepare(input, rois, output_size, spatial_scale, check_values, layout)
    grad = checked_grad_output(grad_output, features, shape)
    grad_features = torch.empty_like(features)
    _call("feature_grad", features.dtype, num_threads, table, grad, grad_features, shape=shape)
    return grad_features


def _prepare(
    input: Tensor,
    rois: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float,
    check_values: bool,
    layout: str,
) -> tuple[Tensor, Tensor, _Shape]:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    table, (pooled_h, pooled_w), scale = checked_call(
        input, rois, output_size, spatial_scale, check_values
    )
    if check_values and torch.is_grad_enabled() and _requires_grad(input, rois):
        raise ValueError(
            "the native kernels have no autograd and would drop the gradient: use "
            "iounet.plugins.prroi_pool (or torch.no_grad(), or detach the tensors)"
        )
    if input.device.type != "cpu":
        raise ValueError(f"input must be on the CPU for the native kernels, got {input.device}")
    if input.dtype not in _SUFFIX:
        raise TypeError(
            f"input must be float32 or float64 for the native kernels, got {input.dtype}"
        )
    if table.dtype != input.dtype:
        raise TypeError(f"rois dtype {table.dtype} does not match input dtype {input.dtype}")
    table, features = table.detach().contiguous(), input.detach().contiguous()
    batch, channels, height, width = features.shape
    shape = _Shape(
        batch, channels, height, width, table.shape[0], pooled_h, pooled_w, scale, LAYOUTS[layout]
    )
    return features, table, shape


def _requires_grad(input: Tensor, rois: Tensor | Sequence[Tensor]) -> bool:
    tables = [rois] if isinstance(rois, Tensor) else list(rois)
    return input.requires_grad or any(
        isinstance(table, Tensor) and table.requires_grad for table in tables
    )


def _call(
    kernel: str, dtype: torch.dtype, num_threads: int | None, *tensors: Tensor, shape: _Shape
) -> None:
    name = f"iounet_prroi_{kernel}_{_SUFFIX[dtype]}"
    threads = torch.get_num_threads() if num_threads is None else int(num_threads)
    status = getattr(load_library(), name)(
        *(t.data_ptr() for t in tensors), ctypes.byref(shape), threads
    )
    _raise_for(status, name)


def iou_nms(
    boxes: Tensor, scores: Tensor, ious: Tensor, labels: Tensor | None, iou_threshold: float
) -> tuple[Tensor, Tensor]:
    """IoU-guided NMS on the CPU library, IoUs in float64: ``(keep, kept_scores)``.

    CPU tensors as ``torch.ops.iounet.iou_nms`` takes them (:mod:`iounet.plugins.iou_nms`, which
    checks them); `keep` int64, `kept_scores` in the dtype of `scores`.
    """
    count = boxes.shape[0]
    box64, score64, iou64 = (
        t.detach().to(torch.float64).contiguous() for t in (boxes, scores, ious)
    )
    label64 = None if labels is None else labels.detach().to(torch.int64).contiguous()
    keep = torch.empty(count, dtype=torch.int64)
    kept_scores = torch.empty(count, dtype=torch.float64)
    kept = torch.zeros(1, dtype=torch.int64)
    status = load_library().iounet_iou_nms_f64(
        box64.data_ptr(),
        score64.data_ptr(),
        iou64.data_ptr(),
        None if label64 is None else label64.data_ptr(),
        count,
        iou_threshold,
        keep.data_ptr(),
        kept_scores.data_ptr(),
        kept.data_ptr(),
    )
    _raise_for(status, "iounet_iou_nms_f64")
    size = int(kept)
    return keep[:size].clone(), kept_scores[:size].to(scores.dtype)


def _raise_for(status: int, name: str) -> None:
    if status != 0:
        raise NativeLibraryError(f"{name} rejected its arguments (status {status})")


def available() -> bool:
    """Whether the CPU library loads."""
    try:
        load_library()
    except NativeLibraryError:
        return False
    return True
