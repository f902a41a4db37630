"""Randomized agreement of the native CPU kernels with the PyTorch op (1,000 maps and boxes)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iounet.plugins import native, prroi_pool, prroi_pool_coord_grad

coordinate = st.floats(min_value=-4.0, max_value=12.0, allow_nan=False, allow_infinity=False)
# Zero or inverted extents, or at least 0.05 of a cell: the edge gradient (I / w - L) / area
# cancels and is ill-conditioned, in any implementation, for extents near 1e-8.
extent = st.one_of(
    st.floats(min_value=-3.0, max_value=0.0),
    st.floats(min_value=0.05, max_value=16.0),
)


@st.composite
def box(draw, batch: int) -> list[float]:
    x0, y0 = draw(coordinate), draw(coordinate)
    return [draw(st.integers(0, batch - 1)), x0, y0, x0 + draw(extent), y0 + draw(extent)]


@st.composite
def problems(draw):
    batch = draw(st.integers(1, 2))
    channels = draw(st.integers(1, 3))
    height, width = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    count = draw(st.integers(0, 4))
    rows = [draw(box(batch)) for _ in range(count)]
    pooled = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    scale = draw(st.sampled_from([0.25, 0.5, 1.0, 1.5]))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(
        (batch, channels, height, width), generator=generator, dtype=torch.float64
    )
    grad_output = torch.randn((count, channels, *pooled), generator=generator, dtype=torch.float64)
    rois = torch.tensor(rows, dtype=torch.float64).reshape(count, 5)
    return features, rois, grad_output, pooled, scale


@settings(max_examples=1000, deadline=None)
@given(problems())
def test_native_kernels_agree_with_pytorch_op(problem):
    features, rois, grad_output, pooled, scale = problem
    close = {"rtol": 1e-8, "atol": 1e-8}

    out = native.prroi_pool(features, rois, pooled, scale)
    torch.testing.assert_close(out, prroi_pool(features, rois, pooled, scale), **close)

    torch.testing.assert_close(
        native.prroi_pool_coord_grad(features, rois, grad_output, pooled, scale),
        prroi_pool_coord_grad(features, rois, grad_output, pooled, scale),
        **close,
    )

    leaf = features.clone().requires_grad_()
    (prroi_pool(leaf, rois, pooled, scale) * grad_output).sum().backward()
    torch.testing.assert_close(
        native.prroi_pool_feature_grad(features, rois, grad_output, pooled, scale),
        leaf.grad,
        **close,
    )
