"""Every PrRoIPool backend against the float64 oracle (tests/prroi_oracle.py) over one case table
(tests/prroi_cases.py): the forward pass, the box-coordinate gradient and, where the backend has
one, the feature gradient. Then the native library's own arguments and loading."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import ort_graphs
import pytest
import torch
import trt_engines
from conftest import tensorrt_missing
from ort_graphs import pooled_pair
from prroi_cases import (
    BOX_CASES,
    DEGENERATE_CASES,
    OUTPUT_SIZES,
    TOLERANCE,
    make_features,
    make_rois,
)
from prroi_oracle import coord_grad_reference, prroi_pool_reference

from iounet.plugins import (
    cuda,
    native,
    prroi_pool,
    prroi_pool_coord_grad,
    reference_kernels,
)

Tensor = torch.Tensor
EMULATION = Path(__file__).resolve().parents[1] / "build" / "lib" / "libiounet_prroi_cuda_host.so"
ALL_CASES = {**BOX_CASES, **DEGENERATE_CASES}
SPATIAL_SCALES = [1.0, 0.5, 0.75]
#: name -> (dtype of the features, dtype of the boxes).
PRECISIONS = {
    "float64": (torch.float64, torch.float64),
    "float32": (torch.float32, torch.float32),
    "float16": (torch.float16, torch.float16),
    "float16-float32-rois": (torch.float16, torch.float32),
}


@dataclasses.dataclass(frozen=True)
class Backend:
    """One PrRoIPool implementation, called like iounet.plugins.prroi_pool (pool) and
    prroi_pool_coord_grad (coord_grad, feature_grad) on tensors on `device()`, inside
    `context()`; `missing()` says why it cannot run here (None: it can)."""

    name: str
    pool: Callable[..., Tensor]
    coord_grad: Callable[..., Tensor]
    feature_grad: Callable[..., Tensor] | None
    precisions: tuple[str, ...]
    missing: Callable[[], str | None] = lambda: None
    device: Callable[[], str] = lambda: "cpu"
    context: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext
    #: Where set, a tolerance per precision (rtol and atol; for the coordinate gradient atol
    #: relative to its largest value, at least 1) used where looser than the table's.
    tolerance: dict[str, float] | None = None
    takes_no_boxes: bool = True
    marks: tuple[pytest.MarkDecorator, ...] = ()


def _autograd_feature_grad(
    features: Tensor, rois: Tensor, grad_output: Tensor, output_size, spatial_scale: float
) -> Tensor:
    """The feature gradient through the registered op's autograd."""
    features = features.detach().requires_grad_()
    (prroi_pool(features, rois, output_size, spatial_scale) * grad_output).sum().backward()
    return features.grad


def _pooled_arguments(function: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """`function(*tensors, pooled_height, pooled_width, spatial_scale)` of iounet.plugins.cuda,
    called as (*tensors, output_size, spatial_scale)."""

    def call(*arguments: object) -> Tensor:
        *tensors, output_size, spatial_scale = arguments
        return function(*tensors, *pooled_pair(output_size), spatial_scale)

    return call


def _gpu_runs_the_cuda_library() -> bool:
    return torch.cuda.is_available() and cuda.available()


def _cuda_missing() -> str | None:
    if _gpu_runs_the_cuda_library() or EMULATION.is_file():
        return None
    return (
        f"no GPU the CUDA library runs on, and {EMULATION.name} is not built: make cuda-emulation"
    )


@contextlib.contextmanager
def _cuda_library() -> Iterator[None]:
    """iounet.plugins.cuda on the GPU where the CUDA library runs on one, else on the library
    built for the host emulation (CPU tensors)."""
    if _gpu_runs_the_cuda_library():
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(cuda.LIBRARY_ENV, str(EMULATION))
        cuda.load_library.cache_clear()
        try:
            yield
        finally:
            cuda.load_library.cache_clear()


def _no_cuda_device() -> str | None:
    return None if torch.cuda.is_available() else "no CUDA device"


def _cuda_op_missing() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None if cuda.available() else "the CUDA library is not built or does not run here"


def _native_missing() -> str | None:
    return None if native.available() else "the native CPU library is not built (make native)"


def _onnxruntime_missing() -> str | None:
    if importlib.util.find_spec("onnxruntime_extensions") is None:
        return "onnxruntime-extensions is not installed"
    return None


def _native_row(layout: str) -> Backend:
    return Backend(
        f"native-{layout}",
        functools.partial(native.prroi_pool, layout=layout),
        functools.partial(native.prroi_pool_coord_grad, layout=layout),
        functools.partial(native.prroi_pool_feature_grad, layout=layout),
        ("float64", "float32"),
        _native_missing,
    )


_OP = (prroi_pool, prroi_pool_coord_grad, _autograd_feature_grad)
GPU = (pytest.mark.gpu,)
BACKENDS = [
    Backend("reference", *_OP, ("float64", "float32"), context=reference_kernels),
    Backend(
        "reference-cuda",
        *_OP,
        ("float64", "float32"),
        _no_cuda_device,
        lambda: "cuda",
        reference_kernels,
        marks=GPU,
    ),
    # The registered ops on CPU tensors run the native kernels, on CUDA tensors the CUDA ones;
    # "cuda" is the CUDA library's binding, on the GPU where one runs it (a gpu test then), else
    # on the host emulation.
    Backend("op-native", *_OP, ("float64", "float32"), _native_missing),
    *(_native_row(layout) for layout in ("planar", "channels_last")),
    Backend("op-cuda", *_OP, ("float32",), _cuda_op_missing, lambda: "cuda", marks=GPU),
    Backend(
        "cuda",
        _pooled_arguments(cuda.prroi_pool),
        _pooled_arguments(cuda.prroi_pool_coord_grad),
        _pooled_arguments(cuda.prroi_pool_feature_grad),
        ("float32", "float16-float32-rois"),
        _cuda_missing,
        cuda.device_type,
        _cuda_library,
        marks=GPU if _gpu_runs_the_cuda_library() else (),
    ),
    Backend(
        "onnxruntime",
        ort_graphs.prroi_pool,
        ort_graphs.prroi_pool_coord_grad,
        None,
        ("float32",),
        _onnxruntime_missing,
    ),
    Backend(
        "tensorrt",
        trt_engines.prroi_pool,
        trt_engines.prroi_pool_coord_grad,
        None,
        ("float32", "float16", "float16-float32-rois"),
        tensorrt_missing,
        lambda: "cuda",
        tolerance={"float32": 1e-4, "float16": 1e-2, "float16-float32-rois": 1e-2},
        takes_no_boxes=False,
        marks=(pytest.mark.gpu, pytest.mark.tensorrt),
    ),
]


def _table(
    keep: Callable[[Backend], bool] = lambda backend: True, precisions: tuple[str, ...] = ()
) -> list:
    """(backend, precision) parameters: each kept backend with each of its precisions (those of
    `precisions` where given)."""
    return [
        pytest.param(backend, precision, id=f"{backend.name}-{precision}", marks=backend.marks)
        for backend in BACKENDS
        if keep(backend)
        for precision in backend.precisions
        if not precisions or precision in precisions
    ]


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The parameter's backend, skipped where it cannot run, inside its context."""
    chosen: Backend = request.param
    reason = chosen.missing()
    if reason:
        pytest.skip(reason)
    with chosen.context():
        yield chosen


def _stored(precision: str) -> tuple[torch.dtype, torch.dtype]:
    """The dtypes whose values a precision's features and boxes hold: float32 values in float64
    tensors too, so that the two share their oracle results."""
    return tuple(
        torch.float16 if d == torch.float16 else torch.float32 for d in PRECISIONS[precision]
    )


def _inputs(
    rows: list[list[float]], stored: tuple[torch.dtype, torch.dtype], shape=(2, 3, 6, 7)
) -> tuple[Tensor, Tensor]:
    """Features of `shape` and the boxes `rows`, holding values of the `stored` dtypes."""
    features = make_features(torch.float32, "cpu", shape).to(stored[0])
    return features, make_rois(rows, stored[1], "cpu")


def _grad_output(rois: Tensor, channels: int, output_size, seed: int, dtype: torch.dtype) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (len(rois), channels, *pooled_pair(output_size))
    return torch.randn(shape, generator=generator).to(dtype)


def _on(backend: Backend, precision: str, features: Tensor, rois: Tensor, *grads: Tensor):
    """The tensors in the precision's dtypes on the backend's device."""
    device = backend.device()
    features_dtype, rois_dtype = PRECISIONS[precision]
    return (
        features.to(device, features_dtype),
        rois.to(device, rois_dtype),
        *(grad.to(device, features_dtype) for grad in grads),
    )


@functools.cache
def _expected_pool(case: str, output_size, spatial_scale: float, stored) -> np.ndarray:
    features, rois = _inputs(ALL_CASES[case], stored)
    return prroi_pool_reference(
        features.double().numpy(), rois.double().numpy(), output_size, spatial_scale
    )


@functools.cache
def _expected_coord_grad(case: str, output_size, spatial_scale: float, stored) -> np.ndarray:
    features, rois = _inputs(ALL_CASES[case], stored)
    if case in DEGENERATE_CASES:
        # The contract defines zero gradient for zero-area boxes (differences straddle the clamp).
        return np.zeros(tuple(rois.shape))
    grad_output = _grad_output(rois, 3, output_size, 1, stored[0])
    return coord_grad_reference(
        features.double().numpy(),
        rois.double().numpy(),
        grad_output.double().numpy(),
        output_size,
        spatial_scale,
    )


FEATURE_GRAD_ROWS = BOX_CASES["partly_outside"] + BOX_CASES["covers_map"]
FEATURE_GRAD_SHAPE = (2, 1, 4, 5)


@functools.cache
def _expected_feature_grad(stored) -> np.ndarray:
    """The feature gradient of FEATURE_GRAD_ROWS on maps of FEATURE_GRAD_SHAPE, pooled 2x3."""
    _, rois = _inputs(FEATURE_GRAD_ROWS, stored)
    grad_output = _grad_output(rois, 1, (2, 3), 2, stored[0]).double().numpy()
    expected = np.zeros(FEATURE_GRAD_SHAPE)
    for index in np.ndindex(*FEATURE_GRAD_SHAPE):
        unit = np.zeros(FEATURE_GRAD_SHAPE)
        unit[index] = 1.0  # the op is linear in the features: the gradient is its value on units
        pooled = prroi_pool_reference(unit, rois.double().numpy(), (2, 3))
        expected[index] = (pooled * grad_output).sum()
    return expected


def _loosened(
    backend: Backend, precision: str, tolerance: dict[str, float], largest: float = 1.0
) -> dict[str, float]:
    """`tolerance`, or the backend's own for the precision where that is looser (its atol times
    `largest`)."""
    if backend.tolerance is None:
        return tolerance
    own = backend.tolerance[precision]
    return {"rtol": max(tolerance["rtol"], own), "atol": max(tolerance["atol"], own * largest)}


def _forward_tolerance(backend: Backend, precision: str) -> dict[str, float]:
    return _loosened(backend, precision, TOLERANCE[PRECISIONS[precision][0]])


def _assert_close(actual: Tensor, expected: np.ndarray, tolerance: dict[str, float]) -> None:
    np.testing.assert_allclose(actual.detach().cpu().double().numpy(), expected, **tolerance)


@pytest.mark.parametrize(("backend", "precision"), _table(), indirect=["backend"])
def test_worked_example(backend, precision):
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    rois = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0]])
    expected = np.array([[[[1.75, 2.25], [2.75, 3.25]]]])
    actual = backend.pool(*_on(backend, precision, features, rois), 2, 1.0)
    _assert_close(actual, expected, _forward_tolerance(backend, precision))


@pytest.mark.parametrize(("backend", "precision"), _table(), indirect=["backend"])
@pytest.mark.parametrize("spatial_scale", SPATIAL_SCALES)
@pytest.mark.parametrize("output_size", OUTPUT_SIZES)
@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_forward_matches_oracle(case, output_size, spatial_scale, backend, precision):
    stored = _stored(precision)
    features, rois = _on(backend, precision, *_inputs(ALL_CASES[case], stored))
    actual = backend.pool(features, rois, output_size, spatial_scale)
    assert actual.dtype == features.dtype and actual.device == features.device
    expected = _expected_pool(case, output_size, spatial_scale, stored)
    _assert_close(actual, expected, _forward_tolerance(backend, precision))


@pytest.mark.parametrize(("backend", "precision"), _table(), indirect=["backend"])
@pytest.mark.parametrize("spatial_scale", SPATIAL_SCALES)
@pytest.mark.parametrize("output_size", OUTPUT_SIZES)
@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_coord_grad_matches_finite_differences(
    case, output_size, spatial_scale, backend, precision
):
    stored = _stored(precision)
    features, rois = _inputs(ALL_CASES[case], stored)
    grad_output = _grad_output(rois, 3, output_size, 1, stored[0])
    features, rois, grad_output = _on(backend, precision, features, rois, grad_output)
    actual = backend.coord_grad(features, rois, grad_output, output_size, spatial_scale)
    assert actual.dtype == rois.dtype and actual.shape == rois.shape
    expected = _expected_coord_grad(case, output_size, spatial_scale, stored)
    if PRECISIONS[precision][0] == torch.float64:
        # Central differences are O(step) off where a bin edge sits on a grid line.
        tolerance = {"rtol": 1e-6, "atol": 1e-6}
    else:
        # In float32 the edge terms (I / bin_w - L) / area cancel, losing about
        # eps * (cell / bin)^2: bins of 1/8 by 1/60 cell ("inside_one_cell") keep only about
        # three digits.
        tolerance = {"rtol": 1e-4, "atol": 2e-3 if case == "inside_one_cell" else 1e-4}
    largest = max(1.0, float(np.abs(expected).max(initial=0.0)))
    tolerance = _loosened(backend, precision, tolerance, largest)
    _assert_close(actual, expected, tolerance)


@pytest.mark.parametrize(
    ("backend", "precision"),
    _table(lambda backend: backend.feature_grad is not None),
    indirect=["backend"],
)
def test_feature_grad_matches_unit_steps_of_oracle(backend, precision):
    stored = _stored(precision)
    features, rois = _inputs(FEATURE_GRAD_ROWS, stored, shape=FEATURE_GRAD_SHAPE)
    grad_output = _grad_output(rois, 1, (2, 3), 2, stored[0])
    arguments = _on(backend, precision, features, rois, grad_output)
    actual = backend.feature_grad(*arguments, (2, 3), 1.0)
    assert actual.dtype == arguments[0].dtype and actual.shape == features.shape
    expected = _expected_feature_grad(stored)
    _assert_close(actual, expected, _forward_tolerance(backend, precision))


@pytest.mark.parametrize(
    ("backend", "precision"), _table(precisions=("float32",)), indirect=["backend"]
)
def test_no_boxes(backend, precision):
    if not backend.takes_no_boxes:
        pytest.skip(f"{backend.name} takes one box at least")
    features, rois = _on(
        backend, precision, make_features(torch.float32, "cpu"), torch.zeros((0, 5))
    )
    assert backend.pool(features, rois, (3, 4), 1.0).shape == (0, 3, 3, 4)
    grad_output = torch.zeros((0, 3, 3, 4), device=features.device)
    assert backend.coord_grad(features, rois, grad_output, (3, 4), 1.0).shape == (0, 5)
    if backend.feature_grad is not None:
        grad = backend.feature_grad(features, rois, grad_output, (3, 4), 1.0)
        assert grad.shape == features.shape and torch.all(grad == 0)


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
    from iounet import version

    library = native.load_library()  # the real one loads: its version is the package's
    assert native.library_version() == iounet.__version__
    native.load_library.cache_clear()
    monkeypatch.setattr(version, "__version__", "9.9.9")
    try:
        with pytest.raises(
            native.NativeLibraryError, match=r"built from iounet .*, this is iounet 9\.9\.9"
        ):
            native.load_library()
    finally:
        native.load_library.cache_clear()
    assert library is not None
