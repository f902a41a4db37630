"""Exact integrals of the bilinearly interpolated feature surface, as separable weights.

The surface is f(x, y) = sum_ij w[i, j] k(x - j) k(y - i) with the hat k(t) = max(0, 1 - |t|):
feature w[i, j] sits at (x = j, y = i) and the surface falls to 0 one cell past the border.
Its integral over [xa, xb] x [ya, yb] is therefore sum_ij w[i, j] A_j B_i with
A_j = K(xb - j) - K(xa - j), where K is the antiderivative of the hat, and the same along y.
"""

from __future__ import annotations

import torch
from torch import Tensor


def hat_antiderivative(t: Tensor) -> Tensor:
    """K(t) = integral of the hat from -inf to t: 0 below -1, 1 above 1, piecewise quadratic."""
    u = t.clamp(-1.0, 1.0)
    return torch.where(u < 0, 0.5 * (u + 1) ** 2, 1 - 0.5 * (1 - u) ** 2)


def hat(t: Tensor) -> Tensor:
    """The bilinear interpolation kernel k(t) = max(0, 1 - |t|)."""
    return (1 - t.abs()).clamp_min(0)


def bin_edges(low: Tensor, high: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """Split [low, high] (K,) into `bins` equal bins: edges (K, bins + 1) and bin width (K,).

    A negative extent is clamped to zero, so an inverted box has bins of zero width.
    """
    width = (high - low).clamp_min(0) / bins
    steps = torch.arange(bins + 1, dtype=low.dtype, device=low.device)
    return low[:, None] + width[:, None] * steps, width


def integral_weights(edges: Tensor, grid: Tensor) -> Tensor:
    """Weights (K, bins, L): the integral of k(t - j) over each bin, for grid points j (K, L)."""
    antiderivative = hat_antiderivative(edges[:, :, None] - grid[:, None, :])
    return antiderivative[:, 1:] - antiderivative[:, :-1]


def edge_weights(edges: Tensor, grid: Tensor) -> Tensor:
    """Weights (K, bins + 1, L): k(edge - j), the interpolation weights on each bin edge."""
    return hat(edges[:, :, None] - grid[:, None, :])
