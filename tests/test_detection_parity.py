"""Detection parity: every backend's pipeline gives the PyTorch model's detections, from an image
alone (the joint model's detector, then IoU-NMS and refinement) and from given detections (the
IoU-Net alone)."""

from __future__ import annotations

import pytest
import torch
from runtime_backends import OTHER_BACKENDS, matched_share, open_test_backend

from iounet.export.manifest import load_manifest
from iounet.runtime.bench import synthetic_inputs
from iounet.runtime.pipeline import Detections, Pipeline

#: Backends whose arithmetic differs from the CPU's (TF32 convolutions, other summation orders),
#: so that NMS may break near-ties otherwise: compared by matching boxes, not value by value.
GPU_BACKENDS = ("torch-cuda", "trt")


def _assert_same_detections(
    name: str, found: Detections, expected: Detections, boxes_atol: float
) -> None:
    """`found` are the `expected` detections: the same labels, boxes within `boxes_atol` pixels,
    scores within 1e-5 and IoUs within 1e-4; on a GPU backend, counts within 2 and 90% of the
    boxes either way within half a pixel of one of the others."""
    assert len(expected.boxes) > 0
    if name in GPU_BACKENDS:
        assert abs(len(found.boxes) - len(expected.boxes)) <= 2
        assert matched_share(found.boxes.cpu(), expected.boxes, 0.5) >= 0.9
        assert matched_share(expected.boxes, found.boxes.cpu(), 0.5) >= 0.9
        return
    assert torch.equal(found.labels, expected.labels)
    torch.testing.assert_close(found.boxes, expected.boxes, rtol=0, atol=boxes_atol)
    torch.testing.assert_close(found.scores, expected.scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(found.ious, expected.ious, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    """A (3, 96, 128) image, padded to 160x192 after the resize to the model's short side."""
    return torch.rand((3, 96, 128), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def detected(exported_joint_model, image) -> Detections:
    """The PyTorch joint model's detections on `image`."""
    checkpoint, folder = exported_joint_model
    return Pipeline.from_model(folder, "torch", checkpoint=checkpoint)(image)


@pytest.mark.parametrize("name", OTHER_BACKENDS)
def test_detections_from_an_image_match_the_pytorch_model(
    request, exported_joint_model, image, detected, name
):
    checkpoint, folder = exported_joint_model
    sizes = ((64, 64), (160, 192), (224, 256))
    backend = open_test_backend(request, name, checkpoint, folder, (1, 64, 256), sizes)
    found = Pipeline.for_manifest(load_manifest(folder), backend)(image.to(backend.device))
    _assert_same_detections(name, found, detected, boxes_atol=2e-3)


@pytest.fixture(scope="module")
def given():
    """400 detections on a 100x140 image (padded to 128x160 inside)."""
    return synthetic_inputs(100, 140, 400, 5, seed=2)


@pytest.fixture(scope="module")
def refined(exported_model, given) -> Detections:
    """The PyTorch model's IoU-NMS and refinement of the given detections."""
    checkpoint, folder = exported_model
    pipeline = Pipeline.from_model(folder, "torch", checkpoint=checkpoint)
    return pipeline(given.image, given.boxes, given.scores, given.labels)


@pytest.mark.parametrize("name", OTHER_BACKENDS)
def test_given_detections_match_the_pytorch_model(request, exported_model, given, refined, name):
    checkpoint, folder = exported_model
    sizes = ((64, 64), (128, 160), (160, 192))
    backend = open_test_backend(request, name, checkpoint, folder, (1, 64, 512), sizes)
    image = given.image.to(backend.device)
    found = Pipeline.for_manifest(load_manifest(folder), backend)(
        image, given.boxes, given.scores, given.labels
    )
    _assert_same_detections(name, found, refined, boxes_atol=1e-3)
    assert float(found.boxes[:, 2].max()) <= 140 and float(found.boxes[:, 3].max()) <= 100
