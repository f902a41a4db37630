// C API of libiounet_prroi_cuda: argument checks, then the launchers of prroi_pool_cuda.cu and
// iou_nms_cuda.cu.
#include "prroi_pool_cuda_api.h"

#include "iou_nms_cuda.h"
#include "prroi_pool_cuda.h"

#include <cmath>
#include <cstdint>
#include <limits>

#ifndef IOUNET_VERSION
#error "IOUNET_VERSION is not defined: the CMake build passes it (read from iounet/version.py)"
#endif

namespace iounet {
namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr int64_t kMaxPooled = int64_t(1) << 20;

int statusOf(cudaError_t error)
{
    return error == cudaSuccess ? IOUNET_CUDA_OK : IOUNET_CUDA_ERROR_BASE + static_cast<int>(error);
}

bool inInt32(int64_t v)
{
    return v >= 0 && v <= kInt32Max;
}

//! a * b * c * d when every factor is in [0, 2^31) and the product fits in int64, else -1.
int64_t product(int64_t a, int64_t b, int64_t c, int64_t d)
{
    const double estimate = double(a) * double(b) * double(c) * double(d);
    return estimate < 0x1p62 ? a * b * c * d : -1;
}

//! The launchers' shape, with the element counts of the features and of the output.
struct Checked
{
    PrRoIPoolShape shape;
    int64_t featureCount; // N * C * H * W
    int64_t pooledCount;  // K * C * PH * PW
};

bool readShape(const IounetPrRoIPoolCudaShape* in, Checked& out)
{
    if (in == nullptr || !inInt32(in->batch) || !inInt32(in->channels) || !inInt32(in->height)
        || !inInt32(in->width) || !inInt32(in->num_rois) || in->pooled_height < 1 || in->pooled_height > kMaxPooled
        || in->pooled_width < 1 || in->pooled_width > kMaxPooled
        || in->pooled_height * in->pooled_width > kInt32Max || in->height * in->width > kInt32Max
        || !std::isfinite(in->spatial_scale) || in->spatial_scale <= 0)
    {
        return false;
    }
    const float scale = static_cast<float>(in->spatial_scale);
    out.featureCount = product(in->batch, in->channels, in->height, in->width);
    out.pooledCount = product(in->num_rois, in->channels, in->pooled_height, in->pooled_width);
    if (!std::isfinite(scale) || scale <= 0.0f || out.featureCount < 0 || out.pooledCount < 0)
    {
        return false;
    }
    out.shape = PrRoIPoolShape{static_cast<int32_t>(in->batch), static_cast<int32_t>(in->channels),
        static_cast<int32_t>(in->height), static_cast<int32_t>(in->width), static_cast<int32_t>(in->num_rois),
        static_cast<int32_t>(in->pooled_height), static_cast<int32_t>(in->pooled_width), scale};
    return true;
}

//! A pointer is needed only when the tensor it points to is read or written.
bool present(const void* pointer, bool needed)
{
    return pointer != nullptr || !needed;
}

cudaStream_t streamOf(void* stream)
{
    return static_cast<cudaStream_t>(stream);
}

template <typename T>
int forward(const void* features, const float* rois, void* output, const IounetPrRoIPoolCudaShape* shape, void* stream)
{
    Checked c;
    if (!readShape(shape, c) || !present(rois, c.pooledCount > 0) || !present(output, c.pooledCount > 0)
        || !present(features, c.pooledCount > 0 && c.featureCount > 0))
    {
        return IOUNET_CUDA_INVALID_ARGUMENT;
    }
    return statusOf(prroiPoolForwardCuda<T, float>(
        static_cast<const T*>(features), rois, static_cast<T*>(output), c.shape, streamOf(stream)));
}

template <typename T>
int coordGrad(const void* features, const float* rois, const void* gradOutput, float* gradRois,
    const IounetPrRoIPoolCudaShape* shape, void* stream)
{
    Checked c;
    if (!readShape(shape, c) || !present(rois, c.shape.numRois > 0) || !present(gradRois, c.shape.numRois > 0)
        || !present(gradOutput, c.pooledCount > 0) || !present(features, c.pooledCount > 0 && c.featureCount > 0))
    {
        return IOUNET_CUDA_INVALID_ARGUMENT;
    }
    return statusOf(prroiPoolCoordGradCuda<T, float>(static_cast<const T*>(features), rois,
        static_cast<const T*>(gradOutput), gradRois, c.shape, streamOf(stream)));
}

template <typename T>
int featureGrad(const float* rois, const void* gradOutput, void* gradFeatures, float* workspace, bool needsWorkspace,
    const IounetPrRoIPoolCudaShape* shape, void* stream)
{
    Checked c;
    if (!readShape(shape, c) || !present(gradFeatures, c.featureCount > 0)
        || !present(workspace, needsWorkspace && c.featureCount > 0)
        || !present(rois, c.pooledCount > 0 && c.featureCount > 0)
        || !present(gradOutput, c.pooledCount > 0 && c.featureCount > 0))
    {
        return IOUNET_CUDA_INVALID_ARGUMENT;
    }
    return statusOf(prroiPoolFeatureGradCuda<T, float>(
        rois, static_cast<const T*>(gradOutput), static_cast<T*>(gradFeatures), workspace, c.shape, streamOf(stream)));
}

template <typename S>
int iouNms(const S* boxes, const S* scores, const int64_t* order, const int64_t* labels, int64_t n, double threshold,
    void* workspace, int64_t* keep, S* keptScores, int64_t* numKept, void* stream)
{
    const bool any = n > 0;
    if (n < 0 || n > kInt32Max || std::isnan(threshold) || numKept == nullptr || !present(boxes, any)
        || !present(scores, any) || !present(order, any) || !present(workspace, any) || !present(keep, any)
        || !present(keptScores, any))
    {
        return IOUNET_CUDA_INVALID_ARGUMENT;
    }
    return statusOf(iouNmsCuda<S>(boxes, scores, order, labels, n, static_cast<S>(threshold), workspace, keep,
        keptScores, numKept, streamOf(stream)));
}

} // namespace
} // namespace iounet

extern "C" {

const char* iounet_prroi_cuda_version(void)
{
    return IOUNET_VERSION;
}

const char* iounet_prroi_cuda_error_message(int code)
{
    if (code == IOUNET_CUDA_OK)
    {
        return "no error";
    }
    if (code == IOUNET_CUDA_INVALID_ARGUMENT)
    {
        return "invalid argument: a size is negative or too large (sizes below 2^31, H * W and PH * PW too), "
               "a pooled size is not in [1, 2^20], spatial_scale is not finite and positive, the NMS threshold is "
               "NaN, or a pointer to a non-empty tensor is null; nothing was launched";
    }
    if (code > IOUNET_CUDA_ERROR_BASE)
    {
        return cudaGetErrorString(static_cast<cudaError_t>(code - IOUNET_CUDA_ERROR_BASE));
    }
    return "unknown libiounet_prroi_cuda status code";
}

int iounet_prroi_cuda_probe(void)
{
    return iounet::statusOf(iounet::prroiPoolCudaProbe());
}

int iounet_prroi_cuda_forward_f32(
    const float* features, const float* rois, float* output, const IounetPrRoIPoolCudaShape* shape, void* stream)
{
    return iounet::forward<float>(features, rois, output, shape, stream);
}

int iounet_prroi_cuda_forward_f16(
    const void* features, const float* rois, void* output, const IounetPrRoIPoolCudaShape* shape, void* stream)
{
    return iounet::forward<__half>(features, rois, output, shape, stream);
}

int iounet_prroi_cuda_coord_grad_f32(const float* features, const float* rois, const float* grad_output,
    float* grad_rois, const IounetPrRoIPoolCudaShape* shape, void* stream)
{
    return iounet::coordGrad<float>(features, rois, grad_output, grad_rois, shape, stream);
}

int iounet_prroi_cuda_coord_grad_f16(const void* features, const float* rois, const void* grad_output,
    float* grad_rois, const IounetPrRoIPoolCudaShape* shape, void* stream)
{
    return iounet::coordGrad<__half>(features, rois, grad_output, grad_rois, shape, stream);
}

int iounet_prroi_cuda_feature_grad_f32(const float* rois, const float* grad_output, float* grad_features,
    const IounetPrRoIPoolCudaShape* shape, void* stream)
{
    return iounet::featureGrad<float>(rois, grad_output, grad_features, nullptr, false, shape, stream);
}

int iounet_prroi_cuda_feature_grad_f16(const float* rois, const void* grad_output, void* grad_features,
    float* workspace, const IounetPrRoIPoolCudaShape* shape, void* stream)
{
    return iounet::featureGrad<__half>(rois, grad_output, grad_features, workspace, true, shape, stream);
}

int64_t iounet_iou_nms_cuda_workspace_bytes(int64_t n)
{
    if (n <= 0)
    {
        return 0;
    }
    return n > iounet::kInt32Max ? -1 : iounet::iouNmsCudaWorkspaceBytes(n);
}

int iounet_iou_nms_cuda_f32(const float* boxes, const float* scores, const int64_t* order, const int64_t* labels,
    int64_t n, double threshold, void* workspace, int64_t* keep, float* kept_scores, int64_t* num_kept, void* stream)
{
    return iounet::iouNms<float>(
        boxes, scores, order, labels, n, threshold, workspace, keep, kept_scores, num_kept, stream);
}

int iounet_iou_nms_cuda_f64(const double* boxes, const double* scores, const int64_t* order, const int64_t* labels,
    int64_t n, double threshold, void* workspace, int64_t* keep, double* kept_scores, int64_t* num_kept,
    void* stream)
{
    return iounet::iouNms<double>(
        boxes, scores, order, labels, n, threshold, workspace, keep, kept_scores, num_kept, stream);
}

} // extern "C"
