"""One step of pytracking's box refinement (ATOM/DiMP ``optimize_boxes``, PrDiMP
``optimize_boxes_relative``), its settings, and the box parametrizations.

The step functions are the one definition used by the runtime's eager loop and by the exported
``refine_step_*`` graphs. The objective gives the IoU and its gradient w.r.t. (x, y, w, h) written
out (``AtomIoUNet.iou_and_box_gradient``); the relative step chains that gradient through
``rel_to_rect`` by hand, so no step needs autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from iounet.export.refine_step import Objective

PARAMETRIZATIONS = ("atom", "relative")


@dataclass(frozen=True)
class TrackingRefineParams:
    """pytracking's box_refinement_iter, box_refinement_step_length (xy, wh),
    box_refinement_step_decay, and the parametrization ("atom": ATOM/DiMP, "relative": PrDiMP)."""

    iterations: int = 5
    step_length: tuple[float, float] = (1.0, 1.0)
    step_decay: float = 1.0
    parametrization: str = "atom"

    def __post_init__(self) -> None:
        if self.parametrization not in PARAMETRIZATIONS:
            raise ValueError(
                f"parametrization must be one of {PARAMETRIZATIONS}, got {self.parametrization!r}"
            )
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if len(self.step_length) != 2:
            raise ValueError(f"step_length must be (xy, wh), got {self.step_length!r}")


def step_pair(step_length: float | tuple[float, float] | list[float]) -> tuple[float, float]:
    """A scalar step length or an (xy, wh) pair -> the pair."""
    if isinstance(step_length, (int, float)):
        return float(step_length), float(step_length)
    values = tuple(float(v) for v in step_length)
    if len(values) != 2:
        raise ValueError(f"step_length must be a number or an (xy, wh) pair, got {step_length!r}")
    return values  # type: ignore[return-value]


def step_vector(pair: tuple[float, float], like: Tensor) -> Tensor:
    """(xy, wh) -> the (4,) multiplier (xy, xy, wh, wh) of a step."""
    return torch.tensor([pair[0], pair[0], pair[1], pair[1]], dtype=like.dtype, device=like.device)


def rect_to_rel(boxes: Tensor, sz_norm: Tensor) -> Tensor:
    """(x, y, w, h) -> (cx / sw, cy / sh, log w, log h), pytracking's rect_to_rel."""
    centre = boxes[..., :2] + 0.5 * boxes[..., 2:]
    return torch.cat([centre / sz_norm, torch.log(boxes[..., 2:])], dim=-1)


def rel_to_rect(rel: Tensor, sz_norm: Tensor) -> Tensor:
    """The inverse of ``rect_to_rel`` (pytracking's rel_to_rect)."""
    size = torch.exp(rel[..., 2:])
    return torch.cat([rel[..., :2] * sz_norm - 0.5 * size, size], dim=-1)


def relative_gradient(grad: Tensor, boxes: Tensor, sz_norm: Tensor) -> Tensor:
    """d/d(x, y, w, h) at ``boxes`` -> d/d(rel) through rel_to_rect (x = cx_rel sw - w / 2,
    w = exp(log w))."""
    position = grad[..., :2] * sz_norm
    size = boxes[..., 2:] * (grad[..., 2:] - 0.5 * grad[..., :2])
    return torch.cat([position, size], dim=-1)


def atom_step(boxes: Tensor, objective: Objective, step: Tensor) -> tuple[Tensor, Tensor]:
    """optimize_boxes' iteration: IoU at `boxes` and boxes + step * dIoU/dbox * (w, h, w, h)."""
    iou, grad = objective(boxes)
    return boxes + step * grad * boxes[..., 2:].repeat(1, 2), iou


def relative_step(
    rel: Tensor, sz_norm: Tensor, objective: Objective, step: Tensor
) -> tuple[Tensor, Tensor]:
    """optimize_boxes_relative's iteration: IoU at rel_to_rect(rel) and rel + step * dIoU/drel."""
    boxes = rel_to_rect(rel, sz_norm)
    iou, grad = objective(boxes)
    return rel + step * relative_gradient(grad, boxes, sz_norm), iou


#: (state (K, 4), sz_norm (2,), step (4,)) -> (state after the step, IoU at the state).
TrackingStep = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


def eager_step(objective: Objective, parametrization: str) -> TrackingStep:
    """The step of `parametrization` on `objective`, as the refinement loop calls it."""
    if parametrization == "atom":
        return lambda state, sz_norm, step: atom_step(state, objective, step)
    return lambda state, sz_norm, step: relative_step(state, sz_norm, objective, step)
