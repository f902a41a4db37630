/* C API of the PrRoIPool CPU kernels (libiounet_prroi_cpu).
 *
 * Layouts: features and grad_features (N, C, H, W), rois (K, 5) rows
 * [batch_index, x0, y0, x1, y1], output and grad_output (K, C, PH, PW), grad_rois (K, 5);
 * all contiguous. A roi whose rounded batch index is outside [0, N) gives zeros and no gradient.
 * num_threads <= 0 uses every hardware thread. `layout` picks how the features are read and changes
 * only the speed: IOUNET_LAYOUT_AUTO, or IOUNET_LAYOUT_PLANAR (per channel plane), or
 * IOUNET_LAYOUT_CHANNELS_LAST (the features are first transposed to (N, H, W, C), which pays off
 * when the boxes together cover the map more than about once). Each call returns 0, or IOUNET_INVALID_ARGUMENT
 * when a size is negative, a pointer needed for a non-empty tensor is null, a pooled size is not
 * positive or spatial_scale is not finite and positive (nothing is written then).
 */
#ifndef IOUNET_PRROI_POOL_CPU_H
#define IOUNET_PRROI_POOL_CPU_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define IOUNET_OK 0
#define IOUNET_INVALID_ARGUMENT 1

#define IOUNET_LAYOUT_AUTO 0
#define IOUNET_LAYOUT_PLANAR 1
#define IOUNET_LAYOUT_CHANNELS_LAST 2

typedef struct IounetPrRoIPoolShape
{
    int64_t batch;
    int64_t channels;
    int64_t height;
    int64_t width;
    int64_t num_rois;
    int64_t pooled_height;
    int64_t pooled_width;
    double spatial_scale;
    int64_t layout;
} IounetPrRoIPoolShape;

/* Version of the library: the iounet package version (IOUNET_VERSION at build time). */
const char* iounet_prroi_version(void);

int iounet_prroi_forward_f32(const float* features, const float* rois, float* output,
    const IounetPrRoIPoolShape* shape, int num_threads);
int iounet_prroi_forward_f64(const double* features, const double* rois, double* output,
    const IounetPrRoIPoolShape* shape, int num_threads);

/* grad_rois = d(sum(output * grad_output)) / d rois; column 0 is 0. */
int iounet_prroi_coord_grad_f32(const float* features, const float* rois, const float* grad_output,
    float* grad_rois, const IounetPrRoIPoolShape* shape, int num_threads);
int iounet_prroi_coord_grad_f64(const double* features, const double* rois, const double* grad_output,
    double* grad_rois, const IounetPrRoIPoolShape* shape, int num_threads);

/* grad_features = d(sum(output * grad_output)) / d features (overwritten, not added). */
int iounet_prroi_feature_grad_f32(const float* rois, const float* grad_output, float* grad_features,
    const IounetPrRoIPoolShape* shape, int num_threads);
int iounet_prroi_feature_grad_f64(const double* rois, const double* grad_output, double* grad_features,
    const IounetPrRoIPoolShape* shape, int num_threads);

#ifdef __cplusplus
}
#endif

#endif /* IOUNET_PRROI_POOL_CPU_H */
