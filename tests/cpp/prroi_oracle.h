// Independent references of the PrRoIPool and IoU-NMS tests of the CUDA kernels
// (test_kernel_bodies.cpp: their bodies; test_cuda_emulation.cpp: the kernels as launched), written
// without the math core: PrRoIPool by brute-force integration of the bilinear surface in float64
// (the surface evaluated point by point from its four neighbouring features, each bin split at the
// integer grid lines and integrated with 3-point Gauss-Legendre, exact on those bilinear pieces),
// central finite differences of it for the box gradient, and IoU-Net's Algorithm 1 written out
// literally for the IoU-guided NMS. Also the table of box cases, the comparison of a
// kernel's results with the references over that table, and the pass/fail count.
#pragma once

#include "prroi_pool_kernel_bodies.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace iounet_test {

using iounet::PrRoIPoolShape;

inline int gPassed = 0;
inline int gFailed = 0;
//! Counts a check; prints the first 40 failures. With IOUNET_TEST_STOP_AT_FAILURE set, the first
//! failure ends the process (exit status 1).
inline void check(bool ok, const std::string& what)
{
    if (ok)
    {
        ++gPassed;
        return;
    }
    ++gFailed;
    if (gFailed <= 40)
    {
        std::printf("FAILED: %s\n", what.c_str());
    }
    if (std::getenv("IOUNET_TEST_STOP_AT_FAILURE") != nullptr)
    {
        std::fflush(stdout);
        std::exit(1);
    }
}

// ------------------------------------------------------------------------------------------------
// float64 reference

//! Value of the bilinear surface at (x, y) of a map whose feature (i, j) is at(i, j) (0 outside).
template <typename At>
double surface(At at, int height, int width, double x, double y)
{
    const double j0 = std::floor(x);
    const double i0 = std::floor(y);
    const double fx = x - j0;
    const double fy = y - i0;
    double total = 0.0;
    for (int di = 0; di < 2; ++di)
    {
        for (int dj = 0; dj < 2; ++dj)
        {
            const double i = i0 + di;
            const double j = j0 + dj;
            if (i >= 0 && i < height && j >= 0 && j < width)
            {
                total += at(static_cast<int>(i), static_cast<int>(j)) * (di ? fy : 1 - fy) * (dj ? fx : 1 - fx);
            }
        }
    }
    return total;
}

//! [low, high] cut at the integers inside it.
inline std::vector<double> cuts(double low, double high)
{
    std::vector<double> points{low};
    for (double c = std::floor(low) + 1; c < high; c += 1)
    {
        points.push_back(c);
    }
    points.push_back(high);
    return points;
}

//! Integral of the surface over [xa, xb] x [ya, yb] where it may be nonzero ([lo, hi] per axis).
template <typename At>
double integrate(At at, int height, int width, double xa, double xb, double ya, double yb, double xLo, double xHi,
    double yLo, double yHi)
{
    static const double kNodes[3] = {-std::sqrt(0.6), 0.0, std::sqrt(0.6)};
    static const double kWeights[3] = {5.0 / 9.0, 8.0 / 9.0, 5.0 / 9.0};
    xa = std::max(xa, xLo);
    xb = std::min(xb, xHi);
    ya = std::max(ya, yLo);
    yb = std::min(yb, yHi);
    if (!(xb > xa) || !(yb > ya))
    {
        return 0.0;
    }
    const std::vector<double> xs = cuts(xa, xb);
    const std::vector<double> ys = cuts(ya, yb);
    double total = 0.0;
    for (size_t p = 0; p + 1 < xs.size(); ++p)
    {
        const double hx = 0.5 * (xs[p + 1] - xs[p]);
        for (size_t r = 0; r + 1 < ys.size(); ++r)
        {
            const double hy = 0.5 * (ys[r + 1] - ys[r]);
            for (int a = 0; a < 3; ++a)
            {
                for (int b = 0; b < 3; ++b)
                {
                    const double x = xs[p] + hx * (kNodes[a] + 1);
                    const double y = ys[r] + hy * (kNodes[b] + 1);
                    total += kWeights[a] * kWeights[b] * hx * hy * surface(at, height, width, x, y);
                }
            }
        }
    }
    return total;
}

struct Map
{
    int n, c, h, w;
    std::vector<double> values; // (N, C, H, W)

    size_t size() const { return values.size(); }
};

//! A box as the contract reads it: rounded batch index in [0, N), finite values, positive area.
struct RefBox
{
    bool usable;
    int batch;
    double x0, y0, binW, binH;
};

inline RefBox refBox(const double* roi, double scale, int pooledH, int pooledW, int batches)
{
    RefBox box{false, -1, 0, 0, 0, 0};
    for (int d = 0; d < 5; ++d)
    {
        if (!std::isfinite(roi[d]))
        {
            return box;
        }
    }
    const double index = std::floor(roi[0] + 0.5);
    box.x0 = roi[1] * scale;
    box.y0 = roi[2] * scale;
    box.binW = std::max(roi[3] * scale - box.x0, 0.0) / pooledW;
    box.binH = std::max(roi[4] * scale - box.y0, 0.0) / pooledH;
    const double area = box.binW * box.binH;
    box.batch = static_cast<int>(std::max(-1.0, std::min(index, double(batches))));
    box.usable = index >= 0 && index < batches && area > 0 && std::isfinite(area);
    return box;
}

//! PrRoIPool in float64: (K, C, PH, PW).
inline std::vector<double> refForward(
    const Map& f, const std::vector<double>& rois, int pooledH, int pooledW, double scale)
{
    const size_t k = rois.size() / 5;
    std::vector<double> out(k * f.c * pooledH * pooledW, 0.0);
    for (size_t r = 0; r < k; ++r)
    {
        const RefBox box = refBox(&rois[5 * r], scale, pooledH, pooledW, f.n);
        if (!box.usable)
        {
            continue;
        }
        for (int c = 0; c < f.c; ++c)
        {
            const double* plane = f.values.data() + (size_t(box.batch) * f.c + c) * f.h * f.w;
            auto at = [&](int i, int j) { return plane[i * f.w + j]; };
            for (int p = 0; p < pooledH; ++p)
            {
                for (int q = 0; q < pooledW; ++q)
                {
                    const double xa = box.x0 + q * box.binW;
                    const double ya = box.y0 + p * box.binH;
                    const double v = integrate(at, f.h, f.w, xa, xa + box.binW, ya, ya + box.binH, -1, f.w, -1, f.h);
                    out[((r * f.c + c) * pooledH + p) * pooledW + q] = v / (box.binW * box.binH);
                }
            }
        }
    }
    return out;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b)
{
    double total = 0.0;
    for (size_t i = 0; i < a.size(); ++i)
    {
        total += a[i] * b[i];
    }
    return total;
}

//! d(sum(output * gradOutput)) / d rois by central differences (0 for a box that pools nothing).
inline std::vector<double> refCoordGrad(const Map& f, const std::vector<double>& rois,
    const std::vector<double>& gradOutput, int pooledH, int pooledW, double scale)
{
    const size_t k = rois.size() / 5;
    const size_t per = size_t(f.c) * pooledH * pooledW;
    std::vector<double> grad(rois.size(), 0.0);
    const double step = 1e-5;
    for (size_t r = 0; r < k; ++r)
    {
        if (!refBox(&rois[5 * r], scale, pooledH, pooledW, f.n).usable)
        {
            continue;
        }
        const std::vector<double> g(gradOutput.begin() + r * per, gradOutput.begin() + (r + 1) * per);
        for (int d = 1; d < 5; ++d)
        {
            std::vector<double> plus(rois.begin() + 5 * r, rois.begin() + 5 * r + 5);
            std::vector<double> minus = plus;
            plus[d] += step;
            minus[d] -= step;
            grad[5 * r + d] = (dot(refForward(f, plus, pooledH, pooledW, scale), g)
                                  - dot(refForward(f, minus, pooledH, pooledW, scale), g))
                / (2 * step);
        }
    }
    return grad;
}

//! d(sum(output * gradOutput)) / d features: each feature's own hat integrated over each bin.
inline std::vector<double> refFeatureGrad(const Map& f, const std::vector<double>& rois,
    const std::vector<double>& gradOutput, int pooledH, int pooledW, double scale)
{
    std::vector<double> grad(f.size(), 0.0);
    const size_t k = rois.size() / 5;
    for (size_t r = 0; r < k; ++r)
    {
        const RefBox box = refBox(&rois[5 * r], scale, pooledH, pooledW, f.n);
        if (!box.usable)
        {
            continue;
        }
        for (int i = 0; i < f.h; ++i)
        {
            for (int j = 0; j < f.w; ++j)
            {
                auto oneHot = [&](int a, int b) { return a == i && b == j ? 1.0 : 0.0; };
                for (int p = 0; p < pooledH; ++p)
                {
                    for (int q = 0; q < pooledW; ++q)
                    {
                        const double xa = box.x0 + q * box.binW;
                        const double ya = box.y0 + p * box.binH;
                        const double weight = integrate(oneHot, f.h, f.w, xa, xa + box.binW, ya, ya + box.binH, j - 1,
                                                  j + 1, i - 1, i + 1)
                            / (box.binW * box.binH);
                        for (int c = 0; c < f.c; ++c)
                        {
                            grad[((size_t(box.batch) * f.c + c) * f.h + i) * f.w + j]
                                += weight * gradOutput[((r * f.c + c) * pooledH + p) * pooledW + q];
                        }
                    }
                }
            }
        }
    }
    return grad;
}

// ------------------------------------------------------------------------------------------------
// Storage conversions

template <typename T>
std::vector<T> convert(const std::vector<double>& v)
{
    std::vector<T> out(v.size());
    for (size_t i = 0; i < v.size(); ++i)
    {
        out[i] = static_cast<T>(static_cast<float>(v[i]));
    }
    return out;
}

template <typename T>
std::vector<double> widen(const std::vector<T>& v)
{
    std::vector<double> out(v.size());
    for (size_t i = 0; i < v.size(); ++i)
    {
        out[i] = static_cast<double>(static_cast<float>(v[i]));
    }
    return out;
}

// ------------------------------------------------------------------------------------------------
// PrRoIPool cases

struct Case
{
    std::string name;
    int n, c, h, w;
    double scale;
    std::vector<double> rois; // K rows of 5, in image coordinates (times scale: map coordinates)
    bool degenerate;          // every box pools nothing
};

inline std::vector<Case> cases()
{
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double inf = std::numeric_limits<double>::infinity();
    return {
        {"inside", 2, 3, 6, 7, 1.0, {0, 1.3, 0.7, 4.6, 3.9, 1, 0.2, 2.1, 2.9, 5.3}, false},
        {"partly_outside", 2, 3, 6, 7, 1.0, {0, -1.7, -0.6, 3.2, 2.5, 1, 4.5, 3.1, 8.9, 7.4}, false},
        {"wholly_outside", 2, 3, 6, 7, 1.0, {0, 9.5, 1.0, 12.0, 3.0, 1, -5.0, -4.0, -1.5, -1.2, 0, 6.5, 7.5, 8, 9},
            false},
        {"covers_map", 2, 3, 6, 7, 1.0, {1, -2.3, -1.9, 8.4, 7.7}, false},
        // Outside the map but within a cell of its border, where the surface is not yet 0.
        {"slivers", 2, 3, 6, 7, 1.0, {0, -3.0, 1.0, -0.95, 4.0, 1, 1.0, 5.96, 4.0, 9.0, 0, 6.02, -3.0, 8.0, -0.97}, false},
        {"inside_one_cell", 2, 3, 6, 7, 1.0, {0, 2.2, 3.3, 2.45, 3.35}, false},
        {"on_grid_lines", 2, 3, 6, 7, 1.0, {0, 1.0, 1.0, 5.0, 4.0, 1, 0, 0, 6, 5}, false},
        {"scaled", 2, 3, 6, 7, 0.5, {1, 2.6, -1.4, 9.2, 7.8, 0, -3.0, 5.0, 4.0, 13.0}, false},
        {"batch_index_rounding", 2, 3, 6, 7, 1.0, {0.6, 1.1, 1.2, 3.4, 4.5, 1.4, 0.5, 0.5, 2.5, 2.5}, false},
        {"non_square_map", 1, 2, 4, 9, 1.0, {0, -0.5, 0.25, 7.75, 3.5, 0, 3.0, -2.0, 8.5, 2.0}, false},
        // More (channel, bin) work items than threads: each thread of the block takes several.
        {"many_channels", 1, 9, 5, 6, 1.0, {0, 0.3, 0.6, 4.9, 3.7}, false},
        {"zero_area", 2, 3, 6, 7, 1.0, {0, 2, 1, 2, 4, 1, 1.5, 2.5, 4.5, 2.5, 0, 4, 1, 2, 3, 1, 1, 5, 3, 2}, true},
        {"invalid", 2, 3, 6, 7, 1.0,
            {2, 1, 1, 4, 4, -1, 1, 1, 4, 4, -0.6, 1, 1, 4, 4, nan, 1, 1, 4, 4, 1e30, 1, 1, 4, 4, 0, nan, 1, 4, 4, 0, 1,
                1, inf, 4, 0, -1e30, -1e30, 1e30, 1e30},
            true},
        {"no_boxes", 2, 3, 6, 7, 1.0, {}, true},
        {"empty_map", 2, 3, 0, 7, 1.0, {0, 1.3, 0.7, 4.6, 3.9, 1, -1.0, -2.0, 3.0, 0.5}, true},
    };
}

inline Map makeMap(const Case& c, unsigned seed)
{
    Map m{c.n, c.c, c.h, c.w, std::vector<double>(size_t(c.n) * c.c * c.h * c.w)};
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> dist(-1.0, 1.0);
    for (double& v : m.values)
    {
        v = dist(rng);
    }
    return m;
}

inline std::vector<double> randomVector(size_t size, unsigned seed)
{
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> dist(-1.0, 1.0);
    std::vector<double> v(size);
    for (double& x : v)
    {
        x = dist(rng);
    }
    return v;
}

//! |a - b| <= atol + rtol |b| for all elements; reports the worst element.
inline bool allNear(
    const std::vector<double>& a, const std::vector<double>& b, double rtol, double atol, std::string& worst)
{
    bool ok = a.size() == b.size();
    worst = ok ? "" : " (sizes differ)";
    double worstExcess = -std::numeric_limits<double>::infinity();
    for (size_t i = 0; a.size() == b.size() && i < a.size(); ++i)
    {
        const double excess = std::fabs(a[i] - b[i]) - (atol + rtol * std::fabs(b[i]));
        if (!(excess <= 0))
        {
            ok = false;
        }
        if (!(excess <= worstExcess))
        {
            worstExcess = excess;
            worst = " (element " + std::to_string(i) + ": " + std::to_string(a[i]) + " vs " + std::to_string(b[i]) + ")";
        }
    }
    return ok;
}

inline bool allZero(const std::vector<double>& a)
{
    return std::all_of(a.begin(), a.end(), [](double v) { return v == 0.0; });
}

//! Tolerances of one storage type pairing: relative to the values of the reference, plus absolute.
struct Tolerance
{
    double rtol;
    double atol;
};

// ------------------------------------------------------------------------------------------------
// IoU-guided NMS

struct Detection
{
    std::vector<double> boxes; // n rows x0, y0, x1, y1
    std::vector<double> scores;
    std::vector<double> ious; // predicted IoU
    std::vector<int64_t> labels;
};

//! IoU of two boxes, written out: intersection rectangle over union, 0 without a union.
inline double referenceIou(const double* a, const double* b)
{
    const double ix = std::max(0.0, std::min(a[2], b[2]) - std::max(a[0], b[0]));
    const double iy = std::max(0.0, std::min(a[3], b[3]) - std::max(a[1], b[1]));
    const double intersection = ix * iy;
    const double unionArea = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection;
    return unionArea > 0 ? intersection / unionArea : 0.0;
}

//! IoU-Net, Algorithm 1: while B is not empty, take b_m with the highest predicted IoU (ties: lower
//! index), remove it; s = its score; for each b_j left in B of its label with IoU(b_m, b_j) > omega:
//! s = max(s, s_j), remove b_j; add (b_m, s) to D.
inline std::vector<std::pair<int64_t, double>> algorithm1(const Detection& d, bool useLabels, double omega)
{
    std::vector<int64_t> remaining(d.scores.size());
    std::iota(remaining.begin(), remaining.end(), int64_t(0));
    std::vector<std::pair<int64_t, double>> kept;
    while (!remaining.empty())
    {
        size_t m = 0;
        for (size_t t = 1; t < remaining.size(); ++t)
        {
            const int64_t a = remaining[t];
            const int64_t b = remaining[m];
            if (d.ious[a] > d.ious[b] || (d.ious[a] == d.ious[b] && a < b))
            {
                m = t;
            }
        }
        const int64_t bm = remaining[m];
        remaining.erase(remaining.begin() + static_cast<std::ptrdiff_t>(m));
        double s = d.scores[bm];
        for (auto it = remaining.begin(); it != remaining.end();)
        {
            const bool sameLabel = !useLabels || d.labels[*it] == d.labels[bm];
            if (sameLabel && referenceIou(&d.boxes[4 * bm], &d.boxes[4 * *it]) > omega)
            {
                s = std::max(s, d.scores[*it]);
                it = remaining.erase(it);
            }
            else
            {
                ++it;
            }
        }
        kept.emplace_back(bm, s);
    }
    return kept;
}

//! Boxes on a quarter-pixel grid below 16 and scores in 1/1024 steps: float32 holds them exactly and
//! every IoU is a ratio of small multiples of 1/16 that is 0, 1/2 or 1, or at least 6e-5 away from
//! them, so float32 and float64 take the same decisions at the thresholds tested.
inline Detection randomDetection(int n, int labels, int iouLevels, unsigned seed)
{
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> corner(0, 40);
    std::uniform_int_distribution<int> extent(0, 24);
    std::uniform_int_distribution<int> score(0, 1024);
    std::uniform_int_distribution<int> level(0, iouLevels - 1);
    std::uniform_int_distribution<int> label(0, labels - 1);
    Detection d;
    for (int i = 0; i < n; ++i)
    {
        const double x0 = corner(rng) / 4.0;
        const double y0 = corner(rng) / 4.0;
        d.boxes.insert(d.boxes.end(), {x0, y0, x0 + extent(rng) / 4.0, y0 + extent(rng) / 4.0});
        d.scores.push_back(score(rng) / 1024.0);
        d.ious.push_back(level(rng) / double(iouLevels));
        d.labels.push_back(label(rng));
    }
    return d;
}

//! Compares kernels with the references over every case and pool size: `kernels.forward(f, rois, s)`,
//! `kernels.coordGrad(f, rois, gradOutput, s)` and (when `featureGrad`)
//! `kernels.featureGrad(rois, gradOutput, s, featureCount, what)` return the (K, C, PH, PW) output in
//! T, the (K, 5) box gradient in R and the (N, C, H, W) feature gradient in T.
template <typename T, typename R, typename Kernels>
void checkPrRoIPool(const std::string& types, Tolerance valueTol, Tolerance gradTol, bool featureGrad, Kernels& kernels)
{
    const int pools[][2] = {{2, 2}, {3, 2}, {1, 4}, {7, 5}};
    unsigned seed = 1;
    for (const Case& c : cases())
    {
        for (const auto& pool : pools)
        {
            const int ph = pool[0];
            const int pw = pool[1];
            if (c.name == "many_channels" && ph != 7)
            {
                continue; // its point is the 9 x 35 work items of the (7, 5) pool
            }
            const std::string what = types + " " + c.name + " pool " + std::to_string(ph) + "x"
                + std::to_string(pw) + ": ";
            const int k = static_cast<int>(c.rois.size() / 5);
            const PrRoIPoolShape s{c.n, c.c, c.h, c.w, k, ph, pw, static_cast<float>(c.scale)};
            // The reference gets the inputs exactly as the kernel stores them.
            const std::vector<T> f = convert<T>(makeMap(c, seed++).values);
            const std::vector<R> rois = convert<R>(c.rois);
            std::vector<double> upstream = randomVector(size_t(k) * c.c * ph * pw, seed++);
            for (size_t i = 0; i < upstream.size(); i += 5)
            {
                upstream[i] = 0.0; // the kernels skip zero upstream gradients
            }
            const std::vector<T> gradOutput = convert<T>(upstream);
            const Map map{c.n, c.c, c.h, c.w, widen(f)};
            const std::vector<double> roisRef = widen(rois);
            const std::vector<double> gradRef = widen(gradOutput);
            const double scale = static_cast<float>(c.scale);
            // Bin edges are rounded to float32 at the coordinates' magnitude, so a bin's value and
            // gradients lose about ulp / bin size of relative accuracy (more where the gradient's
            // terms cancel): tolerances grow for bins under 0.05 cells.
            double smallestBin = 0.05;
            for (int r = 0; r < k; ++r)
            {
                const RefBox box = refBox(&roisRef[5 * r], scale, ph, pw, c.n);
                smallestBin = box.usable ? std::min({smallestBin, box.binW, box.binH}) : smallestBin;
            }
            const double loosen = 0.05 / smallestBin;
            const Tolerance vt{valueTol.rtol * loosen, valueTol.atol * loosen};
            const Tolerance gt{gradTol.rtol * loosen, gradTol.atol * loosen};
            std::string worst;

            const std::vector<double> out = widen(kernels.forward(f, rois, s));
            const std::vector<double> expected = refForward(map, roisRef, ph, pw, scale);
            bool near = allNear(out, expected, vt.rtol, vt.atol, worst);
            check(near, what + "forward" + worst);
            check(!c.degenerate || allZero(out), what + "degenerate boxes pool to zeros");

            const std::vector<double> grad = widen(kernels.coordGrad(f, rois, gradOutput, s));
            const std::vector<double> gradExpected = refCoordGrad(map, roisRef, gradRef, ph, pw, scale);
            near = allNear(grad, gradExpected, gt.rtol, gt.atol, worst);
            check(near, what + "coordinate gradient" + worst);
            check(!c.degenerate || allZero(grad), what + "degenerate boxes have zero coordinate gradient");
            bool batchColumnZero = true;
            for (int r = 0; r < k; ++r)
            {
                batchColumnZero = batchColumnZero && grad[5 * r] == 0.0;
            }
            check(batchColumnZero, what + "batch column of the coordinate gradient is 0");

            if (featureGrad)
            {
                const std::vector<double> gradF = widen(kernels.featureGrad(rois, gradOutput, s, map.size(), what));
                const std::vector<double> gradFExpected = refFeatureGrad(map, roisRef, gradRef, ph, pw, scale);
                near = allNear(gradF, gradFExpected, vt.rtol, vt.atol, worst);
                check(near, what + "feature gradient" + worst);
                check(!c.degenerate || allZero(gradF), what + "degenerate boxes have zero feature gradient");
            }
        }
    }
}

} // namespace iounet_test
