// CUDA launchers of the PrRoIPool kernels. Each launches on `stream` and returns without
// synchronizing; the result is the launch status. Pointers are device pointers in NCHW layout,
// rois are (K, 5) rows [batch_index, x0, y0, x1, y1]. Accumulation is in float32.
// Types: features/outputs T in {float, __half}; rois R is T, or float with __half features.
// A roi whose rounded batch index is outside [0, N) yields zeros (and no gradient).
#pragma once

#include "prroi_pool_kernel_bodies.h" // PrRoIPoolShape

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace iounet {

//! output (K, C, PH, PW) = PrRoIPool(features (N, C, H, W), rois (K, 5)).
template <typename T, typename R>
cudaError_t prroiPoolForwardCuda(
    const T* features, const R* rois, T* output, const PrRoIPoolShape& shape, cudaStream_t stream);

//! gradRois (K, 5) = d(sum(output * gradOutput)) / d rois; column 0 is written as 0.
template <typename T, typename R>
cudaError_t prroiPoolCoordGradCuda(const T* features, const R* rois, const T* gradOutput, R* gradRois,
    const PrRoIPoolShape& shape, cudaStream_t stream);

//! gradFeatures (N, C, H, W) = d(sum(output * gradOutput)) / d features (overwritten, not added).
//! Boxes overlap, so this one scatters with float32 atomics: into gradFeatures itself for float,
//! into `workspace` (N*C*H*W floats, required) for __half, converted at the end.
template <typename T, typename R>
cudaError_t prroiPoolFeatureGradCuda(const R* rois, const T* gradOutput, T* gradFeatures, float* workspace,
    const PrRoIPoolShape& shape, cudaStream_t stream);

//! cudaSuccess when the kernels can run on the calling thread's current device; else why not (no
//! device, a driver older than the runtime, no kernel image for the device's architecture).
cudaError_t prroiPoolCudaProbe();

} // namespace iounet
