"""One refinement loop on every backend: Algorithm 2's early stop (Omega1: a box stops after a step
whose IoU change d has |d| < early_stop; Omega2: d < degrade_tolerance) gives the same boxes,
IoUs and steps per box on each, and the settings come from the model's manifest."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from runtime_backends import BACKENDS, open_test_backend

from iounet.export.manifest import Manifest, load_manifest
from iounet.export.refine_step import RefineParams
from iounet.runtime import refine_boxes
from iounet.runtime.backend import Backend
from iounet.runtime.pipeline import open_backend
from iounet.runtime.torch_backend import TorchBackend

SIZE = (128, 160)
#: name -> (seed of the image and boxes, settings, whether every box stops before the last step).
#: omega1: Omega1 stops boxes after 1, 3 and 4 steps, one box takes all 6; omega1-omega2: Omega1
#: stops one box after 1 step, Omega2 one after 4, the others take all 6; all-stop: every box
#: stops within 2 steps.
SCENARIOS = {
    "omega1": (7, RefineParams(step=4.0, iterations=6, early_stop=2.6e-3), False),
    "omega1-omega2": (9, RefineParams(8.0, 6, early_stop=2e-4, degrade_tolerance=-2e-4), False),
    "all-stop": (7, RefineParams(step=4.0, iterations=6, early_stop=5e-3), True),
}
#: The least distance of an IoU change from a threshold, before its box stops: far above the
#: backends' differences of IoU (about 1e-6), so every backend stops a box at the same step.
MARGIN = 1e-4


@pytest.fixture(scope="module")
def model(exported_model) -> tuple[Path, Manifest, TorchBackend]:
    """The tiny model's checkpoint, its manifest and the PyTorch reference backend on it."""
    checkpoint, folder = exported_model
    return checkpoint, load_manifest(folder), TorchBackend.from_checkpoint(checkpoint)


@pytest.fixture
def backend(request, model) -> Backend:
    """The backend named by the parameter on the tiny model (runtime_backends.open_test_backend)."""
    checkpoint, manifest, _ = model
    sizes = ((64, 64), SIZE, (160, 192))
    return open_test_backend(
        request, request.param, checkpoint, manifest.folder, (1, 16, 64), sizes
    )


def _inputs(seed: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An image (1, 3, 128, 160), 16 boxes within it and their labels."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand((1, 3, *SIZE), generator=generator)
    side = torch.exp(torch.empty(16, 2).uniform_(2, 4.5, generator=generator))
    centre = torch.rand((16, 2), generator=generator) * torch.tensor([SIZE[1], SIZE[0]])
    boxes = torch.cat([centre - side / 2, centre + side / 2], 1)
    boxes = boxes.clamp_min(0).minimum(torch.tensor([SIZE[1], SIZE[0]] * 2, dtype=torch.float32))
    return image, boxes, torch.randint(0, num_classes, (16,), generator=generator)


def _steps_by_the_rules(
    reference: Backend, image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
    params: RefineParams,
) -> torch.Tensor:  # fmt: skip
    """The steps each box takes by Algorithm 2's stop rules, read off the reference's IoU along
    the boxes' paths without stopping (a box's path does not depend on the other boxes)."""
    maps = reference.features(image)
    ious = []

    def objective(current: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rois = torch.cat([current.new_zeros((len(current), 1)), current], dim=1)
        iou, grad = reference.iou_and_grad(maps, rois, labels)
        ious.append(iou)
        return iou, grad

    refine_boxes(boxes, objective, params.step, params.iterations, 0.0, -1e9, SIZE)
    change = torch.stack(ious).diff(dim=0)  # (iterations, boxes)
    stops = (change.abs() < params.early_stop) | (change < params.degrade_tolerance)
    steps = torch.where(stops.any(0), stops.int().argmax(0) + 1, params.iterations)
    moving = torch.arange(params.iterations)[:, None] < steps
    distance = torch.minimum(
        (change.abs() - params.early_stop).abs(), (change - params.degrade_tolerance).abs()
    )
    assert float(distance[moving].min()) > MARGIN, "an IoU change lies at a threshold"
    return steps


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_early_stop_is_the_same_on_every_backend(backend, model, scenario):
    _, manifest, reference = model
    seed, params, all_stop = SCENARIOS[scenario]
    image, boxes, labels = _inputs(seed, manifest.num_classes)
    expected = _steps_by_the_rules(reference, image, boxes, labels, params)
    assert bool((expected < params.iterations).any())
    assert bool((expected < params.iterations).all()) == all_stop

    want = reference.refined(reference.features(image), boxes, labels, SIZE, params)
    features = backend.features(image.to(backend.device))
    calls: list[int] = []
    refined = backend.refined(features, boxes, labels, SIZE, params, on_step=calls.append)
    assert refined.steps.tolist() == expected.tolist()
    torch.testing.assert_close(refined.boxes.cpu(), want.boxes, rtol=0, atol=1e-3)
    torch.testing.assert_close(refined.iou.float().cpu(), want.iou, rtol=0, atol=1e-5)
    # The loop ends after the last box stops where a step waits for its results (on the CPU);
    # steps queued on a GPU all run.
    last = int(expected.max()) if backend.synchronous_steps else params.iterations
    assert calls == list(range(last + 1))
    # refine (a CUDA graph replay on torch-cuda) gives the same boxes.
    boxes_out, iou_out = backend.refine(features, boxes, labels, SIZE, params)
    torch.testing.assert_close(boxes_out, refined.boxes, rtol=0, atol=1e-5)
    torch.testing.assert_close(iou_out, refined.iou, rtol=0, atol=1e-6)
    print(
        f"\n{backend.name} {scenario}: steps {refined.steps.tolist()}, {len(calls)} calls, "
        f"max |boxes - torch| {float((refined.boxes.cpu() - want.boxes).abs().max()):.1e}, "
        f"max |IoU - torch| {float((refined.iou.float().cpu() - want.iou).abs().max()):.1e}"
    )


@pytest.mark.parametrize("name", ["torch", "ort"])
def test_settings_come_from_the_manifest_and_the_call_overrides_them(model, name):
    checkpoint, manifest, _ = model
    _, params, _ = SCENARIOS["omega1"]
    own = dataclasses.replace(manifest, refinement=params)
    if name == "ort":
        backend = open_backend(own, "ort")
    else:
        backend = TorchBackend.from_checkpoint(checkpoint, refinement=own.refinement)
    assert backend.refinement == params
    image, boxes, labels = _inputs(7, manifest.num_classes)
    features = backend.features(image)
    default = backend.refined(features, boxes, labels, SIZE)
    given = backend.refined(features, boxes, labels, SIZE, params)
    assert torch.equal(default.boxes, given.boxes) and torch.equal(default.steps, given.steps)
    export_defaults = backend.refined(features, boxes, labels, SIZE, RefineParams())
    assert not torch.equal(export_defaults.steps, default.steps)
