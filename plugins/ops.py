"""PrRoIPool as registered PyTorch ops: ``torch.ops.iounet.prroi_pool``, ``prroi_pool_coord_grad``
and ``prroi_pool_feature_grad``.

Each op has a kernel per device: on the CPU the native library (``iounet.plugins.native``), on
CUDA the CUDA library (``iounet.plugins.cuda``) where it is built and a GPU is there; the plain
PyTorch implementation (``iounet.plugins.reference``) everywhere else and whenever
:func:`reference_kernels` is active. A fake kernel gives the output shapes to ``torch.compile``,
``torch.export`` and the dynamo ONNX exporter; autograd is registered (backward = the feature
gradient and coordinate gradient ops).

The ops keep the PrRoIPool contract of ``docs/design.md`` (the one of the ONNX nodes and the
TensorRT plugins), including its defined results for rows of no image or with NaN/Inf, which the
graphs rely on (batch index -1 for "not this level"). Shapes, dtypes and devices are checked
(ValueError / TypeError); the user-facing functions of ``iounet.plugins`` check roi values too.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import NamedTuple

import torch
from torch import Tensor

from iounet.plugins import native, reference

__all__ = ["cuda_library", "native_library", "reference_kernels"]

_REFERENCE = contextvars.ContextVar("iounet_reference_kernels", default=False)


@contextlib.contextmanager
def reference_kernels() -> Iterator[None]:
    """Run the ops on their plain PyTorch kernels inside the block (on every device)."""
    token = _REFERENCE.set(True)
    try:
        yield
    finally:
        _REFERENCE.reset(token)


def check_arguments(
    input: Tensor,
    rois: Tensor,
    pooled_height: int,
    pooled_width: int,
    spatial_scale: float,
    grad_output: Tensor | None = None,
) -> None:
    """Raise ValueError / TypeError when the op's arguments break its contract (shapes only)."""
    if input.dim() != 4:
        raise ValueError(f"input must be 4-D (N, C, H, W), got shape {tuple(input.shape)}")
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must have shape (K, 5), got {tuple(rois.shape)}")
    for name, tensor in (("input", input), ("rois", rois), ("grad_output", grad_output)):
        if tensor is not None and not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {tensor.dtype}")
        if tensor is not None and tensor.device != input.device:
            raise ValueError(f"{name} is on {tensor.device}, input on {input.device}")
    if pooled_height <= 0 or pooled_width <= 0:
        raise ValueError(f"pooled size must be positive, got {pooled_height}x{pooled_width}")
    if not (math.isfinite(spatial_scale) and spatial_scale > 0):
        raise ValueError(f"spatial_scale must be finite and positive, got {spatial_scale!r}")
    if grad_output is not None:
        expected = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
        if tuple(grad_output.shape) != expected:
            raise ValueError(
                f"grad_output must have shape {expected} (K, C, PH, PW), "
                f"got {tuple(grad_output.shape)}"
            )


def _compute_dtype(input: Tensor, rois: Tensor) -> torch.dtype:
    return torch.promote_types(torch.promote_types(input.dtype, rois.dtype), torch.float32)


def _split(args: tuple) -> tuple[tuple[Tensor, ...], int, int, float]:
    *tensors, pooled_height, pooled_width, spatial_scale = args
    input, rois, *grad = tensors
    check_arguments(input, rois, pooled_height, pooled_width, spatial_scale, *grad)
    return tuple(tensors), pooled_height, pooled_width, spatial_scale


# --- the ops: schema and default (reference) kernel ----------------------------------------------


@torch.library.custom_op("iounet::prroi_pool", mutates_args=())
def prroi_pool_op(
    input: Tensor, rois: Tensor, pooled_height: int, pooled_width: int, spatial_scale: float
) -> Tensor:
    """PrRoIPool forward: (K, C, pooled_height, pooled_width) in the dtype of `input`."""
    check_arguments(input, rois, pooled_height, pooled_width, spatial_scale)
    return reference.pool(input, rois, (pooled_height, pooled_width), spatial_scale)


#: The gradient ops' arguments: the forward's, with the gradient of its output after `rois`.
_GRADIENT_SCHEMA = (
    "(Tensor input, Tensor rois, Tensor grad_output, SymInt pooled_height, SymInt pooled_width, "
    "float spatial_scale) -> Tensor"
)


def _gradient_op(name: str, kernel: Callable[..., Tensor], doc: str) -> torch.library.CustomOpDef:
    """The gradient op ``iounet::<name>`` of `_GRADIENT_SCHEMA`, whose default kernel is `kernel`
    of ``reference``."""

    def gradient(*args: Tensor | int | float) -> Tensor:
        tensors, height, width, scale = _split(args)
        return kernel(*tensors, (height, width), scale)

    gradient.__name__ = gradient.__qualname__ = f"{name}_op"
    gradient.__doc__ = doc
    return torch.library.custom_op(
        f"iounet::{name}", gradient, mutates_args=(), schema=_GRADIENT_SCHEMA
    )


prroi_pool_coord_grad_op = _gradient_op(
    "prroi_pool_coord_grad",
    reference.coord_grad,
    """Gradient of ``(prroi_pool(...) * grad_output).sum()`` w.r.t. rois: (K, 5), column 0 zero.""",
)
prroi_pool_feature_grad_op = _gradient_op(
    "prroi_pool_feature_grad",
    reference.feature_grad,
    """Gradient of ``(prroi_pool(...) * grad_output).sum()`` w.r.t. `input` (its shape and dtype).

    `input` gives the shape, dtype and device of the result; its values are not read.
    """,
)


# --- device kernels -----------------------------------------------------------------------------
# Every op's arguments are (input, rois[, grad_output], pooled_height, pooled_width,
# spatial_scale); its result takes the dtype of `input` (pool, feature gradient) or of `rois`
# (coordinate gradient).

_Kernel = Callable[..., Tensor]


class _Implementation(NamedTuple):
    reference: _Kernel  # reference.<fn>(*tensors, pooled, scale)
    native: _Kernel  # native.<fn>(*tensors, pooled, scale, check_values=False)
    cuda: str  # name in iounet.plugins.cuda: fn(*tensors, pooled_height, pooled_width, scale)
    result_like: int  # index of the tensor whose dtype the result takes


_IMPLEMENTATIONS = {
    prroi_pool_op: _Implementation(reference.pool, native.prroi_pool, "prroi_pool", 0),
    prroi_pool_coord_grad_op: _Implementation(
        reference.coord_grad, native.prroi_pool_coord_grad, "prroi_pool_coord_grad", 1
    ),
    prroi_pool_feature_grad_op: _Implementation(
        reference.feature_grad, native.prroi_pool_feature_grad, "prroi_pool_feature_grad", 0
    ),
}


def _cpu_kernel(implementation: _Implementation) -> _Kernel:
    def kernel(*args: Tensor | int | float) -> Tensor:
        tensors, height, width, scale = _split(args)
        if native_library() is None:
            return implementation.reference(*tensors, (height, width), scale)
        dtype = _compute_dtype(*tensors[:2])
        result = implementation.native(
            *(t.to(dtype) for t in tensors), (height, width), scale, check_values=False
        )
        return result.to(tensors[implementation.result_like].dtype)

    return kernel


def _cuda_kernel(implementation: _Implementation) -> _Kernel:
    def kernel(*args: Tensor | int | float) -> Tensor:
        tensors, height, width, scale = _split(args)
        kernels = _cuda_kernels(*tensors[:2])
        if kernels is None:
            return implementation.reference(*tensors, (height, width), scale)
        features = _cuda_io(tensors[0])
        converted = (features, tensors[1].float(), *(g.to(features.dtype) for g in tensors[2:]))
        result = getattr(kernels, implementation.cuda)(*converted, height, width, scale)
        return result.to(tensors[implementation.result_like].dtype)

    return kernel


for _op, _implementation in _IMPLEMENTATIONS.items():
    _op.register_kernel("cpu")(_cpu_kernel(_implementation))
    _op.register_kernel("cuda")(_cuda_kernel(_implementation))


# --- fake kernels (shapes for torch.compile, torch.export and the ONNX exporter) ----------------


@prroi_pool_op.register_fake
def _prroi_pool_fake(
    input: Tensor, rois: Tensor, pooled_height: int, pooled_width: int, spatial_scale: float
) -> Tensor:
    check_arguments(input, rois, pooled_height, pooled_width, spatial_scale)
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@prroi_pool_coord_grad_op.register_fake
def _coord_grad_fake(*args: Tensor | int | float) -> Tensor:
    (_, rois, _), *_ = _split(args)
    return rois.new_empty((rois.shape[0], 5))


@prroi_pool_feature_grad_op.register_fake
def _feature_grad_fake(*args: Tensor | int | float) -> Tensor:
    (input, _, _), *_ = _split(args)
    return torch.empty_like(input)


# --- autograd -----------------------------------------------------------------------------------


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    input, rois, pooled_height, pooled_width, spatial_scale = inputs
    ctx.save_for_backward(input, rois)
    ctx.settings = (pooled_height, pooled_width, spatial_scale)


def _backward(
    ctx: torch.autograd.function.FunctionCtx, grad_output: Tensor
) -> tuple[Tensor | None, Tensor | None, None, None, None]:
    input, rois = ctx.saved_tensors
    grad = grad_output.contiguous()
    grad_input = grad_rois = None
    if ctx.needs_input_grad[0]:
        grad_input = prroi_pool_feature_grad_op(input, rois, grad, *ctx.settings)
    if ctx.needs_input_grad[1]:
        grad_rois = prroi_pool_coord_grad_op(input, rois, grad, *ctx.settings)
    return grad_input, grad_rois, None, None, None


prroi_pool_op.register_autograd(_backward, setup_context=_setup_context)


# --- kernel choice ------------------------------------------------------------------------------


def native_library() -> ModuleType | None:
    """:mod:`iounet.plugins.native` when the CPU kernels run on it (it loads and no
    :func:`reference_kernels` block is active), else None."""
    return None if _REFERENCE.get() or not native.available() else native


def cuda_library(device: torch.device) -> ModuleType | None:
    """:mod:`iounet.plugins.cuda` when its kernels run on `device` (built, a GPU there, no
    :func:`reference_kernels` block active), else None."""
    if _REFERENCE.get():
        return None
    try:
        from iounet.plugins import cuda
    except ImportError:
        return None
    return cuda if cuda.available(device) else None


def _cuda_kernels(input: Tensor, rois: Tensor) -> ModuleType | None:
    """The CUDA library's module when it runs these arguments, else None (reference kernels)."""
    if torch.float64 in (input.dtype, rois.dtype):
        return None
    return cuda_library(input.device)


def _cuda_io(input: Tensor) -> Tensor:
    """The CUDA kernels read float32 or float16 maps (float32 accumulation)."""
    return input if input.dtype in (torch.float32, torch.float16) else input.float()
