"""Independent float64 oracle for PrRoIPool: numerical integration of the bilinear surface.

Written without the op's separable hat-integral formulation: the surface is evaluated point by
point by looking up its four neighbouring features (0 outside the map), and each bin is integrated
by splitting it at the integer grid lines and applying 3-point Gauss-Legendre on every piece,
where the surface is a bilinear polynomial. Gradients come from central finite differences.
"""

from __future__ import annotations

import itertools

import numpy as np

_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(3)


def bilinear_surface(feature: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Value of the bilinearly interpolated (C, H, W) map at points (x, y): (C, *x.shape)."""
    channels, height, width = feature.shape
    j0 = np.floor(x).astype(int)
    i0 = np.floor(y).astype(int)
    fx = x - j0
    fy = y - i0
    total = np.zeros((channels, *x.shape))
    for di, wy in ((0, 1 - fy), (1, fy)):
        for dj, wx in ((0, 1 - fx), (1, fx)):
            i = i0 + di
            j = j0 + dj
            inside = (i >= 0) & (i < height) & (j >= 0) & (j < width)
            values = feature[:, np.clip(i, 0, height - 1), np.clip(j, 0, width - 1)]
            total += np.where(inside, values, 0.0) * (wy * wx)
    return total


def _pieces(low: float, high: float) -> list[tuple[float, float]]:
    cuts = np.arange(np.floor(low) + 1, np.ceil(high))
    points = [low, *cuts.tolist(), high]
    return list(itertools.pairwise(points))


def _gauss_points(low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    half = 0.5 * (high - low)
    return low + half * (_GAUSS_NODES + 1), half * _GAUSS_WEIGHTS


def integrate_bin(feature: np.ndarray, xa: float, xb: float, ya: float, yb: float) -> np.ndarray:
    """Integral of the surface over [xa, xb] x [ya, yb], per channel."""
    total = np.zeros(feature.shape[0])
    if xb <= xa or yb <= ya:
        return total
    for x_low, x_high in _pieces(xa, xb):
        xs, wxs = _gauss_points(x_low, x_high)
        for y_low, y_high in _pieces(ya, yb):
            ys, wys = _gauss_points(y_low, y_high)
            gx, gy = np.meshgrid(xs, ys)
            weights = np.outer(wys, wxs)
            total += (bilinear_surface(feature, gx, gy) * weights).sum(axis=(1, 2))
    return total


def prroi_pool_reference(
    features: np.ndarray,
    rois: np.ndarray,
    output_size: tuple[int, int],
    spatial_scale: float = 1.0,
) -> np.ndarray:
    """PrRoIPool by brute-force integration in float64: (K, C, PH, PW)."""
    features = np.asarray(features, dtype=np.float64)
    rois = np.asarray(rois, dtype=np.float64)
    pooled_h, pooled_w = output_size
    out = np.zeros((rois.shape[0], features.shape[1], pooled_h, pooled_w))
    for k, (index, x0, y0, x1, y1) in enumerate(rois):
        x0, y0, x1, y1 = (v * spatial_scale for v in (x0, y0, x1, y1))
        bin_w = max(x1 - x0, 0.0) / pooled_w
        bin_h = max(y1 - y0, 0.0) / pooled_h
        area = bin_w * bin_h
        if area <= 0:
            continue
        for p in range(pooled_h):
            for q in range(pooled_w):
                xa, xb = x0 + q * bin_w, x0 + (q + 1) * bin_w
                ya, yb = y0 + p * bin_h, y0 + (p + 1) * bin_h
                out[k, :, p, q] = integrate_bin(features[int(index)], xa, xb, ya, yb) / area
    return out


def coord_grad_reference(
    features: np.ndarray,
    rois: np.ndarray,
    grad_output: np.ndarray,
    output_size: tuple[int, int],
    spatial_scale: float = 1.0,
    step: float = 1e-6,
) -> np.ndarray:
    """Central finite differences of sum(reference * grad_output) w.r.t. the box corners: (K, 5)."""
    rois = np.asarray(rois, dtype=np.float64)
    grad = np.zeros_like(rois)
    for k in range(rois.shape[0]):
        for column in range(1, 5):
            shifted = []
            for sign in (1.0, -1.0):
                moved = rois[k : k + 1].copy()
                moved[0, column] += sign * step
                pooled = prroi_pool_reference(features, moved, output_size, spatial_scale)
                shifted.append((pooled[0] * grad_output[k]).sum())
            grad[k, column] = (shifted[0] - shifted[1]) / (2 * step)
    return grad
