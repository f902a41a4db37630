"""TensorRT engines of one-node ONNX graphs of each plugin, on up to the profile's most boxes and
on the mmcv node, against the float64 oracle (GPU only). The case table runs on TensorRT in
test_prroi_backends.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trt_engines
from conftest import tensorrt_missing
from prroi_cases import BOX_CASES, make_features
from prroi_oracle import coord_grad_reference, prroi_pool_reference

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]

CHANNELS = 3
POOLED = (3, 2)
SCALE = 0.75
# (features, rois) dtypes and the tolerance against the oracle.
PRECISIONS = {
    "fp32": (torch.float32, torch.float32, 1e-4),
    "fp16": (torch.float16, torch.float16, 1e-2),
    "fp16-fp32-rois": (torch.float16, torch.float32, 1e-2),
}


@pytest.fixture(scope="module", autouse=True)
def tensorrt() -> None:
    """Skip the module where TensorRT engines cannot run."""
    reason = tensorrt_missing()
    if reason:
        pytest.skip(reason)


def _inputs(boxes: int, precision: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CUDA features, `boxes` rois and a gradient in the precision's dtypes."""
    features_dtype, rois_dtype, _ = PRECISIONS[precision]
    rows = (BOX_CASES["inside"] + BOX_CASES["partly_outside"] + BOX_CASES["covers_map"]) * 10
    rois = torch.tensor(rows[:boxes]).to("cuda", rois_dtype)
    features = make_features(features_dtype, "cuda", shape=(2, CHANNELS, 6, 7))
    generator = torch.Generator().manual_seed(boxes)
    grad_output = torch.randn((boxes, CHANNELS, *POOLED), generator=generator)
    return features, rois, grad_output.to("cuda", features_dtype)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.cpu().double().numpy()


def _assert_close(
    actual: torch.Tensor, expected: np.ndarray, tolerance: float, scaled: bool = False
) -> None:
    """Within `tolerance` (rtol and atol) of the expected values; `scaled`: atol relative to the
    largest of them (at least 1)."""
    atol = tolerance * max(1.0, float(np.abs(expected).max())) if scaled else tolerance
    np.testing.assert_allclose(_numpy(actual), expected, rtol=tolerance, atol=atol)


@pytest.mark.parametrize("boxes", [1, 5, trt_engines.MAX_BOXES])
@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_prroi_pool_engine_matches_oracle(precision, boxes):
    features, rois, _ = _inputs(boxes, precision)
    actual = trt_engines.prroi_pool(features, rois, POOLED, SCALE)
    assert actual.dtype == features.dtype
    expected = prroi_pool_reference(_numpy(features), _numpy(rois), POOLED, SCALE)
    _assert_close(actual, expected, PRECISIONS[precision][2])


@pytest.mark.parametrize("boxes", [1, trt_engines.MAX_BOXES])
@pytest.mark.parametrize("precision", sorted(PRECISIONS))
def test_coord_grad_engine_matches_oracle(precision, boxes):
    features, rois, grad_output = _inputs(boxes, precision)
    actual = trt_engines.prroi_pool_coord_grad(features, rois, grad_output, POOLED, SCALE)
    assert actual.dtype == rois.dtype
    expected = coord_grad_reference(
        _numpy(features), _numpy(rois), _numpy(grad_output), POOLED, SCALE
    )
    _assert_close(actual, expected, PRECISIONS[precision][2], scaled=True)


def test_mmcv_node_builds_with_our_plugin():
    features, rois, _ = _inputs(5, "fp32")
    actual = trt_engines.prroi_pool(features, rois, POOLED, SCALE, domain="mmcv")
    expected = prroi_pool_reference(_numpy(features), _numpy(rois), POOLED, SCALE)
    _assert_close(actual, expected, 1e-4)
