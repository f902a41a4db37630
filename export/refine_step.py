"""One step of optimization-based refinement (IoU-Net, Algorithm 2), and its settings.

The step is one tensor function used by ``iounet.runtime.refine_boxes`` and by the exported
``refine_step`` graph, so the deployed refinement and the Python one are the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

#: boxes (K, 4) -> (predicted IoU (K,), its gradient w.r.t. the four box coordinates (K, 4)):
#: x0, y0, x1, y1 for IoU-Net, x, y, w, h for pytracking's refinement.
Objective = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class RefineParams:
    """Algorithm 2's settings: step size lambda, iterations T, Omega1 and Omega2 of the paper."""

    step: float = 0.5
    iterations: int = 5
    early_stop: float = 1e-3
    degrade_tolerance: float = -1e-2


def refine_step(
    boxes: Tensor,
    iou: Tensor,
    grad: Tensor,
    active: Tensor,
    objective: Objective,
    step: float | Tensor,
    early_stop: float | Tensor,
    degrade_tolerance: float | Tensor,
    upper: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Move the active boxes (K, 4) up the gradient and apply the stop test.

    An active box moves by ``step * grad * (w, h, w, h)`` (w, h its width and height, clamped
    at 0), clipped to ``[0, upper]`` when ``upper`` = (width, height, width, height) is given;
    the objective is evaluated at the new boxes, and a box stays active while its IoU change d has
    ``|d| >= early_stop`` and ``d >= degrade_tolerance`` (a box that stops keeps its last step).
    Returns the boxes, their IoU and gradient, and the active mask after the step.
    """
    size = (boxes[:, 2:] - boxes[:, :2]).clamp_min(0).repeat(1, 2)
    moved = boxes + step * grad * size
    if upper is not None:
        moved = moved.clamp_min(0).minimum(upper)
    boxes = torch.where(active[:, None], moved, boxes)
    new_iou, new_grad = objective(boxes)
    change = new_iou - iou
    still = active & (change.abs() >= early_stop) & (change >= degrade_tolerance)
    return boxes, new_iou, new_grad, still
