"""iounet.plugins.cuda on the CUDA library built for the host emulation (plugins/cuda_host).

`make cuda-emulation` builds build/lib/libiounet_prroi_cuda_host.so: the unchanged kernel sources
and C API on CPU threads. The binding's calls (argument structs, workspace sizing, streams, status
handling) run on it with CPU tensors against the float64 oracles, so a ctypes mismatch shows here
rather than on the first GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from nms_oracle import literal_iou_nms
from prroi_cases import BOX_CASES, DEGENERATE_CASES, OUTPUT_SIZES, make_features, make_rois
from prroi_oracle import coord_grad_reference, prroi_pool_reference

from iounet.plugins import cuda

LIBRARY = Path(__file__).resolve().parents[1] / "build" / "lib" / "libiounet_prroi_cuda_host.so"
CASES = {**BOX_CASES, **DEGENERATE_CASES}
# float16 outputs are rounded to half: relative error up to 2^-11 of values around 1.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3}

pytestmark = pytest.mark.skipif(
    not LIBRARY.is_file(), reason=f"{LIBRARY.name} not built: run `make cuda-emulation`"
)


@pytest.fixture(scope="module", autouse=True)
def emulated_library() -> Iterator[None]:
    """iounet.plugins.cuda loads the host-emulation library for this module's tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(cuda.LIBRARY_ENV, str(LIBRARY))
        cuda.load_library.cache_clear()
        yield
    cuda.load_library.cache_clear()


def test_the_library_is_the_host_emulation():
    assert cuda.device_type() == "cpu"
    library = cuda.load_library()
    assert library.iounet_prroi_cuda_probe() == 0
    assert library.iounet_iou_nms_cuda_workspace_bytes(65) == (65 * 2 + 2) * 8
    assert not cuda.available()  # never chosen for CPU tensors by the runtime


def _features(dtype: torch.dtype) -> torch.Tensor:
    return make_features(torch.float32, "cpu").to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("output_size", OUTPUT_SIZES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_coordinate_gradient_match_the_oracle(case, output_size, dtype):
    features = _features(dtype)
    rois = make_rois(CASES[case], torch.float32, "cpu")
    grad_output = torch.randn(
        (rois.shape[0], features.shape[1], *output_size),
        generator=torch.Generator().manual_seed(3),
    ).to(dtype)
    stored = features.double().numpy()
    out = cuda.prroi_pool(features, rois, *output_size, 1.0)
    assert out.dtype == dtype and out.shape == (rois.shape[0], 3, *output_size)
    expected = prroi_pool_reference(stored, rois.double().numpy(), output_size)
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=TOLERANCE[dtype], atol=2e-5)

    grad = cuda.prroi_pool_coord_grad(features, rois, grad_output, *output_size, 1.0)
    assert grad.dtype == torch.float32 and grad.shape == rois.shape
    if case in DEGENERATE_CASES:  # the contract: a box that pools nothing has no gradient
        expected_grad = np.zeros(rois.shape)
    else:
        expected_grad = coord_grad_reference(
            stored, rois.double().numpy(), grad_output.double().numpy(), output_size
        )
    np.testing.assert_allclose(grad.double().numpy(), expected_grad, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", ["inside", "partly_outside", "covers_map", "zero_width"])
def test_feature_gradient_is_the_adjoint_of_the_oracle(case, dtype):
    """<feature_grad(g), f> = <oracle(f), g> for feature maps f: the gradient of a linear map."""
    features = _features(dtype)
    rois = make_rois(CASES[case], torch.float32, "cpu")
    generator = torch.Generator().manual_seed(5)
    grad_output = torch.randn((rois.shape[0], 3, 3, 2), generator=generator).to(dtype)
    grad_features = cuda.prroi_pool_feature_grad(features, rois, grad_output, 3, 2, 1.0)
    assert grad_features.dtype == dtype and grad_features.shape == features.shape
    for _ in range(3):
        probe = torch.randn(features.shape, generator=generator, dtype=torch.float64)
        pooled = prroi_pool_reference(probe.numpy(), rois.double().numpy(), (3, 2))
        expected = float((pooled * grad_output.double().numpy()).sum())
        got = float((grad_features.double() * probe).sum())
        assert got == pytest.approx(expected, rel=TOLERANCE[dtype] * 10, abs=1e-4)


def test_a_status_from_the_library_is_raised_with_its_message():
    features = _features(torch.float32)
    rois = make_rois(CASES["inside"], torch.float32, "cpu")
    with pytest.raises(cuda.CudaLibraryError, match="invalid argument"):
        cuda.prroi_pool(features, rois, 1 << 21, 2, 1.0)


def test_tensors_on_another_device_type_are_refused():
    with pytest.raises(ValueError, match="CPU tensor"):
        cuda.prroi_pool(
            torch.zeros((1, 1, 2, 2), device="meta"), torch.zeros((1, 5), device="meta"), 2, 2, 1.0
        )


def _detections(n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Quarter-pixel boxes, 1/1024 scores, 7 predicted-IoU levels (ties): exact in float32."""
    generator = torch.Generator().manual_seed(seed)
    corner = torch.randint(0, 41, (n, 2), generator=generator).double() / 4
    extent = torch.randint(0, 25, (n, 2), generator=generator).double() / 4
    boxes = torch.cat([corner, corner + extent], dim=1)
    scores = torch.randint(0, 1025, (n,), generator=generator).double() / 1024
    ious = torch.randint(0, 7, (n,), generator=generator).double() / 7
    labels = torch.randint(0, 3, (n,), generator=generator)
    return boxes, scores, ious, labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize("n", [0, 1, 63, 65, 150])
def test_iou_nms_is_algorithm_1(n, with_labels, threshold, dtype):
    boxes, scores, ious, labels = _detections(n, seed=n)
    boxes, scores, ious = (t.to(dtype) for t in (boxes, scores, ious))
    chosen = labels if with_labels else None
    keep, kept_scores = cuda.iou_nms(boxes, scores, ious, chosen, threshold)
    expected_keep, expected_scores = literal_iou_nms(boxes, scores, ious, chosen, threshold)
    assert keep.tolist() == expected_keep
    assert kept_scores.dtype == dtype
    assert kept_scores.double().tolist() == pytest.approx(expected_scores, abs=0)
