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
#include <memory>
#include <thread>
#include <vector>

namespace iounet {
namespace {

#ifndef IOUNET_VERSION
#error "IOUNET_VERSION is not defined: the CMake build passes it (read from iounet/version.py)"
#endif
constexpr char kVersion[] = IOUNET_VERSION;

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
    int64_t layout;

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
        || shape->height * shape->width > INT32_MAX || shape->layout < IOUNET_LAYOUT_AUTO
        || shape->layout > IOUNET_LAYOUT_CHANNELS_LAST)
    {
        return false;
    }
    problem = Problem<S>{shape->batch, shape->channels, shape->height, shape->width, shape->num_rois,
        static_cast<int>(shape->pooled_height), static_cast<int>(shape->pooled_width),
        static_cast<S>(shape->spatial_scale), shape->layout};
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

//! The features as a task reads them: one channel plane at a time (planar, N x C x H x W), or
//! a whole channel block at once from a channels-last (N x H x W x C) copy.
template <typename S>
struct FeatureView
{
    const S* data;
    bool channelsLast;
    int64_t channels, height, width;

    //! First element of channel c of image n, and the strides of rows and columns from there.
    const S* at(int64_t n, int64_t c) const
    {
        return channelsLast ? data + n * height * width * channels + c : data + (n * channels + c) * height * width;
    }
    int64_t rowStride() const { return channelsLast ? width * channels : width; }
    int64_t colStride() const { return channelsLast ? channels : 1; }
    //! Channels read together out of a block of `block` channels.
    int64_t group(int64_t block) const { return channelsLast ? block : 1; }
};

//! True when the boxes' windows together cover the map more than `coverings` times: then
//! transposing the features to channels-last costs less than the short planar loops it saves.
template <typename S>
bool preferChannelsLast(const S* rois, const Problem<S>& p, double coverings)
{
    if (p.layout != IOUNET_LAYOUT_AUTO)
    {
        return p.layout == IOUNET_LAYOUT_CHANNELS_LAST;
    }
    double cells = 0;
    for (int64_t k = 0; k < p.numRois; ++k)
    {
        const BoxBins<S> box = boxBins<S>(rois + 5 * k, p.scale, p.pooledH, p.pooledW);
        if (validBatch(box, p.batch) && box.invArea != S(0))
        {
            const Span sx = gridSpan(box.x0, box.x0 + box.binW * p.pooledW, static_cast<int>(p.width));
            const Span sy = gridSpan(box.y0, box.y0 + box.binH * p.pooledH, static_cast<int>(p.height));
            cells += double(sx.end - sx.begin) * double(sy.end - sy.begin);
        }
    }
    return cells > coverings * double(p.batch) * double(p.plane());
}

//! The features as a FeatureView, transposed into `storage` when channels-last pays off.
//! Break-even coverings measured on 256 x 100 x 168 maps: about 2 for the forward pass, under 1
//! for the coordinate gradient (which reads each window twice per bin row).
template <typename S>
FeatureView<S> viewFeatures(const S* features, const S* rois, const Problem<S>& p, int threads, double coverings,
    std::unique_ptr<S[]>& storage)
{
    FeatureView<S> view{features, false, p.channels, p.height, p.width};
    if (!preferChannelsLast(rois, p, coverings) || p.numRois == 0)
    {
        return view;
    }
    storage.reset(new S[static_cast<size_t>(p.batch * p.channels * p.plane())]);
    parallelFor(p.batch * p.height, threads, [&](int64_t task) {
        const int64_t n = task / p.height;
        const int64_t i = task % p.height;
        S* out = storage.get() + (n * p.height + i) * p.width * p.channels;
        const S* in = features + (n * p.channels * p.height + i) * p.width;
        // Tiles of 8 channels: each column's 8 values are written together.
        constexpr int64_t kTile = 8;
        for (int64_t c0 = 0; c0 < p.channels; c0 += kTile)
        {
            const int64_t tile = std::min(kTile, p.channels - c0);
            for (int64_t j = 0; j < p.width; ++j)
            {
                for (int64_t c = c0; c < c0 + tile; ++c)
                {
                    out[j * p.channels + c] = in[c * p.plane() + j];
                }
            }
        }
    });
    view.data = storage.get();
    view.channelsLast = true;
    return view;
}

template <typename S>
void forward(const FeatureView<S>& view, const S* rois, S* output, const Problem<S>& p, int threads)
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
        const int64_t group = view.group(blocks.size);
        std::vector<S> columns(static_cast<size_t>((window.end - window.begin) * group));
        std::vector<S> values(static_cast<size_t>(group));
        for (int64_t c = cBegin; c < cEnd; c += group)
        {
            const int count = static_cast<int>(std::min(group, cEnd - c));
            const S* map = view.at(box.batch, c);
            for (int ph = 0; ph < p.pooledH; ++ph)
            {
                weightedRowSum(map, view.rowStride(), view.colStride(), count, ys.spans[ph], ys.at(ph), window.begin,
                    window.end, columns.data());
                for (int pw = 0; pw < p.pooledW; ++pw)
                {
                    weightedDot(xs.spans[pw], xs.at(pw), columns.data(), window.begin, count, values.data());
                    for (int t = 0; t < count; ++t)
                    {
                        out[(c + t) * p.bins() + ph * p.pooledW + pw] = box.invArea * values[t];
                    }
                }
            }
        }
    });
}

template <typename S>
void coordGrad(
    const FeatureView<S>& view, const S* rois, const S* gradOutput, S* gradRois, const Problem<S>& p, int threads)
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
        const int pooledW = p.pooledW;
        AxisTable<S> xs, ys, xEdges, yEdges;
        xs.fillBins(box.x0, box.binW, pooledW, static_cast<int>(p.width));
        ys.fillBins(box.y0, box.binH, p.pooledH, static_cast<int>(p.height));
        xEdges.fillEdges(box.x0, box.binW, pooledW, static_cast<int>(p.width));
        yEdges.fillEdges(box.y0, box.binH, p.pooledH, static_cast<int>(p.height));
        const Span window = xs.cover(&xEdges);
        const int64_t group = view.group(blocks.size);
        std::vector<S> columns(static_cast<size_t>((window.end - window.begin) * group));
        std::vector<S> vertical(static_cast<size_t>((pooledW + 1) * group));
        std::vector<S> values(static_cast<size_t>(group));
        // Gradient-weighted moments of every bin, summed over this task's channels.
        std::vector<BinMoments<S>> moments(static_cast<size_t>(p.bins()), BinMoments<S>{0, 0, 0, 0, 0});
        for (int64_t c = cBegin; c < cEnd; c += group)
        {
            const int count = static_cast<int>(std::min(group, cEnd - c));
            const S* map = view.at(box.batch, c);
            const S* grad = gradOutput + (k * p.channels + c) * p.bins();
            // Weighted sum over this group's channels of one bin's values.
            auto weighted = [&](const S* v, int bin) {
                S total = S(0);
                for (int t = 0; t < count; ++t)
                {
                    total += grad[t * p.bins() + bin] * v[t];
                }
                return total;
            };
            // Bin rows: the integral of each bin and the line integrals along its vertical edges.
            for (int ph = 0; ph < p.pooledH; ++ph)
            {
                weightedRowSum(map, view.rowStride(), view.colStride(), count, ys.spans[ph], ys.at(ph), window.begin,
                    window.end, columns.data());
                for (int e = 0; e <= pooledW; ++e)
                {
                    weightedDot(xEdges.spans[e], xEdges.at(e), columns.data(), window.begin, count,
                        vertical.data() + e * group);
                }
                for (int pw = 0; pw < pooledW; ++pw)
                {
                    const int bin = ph * pooledW + pw;
                    weightedDot(xs.spans[pw], xs.at(pw), columns.data(), window.begin, count, values.data());
                    moments[bin].integral += weighted(values.data(), bin);
                    moments[bin].left += weighted(vertical.data() + pw * group, bin);
                    moments[bin].right += weighted(vertical.data() + (pw + 1) * group, bin);
                }
            }
            // Horizontal edges: the surface along y = edge, integrated over each bin column.
            for (int e = 0; e <= p.pooledH; ++e)
            {
                weightedRowSum(map, view.rowStride(), view.colStride(), count, yEdges.spans[e], yEdges.at(e),
                    window.begin, window.end, columns.data());
                for (int pw = 0; pw < pooledW; ++pw)
                {
                    weightedDot(xs.spans[pw], xs.at(pw), columns.data(), window.begin, count, values.data());
                    if (e < p.pooledH)
                    {
                        moments[e * pooledW + pw].top += weighted(values.data(), e * pooledW + pw);
                    }
                    if (e > 0)
                    {
                        moments[(e - 1) * pooledW + pw].bottom += weighted(values.data(), (e - 1) * pooledW + pw);
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
    std::unique_ptr<S[]> storage;
    const int workers = threadCount(threads);
    forward(viewFeatures(features, rois, p, workers, 2.0, storage), rois, output, p, workers);
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
    std::unique_ptr<S[]> storage;
    const int workers = threadCount(threads);
    coordGrad(viewFeatures(features, rois, p, workers, 0.75, storage), rois, gradOutput, gradRois, p, workers);
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
