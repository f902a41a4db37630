"""Box refinement (IoU-Net, Algorithm 2) with an analytic objective: the true IoU with a box."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DEVICES

from iounet.runtime import refine_boxes

GROUND_TRUTH = (100.0, 80.0, 260.0, 200.0)


def true_iou(boxes: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of each box (N, 4) with the box ``target`` (4,)."""
    width = (torch.minimum(boxes[:, 2], target[2]) - torch.maximum(boxes[:, 0], target[0])).clamp(
        min=0
    )
    height = (torch.minimum(boxes[:, 3], target[3]) - torch.maximum(boxes[:, 1], target[1])).clamp(
        min=0
    )
    inter = width * height
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + (target[2] - target[0]) * (target[3] - target[1]) - inter)


def true_iou_grad(boxes: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d IoU / d (x0, y0, x1, y1), in closed form, where no coordinate equals the target's.

    With I = wi * hi the intersection, A the box's area and U = A + G - I the union,
    IoU = I / U gives dIoU = (dI * U - I * (dA - dI)) / U**2 = (dI * (U + I) - I * dA) / U**2,
    where dA = (-h, -w, h, w) and dI = (-hi [x0 > tx0], -wi [y0 > ty0], hi [x1 < tx1],
    wi [y1 < ty1]) when the boxes overlap (I > 0); without overlap the gradient is 0.
    """
    x0, y0, x1, y1 = boxes.unbind(1)
    wi = (torch.minimum(x1, target[2]) - torch.maximum(x0, target[0])).clamp(min=0)
    hi = (torch.minimum(y1, target[3]) - torch.maximum(y0, target[1])).clamp(min=0)
    inter = wi * hi
    union = (x1 - x0) * (y1 - y0) + (target[2] - target[0]) * (target[3] - target[1]) - inter
    d_area = torch.stack([-(y1 - y0), -(x1 - x0), y1 - y0, x1 - x0], 1)
    d_inter = (
        torch.stack(
            [
                -hi * (x0 > target[0]),
                -wi * (y0 > target[1]),
                hi * (x1 < target[2]),
                wi * (y1 < target[3]),
            ],
            1,
        )
        * (inter > 0)[:, None]
    )
    return (d_inter * (union + inter)[:, None] - inter[:, None] * d_area) / union[:, None] ** 2


def analytic(target: torch.Tensor):
    """``iou_and_grad`` for the true IoU with ``target``, in closed form."""

    def iou_and_grad(boxes):
        return true_iou(boxes, target), true_iou_grad(boxes, target)

    return iou_and_grad


def by_autograd(target: torch.Tensor):
    """``iou_and_grad`` for the true IoU with ``target``, through torch autograd."""

    def iou_and_grad(boxes):
        boxes = boxes.detach().requires_grad_()
        with torch.enable_grad():
            iou = true_iou(boxes, target)
            (grad,) = torch.autograd.grad(iou.sum(), boxes)
        return iou.detach(), grad

    return iou_and_grad


class Recorder:
    """Wraps an ``iou_and_grad`` and keeps a copy of every input it is called with."""

    def __init__(self, function):
        self.function = function
        self.calls = []

    def __call__(self, boxes):
        self.calls.append(boxes.clone())
        return self.function(boxes)


def jittered_boxes(n, device, seed=0, spread=0.12):
    generator = torch.Generator().manual_seed(seed)
    target = torch.tensor(GROUND_TRUTH, dtype=torch.float64)
    size = (target[2:] - target[:2]).repeat(2)
    boxes = target + spread * size * torch.randn((n, 4), generator=generator, dtype=torch.float64)
    lower = torch.minimum(boxes[:, :2], boxes[:, 2:] - 1)
    upper = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    return torch.cat([lower, upper], 1).to(device), target.to(device)


# ---- the objective ------------------------------------------------------------------------------


def test_closed_form_gradient_matches_autograd_and_finite_differences():
    boxes, target = jittered_boxes(300, "cpu", seed=1, spread=0.3)
    boxes = torch.cat([boxes, torch.tensor([[300.0, 300.0, 320.0, 330.0]], dtype=torch.float64)])
    closed = true_iou_grad(boxes, target)
    _, autograd = by_autograd(target)(boxes)
    torch.testing.assert_close(closed, autograd, rtol=1e-12, atol=1e-15)
    eps = 1e-6
    for k in range(4):
        shift = torch.zeros(4, dtype=torch.float64)
        shift[k] = eps
        central = (true_iou(boxes + shift, target) - true_iou(boxes - shift, target)) / (2 * eps)
        torch.testing.assert_close(closed[:, k], central, rtol=1e-5, atol=1e-9)
    assert closed[-1].abs().max() == 0  # no overlap: no gradient


# ---- Algorithm 2 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("objective", [analytic, by_autograd])
def test_refinement_moves_boxes_toward_the_ground_truth(objective, device):
    boxes, target = jittered_boxes(200, device)
    before = true_iou(boxes, target)
    recorder = Recorder(objective(target))
    refined, ious = refine_boxes(boxes, recorder, iterations=5)
    after = true_iou(refined, target)
    assert bool((after > before).all())
    assert float(after.mean() - before.mean()) > 0.02
    # The IoU of a box never falls while it moves (each call sees the boxes after one step).
    steps = torch.stack([true_iou(call, target) for call in recorder.calls])
    assert bool((steps.diff(dim=0) >= -1e-12).all())
    torch.testing.assert_close(ious, after, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_one_step_by_hand(device):
    # Box (0, 0, 2, 2), ground truth (1, 1, 3, 3): I = 1, U = 7, A = 4, dA = (-2, -2, 2, 2),
    # dI = (0, 0, 1, 1), so dIoU = (dI * 8 - dA) / 49 = (2, 2, 6, 6) / 49. The step scales it by
    # w = h = 2 and step = 0.5: the box moves by (2, 2, 6, 6) / 49.
    target = torch.tensor([1.0, 1.0, 3.0, 3.0], dtype=torch.float64, device=device)
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=torch.float64, device=device)
    refined, ious = refine_boxes(boxes, analytic(target), step=0.5, iterations=1)
    expected = torch.tensor([[2 / 49, 2 / 49, 2 + 6 / 49, 2 + 6 / 49]], dtype=torch.float64)
    torch.testing.assert_close(refined.cpu(), expected, rtol=1e-15, atol=1e-15)
    side = 2 + 6 / 49 - 1
    inter = side * side
    area = (2 + 4 / 49) ** 2
    assert ious.item() == pytest.approx(inter / (area + 4 - inter), rel=1e-14)


def test_gradient_is_scaled_by_width_and_height():
    # w = 20, h = 40: the step is 0.5 * (0.1 * 20, -0.2 * 40, 0.3 * 20, 0.05 * 40) = (1, -4, 3, 1).
    def constant(boxes):
        grad = torch.tensor([[0.1, -0.2, 0.3, 0.05]], dtype=boxes.dtype)
        return boxes[:, 0], grad.clone()

    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]], dtype=torch.float64)
    refined, _ = refine_boxes(boxes, constant, step=0.5, iterations=1)
    torch.testing.assert_close(
        refined, torch.tensor([[11.0, 16.0, 33.0, 61.0]], dtype=torch.float64)
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("iterations", [0, 1, 5, 8])
def test_called_once_per_iteration_plus_once_with_all_boxes(iterations, device):
    boxes, target = jittered_boxes(17, device)
    recorder = Recorder(analytic(target))
    refined, ious = refine_boxes(boxes, recorder, iterations=iterations)
    assert len(recorder.calls) == iterations + 1
    assert all(call.shape == (17, 4) and call.device == boxes.device for call in recorder.calls)
    torch.testing.assert_close(recorder.calls[-1], refined, rtol=0, atol=0)
    torch.testing.assert_close(recorder.calls[0], boxes, rtol=0, atol=0)
    if iterations == 0:
        torch.testing.assert_close(refined, boxes, rtol=0, atol=0)
        torch.testing.assert_close(ious, true_iou(boxes, target), rtol=0, atol=0)


def affine_objective(slopes: torch.Tensor):
    """Every box moves right (grad (1, 0, 1, 0)); box k's IoU is ``slopes[k] * x0``."""

    def iou_and_grad(boxes):
        grad = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=boxes.dtype).expand(len(boxes), 4)
        return slopes * boxes[:, 0], grad.clone()

    return iou_and_grad


def test_stop_rules_keep_the_last_step_then_freeze():
    # Width 10 and step 0.5: each step moves a box right by 5 and changes its IoU by 5 * slope.
    slopes = torch.tensor([0.01, 1e-5, -0.01, -0.001, -0.003])
    # 0.05: goes on; 5e-5 < early_stop: stops; -0.05 < degrade_tolerance: stops;
    # -0.005: a small loss within the tolerance, goes on; -0.015: stops.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(5, 1)
    recorder = Recorder(affine_objective(slopes))
    refined, ious = refine_boxes(boxes, recorder, step=0.5, iterations=4)
    moves = torch.tensor([4, 1, 1, 4, 1], dtype=torch.float32)
    torch.testing.assert_close(refined[:, 0], 5 * moves)
    torch.testing.assert_close(refined[:, 2], 10 + 5 * moves)
    torch.testing.assert_close(refined[:, 1::2], boxes[:, 1::2])
    torch.testing.assert_close(ious, slopes * refined[:, 0])
    # A stopped box is still passed, unmoved, to every later call.
    for call in recorder.calls[2:]:
        torch.testing.assert_close(call[[1, 2, 4], 0], torch.full((3,), 5.0))


def test_stop_thresholds_are_arguments():
    slopes = torch.tensor([1e-5, -0.01])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(2, 1)
    refined, _ = refine_boxes(
        boxes, affine_objective(slopes), iterations=3, early_stop=0.0, degrade_tolerance=-1.0
    )
    torch.testing.assert_close(refined[:, 0], torch.tensor([15.0, 15.0]))


@pytest.mark.parametrize("device", DEVICES)
def test_clipped_to_the_image_after_each_step(device):
    def outward(boxes):
        grad = torch.tensor([-1.0, -1.0, 1.0, 1.0], device=boxes.device).expand(len(boxes), 4)
        return boxes[:, 2] - boxes[:, 0], grad.clone()  # the width grows: keeps going

    boxes = torch.tensor([[2.0, 3.0, 12.0, 13.0], [60.0, 30.0, 76.0, 46.0]], device=device)
    recorder = Recorder(outward)
    refined, ious = refine_boxes(boxes, recorder, iterations=4, image_size=(50, 80))
    # Step 1: box 0 grows by 5 on every side -> (-3, -2, 17, 18), clipped to (0, 0, 17, 18).
    torch.testing.assert_close(
        recorder.calls[1][0], torch.tensor([0.0, 0.0, 17.0, 18.0]).to(device)
    )
    for call in recorder.calls[1:]:
        assert bool((call >= 0).all())
        assert bool((call[:, 0::2] <= 80).all()) and bool((call[:, 1::2] <= 50).all())
    assert refined[1].tolist() == [0.0, 0.0, 80.0, 50.0]
    torch.testing.assert_close(ious, refined[:, 2] - refined[:, 0])


@pytest.mark.parametrize("device", DEVICES)
def test_no_boxes(device):
    recorder = Recorder(analytic(torch.tensor(GROUND_TRUTH, device=device)))
    refined, ious = refine_boxes(torch.zeros((0, 4), device=device), recorder, iterations=3)
    assert refined.shape == (0, 4) and ious.shape == (0,)
    assert len(recorder.calls) == 4


def test_inputs_are_not_modified_and_dtype_is_kept():
    boxes, target = jittered_boxes(5, "cpu")
    copy = boxes.clone()
    refined, ious = refine_boxes(boxes, analytic(target.float()))
    torch.testing.assert_close(boxes, copy, rtol=0, atol=0)
    assert refined.dtype == ious.dtype == torch.float64


# ---- bad arguments ------------------------------------------------------------------------------

BOXES = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
TARGET = torch.tensor([1.0, 1.0, 5.0, 5.0])


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"boxes": BOXES[0]}, ValueError, "boxes"),
        ({"boxes": BOXES.long()}, TypeError, "boxes"),
        ({"boxes": BOXES.tolist()}, TypeError, "boxes"),
        ({"boxes": torch.tensor([[0.0, math.nan, 1.0, 1.0]])}, ValueError, "boxes"),
        ({"iou_and_grad": None}, TypeError, "iou_and_grad"),
        ({"step": 0.0}, ValueError, "step"),
        ({"step": -0.5}, ValueError, "step"),
        ({"step": math.inf}, ValueError, "step"),
        ({"step": "0.5"}, TypeError, "step"),
        ({"iterations": -1}, ValueError, "iterations"),
        ({"iterations": 2.0}, TypeError, "iterations"),
        ({"iterations": True}, TypeError, "iterations"),
        ({"early_stop": -1e-3}, ValueError, "early_stop"),
        ({"early_stop": math.nan}, ValueError, "early_stop"),
        ({"degrade_tolerance": 0.1}, ValueError, "degrade_tolerance"),
        ({"image_size": (50,)}, TypeError, "image_size"),
        ({"image_size": (50, 0)}, ValueError, "image_size"),
        ({"image_size": (50, math.inf)}, ValueError, "image_size"),
        ({"image_size": "50x80"}, TypeError, "image_size"),
    ],
)
def test_bad_arguments(arguments, error, match):
    call = {"boxes": BOXES, "iou_and_grad": analytic(TARGET), **arguments}
    with pytest.raises(error, match=match):
        refine_boxes(**call)


@pytest.mark.parametrize(
    ("returned", "error", "match"),
    [
        (lambda b: (torch.zeros(len(b)),), TypeError, "pair"),
        (lambda b: (torch.zeros(len(b) + 1), torch.zeros(len(b), 4)), ValueError, "iou"),
        (lambda b: (torch.zeros(len(b)), torch.zeros(len(b), 5)), ValueError, "grad"),
        (lambda b: (torch.zeros(len(b)), [[0.0] * 4] * len(b)), TypeError, "grad"),
        (lambda b: (torch.full((len(b),), math.nan), torch.zeros(len(b), 4)), ValueError, "iou"),
        (lambda b: (torch.zeros(len(b)), torch.full((len(b), 4), math.inf)), ValueError, "grad"),
    ],
)
def test_bad_iou_and_grad_results(returned, error, match):
    with pytest.raises(error, match=match):
        refine_boxes(BOXES, returned, iterations=2)
