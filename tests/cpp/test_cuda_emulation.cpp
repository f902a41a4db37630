// The CUDA kernels as launched, on the host emulation of the CUDA execution model
// (plugins/cuda_host): libiounet_prroi_cuda's C API and launchers, built from the unchanged kernel
// sources, over the edge-case table against the float64 references of prroi_oracle.h (integration,
// central differences, Algorithm 1). Every "device" buffer comes from cudaMalloc, which fills it
// with 0xFF bytes (NaN, index -1), so a value nobody wrote shows. Built and run under
// ThreadSanitizer and under AddressSanitizer + UndefinedBehaviorSanitizer; a sanitizer report fails
// the run. Also checks the emulation itself: half conversions, barriers, atomics, launch errors, and (with --hang)
// that its watchdog ends a kernel that never completes.
#include "prroi_oracle.h"
#include "prroi_pool_cuda.h"
#include "prroi_pool_cuda_api.h"

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#if defined(__FLT16_MAX__)
#define IOUNET_TEST_FLOAT16 1
#else
#define IOUNET_TEST_FLOAT16 0
#endif

namespace {

using namespace iounet_test;

// ------------------------------------------------------------------------------------------------
// Device memory

//! A cudaMalloc'd buffer of `count` T (0xFF bytes until written), freed at the end of the scope.
template <typename T>
class DeviceBuffer
{
public:
    explicit DeviceBuffer(size_t count)
        : mCount(count)
    {
        void* memory = nullptr;
        check(cudaMalloc(&memory, count * sizeof(T)) == cudaSuccess, "cudaMalloc");
        mData = static_cast<T*>(memory);
    }
    explicit DeviceBuffer(const std::vector<T>& values)
        : DeviceBuffer(values.size())
    {
        cudaMemcpy(mData, values.data(), values.size() * sizeof(T), cudaMemcpyHostToDevice);
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    ~DeviceBuffer()
    {
        cudaFree(mData);
    }

    T* get() const
    {
        return mCount > 0 ? mData : nullptr;
    }
    std::vector<T> download() const
    {
        std::vector<T> values(mCount);
        check(cudaDeviceSynchronize() == cudaSuccess, "kernels finish without error");
        cudaMemcpy(values.data(), mData, mCount * sizeof(T), cudaMemcpyDeviceToHost);
        return values;
    }

private:
    size_t mCount;
    T* mData = nullptr;
};

IounetPrRoIPoolCudaShape apiShape(const PrRoIPoolShape& s)
{
    return IounetPrRoIPoolCudaShape{s.batch, s.channels, s.height, s.width, s.numRois, s.pooledHeight, s.pooledWidth,
        s.spatialScale};
}

// ------------------------------------------------------------------------------------------------
// PrRoIPool

//! The C API (float32, and float16 features with float32 rois), for checkPrRoIPool.
struct ApiKernels
{
    std::vector<float> forward(const std::vector<float>& f, const std::vector<float>& rois, const PrRoIPoolShape& s)
    {
        return run<float>(f, rois, s);
    }
    std::vector<__half> forward(const std::vector<__half>& f, const std::vector<float>& rois, const PrRoIPoolShape& s)
    {
        return run<__half>(f, rois, s);
    }

    template <typename T>
    std::vector<float> coordGrad(const std::vector<T>& f, const std::vector<float>& rois,
        const std::vector<T>& gradOutput, const PrRoIPoolShape& s)
    {
        const DeviceBuffer<T> features(f), grad(gradOutput);
        const DeviceBuffer<float> boxes(rois), out(size_t(s.numRois) * 5);
        const IounetPrRoIPoolCudaShape shape = apiShape(s);
        const int status = sizeof(T) == sizeof(float)
            ? iounet_prroi_cuda_coord_grad_f32(reinterpret_cast<const float*>(features.get()), boxes.get(),
                reinterpret_cast<const float*>(grad.get()), out.get(), &shape, nullptr)
            : iounet_prroi_cuda_coord_grad_f16(features.get(), boxes.get(), grad.get(), out.get(), &shape, nullptr);
        check(status == IOUNET_CUDA_OK, "coordinate gradient launches");
        return out.download();
    }

    template <typename T>
    std::vector<T> featureGrad(const std::vector<float>& rois, const std::vector<T>& gradOutput,
        const PrRoIPoolShape& s, size_t featureCount, const std::string& what)
    {
        const DeviceBuffer<float> boxes(rois), workspace(featureCount);
        const DeviceBuffer<T> grad(gradOutput), out(featureCount);
        const IounetPrRoIPoolCudaShape shape = apiShape(s);
        const int status = sizeof(T) == sizeof(float)
            ? iounet_prroi_cuda_feature_grad_f32(boxes.get(), reinterpret_cast<const float*>(grad.get()),
                reinterpret_cast<float*>(out.get()), &shape, nullptr)
            : iounet_prroi_cuda_feature_grad_f16(
                boxes.get(), grad.get(), out.get(), workspace.get(), &shape, nullptr);
        check(status == IOUNET_CUDA_OK, what + "feature gradient launches");
        return out.download();
    }

private:
    template <typename T>
    std::vector<T> run(const std::vector<T>& f, const std::vector<float>& rois, const PrRoIPoolShape& s)
    {
        const DeviceBuffer<T> features(f), out(static_cast<size_t>(iounet::pooledCount(s)));
        const DeviceBuffer<float> boxes(rois);
        const IounetPrRoIPoolCudaShape shape = apiShape(s);
        const int status = sizeof(T) == sizeof(float)
            ? iounet_prroi_cuda_forward_f32(reinterpret_cast<const float*>(features.get()), boxes.get(),
                reinterpret_cast<float*>(out.get()), &shape, nullptr)
            : iounet_prroi_cuda_forward_f16(features.get(), boxes.get(), out.get(), &shape, nullptr);
        check(status == IOUNET_CUDA_OK, "forward launches");
        return out.download();
    }
};

//! The launchers of prroi_pool_cuda.h with half features and half rois (the TensorRT plugin's third
//! instantiation, which the C API does not expose), for checkPrRoIPool.
struct HalfLauncherKernels
{
    using H = __half;

    std::vector<H> forward(const std::vector<H>& f, const std::vector<H>& rois, const PrRoIPoolShape& s)
    {
        const DeviceBuffer<H> features(f), boxes(rois), out(static_cast<size_t>(iounet::pooledCount(s)));
        check(iounet::prroiPoolForwardCuda<H, H>(features.get(), boxes.get(), out.get(), s, nullptr) == cudaSuccess,
            "half forward launches");
        return out.download();
    }

    std::vector<H> coordGrad(
        const std::vector<H>& f, const std::vector<H>& rois, const std::vector<H>& gradOutput, const PrRoIPoolShape& s)
    {
        const DeviceBuffer<H> features(f), boxes(rois), grad(gradOutput), out(size_t(s.numRois) * 5);
        check(iounet::prroiPoolCoordGradCuda<H, H>(features.get(), boxes.get(), grad.get(), out.get(), s, nullptr)
                == cudaSuccess,
            "half coordinate gradient launches");
        return out.download();
    }

    std::vector<H> featureGrad(const std::vector<H>& rois, const std::vector<H>& gradOutput, const PrRoIPoolShape& s,
        size_t featureCount, const std::string& what)
    {
        const DeviceBuffer<H> boxes(rois), grad(gradOutput), out(featureCount);
        const DeviceBuffer<float> workspace(featureCount);
        check(iounet::prroiPoolFeatureGradCuda<H, H>(boxes.get(), grad.get(), out.get(), workspace.get(), s, nullptr)
                == cudaSuccess,
            what + "half feature gradient launches");
        return out.download();
    }
};

// ------------------------------------------------------------------------------------------------
// IoU-guided NMS

template <typename S>
void checkIouNms(const Detection& d, const std::string& name)
{
    const int64_t n = static_cast<int64_t>(d.scores.size());
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), int64_t(0));
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return d.ious[a] > d.ious[b]; });
    const DeviceBuffer<S> boxes(std::vector<S>(d.boxes.begin(), d.boxes.end()));
    const DeviceBuffer<S> scores(std::vector<S>(d.scores.begin(), d.scores.end()));
    const DeviceBuffer<int64_t> orderOnDevice(order), labels(d.labels);
    const DeviceBuffer<int64_t> keep(static_cast<size_t>(n)), count(1);
    const DeviceBuffer<S> kept(static_cast<size_t>(n));
    const DeviceBuffer<char> workspace(static_cast<size_t>(iounet_iou_nms_cuda_workspace_bytes(n)));
    for (double omega : {0.0, 0.3, 0.5, 1.0})
    {
        for (bool useLabels : {false, true})
        {
            const std::string what = std::string(sizeof(S) == 4 ? "float32" : "float64") + " IoU-NMS " + name
                + " threshold " + std::to_string(omega) + (useLabels ? " per label: " : " one label: ");
            int status = 0;
            const int64_t* labelPointer = useLabels ? labels.get() : nullptr;
            if constexpr (sizeof(S) == sizeof(float))
            {
                status = iounet_iou_nms_cuda_f32(boxes.get(), scores.get(), orderOnDevice.get(), labelPointer, n, omega,
                    workspace.get(), keep.get(), kept.get(), count.get(), nullptr);
            }
            else
            {
                status = iounet_iou_nms_cuda_f64(boxes.get(), scores.get(), orderOnDevice.get(), labelPointer, n, omega,
                    workspace.get(), keep.get(), kept.get(), count.get(), nullptr);
            }
            check(status == IOUNET_CUDA_OK, what + "launches");
            const int64_t numKept = count.download()[0];
            const std::vector<int64_t> keepHost = keep.download();
            const std::vector<S> keptHost = kept.download();
            std::vector<std::pair<int64_t, double>> result;
            for (int64_t t = 0; t < numKept && t < n; ++t)
            {
                result.emplace_back(keepHost[t], static_cast<double>(keptHost[t]));
            }
            auto expected = algorithm1(d, useLabels, omega);
            for (auto& entry : expected)
            {
                entry.second = static_cast<double>(static_cast<S>(entry.second));
            }
            check(numKept >= 0 && numKept <= n && result == expected, what + "kernels = Algorithm 1");
        }
    }
    // Entries past the count are left as they were: on the first call, as cudaMalloc left them.
    const DeviceBuffer<int64_t> freshKeep(static_cast<size_t>(n)), freshCount(1);
    const DeviceBuffer<S> freshKept(static_cast<size_t>(n));
    if constexpr (sizeof(S) == sizeof(double))
    {
        iounet_iou_nms_cuda_f64(boxes.get(), scores.get(), orderOnDevice.get(), nullptr, n, 0.5, workspace.get(),
            freshKeep.get(), freshKept.get(), freshCount.get(), nullptr);
        const int64_t numKept = freshCount.download()[0];
        const std::vector<int64_t> rest = freshKeep.download();
        check(std::all_of(rest.begin() + std::min(numKept, n), rest.end(), [](int64_t v) { return v == -1; }),
            name + ": IoU-NMS writes only num_kept entries of keep");
    }
}

void testIouNms()
{
    const std::vector<std::pair<Detection, std::string>> detections = {
        {Detection{}, "no boxes"},
        {Detection{{1, 1, 3, 3}, {0.5}, {0.9}, {0}}, "one box"},
        {Detection{{0, 0, 4, 4, 0, 0, 4, 4, 2, 2, 2, 6, 2, 2, 2, 6, 0, 0, 4, 2, 1, 1, 1, 1, 0, 0, 4, 4},
             {0.2, 0.9, 0.4, 0.8, 0.6, 0.7, 0.3}, {0.5, 0.5, 0.7, 0.7, 0.6, 0.9, 0.5}, {0, 0, 1, 1, 0, 0, 1}},
            "identical, zero-area and tied"},
        {Detection{{0, 0, 4, 2, 0, 0, 4, 4, 0, 0, 4, 1}, {0.1, 0.2, 0.3}, {0.3, 0.2, 0.1}, {0, 0, 0}},
            "IoU exactly 0.5"},
        {randomDetection(63, 3, 7, 163), "63 random boxes"},
        {randomDetection(64, 3, 7, 164), "64 random boxes"},
        {randomDetection(65, 3, 7, 165), "65 random boxes"},
        {randomDetection(150, 3, 7, 250), "150 random boxes"},
        {randomDetection(130, 1, 1000, 7), "130 random boxes, distinct IoUs"},
    };
    for (const auto& [detection, name] : detections)
    {
        checkIouNms<float>(detection, name);
        checkIouNms<double>(detection, name);
    }
}

// ------------------------------------------------------------------------------------------------
// The emulation itself

void testHalfConversions()
{
#if IOUNET_TEST_FLOAT16
    // Every half to float, and floats around every half boundary (ties, subnormals, overflow) to half,
    // against the compiler's _Float16.
    bool same = true;
    for (uint32_t bits = 0; bits < 0x10000u; ++bits)
    {
        _Float16 reference;
        const uint16_t h = static_cast<uint16_t>(bits);
        std::memcpy(&reference, &h, sizeof h);
        const float expected = static_cast<float>(reference);
        const float got = iounet_cuda_host::halfBitsToFloat(h);
        same = same && (std::memcmp(&expected, &got, sizeof got) == 0 || (expected != expected && got != got));
    }
    check(same, "half -> float = _Float16 for every half");
    same = true;
    for (uint64_t bits = 0; bits < 0x100000000ull; bits += 4093)
    {
        for (uint32_t delta : {0u, 1u, 0xFFFu, 0x1000u, 0x1001u})
        {
            const uint32_t b = static_cast<uint32_t>(bits) + delta;
            float value;
            std::memcpy(&value, &b, sizeof value);
            const _Float16 reference = static_cast<_Float16>(value);
            uint16_t expected;
            std::memcpy(&expected, &reference, sizeof expected);
            const uint16_t got = iounet_cuda_host::floatToHalfBits(value);
            const bool bothNan = (expected & 0x7C00u) == 0x7C00u && (expected & 0x3FFu) != 0
                && (got & 0x7C00u) == 0x7C00u && (got & 0x3FFu) != 0;
            same = same && (expected == got || bothNan);
        }
    }
    check(same, "float -> half rounds to nearest even as _Float16 does");
#else
    std::printf("no host half type (_Float16): half conversion checks skipped\n");
#endif
}

__global__ void earlyReturnKernel(int* counts)
{
    if (threadIdx.x % 3 == 0)
    {
        return; // leaves the block's barriers, as on Volta and newer
    }
    atomicAdd(&counts[0], 1);
    __syncthreads();
    atomicAdd(&counts[1], 1);
}

__global__ void divergentBarrierKernel(int* counts)
{
    if (threadIdx.x == 0)
    {
        __syncthreads();
    }
    else
    {
        __syncthreads();
    }
    atomicAdd(counts, 1);
}

//! Thread 0 never reaches the barrier the others wait at.
__global__ void hangingKernel(volatile int* never)
{
    if (threadIdx.x == 0)
    {
        while (*never == 0)
        {
        }
    }
    __syncthreads();
}

void testExecutionModel()
{
    const DeviceBuffer<int> counts(std::vector<int>{0, 0});
    IOUNET_LAUNCH(dim3(2, 3), dim3(30, 2), 0, nullptr, earlyReturnKernel)(counts.get());
    check(cudaGetLastError() == cudaSuccess, "a kernel whose threads return before a barrier completes");
    const std::vector<int> after = counts.download();
    check(after[0] == 6 * 40 && after[1] == 6 * 40, "blocks and barriers with early-returning threads");

    IOUNET_LAUNCH(1, 2048, 0, nullptr, earlyReturnKernel)(counts.get());
    check(cudaGetLastError() == cudaErrorInvalidConfiguration, "a block over 1024 threads is refused");
    IOUNET_LAUNCH(0, 32, 0, nullptr, earlyReturnKernel)(counts.get());
    check(cudaGetLastError() == cudaErrorInvalidConfiguration, "an empty grid is refused");
    check(cudaGetLastError() == cudaSuccess, "cudaGetLastError resets a launch error");

    // Last: a reported fault is sticky, as on a device.
    std::printf("an expected report of threads at different __syncthreads follows\n");
    IOUNET_LAUNCH(1, 64, 0, nullptr, divergentBarrierKernel)(counts.get());
    check(cudaGetLastError() == cudaErrorLaunchFailure, "threads at different __syncthreads fail the launch");
    check(cudaDeviceSynchronize() == cudaErrorLaunchFailure, "the launch failure is sticky");
}

} // namespace

int main(int argc, char** argv)
{
    if (argc == 2 && std::strcmp(argv[1], "--hang") == 0)
    {
        // The watchdog's test: a kernel that never completes must end the process with a report.
        const DeviceBuffer<int> never(std::vector<int>{0});
        IOUNET_LAUNCH(1, 32, 0, nullptr, hangingKernel)(never.get());
        std::printf("the hanging kernel returned\n");
        return 0;
    }
    testHalfConversions();
    ApiKernels api;
    checkPrRoIPool<float, float>("C API float32", Tolerance{2e-5, 2e-5}, Tolerance{1e-4, 1e-4}, true, api);
    checkPrRoIPool<__half, float>(
        "C API float16/float32 rois", Tolerance{6e-4, 3e-5}, Tolerance{1e-4, 1e-4}, true, api);
    HalfLauncherKernels launchers;
    checkPrRoIPool<__half, __half>(
        "launchers float16/float16 rois", Tolerance{6e-4, 3e-5}, Tolerance{6e-4, 2e-4}, true, launchers);
    testIouNms();
    testExecutionModel();
    std::printf("%d passed, %d failed\n", gPassed, gFailed);
    return gFailed == 0 ? 0 : 1;
}
