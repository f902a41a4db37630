"""Box refinement by gradient ascent on predicted IoU: the one loop every backend runs.

``run_refinement`` is the loop: the iterations, each iteration's step length, which boxes are
still active and the steps each box took. The caller supplies the step: IoU-Net's Algorithm 2
on an objective (``algorithm2_step``) or a backend's fused step (a graph or engine computing the
same ``refine_step``), or a step of pytracking's refinement (``iounet.runtime.tracker_refiner``).
``run_algorithm2`` starts Algorithm 2 on a step; ``refine_boxes`` is Algorithm 2 on an objective.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from iounet.export.manifest_format import range_problem
from iounet.export.refine_step import Objective, RefineParams, refine_step

__all__ = [
    "Objective",
    "RefineState",
    "Refined",
    "Step",
    "StepHook",
    "StepSettings",
    "algorithm2_settings",
    "algorithm2_step",
    "refine_boxes",
    "run_algorithm2",
    "run_refinement",
]

#: Called with the step index after the IoU and gradient at the start (0) and after each step.
StepHook = Callable[[int], None]


@dataclass(frozen=True)
class StepSettings:
    """What a step reads besides the boxes, as tensors on the boxes' device, named as the inputs
    of the exported step graphs: the step length (Algorithm 2's lambda (1,), or one per
    coordinate (4,)), Algorithm 2's stop thresholds Omega1 and Omega2 (1,) each, and the clip
    bound ``upper`` (4,) = (width, height, width, height); None where a step has none."""

    step: Tensor
    early_stop: Tensor | None = None
    degrade_tolerance: Tensor | None = None
    upper: Tensor | None = None

    def feeds(self) -> dict[str, Tensor]:
        """The settings that are set, by input name."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return {name: value for name, value in values.items() if value is not None}


@dataclass(frozen=True)
class RefineState:
    """The boxes between two steps: (K, 4) in the step's parametrization, their IoU (K,), its
    gradient (K, 4) where the step reads it, and which boxes still move (K,) bool."""

    boxes: Tensor
    iou: Tensor
    grad: Tensor | None
    active: Tensor


#: One iteration: the state and this iteration's settings -> the state after it.
Step = Callable[[RefineState, StepSettings], RefineState]


@dataclass(frozen=True)
class Refined:
    """The refined boxes (K, 4), their IoU (K,) and the number of steps each box took (K,)."""

    boxes: Tensor
    iou: Tensor
    steps: Tensor


def run_refinement(
    start: RefineState,
    step: Step,
    settings: StepSettings,
    iterations: int,
    decay: float = 1.0,
    on_step: StepHook | None = None,
    settle: bool = False,
) -> Refined:
    """`iterations` steps from `start`; iteration i (from 0) reads `settings` with the step
    length times ``decay ** i``.

    A box takes the step of each iteration it starts active. ``on_step(i)`` is called after step
    i (from 1). With `settle` the loop ends once no box is active (the later steps would move
    none); reading the mask waits for the device, so steps queued on a GPU leave it off.
    """
    state = start
    steps = torch.zeros(start.active.shape, dtype=torch.int64, device=start.active.device)
    for index in range(iterations):
        if settle and not bool(state.active.any()):
            break
        steps += state.active
        scale = decay**index
        current = (
            settings if scale == 1 else dataclasses.replace(settings, step=settings.step * scale)
        )
        state = step(state, current)
        if on_step is not None:
            on_step(index + 1)
    return Refined(state.boxes, state.iou, steps)


def algorithm2_settings(
    params: RefineParams, image_size: Sequence[float] | None, like: Tensor
) -> StepSettings:
    """Algorithm 2's settings in the dtype and on the device of `like`, clipping to the image
    ``image_size = (height, width)`` when given. TypeError or ValueError for a setting out of
    range: step > 0, iterations an int >= 0, early_stop >= 0, degrade_tolerance <= 0, a
    positive image size."""
    step = _check_real("step", params.step, low=0.0, low_open=True)
    iterations = params.iterations
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral):
        raise TypeError(f"iterations must be an int, got {iterations!r}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    early_stop = _check_real("early_stop", params.early_stop, low=0.0)
    degrade_tolerance = _check_real("degrade_tolerance", params.degrade_tolerance, high=0.0)
    upper = _image_upper(image_size, like)

    def value(number: float) -> Tensor:
        return torch.tensor([number], dtype=like.dtype, device=like.device)

    return StepSettings(value(step), value(early_stop), value(degrade_tolerance), upper)


def algorithm2_step(objective: Objective) -> Step:
    """Algorithm 2's step (``refine_step``) with `objective` at the moved boxes."""

    def step(state: RefineState, settings: StepSettings) -> RefineState:
        return RefineState(
            *refine_step(
                state.boxes,
                state.iou,
                state.grad,
                state.active,
                objective,
                settings.step,
                settings.early_stop,
                settings.degrade_tolerance,
                settings.upper,
            )
        )

    return step


def run_algorithm2(
    boxes: Tensor,
    objective: Objective,
    settings: StepSettings,
    iterations: int,
    step: Step | None = None,
    on_step: StepHook | None = None,
    settle: bool = False,
) -> Refined:
    """Algorithm 2 on boxes (K, 4) ``x0, y0, x1, y1``: `objective` at the boxes, ``on_step(0)``,
    then ``run_refinement`` with `step` (by default ``algorithm2_step(objective)``; a backend's
    fused step computes the same) and every box active at the start."""
    iou, grad = objective(boxes)
    if on_step is not None:
        on_step(0)
    active = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    start = RefineState(boxes, iou, grad, active)
    advance = step or algorithm2_step(objective)
    return run_refinement(start, advance, settings, iterations, on_step=on_step, settle=settle)


def refine_boxes(
    boxes: Tensor,
    iou_and_grad: Objective,
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
    params = RefineParams(step, iterations, early_stop, degrade_tolerance)
    settings = algorithm2_settings(params, image_size, boxes)

    def objective(current: Tensor) -> tuple[Tensor, Tensor]:
        return _evaluate(iou_and_grad, current)

    refined = run_algorithm2(boxes.detach().clone(), objective, settings, iterations)
    return refined.boxes, refined.iou


def _evaluate(iou_and_grad: Objective, boxes: Tensor) -> tuple[Tensor, Tensor]:
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
    name: str, value: float, low: float = -math.inf, high: float = math.inf, low_open: bool = False
) -> float:
    """``value`` as a float after checking it is a finite real number in [low, high] (low
    excluded when `low_open`; the manifest's rule, ``range_problem``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    problem = range_problem(value, low, high, low_open)
    if problem:
        raise ValueError(f"{name} must {problem}, got {value!r}")
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
