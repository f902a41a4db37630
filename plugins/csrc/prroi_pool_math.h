// PrRoIPool math core: every native implementation (CPU, CUDA, TensorRT) calls these functions.
//
// The bilinear surface is f(x, y) = sum_ij w[i][j] k(x - j) k(y - i), with the hat
// k(t) = max(0, 1 - |t|): feature w[i][j] sits at (x = j, y = i) and the surface is 0 one cell
// past the border. Its integral over a bin [xa, xb] x [ya, yb] is separable:
// sum_ij w[i][j] A_j B_i with A_j = K(xb - j) - K(xa - j), K the antiderivative of the hat.
// A bin's value is that integral over its area; the derivative of a bin value w.r.t. an edge is
// the line integral of the surface along that edge (Eq. 4 of the paper) combined with the
// change of the area.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace iounet {

#if !defined(__CUDACC__)
using std::ceil;
using std::floor;
using std::isfinite;
#endif

//! K(t): integral of the hat from -inf to t (0 below -1, 1 above 1, piecewise quadratic).
template <typename S>
IOUNET_HD S hatAntiderivative(S t)
{
    const S u = t < S(-1) ? S(-1) : (t > S(1) ? S(1) : t);
    return u < S(0) ? S(0.5) * (u + S(1)) * (u + S(1)) : S(1) - S(0.5) * (S(1) - u) * (S(1) - u);
}

//! k(t) = max(0, 1 - |t|), the interpolation weight of grid point 0 at t.
template <typename S>
IOUNET_HD S hat(S t)
{
    const S v = S(1) - (t < S(0) ? -t : t);
    return v > S(0) ? v : S(0);
}

//! Per-cell integral: the weight of grid point j in the integral over [a, b] along one axis.
template <typename S>
IOUNET_HD S cellIntegral(S a, S b, int j)
{
    return hatAntiderivative(b - S(j)) - hatAntiderivative(a - S(j));
}

//! Grid indices [begin, end) of the points whose hat overlaps [a, b], clipped to [0, size).
struct Span
{
    int begin;
    int end;
};

template <typename S>
IOUNET_HD Span gridSpan(S a, S b, int size)
{
    const S last = S(size - 1);
    const S lo = a < S(0) ? S(0) : (a > last ? last : a);
    const S hi = b < S(0) ? S(0) : (b > last ? last : b);
    Span span{static_cast<int>(floor(lo)), static_cast<int>(ceil(hi)) + 1};
    if (span.end > size)
    {
        span.end = size;
    }
    if (a > last + S(1) || b < S(-1))
    {
        span.end = span.begin; // wholly off the map: nothing to integrate
    }
    return span;
}

//! A box's bins in map coordinates: origin, bin size and 1 / bin area (0 for a zero-area bin).
template <typename S>
struct BoxBins
{
    int batch;
    S x0;
    S y0;
    S binW;
    S binH;
    S invArea;
};

//! Reads one roi row [batch_index, x0, y0, x1, y1]; width and height are clamped at 0. A row
//! with a non-finite value gets batch -1 and zero-area bins: it pools to zeros, with no gradient.
template <typename S, typename R>
IOUNET_HD BoxBins<S> boxBins(const R* roi, S spatialScale, int pooledH, int pooledW)
{
    BoxBins<S> box{-1, S(0), S(0), S(0), S(0), S(0)};
    S v[5];
    for (int d = 0; d < 5; ++d)
    {
        v[d] = static_cast<S>(roi[d]);
        if (!isfinite(v[d]))
        {
            return box;
        }
    }
    if (v[0] > S(-1) && v[0] < S(1 << 30))
    {
        box.batch = static_cast<int>(floor(v[0] + S(0.5)));
    }
    box.x0 = v[1] * spatialScale;
    box.y0 = v[2] * spatialScale;
    const S w = v[3] * spatialScale - box.x0;
    const S h = v[4] * spatialScale - box.y0;
    box.binW = (w > S(0) ? w : S(0)) / S(pooledW);
    box.binH = (h > S(0) ? h : S(0)) / S(pooledH);
    const S area = box.binW * box.binH;
    box.invArea = area > S(0) && isfinite(area) ? S(1) / area : S(0);
    return box;
}

//! Position of bin edge q (0..bins) along an axis that starts at `origin`.
template <typename S>
IOUNET_HD S binEdge(S origin, S binSize, int q)
{
    return origin + binSize * S(q);
}

//! sum over i in sy of wy(i) * (sum over j in sx of wx(j) * plane[i * width + j]) for one channel plane
//! (row-major, `width` columns): an integral of the surface with the weights wx, wy of one axis each.
template <typename S, typename T, typename WeightX, typename WeightY>
IOUNET_HD S separableSum(const T* plane, int width, Span sx, Span sy, WeightX wx, WeightY wy)
{
    S total = S(0);
    for (int i = sy.begin; i < sy.end; ++i)
    {
        S row = S(0);
        for (int j = sx.begin; j < sx.end; ++j)
        {
            row += wx(j) * static_cast<S>(plane[i * width + j]);
        }
        total += wy(i) * row;
    }
    return total;
}

//! Integral of one channel plane (H x W, row-major) over [xa, xb] x [ya, yb].
template <typename S, typename T>
IOUNET_HD S binIntegral(const T* plane, int height, int width, S xa, S xb, S ya, S yb)
{
    return separableSum<S>(plane, width, gridSpan(xa, xb, width), gridSpan(ya, yb, height),
        [=](int j) { return cellIntegral(xa, xb, j); }, [=](int i) { return cellIntegral(ya, yb, i); });
}

//! The surface integrated (weights wy: bin integrals) or interpolated (hat weights) along y, for
//! each column j in [jBegin, jEnd) and each of `channels` channels:
//! values[(j - jBegin) * channels + c] = sum over i in sy of wy[i - sy.begin] * map[i, j, c],
//! where map[i, j, c] = map[i * rowStride + j * colStride + c]. A planar map has channels = 1 and
//! colStride = 1; a channels-last (H, W, C) map has colStride = C.
template <typename S, typename T>
IOUNET_HD void weightedRowSum(const T* map, int64_t rowStride, int64_t colStride, int channels, Span sy,
    const S* wy, int jBegin, int jEnd, S* values)
{
    const int columns = jEnd > jBegin ? jEnd - jBegin : 0;
    const int64_t count = static_cast<int64_t>(columns) * channels;
    for (int64_t t = 0; t < count; ++t)
    {
        values[t] = S(0);
    }
    for (int i = sy.begin; i < sy.end; ++i)
    {
        const S w = wy[i - sy.begin];
        const T* row = map + i * rowStride + jBegin * colStride;
        if (colStride == channels)
        {
            for (int64_t t = 0; t < count; ++t)
            {
                values[t] += w * static_cast<S>(row[t]);
            }
            continue;
        }
        for (int j = 0; j < columns; ++j)
        {
            for (int c = 0; c < channels; ++c)
            {
                values[j * channels + c] += w * static_cast<S>(row[j * colStride + c]);
            }
        }
    }
}

//! The second, x, stage: out[c] = sum over j in sx of wx[j - sx.begin] * values[(j - offset) * channels + c].
template <typename S>
IOUNET_HD void weightedDot(Span sx, const S* wx, const S* values, int offset, int channels, S* out)
{
    if (channels == 1)
    {
        S total = S(0);
        for (int j = sx.begin; j < sx.end; ++j)
        {
            total += wx[j - sx.begin] * values[j - offset];
        }
        out[0] = total;
        return;
    }
    for (int c = 0; c < channels; ++c)
    {
        out[c] = S(0);
    }
    for (int j = sx.begin; j < sx.end; ++j)
    {
        const S w = wx[j - sx.begin];
        const S* column = values + static_cast<int64_t>(j - offset) * channels;
        for (int c = 0; c < channels; ++c)
        {
            out[c] += w * column[c];
        }
    }
}

//! Line integral of the surface along the vertical line x over [ya, yb].
template <typename S, typename T>
IOUNET_HD S verticalLineIntegral(const T* plane, int height, int width, S x, S ya, S yb)
{
    return separableSum<S>(plane, width, gridSpan(x, x, width), gridSpan(ya, yb, height),
        [=](int j) { return hat(x - S(j)); }, [=](int i) { return cellIntegral(ya, yb, i); });
}

//! Line integral of the surface along the horizontal line y over [xa, xb].
template <typename S, typename T>
IOUNET_HD S horizontalLineIntegral(const T* plane, int height, int width, S y, S xa, S xb)
{
    return separableSum<S>(plane, width, gridSpan(xa, xb, width), gridSpan(y, y, height),
        [=](int j) { return cellIntegral(xa, xb, j); }, [=](int i) { return hat(y - S(i)); });
}

//! Integral and line integrals along the four edges of one bin (any linear combination of
//! channels weighted by the upstream gradient may be summed into these before use).
template <typename S>
struct BinMoments
{
    S integral;
    S left;
    S right;
    S top;
    S bottom;
};

//! Accumulates the four corner gradients [x0, y0, x1, y1] of bin (p, q) of a box from the
//! gradient-weighted moments of that bin. Edge derivatives of value = I / (binW * binH):
//! d/dxa = (I / binW - L_left) / area, d/dxb = (L_right - I / binW) / area, likewise in y.
//! Edge q sits at x0 + (x1 - x0) q / PW: it moves with x1 by q / PW and with x0 by the rest.
template <typename S>
IOUNET_HD void accumulateCornerGradient(
    const BoxBins<S>& box, const BinMoments<S>& m, int p, int q, int pooledH, int pooledW, S* grad)
{
    const S inv = box.invArea;
    const S shrinkX = m.integral * box.binH * inv * inv;
    const S shrinkY = m.integral * box.binW * inv * inv;
    const S dLeft = shrinkX - m.left * inv;
    const S dRight = m.right * inv - shrinkX;
    const S dTop = shrinkY - m.top * inv;
    const S dBottom = m.bottom * inv - shrinkY;
    const S fx0 = S(q) / S(pooledW);
    const S fx1 = S(q + 1) / S(pooledW);
    const S fy0 = S(p) / S(pooledH);
    const S fy1 = S(p + 1) / S(pooledH);
    grad[0] += dLeft * (S(1) - fx0) + dRight * (S(1) - fx1);
    grad[1] += dTop * (S(1) - fy0) + dBottom * (S(1) - fy1);
    grad[2] += dLeft * fx0 + dRight * fx1;
    grad[3] += dTop * fy0 + dBottom * fy1;
}

//! Weight of feature (i, j) in the value of a bin: its feature-gradient weight.
template <typename S>
IOUNET_HD S featureGradWeight(const BoxBins<S>& box, S xa, S xb, S ya, S yb, int i, int j)
{
    return cellIntegral(xa, xb, j) * cellIntegral(ya, yb, i) * box.invArea;
}

} // namespace iounet
