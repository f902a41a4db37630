// Bodies of the PrRoIPool CUDA kernels (prroi_pool_cuda.cu): every kernel is a thin launch shell around these
// __host__ __device__ functions, so the host test (tests/cpp/test_kernel_bodies.cpp) runs the same
// arithmetic on the CPU over each kernel's whole index space, emulating the shells' loops.
// Only host-executable code belongs here (no __CUDA_ARCH__ branches, atomics or barriers): the
// coverage build checks that the host test executes every line of this header.
//
// All arithmetic in float32 whatever the storage types; T (features, grad_output) and R (rois) need
// only a conversion to float (float, __half, or a host half type in the test).
#pragma once

#include "prroi_pool_math.h"

#include <cstdint>

namespace iounet {

//! Sizes of one PrRoIPool call (NCHW features, (K, 5) rois, (K, C, PH, PW) output).
struct PrRoIPoolShape
{
    int32_t batch;    // N
    int32_t channels; // C
    int32_t height;   // H
    int32_t width;    // W
    int32_t numRois;  // K
    int32_t pooledHeight;
    int32_t pooledWidth;
    float spatialScale;
};

//! Block size of the coordinate-gradient kernel (one block per box): the shared array that
//! coordGradReduceStep works on has this many rows.
constexpr int kCoordGradThreads = 256;

//! Position of one output element (k, c, ph, pw) of the (K, C, PH, PW) output.
struct BinIndex
{
    int64_t k;
    int64_t c;
    int ph;
    int pw;
};

//! Number of output elements, K * C * PH * PW.
IOUNET_HD int64_t pooledCount(const PrRoIPoolShape& s)
{
    return int64_t(s.numRois) * s.channels * s.pooledHeight * s.pooledWidth;
}

//! The output element at flat index `index`.
IOUNET_HD BinIndex unravelBin(int64_t index, const PrRoIPoolShape& s)
{
    BinIndex b;
    b.pw = static_cast<int>(index % s.pooledWidth);
    index /= s.pooledWidth;
    b.ph = static_cast<int>(index % s.pooledHeight);
    index /= s.pooledHeight;
    b.c = index % s.channels;
    b.k = index / s.channels;
    return b;
}

//! Box k's bins, in float32.
template <typename R>
IOUNET_HD BoxBins<float> kernelBox(const R* rois, int64_t k, const PrRoIPoolShape& s)
{
    return boxBins<float>(rois + 5 * k, s.spatialScale, s.pooledHeight, s.pooledWidth);
}

//! Whether a box pools anything: a batch index in [0, N) and bins of positive area.
IOUNET_HD bool usableBox(const BoxBins<float>& box, const PrRoIPoolShape& s)
{
    return box.batch >= 0 && box.batch < s.batch && box.invArea != 0.0f;
}

//! Channel plane c of the image a box reads (offset into an (N, C, H, W) array).
IOUNET_HD int64_t planeOffset(const BoxBins<float>& box, int64_t c, const PrRoIPoolShape& s)
{
    return (box.batch * int64_t(s.channels) + c) * s.height * s.width;
}

//! Edges of bin (ph, pw) of a box.
struct BinEdges
{
    float xa;
    float xb;
    float ya;
    float yb;
};

IOUNET_HD BinEdges binEdges(const BoxBins<float>& box, int ph, int pw)
{
    return BinEdges{binEdge(box.x0, box.binW, pw), binEdge(box.x0, box.binW, pw + 1), binEdge(box.y0, box.binH, ph),
        binEdge(box.y0, box.binH, ph + 1)};
}

// ------------------------------------------------------------------------------------------------
// Forward: one thread per output element (grid-stride loop over pooledCount).

//! Value of output element `index`.
template <typename T, typename R>
IOUNET_HD float forwardValue(const T* features, const R* rois, const PrRoIPoolShape& s, int64_t index)
{
    const BinIndex b = unravelBin(index, s);
    const BoxBins<float> box = kernelBox(rois, b.k, s);
    if (!usableBox(box, s))
    {
        return 0.0f;
    }
    const BinEdges e = binEdges(box, b.ph, b.pw);
    return box.invArea * binIntegral(features + planeOffset(box, b.c, s), s.height, s.width, e.xa, e.xb, e.ya, e.yb);
}

// ------------------------------------------------------------------------------------------------
// Coordinate gradient: one block of kCoordGradThreads threads per box. Thread t sums the
// contributions of work items t, t + kCoordGradThreads, ... (item = c * PH * PW + bin) into its
// row of a shared [kCoordGradThreads][4] array; the block then reduces the rows
// (coordGradReduceStep for stride = kCoordGradThreads / 2, ..., 1, a barrier after each) and
// thread 0 writes coordGradRow(partial[0]).

//! Adds the contribution of work item `item` (channel item / bins, bin item % bins) of box k to
//! grad[0..3] (d/dx0, d/dy0, d/dx1, d/dy1 in map coordinates). `box` must be usable.
template <typename T>
IOUNET_HD void coordGradItem(const T* features, const T* gradOutput, const PrRoIPoolShape& s, int64_t k,
    const BoxBins<float>& box, int64_t item, float* grad)
{
    const int bins = s.pooledHeight * s.pooledWidth;
    const int64_t c = item / bins;
    const int bin = static_cast<int>(item % bins);
    const int ph = bin / s.pooledWidth;
    const int pw = bin % s.pooledWidth;
    const float g = static_cast<float>(gradOutput[(k * s.channels + c) * bins + bin]);
    if (g == 0.0f)
    {
        return;
    }
    const T* plane = features + planeOffset(box, c, s);
    const BinEdges e = binEdges(box, ph, pw);
    BinMoments<float> m;
    m.integral = g * binIntegral(plane, s.height, s.width, e.xa, e.xb, e.ya, e.yb);
    m.left = g * verticalLineIntegral(plane, s.height, s.width, e.xa, e.ya, e.yb);
    m.right = g * verticalLineIntegral(plane, s.height, s.width, e.xb, e.ya, e.yb);
    m.top = g * horizontalLineIntegral(plane, s.height, s.width, e.ya, e.xa, e.xb);
    m.bottom = g * horizontalLineIntegral(plane, s.height, s.width, e.yb, e.xa, e.xb);
    accumulateCornerGradient(box, m, ph, pw, s.pooledHeight, s.pooledWidth, grad);
}

//! What thread `thread` of box k's block stores in its row of the shared array.
template <typename T, typename R>
IOUNET_HD void coordGradThread(const T* features, const R* rois, const T* gradOutput, const PrRoIPoolShape& s,
    int64_t k, int thread, float* partial)
{
    for (int d = 0; d < 4; ++d)
    {
        partial[d] = 0.0f;
    }
    const BoxBins<float> box = kernelBox(rois, k, s);
    if (!usableBox(box, s))
    {
        return;
    }
    const int64_t work = int64_t(s.channels) * s.pooledHeight * s.pooledWidth;
    for (int64_t item = thread; item < work; item += kCoordGradThreads)
    {
        coordGradItem(features, gradOutput, s, k, box, item, partial);
    }
}

//! One step of the block's tree reduction: thread `thread` adds row thread + stride to its own.
IOUNET_HD void coordGradReduceStep(float (*partial)[4], int thread, int stride)
{
    if (thread < stride)
    {
        for (int d = 0; d < 4; ++d)
        {
            partial[thread][d] += partial[thread + stride][d];
        }
    }
}

//! The (K, 5) gradient row of a box from its reduced sum (map coordinates -> roi coordinates).
IOUNET_HD void coordGradRow(const float* total, const PrRoIPoolShape& s, float* row)
{
    row[0] = 0.0f;
    for (int d = 0; d < 4; ++d)
    {
        row[1 + d] = total[d] * s.spatialScale;
    }
}

// ------------------------------------------------------------------------------------------------
// Feature gradient: one thread per output element (grid-stride loop over pooledCount); each adds
// featureGradWeightAt(bin, i, j) to accumulator[bin.plane + i * W + j] for i in bin.sy, j in bin.sx
// (float32 atomics, boxes overlap).

//! The scatter of one output element into the feature gradient.
struct FeatureGradBin
{
    BoxBins<float> box;
    BinEdges edges;
    Span sx;     // columns j it touches (empty when it has no gradient)
    Span sy;     // rows i it touches
    int64_t plane; // offset of its (n, c) plane in the (N, C, H, W) accumulator
    float g;       // its upstream gradient
};

template <typename T, typename R>
IOUNET_HD FeatureGradBin featureGradBin(const R* rois, const T* gradOutput, const PrRoIPoolShape& s, int64_t index)
{
    const BinIndex b = unravelBin(index, s);
    FeatureGradBin bin;
    bin.box = kernelBox(rois, b.k, s);
    bin.edges = binEdges(bin.box, b.ph, b.pw);
    bin.g = static_cast<float>(gradOutput[index]);
    bin.plane = 0;
    bin.sx = Span{0, 0};
    bin.sy = Span{0, 0};
    if (usableBox(bin.box, s) && bin.g != 0.0f)
    {
        bin.plane = planeOffset(bin.box, b.c, s);
        bin.sx = gridSpan(bin.edges.xa, bin.edges.xb, s.width);
        bin.sy = gridSpan(bin.edges.ya, bin.edges.yb, s.height);
    }
    return bin;
}

//! What the element adds to feature (i, j) of its plane: g * d(value) / d w[i][j].
IOUNET_HD float featureGradWeightAt(const FeatureGradBin& bin, int i, int j)
{
    const BinEdges& e = bin.edges;
    return bin.g * featureGradWeight(bin.box, e.xa, e.xb, e.ya, e.yb, i, j);
}

} // namespace iounet
