"""PrRoIPool through the native CPU kernels (libiounet_prroi_cpu, built by CMake), via ctypes.

The functions take and return CPU tensors of float32 or float64 with the arguments of
:func:`iounet.plugins.prroi_pool`; the library is loaded on first use from the package's lib
folder (:mod:`iounet.plugins.libraries`), or from $IOUNET_PRROI_CPU_LIB when set. With
``check_values=False`` the roi values are not checked and the kernels' defined result applies
instead: a row with a batch index outside [0, N) or a NaN/Inf value pools to zeros and has zero
gradient. The functions have no autograd: with ``check_values`` (the default) they refuse
tensors that require grad while grad mode is on, instead of dropping the gradient. `layout`
("auto", "planar" or "channels_last") only changes how the features are read, and so the speed.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from iounet._version import __version__
from iounet.plugins.arguments import (
    check_grad_output,
    check_input,
    check_spatial_scale,
    output_size_pair,
    rois_tensor,
)
from iounet.plugins.libraries import BUILD_HINT, library_file

LIBRARY_NAME = "libiounet_prroi_cpu.so"
#: How the kernels read the features; changes the speed only (see prroi_pool_cpu.h).
LAYOUTS = {"auto": 0, "planar": 1, "channels_last": 2}
LIBRARY_ENV = "IOUNET_PRROI_CPU_LIB"
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


class NativeLibraryError(RuntimeError):
    """The native library is missing, fails to load or rejected its arguments."""


class _Shape(ctypes.Structure):
    _fields_ = [
        ("batch", ctypes.c_int64),
        ("channels", ctypes.c_int64),
        ("height", ctypes.c_int64),
        ("width", ctypes.c_int64),
        ("num_rois", ctypes.c_int64),
        ("pooled_height", ctypes.c_int64),
        ("pooled_width", ctypes.c_int64),
        ("spatial_scale", ctypes.c_double),
        ("layout", ctypes.c_int64),
    ]


def library_path() -> Path:
    """Where the CPU library is looked for: $IOUNET_PRROI_CPU_LIB, else the package's lib folder."""
    return library_file(LIBRARY_NAME, LIBRARY_ENV)


@functools.cache
def load_library() -> ctypes.CDLL:
    """Load the CPU library once; raise NativeLibraryError saying how to build it if missing."""
    path = library_path()
    if not path.is_file():
        raise NativeLibraryError(
            f"{LIBRARY_NAME} not found at {path}: {BUILD_HINT}, or point {LIBRARY_ENV} at it"
        )
    try:
        library = ctypes.CDLL(str(path))
    except OSError as error:
        raise NativeLibraryError(f"cannot load {path}: {error}") from error
    library.iounet_prroi_version.restype = ctypes.c_char_p
    built = library.iounet_prroi_version().decode()
    if built != __version__:
        raise NativeLibraryError(
            f"{path} was built from iounet {built}, this is iounet {__version__}: {BUILD_HINT}"
        )
    return library


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
    grad = _grad_output(grad_output, features, shape)
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
    grad = _grad_output(grad_output, features, shape)
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
    check_input(input)
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
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    pooled_h, pooled_w = output_size_pair(output_size)
    scale = check_spatial_scale(spatial_scale)
    table = rois_tensor(rois, input, check_values).detach().contiguous()
    if table.dtype != input.dtype:
        raise TypeError(f"rois dtype {table.dtype} does not match input dtype {input.dtype}")
    features = input.detach().contiguous()
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


def _grad_output(grad_output: Tensor, features: Tensor, shape: _Shape) -> Tensor:
    expected = (shape.num_rois, shape.channels, shape.pooled_height, shape.pooled_width)
    check_grad_output(grad_output, expected, features)
    return grad_output.detach().contiguous()


def _call(
    kernel: str, dtype: torch.dtype, num_threads: int | None, *tensors: Tensor, shape: _Shape
) -> None:
    function = getattr(load_library(), f"iounet_prroi_{kernel}_{_SUFFIX[dtype]}")
    threads = torch.get_num_threads() if num_threads is None else int(num_threads)
    pointers = [ctypes.c_void_p(t.data_ptr()) for t in tensors]
    status = function(*pointers, ctypes.byref(shape), ctypes.c_int(threads))
    if status != 0:
        raise NativeLibraryError(f"iounet_prroi_{kernel} rejected its arguments (status {status})")


def available() -> bool:
    """Whether the CPU library loads."""
    try:
        load_library()
    except NativeLibraryError:
        return False
    return True
