// Host tests of the PrRoIPool CPU kernels through their C API: known values, finite differences
// and edge cases. Also built with ASan and UBSan (test_prroi_cpu_sanitized).
#include "prroi_pool_cpu.h"

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {

int gPassed = 0;
int gFailed = 0;
int64_t gLayout = IOUNET_LAYOUT_AUTO; // every test runs once per layout

void check(bool ok, const char* what)
{
    if (ok)
    {
        ++gPassed;
    }
    else
    {
        ++gFailed;
        std::printf("FAILED: %s\n", what);
    }
}

bool near(double a, double b, double tol)
{
    return std::fabs(a - b) <= tol * (1.0 + std::fabs(b));
}

IounetPrRoIPoolShape shapeOf(int n, int c, int h, int w, int k, int ph, int pw, double scale)
{
    return IounetPrRoIPoolShape{n, c, h, w, k, ph, pw, scale, gLayout};
}

std::vector<double> randomVector(size_t size, unsigned seed, double low, double high)
{
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> dist(low, high);
    std::vector<double> v(size);
    for (auto& x : v)
    {
        x = dist(rng);
    }
    return v;
}

std::vector<double> forward(const std::vector<double>& f, const std::vector<double>& rois, const IounetPrRoIPoolShape& s,
    int threads = 2)
{
    std::vector<double> out(static_cast<size_t>(s.num_rois * s.channels * s.pooled_height * s.pooled_width));
    check(iounet_prroi_forward_f64(f.data(), rois.data(), out.data(), &s, threads) == IOUNET_OK, "forward returns OK");
    return out;
}

double weightedSum(const std::vector<double>& a, const std::vector<double>& b)
{
    double total = 0;
    for (size_t i = 0; i < a.size(); ++i)
    {
        total += a[i] * b[i];
    }
    return total;
}

void testWorkedExample()
{
    const float f[] = {1, 2, 3, 4};
    const float roi[] = {0, 0, 0, 1, 1};
    float out[4];
    const auto s = shapeOf(1, 1, 2, 2, 1, 2, 2, 1.0);
    check(iounet_prroi_forward_f32(f, roi, out, &s, 1) == IOUNET_OK, "worked example runs");
    const float expected[] = {1.75f, 2.25f, 2.75f, 3.25f};
    for (int i = 0; i < 4; ++i)
    {
        check(std::fabs(out[i] - expected[i]) < 1e-6f, "worked example value");
    }
}

void testWholeSurface()
{
    // Every hat integrates to 1: a box around the whole map averages sum(features) over its area.
    const auto s = shapeOf(1, 2, 5, 6, 1, 1, 1, 1.0);
    const auto f = randomVector(60, 1, -1, 1);
    const std::vector<double> roi = {0, -100, -100, 100, 100};
    const auto out = forward(f, roi, s);
    for (int c = 0; c < 2; ++c)
    {
        double sum = 0;
        for (int i = 0; i < 30; ++i)
        {
            sum += f[c * 30 + i];
        }
        check(near(out[c], sum / 40000.0, 1e-12), "whole-surface integral");
    }
}

void testDegenerateBoxesGiveZeros()
{
    const double nan = std::nan("");
    const double inf = INFINITY;
    const auto s = shapeOf(2, 3, 6, 7, 10, 2, 3, 1.0);
    const auto f = randomVector(2 * 3 * 42, 2, -1, 1);
    const std::vector<double> rois = {
        0, 2, 1, 2, 4,          // zero width
        1, 4, 1, 2, 3,          // inverted
        2, 1, 1, 4, 4,          // batch index out of range
        -1, 1, 1, 4, 4,         // negative batch index
        0, 50, 50, 60, 60,      // wholly outside
        nan, 1, 1, 4, 4,        // NaN batch index
        1e30, 1, 1, 4, 4,       // huge batch index
        0, nan, 1, 4, 4,        // NaN coordinate
        0, 1, 1, inf, 4,        // infinite coordinate
        0, -1e300, -1e300, 1e300, 1e300, // area overflows
    };
    const auto out = forward(f, rois, s);
    bool zero = true;
    for (double v : out)
    {
        zero = zero && v == 0.0;
    }
    check(zero, "degenerate boxes give zeros");
    std::vector<double> gradOut(out.size(), 1.0);
    std::vector<double> gradRois(50, 7.0);
    check(iounet_prroi_coord_grad_f64(f.data(), rois.data(), gradOut.data(), gradRois.data(), &s, 2) == IOUNET_OK,
        "coord grad of degenerate boxes runs");
    bool zeroGrad = true;
    for (double v : gradRois)
    {
        zeroGrad = zeroGrad && v == 0.0;
    }
    check(zeroGrad, "degenerate boxes have zero coordinate gradient");
    std::vector<double> gradF(f.size(), 7.0);
    check(iounet_prroi_feature_grad_f64(rois.data(), gradOut.data(), gradF.data(), &s, 2) == IOUNET_OK,
        "feature grad of degenerate boxes runs");
    bool zeroFeatureGrad = true;
    for (double v : gradF)
    {
        zeroFeatureGrad = zeroFeatureGrad && v == 0.0;
    }
    check(zeroFeatureGrad, "degenerate boxes have zero feature gradient");
}

void testCoordGradMatchesFiniteDifferences()
{
    const auto s = shapeOf(2, 3, 6, 7, 4, 3, 2, 0.8);
    const auto f = randomVector(2 * 3 * 42, 3, -1, 1);
    const std::vector<double> rois = {
        0, 1.3, 0.7, 5.6, 4.9,   // inside
        1, -2.1, -0.6, 4.2, 3.5, // partly outside
        1, 6.1, 5.2, 11.3, 9.7,  // partly outside, far corner
        0, -4.0, -3.0, 12.5, 9.9 // covers the map
    };
    const auto gradOut = randomVector(static_cast<size_t>(4 * 3 * 6), 4, -1, 1);
    std::vector<double> gradRois(20);
    check(iounet_prroi_coord_grad_f64(f.data(), rois.data(), gradOut.data(), gradRois.data(), &s, 2) == IOUNET_OK,
        "coord grad runs");
    const double step = 1e-6;
    for (int k = 0; k < 4; ++k)
    {
        check(gradRois[5 * k] == 0.0, "batch index column has zero gradient");
        for (int d = 1; d < 5; ++d)
        {
            auto plus = rois;
            auto minus = rois;
            plus[5 * k + d] += step;
            minus[5 * k + d] -= step;
            const double fd = (weightedSum(forward(f, plus, s), gradOut) - weightedSum(forward(f, minus, s), gradOut))
                / (2 * step);
            check(near(gradRois[5 * k + d], fd, 1e-6), "coord grad matches central differences");
        }
    }
}

void testFeatureGradMatchesUnitSteps()
{
    // The op is linear in the features, so a unit step gives the exact derivative.
    const auto s = shapeOf(2, 2, 4, 5, 3, 2, 3, 1.0);
    const auto f = randomVector(80, 5, -1, 1);
    const std::vector<double> rois = {0, -1.2, 0.4, 3.3, 2.9, 1, 0.5, -0.7, 5.5, 4.2, 1, 1.1, 1.2, 2.6, 2.9};
    const auto gradOut = randomVector(3 * 2 * 6, 6, -1, 1);
    std::vector<double> gradF(80, 5.0);
    check(iounet_prroi_feature_grad_f64(rois.data(), gradOut.data(), gradF.data(), &s, 3) == IOUNET_OK,
        "feature grad runs");
    const double base = weightedSum(forward(f, rois, s), gradOut);
    for (size_t i = 0; i < f.size(); ++i)
    {
        auto moved = f;
        moved[i] += 1.0;
        check(near(gradF[i], weightedSum(forward(moved, rois, s), gradOut) - base, 1e-10),
            "feature grad matches unit steps");
    }
}

void testThreadCountDoesNotChangeResults()
{
    const auto s = shapeOf(1, 5, 9, 11, 6, 3, 3, 0.5);
    const auto f = randomVector(5 * 99, 7, -1, 1);
    auto rois = randomVector(30, 8, -4, 26);
    for (int k = 0; k < 6; ++k)
    {
        rois[5 * k] = 0;
    }
    check(forward(f, rois, s, 1) == forward(f, rois, s, 3), "1 and 3 threads agree exactly");
}

void testInvalidArguments()
{
    float f[4] = {0, 0, 0, 0};
    float roi[5] = {0, 0, 0, 1, 1};
    float out[4];
    auto s = shapeOf(1, 1, 2, 2, 1, 2, 2, 1.0);
    s.pooled_height = 0;
    check(iounet_prroi_forward_f32(f, roi, out, &s, 1) == IOUNET_INVALID_ARGUMENT, "pooled size 0 rejected");
    s = shapeOf(1, 1, 2, 2, 1, 2, 2, std::nan(""));
    check(iounet_prroi_forward_f32(f, roi, out, &s, 1) == IOUNET_INVALID_ARGUMENT, "NaN scale rejected");
    s = shapeOf(1, 1, 2, 2, -1, 2, 2, 1.0);
    check(iounet_prroi_forward_f32(f, roi, out, &s, 1) == IOUNET_INVALID_ARGUMENT, "negative K rejected");
    s = shapeOf(1, 1, 2, 2, 1, 2, 2, 1.0);
    check(iounet_prroi_forward_f32(f, nullptr, out, &s, 1) == IOUNET_INVALID_ARGUMENT, "null rois rejected");
    check(iounet_prroi_forward_f32(f, roi, out, nullptr, 1) == IOUNET_INVALID_ARGUMENT, "null shape rejected");
    s = shapeOf(1, 1, 2, 2, 0, 2, 2, 1.0);
    check(iounet_prroi_forward_f32(f, nullptr, nullptr, &s, 1) == IOUNET_OK, "K = 0 with null pointers is fine");
    check(iounet_prroi_coord_grad_f32(f, nullptr, nullptr, nullptr, &s, 1) == IOUNET_OK, "K = 0 coord grad is fine");
}

} // namespace

void testLayoutsAgree()
{
    const auto f = randomVector(2 * 6 * 80, 9, -1, 1);
    auto rois = randomVector(35, 10, -3, 12);
    for (int k = 0; k < 7; ++k)
    {
        rois[5 * k] = k % 2;
    }
    auto s = shapeOf(2, 6, 8, 10, 7, 3, 2, 0.9);
    s.layout = IOUNET_LAYOUT_PLANAR;
    const auto planar = forward(f, rois, s, 3);
    s.layout = IOUNET_LAYOUT_CHANNELS_LAST;
    const auto channelsLast = forward(f, rois, s, 3);
    bool same = true;
    for (size_t i = 0; i < planar.size(); ++i)
    {
        same = same && near(planar[i], channelsLast[i], 1e-13);
    }
    check(same, "planar and channels-last layouts agree");
    s.layout = 3;
    std::vector<double> out(planar.size());
    check(iounet_prroi_forward_f64(f.data(), rois.data(), out.data(), &s, 1) == IOUNET_INVALID_ARGUMENT,
        "unknown layout rejected");
}

int main()
{
    for (int64_t layout : {IOUNET_LAYOUT_AUTO, IOUNET_LAYOUT_PLANAR, IOUNET_LAYOUT_CHANNELS_LAST})
    {
        gLayout = layout;
        testWorkedExample();
        testWholeSurface();
        testDegenerateBoxesGiveZeros();
        testCoordGradMatchesFiniteDifferences();
        testFeatureGradMatchesUnitSteps();
        testThreadCountDoesNotChangeResults();
        testInvalidArguments();
    }
    testLayoutsAgree();
    std::printf("%d passed, %d failed\n", gPassed, gFailed);
    return gFailed == 0 ? 0 : 1;
}
