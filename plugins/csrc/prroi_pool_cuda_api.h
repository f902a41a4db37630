/* C API of the PrRoIPool and IoU-guided NMS CUDA kernels (libiounet_prroi_cuda), loaded by
 * iounet.plugins.cuda; the TensorRT plugins launch the same kernels (prroi_pool_cuda.h).
 *
 * Every pointer is a device pointer; `stream` is a cudaStream_t (NULL: the legacy default stream).
 * Each function checks its arguments, enqueues its kernels on `stream` and returns without
 * synchronizing: IOUNET_CUDA_OK means the launches were accepted, not that they have finished
 * (an error of a kernel shows in a later CUDA call, as with any asynchronous launch). Nothing is
 * written when a function returns IOUNET_CUDA_INVALID_ARGUMENT. A nonzero code's text comes from
 * iounet_prroi_cuda_error_message(code).
 *
 * PrRoIPool layouts, all contiguous: features and grad_features (N, C, H, W), rois (K, 5) rows
 * [batch_index, x0, y0, x1, y1] in float32 (both variants), output and grad_output
 * (K, C, PH, PW), grad_rois (K, 5) float32 with column 0 written as 0. `_f32` functions take
 * float32 features/outputs, `_f16` ones IEEE half (passed as void*, e.g. torch.float16); all
 * arithmetic is float32. A roi whose rounded batch index is outside [0, N), or with a NaN/Inf
 * value, pools to zeros and has zero gradient. Sizes must lie in [0, 2^31) with H * W < 2^31,
 * pooled sizes in [1, 2^20], spatial_scale finite and positive.
 */
#ifndef IOUNET_PRROI_POOL_CUDA_API_H
#define IOUNET_PRROI_POOL_CUDA_API_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define IOUNET_CUDA_OK 0
/* A size, pointer, pooled size, spatial scale or threshold was rejected; nothing was launched. */
#define IOUNET_CUDA_INVALID_ARGUMENT 1
/* IOUNET_CUDA_ERROR_BASE + e: the CUDA runtime reported cudaError_t e while launching. */
#define IOUNET_CUDA_ERROR_BASE 1000

typedef struct IounetPrRoIPoolCudaShape
{
    int64_t batch;    /* N */
    int64_t channels; /* C */
    int64_t height;   /* H */
    int64_t width;    /* W */
    int64_t num_rois; /* K */
    int64_t pooled_height;
    int64_t pooled_width;
    double spatial_scale;
} IounetPrRoIPoolCudaShape;

/* The iounet package version the library was built from (IOUNET_VERSION), e.g. "0.1.0". */
const char* iounet_prroi_cuda_version(void);

/* What a code returned by this library means (a static string; any int is accepted). */
const char* iounet_prroi_cuda_error_message(int code);

/* IOUNET_CUDA_OK when the kernels can run on the calling thread's current CUDA device, else the
 * CUDA error that says why not (no device, a driver older than the library's CUDA runtime, no
 * kernel image for the device's architecture). Does not change the current device. */
int iounet_prroi_cuda_probe(void);

/* output = PrRoIPool(features, rois). */
int iounet_prroi_cuda_forward_f32(const float* features, const float* rois, float* output,
    const IounetPrRoIPoolCudaShape* shape, void* stream);
int iounet_prroi_cuda_forward_f16(const void* features, const float* rois, void* output,
    const IounetPrRoIPoolCudaShape* shape, void* stream);

/* grad_rois (K, 5, float32) = d(sum(output * grad_output)) / d rois; column 0 is 0. */
int iounet_prroi_cuda_coord_grad_f32(const float* features, const float* rois, const float* grad_output,
    float* grad_rois, const IounetPrRoIPoolCudaShape* shape, void* stream);
int iounet_prroi_cuda_coord_grad_f16(const void* features, const float* rois, const void* grad_output,
    float* grad_rois, const IounetPrRoIPoolCudaShape* shape, void* stream);

/* grad_features = d(sum(output * grad_output)) / d features (overwritten, not added), summed
 * with float32 atomics (so the last bits may vary from run to run). The f32 variant accumulates in
 * grad_features itself; the f16 variant accumulates in `workspace`, N * C * H * W float32 values
 * (required when N * C * H * W > 0), and converts to half at the end. */
int iounet_prroi_cuda_feature_grad_f32(const float* rois, const float* grad_output, float* grad_features,
    const IounetPrRoIPoolCudaShape* shape, void* stream);
int iounet_prroi_cuda_feature_grad_f16(const float* rois, const void* grad_output, void* grad_features,
    float* workspace, const IounetPrRoIPoolCudaShape* shape, void* stream);

/* Bytes of device workspace iounet_iou_nms_cuda_* need for n boxes (n * ceil(n / 64) + ceil(n / 64)
 * 64-bit words; 0 for n <= 0, -1 when n is too large for 64-bit sizes). */
int64_t iounet_iou_nms_cuda_workspace_bytes(int64_t n);

/* IoU-guided NMS, the algorithm of the op torch.ops.iounet.iou_nms (plugins/iou_nms.py), with no
 * host round trip; the same result as iounet_iou_nms_f64 of libiounet_prroi_cpu, except that IoUs
 * are computed in the boxes' type (the threshold rounded to it) and the GPU may fuse multiply-adds,
 * which can flip an IoU that lies within rounding of the threshold. The caller sorts: `order`
 * (n, int64) must be a permutation of [0, n) listing the boxes in decreasing predicted IoU, ties
 * lower index first (e.g. torch.argsort(ious, descending=True, stable=True)); it is not checked.
 * boxes (n, 4) x0, y0, x1, y1 and scores (n) are float32 (_f32) or float64 (_f64), labels (n)
 * int64 or NULL (one label). Writes the kept indices in that order to keep (n int64), their
 * scores to kept_scores (n) and their count to num_kept (one int64), all device memory; the
 * entries of keep and kept_scores past the count are left as they were. `workspace` holds
 * iounet_iou_nms_cuda_workspace_bytes(n) bytes, 8-byte aligned. */
int iounet_iou_nms_cuda_f32(const float* boxes, const float* scores, const int64_t* order, const int64_t* labels,
    int64_t n, double threshold, void* workspace, int64_t* keep, float* kept_scores, int64_t* num_kept, void* stream);
int iounet_iou_nms_cuda_f64(const double* boxes, const double* scores, const int64_t* order, const int64_t* labels,
    int64_t n, double threshold, void* workspace, int64_t* keep, double* kept_scores, int64_t* num_kept,
    void* stream);

#ifdef __cplusplus
}
#endif

#endif /* IOUNET_PRROI_POOL_CUDA_API_H */
