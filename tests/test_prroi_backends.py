"""The native CPU kernels and the ONNX Runtime ops against the float64 oracle."""

from __future__ import annotations

import functools

import numpy as np
import ort_graphs
import pytest
import torch
from prroi_cases import (
    BOX_CASES,
    DEGENERATE_CASES,
    OUTPUT_SIZES,
    TOLERANCE,
    make_features,
    make_rois,
)
from prroi_oracle import coord_grad_reference, prroi_pool_reference

from iounet.plugins import native

BACKENDS = {
    f"native-{layout}": (
        functools.partial(native.prroi_pool, layout=layout),
        functools.partial(native.prroi_pool_coord_grad, layout=layout),
    )
    for layout in ("planar", "channels_last")
}
BACKENDS["onnxruntime"] = (ort_graphs.prroi_pool, ort_graphs.prroi_pool_coord_grad)
# ONNX Runtime graphs are float32; the native kernels take float32 and float64.
BACKEND_DTYPES = [
    *((name, dtype) for name in BACKENDS if name != "onnxruntime" for dtype in TOLERANCE),
    ("onnxruntime", torch.float32),
]
ALL_CASES = {**BOX_CASES, **DEGENERATE_CASES}


@pytest.mark.parametrize(("backend", "dtype"), BACKEND_DTYPES)
def test_worked_example(backend, dtype):
    pool, _ = BACKENDS[backend]
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=dtype)
    rois = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0]], dtype=dtype)
    expected = np.array([[[[1.75, 2.25], [2.75, 3.25]]]])
    np.testing.assert_allclose(
        pool(features, rois, 2).double().numpy(), expected, rtol=0, atol=1e-6
    )


@pytest.mark.parametrize(("backend", "dtype"), BACKEND_DTYPES)
@pytest.mark.parametrize("spatial_scale", [1.0, 0.5])
@pytest.mark.parametrize("output_size", OUTPUT_SIZES)
@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_forward_matches_oracle(case, output_size, spatial_scale, backend, dtype):
    pool, _ = BACKENDS[backend]
    rows = ALL_CASES[case]
    features = make_features(dtype, "cpu")
    expected = prroi_pool_reference(
        features.double().numpy(), np.array(rows), output_size, spatial_scale
    )
    actual = pool(features, make_rois(rows, dtype, "cpu"), output_size, spatial_scale)
    assert actual.dtype == dtype
    np.testing.assert_allclose(actual.double().numpy(), expected, **TOLERANCE[dtype])


@pytest.mark.parametrize(("backend", "dtype"), BACKEND_DTYPES)
@pytest.mark.parametrize("output_size", [(2, 2), (3, 2)])
@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_coord_grad_matches_finite_differences(case, output_size, backend, dtype):
    _, coord_grad = BACKENDS[backend]
    rows = ALL_CASES[case]
    features = make_features(dtype, "cpu")
    generator = torch.Generator().manual_seed(1)
    grad_output = torch.randn((len(rows), 3, *output_size), generator=generator).to(dtype)
    actual = coord_grad(features, make_rois(rows, dtype, "cpu"), grad_output, output_size, 0.75)
    if case in DEGENERATE_CASES:
        # The contract defines zero gradient for zero-area boxes (differences straddle the clamp).
        expected = np.zeros((len(rows), 5))
    else:
        expected = coord_grad_reference(
            features.double().numpy(),
            np.array(rows),
            grad_output.double().numpy(),
            output_size,
            0.75,
        )
    # Central differences are O(step) off where a bin edge sits on a grid line. In float32 the
    # edge terms (I / bin_w - L) / area cancel, losing about eps * (cell / bin)^2: bins of 1/8 by
    # 1/60 cell ("inside_one_cell") keep only about three digits.
    if dtype == torch.float64:
        tolerance = {"rtol": 1e-6, "atol": 1e-6}
    else:
        tolerance = {"rtol": 1e-4, "atol": 2e-3 if case == "inside_one_cell" else 1e-4}
    np.testing.assert_allclose(actual.double().numpy(), expected, **tolerance)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_feature_grad_matches_unit_steps_of_oracle(dtype):
    rows = BOX_CASES["partly_outside"] + BOX_CASES["covers_map"]
    features = make_features(torch.float64, "cpu", shape=(2, 1, 4, 5))
    grad_output = torch.randn(
        (3, 1, 2, 3), generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    actual = native.prroi_pool_feature_grad(
        features.to(dtype), make_rois(rows, dtype, "cpu"), grad_output.to(dtype), (2, 3)
    )
    base = features.numpy()
    expected = np.zeros_like(base)
    reference = prroi_pool_reference(base, np.array(rows), (2, 3))
    for index in np.ndindex(*base.shape):
        moved = base.copy()
        moved[index] += 1.0  # the op is linear in the features: a unit step is exact
        delta = prroi_pool_reference(moved, np.array(rows), (2, 3)) - reference
        expected[index] = (delta * grad_output.numpy()).sum()
    np.testing.assert_allclose(actual.double().numpy(), expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_no_boxes(backend):
    pool, coord_grad = BACKENDS[backend]
    features = make_features(torch.float32, "cpu")
    rois = torch.zeros((0, 5))
    assert pool(features, rois, (3, 4)).shape == (0, 3, 3, 4)
    assert coord_grad(features, rois, torch.zeros((0, 3, 3, 4)), (3, 4)).shape == (0, 5)


def test_native_layouts_agree_and_auto_picks_one():
    features = make_features(torch.float64, "cpu", shape=(2, 8, 9, 11))
    rows = torch.tensor(BOX_CASES["inside"] * 20 + BOX_CASES["covers_map"] * 5, dtype=torch.float64)
    results = [native.prroi_pool(features, rows, 3, layout=layout) for layout in native.LAYOUTS]
    for result in results[1:]:
        torch.testing.assert_close(result, results[0], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="layout"):
        native.prroi_pool(features, rows, 3, layout="nhwc")


def test_native_thread_count_does_not_change_results():
    features = make_features(torch.float64, "cpu", shape=(2, 8, 9, 11))
    rows = torch.tensor(BOX_CASES["inside"] + BOX_CASES["partly_outside"], dtype=torch.float64)
    one = native.prroi_pool(features, rows, 3, num_threads=1)
    torch.testing.assert_close(
        native.prroi_pool(features, rows, 3, num_threads=3), one, rtol=0, atol=0
    )


def test_native_rejects_bad_input():
    features = make_features(torch.float32, "cpu")
    rois = make_rois(BOX_CASES["inside"], torch.float32, "cpu")
    with pytest.raises(TypeError, match="float32 or float64"):
        native.prroi_pool(features.half(), rois.half(), 2)
    with pytest.raises(ValueError, match="batch_index"):
        native.prroi_pool(features, rois + torch.tensor([5.0, 0, 0, 0, 0]), 2)
    with pytest.raises(ValueError, match="output_size"):
        native.prroi_pool(features, rois, 0)
    with pytest.raises(ValueError, match="grad_output"):
        native.prroi_pool_coord_grad(features, rois, torch.zeros((2, 3, 2, 3)), 2)


def test_native_unchecked_values_give_defined_zeros():
    features = make_features(torch.float32, "cpu")
    rows = torch.tensor(
        [[7.0, 1, 1, 4, 4], [float("nan"), 1, 1, 4, 4], [0, 1, float("inf"), 4, 4], [0, 1, 1, 4, 4]]
    )
    out = native.prroi_pool(features, rows, 2, check_values=False)
    assert torch.all(out[:3] == 0)
    assert torch.all(out[3] != 0)
    grad = native.prroi_pool_coord_grad(features, rows, torch.ones_like(out), 2, check_values=False)
    assert torch.all(grad[:3] == 0)


def test_missing_native_library_says_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setenv(native.LIBRARY_ENV, str(tmp_path / "absent.so"))
    native.load_library.cache_clear()
    try:
        with pytest.raises(native.NativeLibraryError, match="make native"):
            native.prroi_pool(torch.zeros((1, 1, 2, 2)), torch.zeros((0, 5)), 1)
    finally:
        native.load_library.cache_clear()


def test_native_list_of_boxes_equals_table():
    features = make_features(torch.float64, "cpu")
    per_image = [make_rois([[1.3, 0.7, 4.6, 3.9]], torch.float64, "cpu"), torch.zeros((0, 4))]
    per_image[1] = per_image[1].double()
    table = make_rois([[0, 1.3, 0.7, 4.6, 3.9]], torch.float64, "cpu")
    torch.testing.assert_close(
        native.prroi_pool(features, per_image, 2), native.prroi_pool(features, table, 2)
    )


def test_native_library_version_matches_the_package():
    import iounet

    assert native.library_version() == iounet.__version__


def test_a_library_from_another_version_is_refused(monkeypatch):
    import iounet

    library = native.load_library()  # the real one loads: its version is the package's
    assert native.library_version() == iounet.__version__
    native.load_library.cache_clear()
    monkeypatch.setattr(native, "__version__", "9.9.9")
    try:
        with pytest.raises(
            native.NativeLibraryError, match=r"built from iounet .*, this is iounet 9\.9\.9"
        ):
            native.load_library()
    finally:
        native.load_library.cache_clear()
    assert library is not None
