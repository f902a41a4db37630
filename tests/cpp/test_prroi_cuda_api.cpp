// Tests of libiounet_prroi_cuda's C API. Without a usable GPU: the argument checks (nothing is
// launched), the error messages, the version and the workspace sizes, and that the probe says why
// the kernels cannot run. With one: every kernel on the device against the CPU library (itself
// tested against finite differences and Algorithm 1), on boxes inside, across and outside the
// map, zero-area boxes and batch indices outside [0, N).
#include "iou_nms_cpu.h"
#include "prroi_pool_cpu.h"
#include "prroi_pool_cuda_api.h"

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

int gPassed = 0;
int gFailed = 0;

void check(bool ok, const std::string& what)
{
    if (ok)
    {
        ++gPassed;
    }
    else
    {
        ++gFailed;
        std::printf("FAILED: %s\n", what.c_str());
    }
}

bool near(const std::vector<double>& a, const std::vector<double>& b, double tol)
{
    bool ok = a.size() == b.size();
    for (size_t i = 0; ok && i < a.size(); ++i)
    {
        ok = std::fabs(a[i] - b[i]) <= tol * (1.0 + std::fabs(b[i]));
    }
    return ok;
}

IounetPrRoIPoolCudaShape shapeOf(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t ph, int64_t pw,
    double scale)
{
    return IounetPrRoIPoolCudaShape{n, c, h, w, k, ph, pw, scale};
}

void testWithoutLaunching()
{
    check(std::strcmp(iounet_prroi_cuda_version(), IOUNET_VERSION) == 0, "version is IOUNET_VERSION");
    check(std::strcmp(iounet_prroi_cuda_error_message(IOUNET_CUDA_OK), "no error") == 0, "message of OK");
    check(std::strstr(iounet_prroi_cuda_error_message(IOUNET_CUDA_INVALID_ARGUMENT), "invalid argument") != nullptr,
        "message of an invalid argument");
    check(std::strcmp(iounet_prroi_cuda_error_message(IOUNET_CUDA_ERROR_BASE + cudaErrorNoDevice),
              cudaGetErrorString(cudaErrorNoDevice))
            == 0,
        "message of a CUDA error is the runtime's");
    check(std::strstr(iounet_prroi_cuda_error_message(-5), "unknown") != nullptr, "message of an unknown code");

    // Rejected before anything touches the (here bogus) pointers.
    float* bogus = reinterpret_cast<float*>(64);
    const int invalid = IOUNET_CUDA_INVALID_ARGUMENT;
    auto s = shapeOf(1, 1, 2, 2, 1, 2, 2, 1.0);
    check(iounet_prroi_cuda_forward_f32(bogus, bogus, bogus, nullptr, nullptr) == invalid, "null shape");
    check(iounet_prroi_cuda_forward_f32(nullptr, bogus, bogus, &s, nullptr) == invalid, "null features");
    check(iounet_prroi_cuda_forward_f16(bogus, nullptr, bogus, &s, nullptr) == invalid, "null rois");
    check(iounet_prroi_cuda_coord_grad_f32(bogus, bogus, bogus, nullptr, &s, nullptr) == invalid, "null grad_rois");
    check(iounet_prroi_cuda_coord_grad_f16(bogus, bogus, nullptr, bogus, &s, nullptr) == invalid,
        "null grad_output");
    check(iounet_prroi_cuda_feature_grad_f32(bogus, bogus, nullptr, &s, nullptr) == invalid, "null grad_features");
    check(iounet_prroi_cuda_feature_grad_f16(bogus, bogus, bogus, nullptr, &s, nullptr) == invalid,
        "float16 feature gradient needs its workspace");
    for (const auto& bad : {shapeOf(1, 1, 2, 2, 1, 0, 2, 1.0), shapeOf(1, 1, 2, 2, 1, 2, int64_t(1) << 21, 1.0),
             shapeOf(-1, 1, 2, 2, 1, 2, 2, 1.0), shapeOf(1, 1, 2, 2, int64_t(1) << 31, 2, 2, 1.0),
             shapeOf(1, 1, 65536, 65536, 1, 2, 2, 1.0), shapeOf(1, 1, 2, 2, 1, 2, 2, 0.0),
             shapeOf(1, 1, 2, 2, 1, 2, 2, NAN), shapeOf(1, 1, 2, 2, 1, 2, 2, 1e-300),
             shapeOf(1, 1, 2, 2, 1, 2, 2, 1e300)})
    {
        check(iounet_prroi_cuda_forward_f32(bogus, bogus, bogus, &bad, nullptr) == invalid, "bad shape rejected");
    }
    // Empty outputs launch nothing and need no pointers.
    const auto none = shapeOf(2, 3, 4, 5, 0, 2, 2, 1.0);
    check(iounet_prroi_cuda_forward_f32(nullptr, nullptr, nullptr, &none, nullptr) == IOUNET_CUDA_OK, "K = 0 forward");
    check(iounet_prroi_cuda_coord_grad_f16(nullptr, nullptr, nullptr, nullptr, &none, nullptr) == IOUNET_CUDA_OK,
        "K = 0 coordinate gradient");
    const auto noFeatures = shapeOf(0, 3, 4, 5, 0, 2, 2, 1.0);
    check(iounet_prroi_cuda_feature_grad_f16(nullptr, nullptr, nullptr, nullptr, &noFeatures, nullptr)
            == IOUNET_CUDA_OK,
        "empty feature gradient");

    check(iounet_iou_nms_cuda_workspace_bytes(0) == 0 && iounet_iou_nms_cuda_workspace_bytes(1) == 16
            && iounet_iou_nms_cuda_workspace_bytes(65) == (65 * 2 + 2) * 8
            && iounet_iou_nms_cuda_workspace_bytes(int64_t(1) << 40) == -1,
        "IoU-NMS workspace sizes");
    int64_t* count = reinterpret_cast<int64_t*>(64);
    check(iounet_iou_nms_cuda_f32(bogus, bogus, count, nullptr, 3, NAN, bogus, count, bogus, count, nullptr)
            == invalid,
        "NaN threshold");
    check(iounet_iou_nms_cuda_f64(nullptr, nullptr, count, nullptr, 3, 0.5, bogus, count, nullptr, count, nullptr)
            == invalid,
        "null boxes");
    check(iounet_iou_nms_cuda_f32(nullptr, nullptr, nullptr, nullptr, -1, 0.5, nullptr, nullptr, nullptr, count,
              nullptr)
            == invalid,
        "negative n");
    check(iounet_iou_nms_cuda_f32(nullptr, nullptr, nullptr, nullptr, 0, 0.5, nullptr, nullptr, nullptr, nullptr,
              nullptr)
            == invalid,
        "null num_kept");
}

// ------------------------------------------------------------------------------------------------
// On a device

template <typename T>
T* upload(const std::vector<T>& host)
{
    void* device = nullptr;
    if (cudaMalloc(&device, std::max<size_t>(host.size(), 1) * sizeof(T)) != cudaSuccess)
    {
        std::printf("cudaMalloc failed\n");
        std::exit(1);
    }
    cudaMemcpy(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
    return static_cast<T*>(device);
}

template <typename T>
std::vector<T> download(const T* device, size_t count)
{
    std::vector<T> host(count);
    check(cudaDeviceSynchronize() == cudaSuccess, "kernels finish without error");
    cudaMemcpy(host.data(), device, count * sizeof(T), cudaMemcpyDeviceToHost);
    return host;
}

std::vector<double> randomVector(size_t size, unsigned seed, double low, double high)
{
    std::mt19937 rng(seed);
    std::uniform_real_distribution<double> dist(low, high);
    std::vector<double> v(size);
    for (double& x : v)
    {
        x = dist(rng);
    }
    return v;
}

template <typename To, typename From>
std::vector<To> cast(const std::vector<From>& v)
{
    std::vector<To> out(v.size());
    for (size_t i = 0; i < v.size(); ++i)
    {
        out[i] = static_cast<To>(static_cast<float>(v[i]));
    }
    return out;
}

std::vector<double> fromHalf(const std::vector<__half>& v)
{
    std::vector<double> out(v.size());
    for (size_t i = 0; i < v.size(); ++i)
    {
        out[i] = __half2float(v[i]);
    }
    return out;
}

std::vector<__half> toHalf(const std::vector<double>& v)
{
    std::vector<__half> out(v.size());
    for (size_t i = 0; i < v.size(); ++i)
    {
        out[i] = __float2half(static_cast<float>(v[i]));
    }
    return out;
}

void testPrRoIPoolOnDevice()
{
    const int64_t n = 2, c = 3, h = 6, w = 7, ph = 3, pw = 2;
    const double scale = 0.8;
    const std::vector<double> rois = {0, 1.3, 0.7, 5.6, 4.9, 1, -2.1, -0.6, 4.2, 3.5, 1, 6.1, 5.2, 11.3, 9.7, 0, -4.0,
        -3.0, 12.5, 9.9, 0, 2, 1, 2, 4, 2, 1, 1, 4, 4, -1, 1, 1, 4, 4, 0, 20, 20, 30, 30};
    const int64_t k = static_cast<int64_t>(rois.size() / 5);
    const size_t featureCount = size_t(n * c * h * w);
    const size_t outCount = size_t(k * c * ph * pw);
    for (bool half : {false, true})
    {
        const std::string type = half ? "float16: " : "float32: ";
        // The CPU reference (float64) gets the values as the device stores them.
        std::vector<double> f = randomVector(featureCount, 1, -1, 1);
        std::vector<double> g = randomVector(outCount, 2, -1, 1);
        if (half)
        {
            f = fromHalf(toHalf(f));
            g = fromHalf(toHalf(g));
        }
        const std::vector<double> r = cast<double>(cast<float>(rois));
        const IounetPrRoIPoolShape cpuShape{n, c, h, w, k, ph, pw, double(float(scale)), IOUNET_LAYOUT_AUTO};
        std::vector<double> out(outCount), gradRois(size_t(k) * 5), gradF(featureCount);
        iounet_prroi_forward_f64(f.data(), r.data(), out.data(), &cpuShape, 1);
        iounet_prroi_coord_grad_f64(f.data(), r.data(), g.data(), gradRois.data(), &cpuShape, 1);
        iounet_prroi_feature_grad_f64(r.data(), g.data(), gradF.data(), &cpuShape, 1);

        const auto s = shapeOf(n, c, h, w, k, ph, pw, scale);
        float* dRois = upload(cast<float>(rois));
        float* dGradRois = upload(std::vector<float>(size_t(k) * 5, 7.0f));
        const double tol = half ? 2e-3 : 2e-5;
        if (half)
        {
            __half* dF = upload(toHalf(f));
            __half* dG = upload(toHalf(g));
            __half* dOut = upload(std::vector<__half>(outCount));
            __half* dGradF = upload(std::vector<__half>(featureCount));
            float* workspace = upload(std::vector<float>(featureCount, 7.0f));
            check(iounet_prroi_cuda_forward_f16(dF, dRois, dOut, &s, nullptr) == 0, type + "forward launches");
            check(near(fromHalf(download(dOut, outCount)), out, tol), type + "forward = CPU");
            check(iounet_prroi_cuda_coord_grad_f16(dF, dRois, dG, dGradRois, &s, nullptr) == 0,
                type + "coordinate gradient launches");
            check(near(cast<double>(download(dGradRois, gradRois.size())), gradRois, 1e-4),
                type + "coordinate gradient = CPU");
            check(iounet_prroi_cuda_feature_grad_f16(dRois, dG, dGradF, workspace, &s, nullptr) == 0,
                type + "feature gradient launches");
            check(near(fromHalf(download(dGradF, featureCount)), gradF, tol), type + "feature gradient = CPU");
            cudaFree(dF);
            cudaFree(dG);
            cudaFree(dOut);
            cudaFree(dGradF);
            cudaFree(workspace);
        }
        else
        {
            float* dF = upload(cast<float>(f));
            float* dG = upload(cast<float>(g));
            float* dOut = upload(std::vector<float>(outCount));
            float* dGradF = upload(std::vector<float>(featureCount, 7.0f));
            check(iounet_prroi_cuda_forward_f32(dF, dRois, dOut, &s, nullptr) == 0, type + "forward launches");
            check(near(cast<double>(download(dOut, outCount)), out, tol), type + "forward = CPU");
            check(iounet_prroi_cuda_coord_grad_f32(dF, dRois, dG, dGradRois, &s, nullptr) == 0,
                type + "coordinate gradient launches");
            check(near(cast<double>(download(dGradRois, gradRois.size())), gradRois, 1e-4),
                type + "coordinate gradient = CPU");
            check(iounet_prroi_cuda_feature_grad_f32(dRois, dG, dGradF, &s, nullptr) == 0,
                type + "feature gradient launches");
            check(near(cast<double>(download(dGradF, featureCount)), gradF, tol), type + "feature gradient = CPU");
            cudaFree(dF);
            cudaFree(dG);
            cudaFree(dOut);
            cudaFree(dGradF);
        }
        cudaFree(dRois);
        cudaFree(dGradRois);
    }
}

template <typename S>
void testIouNmsOnDevice(int n, bool useLabels, double threshold)
{
    const std::string what = "IoU-NMS on the device, " + std::to_string(n) + " boxes, threshold "
        + std::to_string(threshold) + (useLabels ? ", per label: " : ": ");
    std::mt19937 rng(static_cast<unsigned>(n));
    std::uniform_int_distribution<int> corner(0, 40), extent(0, 24), score(0, 1024), level(0, 9), label(0, 2);
    std::vector<double> boxes, scores, ious;
    std::vector<int64_t> labels;
    for (int i = 0; i < n; ++i)
    {
        const double x0 = corner(rng) / 4.0, y0 = corner(rng) / 4.0;
        boxes.insert(boxes.end(), {x0, y0, x0 + extent(rng) / 4.0, y0 + extent(rng) / 4.0});
        scores.push_back(score(rng) / 1024.0);
        ious.push_back(level(rng) / 10.0);
        labels.push_back(label(rng));
    }
    std::vector<int64_t> keep(static_cast<size_t>(n) + 1);
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::vector<double> kept(static_cast<size_t>(n) + 1);
    int64_t numKept = -1;
    iounet_iou_nms_f64(boxes.data(), scores.data(), ious.data(), useLabels ? labels.data() : nullptr, n, threshold,
        keep.data(), kept.data(), &numKept);
    std::iota(order.begin(), order.end(), int64_t(0));
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return ious[a] > ious[b]; });

    S* dBoxes = upload(cast<S>(boxes));
    S* dScores = upload(cast<S>(scores));
    int64_t* dOrder = upload(order);
    int64_t* dLabels = upload(labels);
    int64_t* dKeep = upload(std::vector<int64_t>(size_t(n) + 1, -1));
    S* dKept = upload(std::vector<S>(size_t(n) + 1));
    int64_t* dCount = upload(std::vector<int64_t>(1, -1));
    char* workspace = upload(std::vector<char>(size_t(iounet_iou_nms_cuda_workspace_bytes(n))));
    int status = 0;
    if (sizeof(S) == sizeof(float))
    {
        status = iounet_iou_nms_cuda_f32(reinterpret_cast<const float*>(dBoxes), reinterpret_cast<const float*>(dScores),
            dOrder, useLabels ? dLabels : nullptr, n, threshold, workspace, dKeep, reinterpret_cast<float*>(dKept),
            dCount, nullptr);
    }
    else
    {
        status = iounet_iou_nms_cuda_f64(reinterpret_cast<const double*>(dBoxes),
            reinterpret_cast<const double*>(dScores), dOrder, useLabels ? dLabels : nullptr, n, threshold, workspace,
            dKeep, reinterpret_cast<double*>(dKept), dCount, nullptr);
    }
    check(status == 0, what + "launches");
    const int64_t count = download(dCount, 1)[0];
    check(count == numKept, what + "kept count = CPU");
    const std::vector<int64_t> deviceKeep = download(dKeep, size_t(std::max<int64_t>(count, 0)));
    const std::vector<S> deviceKept = download(dKept, size_t(std::max<int64_t>(count, 0)));
    bool same = count == numKept;
    for (int64_t t = 0; same && t < count; ++t)
    {
        same = deviceKeep[t] == keep[t] && double(deviceKept[t]) == double(S(kept[t]));
    }
    check(same, what + "kept boxes and scores = CPU");
    for (void* p : {static_cast<void*>(dBoxes), static_cast<void*>(dScores), static_cast<void*>(dOrder),
             static_cast<void*>(dLabels), static_cast<void*>(dKeep), static_cast<void*>(dKept),
             static_cast<void*>(dCount), static_cast<void*>(workspace)})
    {
        cudaFree(p);
    }
}

} // namespace

int main()
{
    testWithoutLaunching();
    const int probe = iounet_prroi_cuda_probe();
    check(probe == IOUNET_CUDA_OK || probe > IOUNET_CUDA_ERROR_BASE, "the probe answers OK or a CUDA error");
    if (probe != IOUNET_CUDA_OK)
    {
        std::printf("device checks skipped: %s\n", iounet_prroi_cuda_error_message(probe));
    }
    else
    {
        testPrRoIPoolOnDevice();
        for (int n : {1, 64, 150, 700})
        {
            for (double threshold : {0.0, 0.5, 1.0})
            {
                testIouNmsOnDevice<float>(n, true, threshold);
                testIouNmsOnDevice<double>(n, false, threshold);
            }
        }
    }
    std::printf("%d passed, %d failed\n", gPassed, gFailed);
    return gFailed == 0 ? 0 : 1;
}
