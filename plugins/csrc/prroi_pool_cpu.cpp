// PrRoIPool CPU kernels: forward, coordinate gradient and feature gradient, float32 and float64.
// Work is split into (box, channel block) tasks over a small thread pool; each task computes its
// box's bin weights once and reuses them across the channels of its block.
#include "prroi_pool_cpu.h"

#include "prroi_pool_math.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace iounet {
namespace {

constexpr char kVersion[] = "0.1.0";

//! Runs fn(task) for task in [0, count) on up to `threads` threads.
template <typename Fn>
void parallelFor(int64_t count, int threads, Fn fn)
{
    const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, count));
    std::atomic<int64_t> next{0};
    auto work = [&]() {
        for (int64_t task = next++; task < count; task = next++)
        {
            fn(task);
        }
    };
    std::vector<std::thread> pool;
    for (int64_t t = 1; t < workers; ++t)
    {
        pool.emplace_back(work);
    }
    work();
    for (auto& thread : pool)
    {
        thread.join();
    }
}

int threadCount(int requested)
{
    if (requested > 0)
    {
        return requested;
    }
    const unsigned hardware = std::thread::hardware_concurrency();
    return hardware > 0 ? static_cast<int>(hardware) : 1;
}

//! Weights of a set of intervals (bins or single edge points) along one axis of the map.
template <typename S>
struct AxisTable
{
    std::vector<Span> spans;
    std::vector<int> offsets;
    std::vector<S> weights;

    const S* at(int k) const { return weights.data() + offsets[k]; }

    //! Smallest span holding every non-empty span of this table and of `other`.
    Span cover(const AxisTable* other = nullptr) const
    {
        Span all{0, 0};
        bool any = false;
        for (const AxisTable* table : {this, other})
        {
            for (size_t k = 0; table != nullptr && k < table->spans.size(); ++k)
            {
                const Span s = table->spans[k];
                if (s.begin < s.end)
                {
                    all = any ? Span{std::min(all.begin, s.begin), std::max(all.end, s.end)} : s;
                    any = true;
                }
            }
        }
        return all;
    }

    //! Integral weights of bins [origin + q * size, origin + (q + 1) * size], q < bins.
    void fillBins(S origin, S size, int bins, int extent)
    {
        reset(bins);
        for (int q = 0; q < bins; ++q)
        {
            const S a = binEdge(origin, size, q);
            const S b = binEdge(origin, size, q + 1);
            push(q, gridSpan(a, b, extent));
            for (int j = spans[q].begin; j < spans[q].end; ++j)
            {
                weights.push_back(cellIntegral(a, b, j));
            }
        }
    }

    //! Interpolation weights at the bin edges origin + e * size, e <= bins.
    void fillEdges(S origin, S size, int bins, int extent)
    {
        reset(bins + 1);
        for (int e = 0; e <= bins; ++e)
        {
            const S x = binEdge(origin, size, e);
            push(e, gridSpan(x, x, extent));
            for (int j = spans[e].begin; j < spans[e].end; ++j)
            {
                weights.push_back(hat(x - S(j)));
            }
        }
    }

private:
    void reset(int count)
    {
        spans.assign(count, Span{0, 0});
        offsets.assign(count, 0);
        weights.clear();
    }

    void push(int k, Span span)
    {
        spans[k] = span;
        offsets[k] = static_cast<int>(weights.size());
    }
};

template <typename S>
struct Problem
{
    int64_t batch, channels, height, width, numRois;
    int pooledH, pooledW;
    S scale;

    int64_t plane() const { return height * width; }
    int64_t bins() const { return static_cast<int64_t>(pooledH) * pooledW; }
};

template <typename S>
bool readShape(const IounetPrRoIPoolShape* shape, Problem<S>& problem)
{
    if (shape == nullptr || shape->batch < 0 || shape->channels < 0 || shape->height < 0 || shape->width < 0
        || shape->num_rois < 0 || shape->pooled_height <= 0 || shape->pooled_width <= 0
        || shape->pooled_height > (1 << 20) || shape->pooled_width > (1 << 20)
        || !std::isfinite(shape->spatial_scale) || shape->spatial_scale <= 0
        || shape->height * shape->width > INT32_MAX)
    {
        return false;
    }
    problem = Problem<S>{shape->batch, shape->channels, shape->height, shape->width, shape->num_rois,
        static_cast<int>(shape->pooled_height), static_cast<int>(shape->pooled_width), static_cast<S>(shape->spatial_scale)};
    return true;
}

//! Splits each box's channels into blocks so that there are a few tasks per thread.
struct Blocks
{
    int64_t perBox;
    int64_t size;

    Blocks(int64_t boxes, int64_t channels, int threads)
    {
        const int64_t wanted = (4 * static_cast<int64_t>(threads) + std::max<int64_t>(boxes, 1) - 1)
            / std::max<int64_t>(boxes, 1);
        perBox = std::max<int64_t>(1, std::min<int64_t>(wanted, channels));
        size = channels > 0 ? (channels + perBox - 1) / perBox : 0;
    }
};

template <typename S>
bool validBatch(const BoxBins<S>& box, int64_t batch)
{
    return box.batch >= 0 && box.batch < batch;
}

template <typename S>
void forward(const S* features, const S* rois, S* output, const Problem<S>& p, int threads)
{
    const Blocks blocks(p.numRois, p.channels, threads);
    parallelFor(p.numRois * blocks.perBox, threads, [&](int64_t task) {
        const int64_t k = task / blocks.perBox;
        const int64_t cBegin = (task % blocks.perBox) * blocks.size;
        const int64_t cEnd = std::min(cBegin + blocks.size, p.channels);
        S* out = output + k * p.channels * p.bins();
        const BoxBins<S> box = boxBins<S>(rois + 5 * k, p.scale, p.pooledH, p.pooledW);
        if (!validBatch(box, p.batch) || box.invArea == S(0))
        {
            std::fill(out + cBegin * p.bins(), out + cEnd * p.bins(), S(0));
            return;
        }
        AxisTable<S> xs, ys;
        xs.fillBins(box.x0, box.binW, p.pooledW, static_cast<int>(p.width));
        ys.fillBins(box.y0, box.binH, p.pooledH, static_cast<int>(p.height));
        const Span window = xs.cover();
        std::vector<S> columns(static_cast<size_t>(window.end - window.begin));
        for (int64_t c = cBegin; c < cEnd; ++c)
        {
            const S* plane = features + (box.batch * p.channels + c) * p.plane();
            S* bins = out + c * p.bins();
            for (int ph = 0; ph < p.pooledH; ++ph)
            {
                weightedRowSum(plane, static_cast<int>(p.width), ys.spans[ph], ys.at(ph), window.begin, window.end,
                    columns.data());
                for (int pw = 0; pw < p.pooledW; ++pw)
                {
                    bins[ph * p.pooledW + pw]
                        = box.invArea * weightedDot(xs.spans[pw], xs.at(pw), columns.data(), window.begin);
                }
            }
        }
    });
}

template <typename S>
void coordGrad(const S* features, const S* rois, const S* gradOutput, S* gradRois, const Problem<S>& p, int threads)
{
    const Blocks blocks(p.numRois, p.channels, threads);
    std::vector<S> partial(static_cast<size_t>(p.numRois * blocks.perBox * 4), S(0));
    parallelFor(p.numRois * blocks.perBox, threads, [&](int64_t task) {
        const int64_t k = task / blocks.perBox;
        const int64_t cBegin = (task % blocks.perBox) * blocks.size;
        const int64_t cEnd = std::min(cBegin + blocks.size, p.channels);
        const BoxBins<S> box = boxBins<S>(rois + 5 * k, p.scale, p.pooledH, p.pooledW);
        if (!validBatch(box, p.batch) || box.invArea == S(0) || cBegin >= cEnd)
        {
            return;
        }
        const int width = static_cast<int>(p.width);
        const int pooledW = p.pooledW;
        AxisTable<S> xs, ys, xEdges, yEdges;
        xs.fillBins(box.x0, box.binW, pooledW, width);
        ys.fillBins(box.y0, box.binH, p.pooledH, static_cast<int>(p.height));
        xEdges.fillEdges(box.x0, box.binW, pooledW, width);
        yEdges.fillEdges(box.y0, box.binH, p.pooledH, static_cast<int>(p.height));
        const Span window = xs.cover(&xEdges);
        std::vector<S> columns(static_cast<size_t>(window.end - window.begin));
        std::vector<S> vertical(static_cast<size_t>(pooledW + 1));
        // Gradient-weighted moments of every bin, summed over this block's channels.
        std::vector<BinMoments<S>> moments(static_cast<size_t>(p.bins()), BinMoments<S>{0, 0, 0, 0, 0});
        for (int64_t c = cBegin; c < cEnd; ++c)
        {
            const S* plane = features + (box.batch * p.channels + c) * p.plane();
            const S* grad = gradOutput + (k * p.channels + c) * p.bins();
            // Bin rows: the integral of each bin and the line integrals along its vertical edges.
            for (int ph = 0; ph < p.pooledH; ++ph)
            {
                weightedRowSum(plane, width, ys.spans[ph], ys.at(ph), window.begin, window.end, columns.data());
                for (int e = 0; e <= pooledW; ++e)
                {
                    vertical[e] = weightedDot(xEdges.spans[e], xEdges.at(e), columns.data(), window.begin);
                }
                for (int pw = 0; pw < pooledW; ++pw)
                {
                    const S g = grad[ph * pooledW + pw];
                    BinMoments<S>& m = moments[ph * pooledW + pw];
                    m.integral += g * weightedDot(xs.spans[pw], xs.at(pw), columns.data(), window.begin);
                    m.left += g * vertical[pw];
                    m.right += g * vertical[pw + 1];
                }
            }
            // Horizontal edges: the surface along y = edge, integrated over each bin column.
            for (int e = 0; e <= p.pooledH; ++e)
            {
                weightedRowSum(plane, width, yEdges.spans[e], yEdges.at(e), window.begin, window.end, columns.data());
                for (int pw = 0; pw < pooledW; ++pw)
                {
                    const S line = weightedDot(xs.spans[pw], xs.at(pw), columns.data(), window.begin);
                    if (e < p.pooledH)
                    {
                        moments[e * pooledW + pw].top += grad[e * pooledW + pw] * line;
                    }
                    if (e > 0)
                    {
                        moments[(e - 1) * pooledW + pw].bottom += grad[(e - 1) * pooledW + pw] * line;
                    }
                }
            }
        }
        S* out = partial.data() + task * 4;
        for (int ph = 0; ph < p.pooledH; ++ph)
        {
            for (int pw = 0; pw < pooledW; ++pw)
            {
                accumulateCornerGradient(box, moments[ph * pooledW + pw], ph, pw, p.pooledH, pooledW, out);
            }
        }
    });
    for (int64_t k = 0; k < p.numRois; ++k)
    {
        S sum[4] = {0, 0, 0, 0};
        for (int64_t b = 0; b < blocks.perBox; ++b)
        {
            for (int d = 0; d < 4; ++d)
            {
                sum[d] += partial[(k * blocks.perBox + b) * 4 + d];
            }
        }
        S* row = gradRois + 5 * k;
        row[0] = S(0);
        for (int d = 0; d < 4; ++d)
        {
            row[d + 1] = sum[d] * p.scale;
        }
    }
}

template <typename S>
void featureGrad(const S* rois, const S* gradOutput, S* gradFeatures, const Problem<S>& p, int threads)
{
    // Tasks own (image, channel block) slices of gradFeatures, so no two tasks write one element.
    std::fill(gradFeatures, gradFeatures + p.batch * p.channels * p.plane(), S(0));
    const Blocks blocks(p.batch, p.channels, threads);
    parallelFor(p.batch * blocks.perBox, threads, [&](int64_t task) {
        const int64_t image = task / blocks.perBox;
        const int64_t cBegin = (task % blocks.perBox) * blocks.size;
        const int64_t cEnd = std::min(cBegin + blocks.size, p.channels);
        const int width = static_cast<int>(p.width);
        AxisTable<S> xs, ys;
        for (int64_t k = 0; k < p.numRois; ++k)
        {
            const BoxBins<S> box = boxBins<S>(rois + 5 * k, p.scale, p.pooledH, p.pooledW);
            if (box.batch != image || box.invArea == S(0))
            {
                continue;
            }
            xs.fillBins(box.x0, box.binW, p.pooledW, width);
            ys.fillBins(box.y0, box.binH, p.pooledH, static_cast<int>(p.height));
            for (int64_t c = cBegin; c < cEnd; ++c)
            {
                S* plane = gradFeatures + (image * p.channels + c) * p.plane();
                const S* grad = gradOutput + (k * p.channels + c) * p.bins();
                for (int ph = 0; ph < p.pooledH; ++ph)
                {
                    const Span sy = ys.spans[ph];
                    const S* wy = ys.at(ph);
                    for (int pw = 0; pw < p.pooledW; ++pw)
                    {
                        const S g = grad[ph * p.pooledW + pw] * box.invArea;
                        const Span sx = xs.spans[pw];
                        const S* wx = xs.at(pw);
                        for (int i = sy.begin; i < sy.end; ++i)
                        {
                            const S gi = g * wy[i - sy.begin];
                            S* row = plane + static_cast<int64_t>(i) * width;
                            for (int j = sx.begin; j < sx.end; ++j)
                            {
                                row[j] += gi * wx[j - sx.begin];
                            }
                        }
                    }
                }
            }
        }
    });
}

template <typename S>
bool pointersValid(const Problem<S>& p, const void* features, const void* rois, const void* a, const void* b)
{
    const bool hasBoxes = p.numRois > 0;
    const bool hasFeatures = p.batch * p.channels * p.plane() > 0;
    return (!hasBoxes || (rois != nullptr && a != nullptr && b != nullptr))
        && (!hasFeatures || features != nullptr);
}

template <typename S>
int runForward(const S* features, const S* rois, S* output, const IounetPrRoIPoolShape* shape, int threads)
{
    Problem<S> p;
    if (!readShape(shape, p) || !pointersValid(p, features, rois, output, output))
    {
        return IOUNET_INVALID_ARGUMENT;
    }
    forward(features, rois, output, p, threadCount(threads));
    return IOUNET_OK;
}

template <typename S>
int runCoordGrad(const S* features, const S* rois, const S* gradOutput, S* gradRois, const IounetPrRoIPoolShape* shape,
    int threads)
{
    Problem<S> p;
    if (!readShape(shape, p) || !pointersValid(p, features, rois, gradOutput, gradRois))
    {
        return IOUNET_INVALID_ARGUMENT;
    }
    coordGrad(features, rois, gradOutput, gradRois, p, threadCount(threads));
    return IOUNET_OK;
}

template <typename S>
int runFeatureGrad(const S* rois, const S* gradOutput, S* gradFeatures, const IounetPrRoIPoolShape* shape, int threads)
{
    Problem<S> p;
    if (!readShape(shape, p) || !pointersValid(p, gradFeatures, rois, gradOutput, gradOutput))
    {
        return IOUNET_INVALID_ARGUMENT;
    }
    featureGrad(rois, gradOutput, gradFeatures, p, threadCount(threads));
    return IOUNET_OK;
}

} // namespace
} // namespace iounet

extern "C" {

const char* iounet_prroi_version(void)
{
    return iounet::kVersion;
}

int iounet_prroi_forward_f32(
    const float* features, const float* rois, float* output, const IounetPrRoIPoolShape* shape, int num_threads)
{
    return iounet::runForward(features, rois, output, shape, num_threads);
}

int iounet_prroi_forward_f64(
    const double* features, const double* rois, double* output, const IounetPrRoIPoolShape* shape, int num_threads)
{
    return iounet::runForward(features, rois, output, shape, num_threads);
}

int iounet_prroi_coord_grad_f32(const float* features, const float* rois, const float* grad_output, float* grad_rois,
    const IounetPrRoIPoolShape* shape, int num_threads)
{
    return iounet::runCoordGrad(features, rois, grad_output, grad_rois, shape, num_threads);
}

int iounet_prroi_coord_grad_f64(const double* features, const double* rois, const double* grad_output,
    double* grad_rois, const IounetPrRoIPoolShape* shape, int num_threads)
{
    return iounet::runCoordGrad(features, rois, grad_output, grad_rois, shape, num_threads);
}

int iounet_prroi_feature_grad_f32(const float* rois, const float* grad_output, float* grad_features,
    const IounetPrRoIPoolShape* shape, int num_threads)
{
    return iounet::runFeatureGrad(rois, grad_output, grad_features, shape, num_threads);
}

int iounet_prroi_feature_grad_f64(const double* rois, const double* grad_output, double* grad_features,
    const IounetPrRoIPoolShape* shape, int num_threads)
{
    return iounet::runFeatureGrad(rois, grad_output, grad_features, shape, num_threads);
}

} // extern "C"
