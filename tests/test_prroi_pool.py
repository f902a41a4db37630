"""The PyTorch op and its API: autograd, the list-of-boxes form, chunking, half precision, the
module and argument errors (tests/test_prroi_backends.py runs it with the other backends against
the float64 oracle)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import DEVICES
from prroi_cases import (
    BOX_CASES,
    DEGENERATE_CASES,
    TOLERANCE,
    make_features,
    make_rois,
)
from prroi_oracle import prroi_pool_reference

from iounet.plugins import (
    PrRoIPool,
    prroi_pool,
    prroi_pool_coord_grad,
    reference,
    reference_kernels,
)


def _assert_close(actual: torch.Tensor, expected: np.ndarray, dtype: torch.dtype) -> None:
    np.testing.assert_allclose(actual.detach().cpu().double().numpy(), expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", sorted({**BOX_CASES, **DEGENERATE_CASES}))
def test_coord_grad_equals_autograd(case, dtype, device, kernel):
    rows = {**BOX_CASES, **DEGENERATE_CASES}[case]
    features = make_features(dtype, device)
    rois = make_rois(rows, dtype, device).requires_grad_()
    grad_output = torch.randn((len(rows), 3, 3, 2), dtype=dtype, device=device)
    # Autograd through the plain PyTorch implementation: an independent route to the gradient.
    pooled = reference.pool(features, rois, (3, 2), 0.75)
    (autograd,) = torch.autograd.grad((pooled * grad_output).sum(), rois)
    explicit = prroi_pool_coord_grad(features, rois.detach(), grad_output, (3, 2), 0.75)
    assert explicit.dtype == dtype
    assert torch.all(explicit[:, 0] == 0)
    _assert_close(explicit, autograd.cpu().double().numpy(), dtype)


@pytest.mark.parametrize("case", sorted(DEGENERATE_CASES))
def test_zero_area_boxes_output_zero_with_zero_gradient(case, kernel):
    rows = DEGENERATE_CASES[case]
    features = make_features(torch.float64, "cpu").requires_grad_()
    rois = make_rois(rows, torch.float64, "cpu").requires_grad_()
    out = prroi_pool(features, rois, 2)
    assert torch.all(out == 0)
    out.sum().backward()
    assert torch.all(features.grad == 0)
    assert torch.all(rois.grad == 0)
    grad_output = torch.ones_like(out)
    assert torch.all(prroi_pool_coord_grad(features.detach(), rois.detach(), grad_output, 2) == 0)


@pytest.mark.parametrize("output_size", [(2, 2), (3, 1)])
@pytest.mark.parametrize("case", ["inside", "partly_outside", "covers_map"])
def test_gradcheck_features_and_coordinates(case, output_size, kernel):
    rows = torch.tensor(BOX_CASES[case], dtype=torch.float64)
    batch_index, corners = rows[:, :1], rows[:, 1:].clone().requires_grad_()
    features = make_features(torch.float64, "cpu", shape=(2, 2, 5, 6)).requires_grad_()

    def pool(features, corners):
        return prroi_pool(features, torch.cat([batch_index, corners], 1), output_size, 0.9)

    assert torch.autograd.gradcheck(pool, (features, corners))


@pytest.mark.parametrize("device", DEVICES)
def test_list_of_boxes_equals_table(device):
    features = make_features(torch.float64, device)
    per_image = [
        torch.tensor(
            [[1.3, 0.7, 4.6, 3.9], [-1.0, 2.0, 3.0, 6.5]], dtype=torch.float64, device=device
        ),
        torch.tensor([[0.2, 2.1, 2.9, 5.3]], dtype=torch.float64, device=device),
    ]
    table = torch.cat(
        [
            torch.cat([torch.full((len(b), 1), float(i), dtype=torch.float64, device=device), b], 1)
            for i, b in enumerate(per_image)
        ]
    )
    torch.testing.assert_close(prroi_pool(features, per_image, 2), prroi_pool(features, table, 2))
    grad_output = torch.randn((3, 3, 2, 2), dtype=torch.float64, device=device)
    torch.testing.assert_close(
        prroi_pool_coord_grad(features, per_image, grad_output, 2),
        prroi_pool_coord_grad(features, table, grad_output, 2),
    )


def test_batch_index_selects_the_image(kernel):
    features = make_features(torch.float64, "cpu")
    box = [1.1, 0.4, 5.2, 4.8]
    second = prroi_pool(features, torch.tensor([[1.0, *box]], dtype=torch.float64), 3)
    alone = prroi_pool(features[1:], torch.tensor([[0.0, *box]], dtype=torch.float64), 3)
    torch.testing.assert_close(second, alone, rtol=0, atol=0)
    assert not torch.allclose(
        second, prroi_pool(features, torch.tensor([[0.0, *box]], dtype=torch.float64), 3)
    )


@reference_kernels()
def test_chunks_keep_box_order(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    features = torch.randn((3, 4, 9, 11), generator=generator, dtype=torch.float64)
    corners = torch.rand((17, 4), generator=generator, dtype=torch.float64) * 12 - 1
    index = torch.randint(0, 3, (17, 1), generator=generator).double()
    rois = torch.cat([index, corners], 1)
    grad_output = torch.randn((17, 4, 2, 3), generator=generator, dtype=torch.float64)

    def run():
        f = features.clone().requires_grad_()
        r = rois.clone().requires_grad_()
        out = prroi_pool(f, r, (2, 3), 0.8)
        (out * grad_output).sum().backward()
        return out, f.grad, r.grad, prroi_pool_coord_grad(features, rois, grad_output, (2, 3), 0.8)

    whole = run()
    monkeypatch.setattr(reference, "CHUNK_ELEMENTS", 1)
    chunked = run()
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    expected = prroi_pool_reference(features.numpy(), rois.numpy(), (2, 3), 0.8)
    np.testing.assert_allclose(chunked[0].detach().numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(dtype, kernel):
    features = make_features(torch.float64, "cpu")
    rows = BOX_CASES["partly_outside"]
    expected = prroi_pool_reference(features.numpy(), np.array(rows), (2, 2))
    out = prroi_pool(features.to(dtype), make_rois(rows, dtype, "cpu"), 2)
    assert out.dtype == dtype
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=2e-2, atol=2e-2)


def test_module_matches_functional():
    features = make_features(torch.float64, "cpu")
    rois = make_rois(BOX_CASES["inside"], torch.float64, "cpu")
    module = PrRoIPool((3, 2), spatial_scale=0.5)
    torch.testing.assert_close(module(features, rois), prroi_pool(features, rois, (3, 2), 0.5))
    assert "output_size=(3, 2)" in repr(module) and "spatial_scale=0.5" in repr(module)


def _bad_calls():
    good_features = torch.zeros((2, 3, 6, 7))
    good_rois = torch.tensor([[0.0, 1.0, 1.0, 3.0, 3.0]])
    cases = {
        "features_not_tensor": ((np.zeros((2, 3, 6, 7)), good_rois, 2), TypeError, "input"),
        "features_rank": ((torch.zeros((3, 6, 7)), good_rois, 2), ValueError, "input"),
        "features_int": (
            (torch.zeros((2, 3, 6, 7), dtype=torch.int64), good_rois, 2),
            TypeError,
            "input",
        ),
        "rois_rank": ((good_features, good_rois[0], 2), ValueError, "rois"),
        "rois_columns": ((good_features, torch.zeros((1, 4)), 2), ValueError, "rois"),
        "rois_type": ((good_features, "boxes", 2), TypeError, "rois"),
        "rois_dtype": ((good_features, good_rois.long(), 2), TypeError, "rois"),
        "batch_index_high": (
            (good_features, torch.tensor([[2.0, 1, 1, 3, 3]]), 2),
            ValueError,
            "batch_index",
        ),
        "batch_index_negative": (
            (good_features, torch.tensor([[-1.0, 1, 1, 3, 3]]), 2),
            ValueError,
            "batch_index",
        ),
        "batch_index_fraction": (
            (good_features, torch.tensor([[0.5, 1, 1, 3, 3]]), 2),
            ValueError,
            "batch_index",
        ),
        "rois_nan": (
            (good_features, torch.tensor([[0.0, math.nan, 1, 3, 3]]), 2),
            ValueError,
            "NaN",
        ),
        "rois_inf": (
            (good_features, torch.tensor([[0.0, 1, 1, math.inf, 3]]), 2),
            ValueError,
            "Inf",
        ),
        "list_length": ((good_features, [torch.zeros((1, 4))], 2), ValueError, "rois"),
        "list_columns": (
            (good_features, [torch.zeros((1, 5)), torch.zeros((0, 4))], 2),
            ValueError,
            "rois\\[0\\]",
        ),
        "list_dtype": (
            (good_features, [torch.zeros((1, 4)), torch.zeros((0, 4), dtype=torch.int32)], 2),
            TypeError,
            "rois\\[1\\]",
        ),
        "output_size_zero": ((good_features, good_rois, 0), ValueError, "output_size"),
        "output_size_negative": ((good_features, good_rois, (2, -1)), ValueError, "output_size"),
        "output_size_float": ((good_features, good_rois, 2.5), TypeError, "output_size"),
        "output_size_triple": ((good_features, good_rois, (2, 2, 2)), TypeError, "output_size"),
        "spatial_scale_zero": ((good_features, good_rois, 2, 0.0), ValueError, "spatial_scale"),
        "spatial_scale_nan": ((good_features, good_rois, 2, math.nan), ValueError, "spatial_scale"),
        "spatial_scale_str": ((good_features, good_rois, 2, "1"), TypeError, "spatial_scale"),
    }
    return [pytest.param(*value, id=key) for key, value in cases.items()]


@pytest.mark.parametrize(("args", "error", "match"), _bad_calls())
def test_bad_input_raises(args, error, match):
    with pytest.raises(error, match=match):
        prroi_pool(*args)
    features, rois, output_size, *rest = args
    with pytest.raises(error, match=match):
        prroi_pool_coord_grad(features, rois, torch.zeros((1, 3, 2, 2)), output_size, *rest)


@pytest.mark.parametrize(
    ("grad_output", "error"),
    [
        (torch.zeros((1, 3, 2, 3)), ValueError),
        (torch.zeros((2, 3, 2, 2)), ValueError),
        (torch.zeros((1, 3, 2, 2), dtype=torch.float64), TypeError),
        ([[0.0]], TypeError),
    ],
)
def test_coord_grad_rejects_bad_grad_output(grad_output, error):
    with pytest.raises(error, match="grad_output"):
        prroi_pool_coord_grad(
            torch.zeros((1, 3, 6, 7)), torch.tensor([[0.0, 1, 1, 3, 3]]), grad_output, 2
        )


def test_rois_on_another_device_is_rejected():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to put rois elsewhere")
    with pytest.raises(ValueError, match="device"):
        prroi_pool(torch.zeros((1, 1, 4, 4)), torch.zeros((1, 5), device="cuda"), 2)


@pytest.mark.parametrize("output_size", [1, (2, 3)])
def test_box_far_larger_than_the_map_averages_the_whole_surface(output_size, kernel):
    # Every hat integrates to 1, so the whole surface integrates to the sum of the features.
    features = make_features(torch.float64, "cpu")
    far = 1e4
    rois = torch.tensor([[1.0, -far, -far, far, far], [0.0, 1e6, 1e6, 1e6 + 5, 1e6 + 5]])
    out = prroi_pool(features, rois.double(), output_size)
    assert torch.all(out[1] == 0)
    whole = prroi_pool(features, rois.double()[:1], 1)[0, :, 0, 0]
    torch.testing.assert_close(whole, features[1].sum((1, 2)) / (2 * far) ** 2, rtol=1e-9, atol=0)
