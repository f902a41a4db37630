// Host tests of the PrRoIPool CUDA kernel bodies (plugins/csrc/prroi_pool_kernel_bodies.h): the functions each
// kernel of prroi_pool_cuda.cu runs, called here over the kernel's whole index space with the
// kernel's own loops (grid-stride loops become plain loops, the coordinate gradient's block of
// kCoordGradThreads threads and its shared-memory tree reduction are emulated thread by thread,
// atomics become plain adds), against the references of prroi_oracle.h. Types: float32 I/O, half
// features with float32 rois, half features and rois (the TensorRT plugin's third instantiation);
// half is the host _Float16.
#include "prroi_oracle.h"
#include "prroi_pool_kernel_bodies.h"

#include <cstdio>
#include <string>
#include <vector>

#if defined(__FLT16_MAX__)
#define IOUNET_TEST_HALF 1
using Half = _Float16;
#else
#define IOUNET_TEST_HALF 0
#endif

namespace {

using namespace iounet_test;

// ------------------------------------------------------------------------------------------------
// The kernels' loops on the host, for checkPrRoIPool

struct BodyKernels
{
    //! forwardKernel: output[index] = T(forwardValue(index)) for every index.
    template <typename T, typename R>
    std::vector<T> forward(const std::vector<T>& f, const std::vector<R>& rois, const PrRoIPoolShape& s)
    {
        std::vector<T> out(static_cast<size_t>(iounet::pooledCount(s)));
        for (int64_t index = 0; index < iounet::pooledCount(s); ++index)
        {
            out[index] = static_cast<T>(iounet::forwardValue(f.data(), rois.data(), s, index));
        }
        return out;
    }

    //! coordGradKernel: one block of kCoordGradThreads threads per box, its shared array and reduction.
    template <typename T, typename R>
    std::vector<R> coordGrad(
        const std::vector<T>& f, const std::vector<R>& rois, const std::vector<T>& gradOutput, const PrRoIPoolShape& s)
    {
        constexpr int kThreads = iounet::kCoordGradThreads;
        std::vector<R> out(5 * static_cast<size_t>(s.numRois));
        static float partial[kThreads][4];
        for (int64_t k = 0; k < s.numRois; ++k)
        {
            for (int thread = 0; thread < kThreads; ++thread)
            {
                iounet::coordGradThread(f.data(), rois.data(), gradOutput.data(), s, k, thread, partial[thread]);
            }
            for (int stride = kThreads / 2; stride > 0; stride /= 2)
            {
                for (int thread = 0; thread < kThreads; ++thread) // between two barriers
                {
                    iounet::coordGradReduceStep(partial, thread, stride);
                }
            }
            float row[5];
            iounet::coordGradRow(partial[0], s, row);
            for (int d = 0; d < 5; ++d)
            {
                out[5 * k + d] = static_cast<R>(row[d]);
            }
        }
        return out;
    }

    //! featureGradKernel (+ toHalfKernel): a float32 accumulator that every output element adds to.
    template <typename T, typename R>
    std::vector<T> featureGrad(const std::vector<R>& rois, const std::vector<T>& gradOutput, const PrRoIPoolShape& s,
        size_t featureCount, const std::string& what)
    {
        std::vector<float> accumulator(featureCount, 0.0f);
        bool inBounds = true;
        for (int64_t index = 0; index < iounet::pooledCount(s); ++index)
        {
            const iounet::FeatureGradBin bin = iounet::featureGradBin(rois.data(), gradOutput.data(), s, index);
            for (int i = bin.sy.begin; i < bin.sy.end; ++i)
            {
                for (int j = bin.sx.begin; j < bin.sx.end; ++j)
                {
                    const int64_t at = bin.plane + int64_t(i) * s.width + j;
                    const bool inside = at >= 0 && at < int64_t(featureCount) && i >= 0 && i < s.height && j >= 0
                        && j < s.width;
                    inBounds = inBounds && inside;
                    if (inside)
                    {
                        accumulator[at] += iounet::featureGradWeightAt(bin, i, j);
                    }
                }
            }
        }
        check(inBounds, what + "feature gradient writes inside the map");
        std::vector<T> out(featureCount);
        for (size_t i = 0; i < featureCount; ++i)
        {
            out[i] = static_cast<T>(accumulator[i]);
        }
        return out;
    }
};

void testWorkedExample()
{
    const float f[] = {1, 2, 3, 4};
    const float roi[] = {0, 0, 0, 1, 1};
    const PrRoIPoolShape s{1, 1, 2, 2, 1, 2, 2, 1.0f};
    const float expected[] = {1.75f, 2.25f, 2.75f, 3.25f};
    for (int index = 0; index < 4; ++index)
    {
        check(std::fabs(iounet::forwardValue(f, roi, s, index) - expected[index]) < 1e-6f, "worked example");
    }
}

void testReductionIsTheSum()
{
    // The tree reduction over the shared array adds every row once.
    constexpr int kThreads = iounet::kCoordGradThreads;
    static float partial[kThreads][4];
    double expected[4] = {0, 0, 0, 0};
    for (int t = 0; t < kThreads; ++t)
    {
        for (int d = 0; d < 4; ++d)
        {
            partial[t][d] = static_cast<float>(t * (d + 1) % 17) - 8.0f;
            expected[d] += partial[t][d];
        }
    }
    for (int stride = kThreads / 2; stride > 0; stride /= 2)
    {
        for (int t = kThreads - 1; t >= 0; --t) // any order within a step
        {
            iounet::coordGradReduceStep(partial, t, stride);
        }
    }
    for (int d = 0; d < 4; ++d)
    {
        check(partial[0][d] == static_cast<float>(expected[d]), "block reduction sums every thread's row");
    }
}

} // namespace

int main()
{
    BodyKernels kernels;
    testWorkedExample();
    testReductionIsTheSum();
    // float32: the reference sees the same float inputs, so only float32 arithmetic differs.
    checkPrRoIPool<float, float>("float32", Tolerance{2e-5, 2e-5}, Tolerance{1e-4, 1e-4}, true, kernels);
#if IOUNET_TEST_HALF
    // half I/O: outputs rounded to half (relative error up to 2^-11); gradients w.r.t. float32 rois
    // are float32 from half inputs; with half rois the gradient is rounded to half too.
    checkPrRoIPool<Half, float>(
        "float16/float32 rois", Tolerance{6e-4, 3e-5}, Tolerance{1e-4, 1e-4}, true, kernels);
    checkPrRoIPool<Half, Half>(
        "float16/float16 rois", Tolerance{6e-4, 3e-5}, Tolerance{6e-4, 2e-4}, false, kernels);
#else
    std::printf("no host half type (_Float16): float16 cases skipped\n");
#endif
    std::printf("%d passed, %d failed\n", gPassed, gFailed);
    return gFailed == 0 ? 0 : 1;
}
