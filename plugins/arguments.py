"""Checks and normalisation of PrRoIPool arguments, shared by every backend's Python entry."""

from __future__ import annotations

import ctypes
import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: The fields the PrRoIPool shape structs of the C APIs (CPU and CUDA libraries) begin with.
SHAPE_FIELDS = [
    ("batch", ctypes.c_int64),
    ("channels", ctypes.c_int64),
    ("height", ctypes.c_int64),
    ("width", ctypes.c_int64),
    ("num_rois", ctypes.c_int64),
    ("pooled_height", ctypes.c_int64),
    ("pooled_width", ctypes.c_int64),
    ("spatial_scale", ctypes.c_double),
]


def check_input(input: Tensor) -> None:
    """Raise if `input` is not a floating (N, C, H, W) tensor with no dimension of size 0."""
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() != 4:
        raise ValueError(f"input must be 4-D (N, C, H, W), got shape {tuple(input.shape)}")
    if input.dtype not in FLOAT_DTYPES:
        raise TypeError(f"input must be a floating tensor, got dtype {input.dtype}")
    if 0 in input.shape:
        raise ValueError(
            f"input must have at least one image, channel, row and column, got shape "
            f"{tuple(input.shape)}"
        )


def output_size_pair(output_size: int | Sequence[int]) -> tuple[int, int]:
    """Return `output_size` as (pooled_height, pooled_width), each a positive int."""
    if isinstance(output_size, numbers.Integral) and not isinstance(output_size, bool):
        pair = (int(output_size), int(output_size))
    elif (
        isinstance(output_size, Sequence)
        and len(output_size) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in output_size)
    ):
        pair = (int(output_size[0]), int(output_size[1]))
    else:
        raise TypeError(f"output_size must be an int or a pair of ints, got {output_size!r}")
    if min(pair) <= 0:
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    return pair


def check_spatial_scale(spatial_scale: float) -> float:
    """Return `spatial_scale` as a float after checking it is finite and positive."""
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, numbers.Real):
        raise TypeError(f"spatial_scale must be a real number, got {spatial_scale!r}")
    value = float(spatial_scale)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"spatial_scale must be finite and positive, got {spatial_scale!r}")
    return value


def rois_tensor(
    rois: Tensor | Sequence[Tensor], input: Tensor, check_values: bool = True
) -> Tensor:
    """Return `rois` as a checked (K, 5) tensor `[batch_index, x0, y0, x1, y1]`.

    `rois` is either that tensor or a list of per-image (Ki, 4) floating box tensors (any
    floating dtype: float32 boxes go with float16/bfloat16 maps). With
    `check_values`, NaN/Inf values and batch indices outside [0, N) raise ValueError.
    """
    if isinstance(rois, Tensor):
        if rois.dim() != 2 or rois.shape[1] != 5:
            raise ValueError(f"rois must have shape (K, 5), got {tuple(rois.shape)}")
        table = rois
    elif isinstance(rois, (list, tuple)):
        table = _rois_from_list(rois, input)
    else:
        raise TypeError(
            f"rois must be a (K, 5) tensor or a list of (Ki, 4) tensors, got {type(rois).__name__}"
        )
    if not table.is_floating_point():
        raise TypeError(f"rois must be a floating tensor, got dtype {table.dtype}")
    if table.device != input.device:
        raise ValueError(f"rois device {table.device} does not match input device {input.device}")
    if check_values and table.shape[0]:
        _check_values(table.detach(), input.shape[0])
    return table


def checked_call(
    input: Tensor,
    rois: Tensor | Sequence[Tensor],
    output_size: int | Sequence[int],
    spatial_scale: float,
    check_values: bool = True,
) -> tuple[Tensor, tuple[int, int], float]:
    """The roi table (K, 5), (pooled_height, pooled_width) and spatial scale of a PrRoIPool call,
    once :func:`check_input`, :func:`output_size_pair`, :func:`check_spatial_scale` and
    :func:`rois_tensor` accept its arguments."""
    check_input(input)
    pooled = output_size_pair(output_size)
    scale = check_spatial_scale(spatial_scale)
    return rois_tensor(rois, input, check_values), pooled, scale


def check_grad_output(grad_output: Tensor, expected: tuple[int, ...], input: Tensor) -> None:
    """Raise if `grad_output` is not a tensor of shape `expected` like `input` (dtype, device)."""
    if not isinstance(grad_output, Tensor):
        raise TypeError(f"grad_output must be a torch.Tensor, got {type(grad_output).__name__}")
    if tuple(grad_output.shape) != tuple(expected):
        raise ValueError(
            f"grad_output must have shape {tuple(expected)} (K, C, PH, PW), "
            f"got {tuple(grad_output.shape)}"
        )
    if grad_output.dtype != input.dtype or grad_output.device != input.device:
        raise TypeError(
            f"grad_output is {grad_output.dtype} on {grad_output.device}, "
            f"input is {input.dtype} on {input.device}"
        )


def checked_grad_output(grad_output: Tensor, input: Tensor, shape: ctypes.Structure) -> Tensor:
    """`grad_output` detached and contiguous, once :func:`check_grad_output` accepts it for the
    (K, C, PH, PW) of `shape` (a C API shape struct, :data:`SHAPE_FIELDS`) and for `input`."""
    expected = (shape.num_rois, shape.channels, shape.pooled_height, shape.pooled_width)
    check_grad_output(grad_output, expected, input)
    return grad_output.detach().contiguous()


def _rois_from_list(boxes: Sequence[Tensor], input: Tensor) -> Tensor:
    if len(boxes) != input.shape[0]:
        raise ValueError(
            f"rois is a list of {len(boxes)} box tensors but input holds {input.shape[0]} images"
        )
    parts = []
    for index, image_boxes in enumerate(boxes):
        if not isinstance(image_boxes, Tensor):
            raise TypeError(
                f"rois[{index}] must be a torch.Tensor, got {type(image_boxes).__name__}"
            )
        if image_boxes.dim() != 2 or image_boxes.shape[1] != 4:
            raise ValueError(
                f"rois[{index}] must have shape (Ki, 4), got {tuple(image_boxes.shape)}"
            )
        if not image_boxes.is_floating_point() or image_boxes.device != input.device:
            raise TypeError(
                f"rois[{index}] is {image_boxes.dtype} on {image_boxes.device}, "
                f"need a floating tensor on {input.device}"
            )
        column = image_boxes.new_full((image_boxes.shape[0], 1), float(index))
        parts.append(torch.cat([column, image_boxes], dim=1))
    if not parts:
        return input.new_zeros((0, 5))
    return torch.cat([part.to(parts[0].dtype) for part in parts], dim=0)


def _check_values(table: Tensor, num_images: int) -> None:
    if not bool(torch.isfinite(table).all()):
        raise ValueError("rois contains NaN or Inf")
    index = table[:, 0]
    if not bool((index == index.round()).all()):
        raise ValueError("rois batch_index (column 0) must hold whole numbers")
    low, high = float(index.min()), float(index.max())
    if low < 0 or high >= num_images:
        raise ValueError(
            f"rois batch_index must lie in [0, {num_images - 1}] (input has {num_images} images), "
            f"got values in [{low:g}, {high:g}]"
        )


def check_iou_nms(
    boxes: Tensor, scores: Tensor, ious: Tensor, labels: Tensor | None, iou_threshold: float
) -> None:
    """Raise TypeError / ValueError when IoU-NMS arguments break the contract of
    ``torch.ops.iounet.iou_nms`` (shapes, dtypes, devices; not values)."""
    tensors = (("boxes", boxes), ("scores", scores), ("ious", ious), ("labels", labels))
    for name, tensor in tensors:
        if not isinstance(tensor, Tensor) and not (name == "labels" and tensor is None):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    if boxes.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"boxes must be float32 or float64, got {boxes.dtype}")
    for name, tensor in tensors[1:]:
        if tensor is None:
            continue
        if tensor.shape != boxes.shape[:1]:
            raise ValueError(f"{name} must have shape ({len(boxes)},), got {tuple(tensor.shape)}")
        if tensor.device != boxes.device:
            raise ValueError(f"{name} are on {tensor.device}, boxes on {boxes.device}")
        if name != "labels" and tensor.dtype != boxes.dtype:
            raise TypeError(f"{name} is {tensor.dtype}, boxes are {boxes.dtype}: need one dtype")
    if labels is not None and (labels.is_floating_point() or labels.dtype == torch.bool):
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if (
        isinstance(iou_threshold, bool)
        or not isinstance(iou_threshold, numbers.Real)
        or math.isnan(iou_threshold)
    ):
        raise ValueError(f"iou_threshold must be a real number, got {iou_threshold!r}")
