"""Optimization-based box refinement (IoU-Net, Algorithm 2): gradient ascent on predicted IoU."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from iounet.export.refine_step import refine_step

__all__ = ["IoUAndGrad", "refine_boxes"]

# boxes (N, 4) -> (predicted IoU (N,), its gradient w.r.t. x0, y0, x1, y1 (N, 4)).
IoUAndGrad = Callable[[Tensor], tuple[Tensor, Tensor]]


def refine_boxes(
    boxes: Tensor,
    iou_and_grad: IoUAndGrad,
    step: float = 0.5,
    iterations: int = 5,
    early_stop: float = 1e-3,
    degrade_tolerance: float = -1e-2,
    image_size: Sequence[float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Refine boxes (N, 4) ``x0, y0, x1, y1`` by gradient ascent on ``iou_and_grad``.

    Each of ``iterations`` steps moves every active box by ``step * grad * (w, h, w, h)``,
    with w and h its current width and height (clamped at 0), then clips it to the image
    ``image_size = (height, width)`` when given. A box stops after a step whose change of IoU
    ``d`` has ``|d| < early_stop`` or ``d < degrade_tolerance``; it keeps that step.

    ``iou_and_grad`` is called ``iterations + 1`` times, each time with all N boxes (a new
    (N, 4) tensor of the boxes' dtype and device; stopped boxes are passed unchanged), so that
    its input shape never changes. It must return tensors of shapes (N,) and (N, 4) on the boxes'
    device with finite values. Returns the refined boxes and the IoU at them (the last call's),
    both in the boxes' dtype.
    """
    _check_boxes(boxes)
    if not callable(iou_and_grad):
        raise TypeError(f"iou_and_grad must be callable, got {type(iou_and_grad).__name__}")
    step = _check_real("step", step, low=0.0, low_inclusive=False)
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral):
        raise TypeError(f"iterations must be an int, got {iterations!r}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    early_stop = _check_real("early_stop", early_stop, low=0.0)
    degrade_tolerance = _check_real("degrade_tolerance", degrade_tolerance, high=0.0)
    upper = _image_upper(image_size, boxes)

    boxes = boxes.detach().clone()
    iou, grad = _evaluate(iou_and_grad, boxes)
    active = torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for _ in range(iterations):
        boxes, iou, grad, active = refine_step(
            boxes,
            iou,
            grad,
            active,
            lambda current: _evaluate(iou_and_grad, current),
            step,
            early_stop,
            degrade_tolerance,
            upper,
        )
    return boxes, iou


def _evaluate(iou_and_grad: IoUAndGrad, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Call ``iou_and_grad`` on a copy of ``boxes`` and check what it returns."""
    result = iou_and_grad(boxes.clone())
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise TypeError("iou_and_grad must return a pair (iou, grad)")
    iou, grad = result
    n = boxes.shape[0]
    for name, value, shape in (("iou", iou, (n,)), ("grad", grad, (n, 4))):
        if not isinstance(value, Tensor):
            raise TypeError(f"iou_and_grad returned {name} of type {type(value).__name__}")
        if tuple(value.shape) != shape:
            raise ValueError(
                f"iou_and_grad returned {name} of shape {tuple(value.shape)}, expected {shape}"
            )
        if value.device != boxes.device:
            raise ValueError(
                f"iou_and_grad returned {name} on {value.device}, expected {boxes.device}"
            )
        if n and not bool(torch.isfinite(value).all()):
            raise ValueError(f"iou_and_grad returned non-finite {name}")
    return iou.detach().to(boxes.dtype), grad.detach().to(boxes.dtype)


def _check_boxes(boxes: Tensor) -> None:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"boxes must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise TypeError(f"boxes must be a floating tensor, got {boxes.dtype}")
    if boxes.numel() and not bool(torch.isfinite(boxes).all()):
        raise ValueError("boxes must be finite (no NaN or Inf)")


def _check_real(
    name: str,
    value: float,
    low: float = -math.inf,
    high: float = math.inf,
    low_inclusive: bool = True,
) -> float:
    """``value`` as a float after checking it is a finite real number in the given range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    above = value >= low if low_inclusive else value > low
    if not (math.isfinite(value) and above and value <= high):
        bound = ("[" if low_inclusive else "(") + f"{low:g}, {high:g}]"
        raise ValueError(f"{name} must be finite and in {bound}, got {value!r}")
    return value


def _image_upper(image_size: Sequence[float] | None, boxes: Tensor) -> Tensor | None:
    """The upper clip bound ``(width, height, width, height)`` for ``image_size``, or None."""
    if image_size is None:
        return None
    if (
        not isinstance(image_size, Sequence)
        or len(image_size) != 2
        or any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in image_size)
    ):
        raise TypeError(f"image_size must be a pair (height, width), got {image_size!r}")
    height, width = (float(v) for v in image_size)
    if not all(math.isfinite(v) and v > 0 for v in (height, width)):
        raise ValueError(f"image_size must be positive and finite, got {image_size!r}")
    return torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
