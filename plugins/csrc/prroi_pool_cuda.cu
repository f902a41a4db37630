// PrRoIPool CUDA kernels. Each kernel is a thin launch shell around the __host__ __device__ bodies
// in prroi_pool_kernel_bodies.h (all arithmetic in float32), which the host test runs on the CPU
// with the same loops.
#include "prroi_pool_cuda.h"

#include "cuda_launch.h"
#include "prroi_pool_kernel_bodies.h"

namespace iounet {
namespace {

static_assert(kCoordGradThreads == kThreads, "the coordinate-gradient block is a kThreads block");

template <typename T>
__device__ T fromFloat(float v);

template <>
__device__ float fromFloat<float>(float v)
{
    return v;
}

template <>
__device__ __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}

template <typename T, typename R>
__global__ void forwardKernel(const T* features, const R* rois, T* output, PrRoIPoolShape s)
{
    const int64_t total = pooledCount(s);
    for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
         index += int64_t(gridDim.x) * blockDim.x)
    {
        output[index] = fromFloat<T>(forwardValue(features, rois, s, index));
    }
}

// One block per box: its threads stride over (channel, bin) and reduce the four corner gradients
// in shared memory, so no atomics are needed.
template <typename T, typename R>
__global__ void __launch_bounds__(kCoordGradThreads)
    coordGradKernel(const T* features, const R* rois, const T* gradOutput, R* gradRois, PrRoIPoolShape s)
{
    __shared__ float partial[kCoordGradThreads][4];
    const int64_t k = blockIdx.x;
    coordGradThread(features, rois, gradOutput, s, k, threadIdx.x, partial[threadIdx.x]);
    __syncthreads();
    for (int stride = kCoordGradThreads / 2; stride > 0; stride /= 2)
    {
        coordGradReduceStep(partial, threadIdx.x, stride);
        __syncthreads();
    }
    if (threadIdx.x == 0)
    {
        float row[5];
        coordGradRow(partial[0], s, row);
        for (int d = 0; d < 5; ++d)
        {
            gradRois[5 * k + d] = fromFloat<R>(row[d]);
        }
    }
}

template <typename T, typename R>
__global__ void featureGradKernel(const R* rois, const T* gradOutput, float* accumulator, PrRoIPoolShape s)
{
    const int64_t total = pooledCount(s);
    for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
         index += int64_t(gridDim.x) * blockDim.x)
    {
        const FeatureGradBin bin = featureGradBin(rois, gradOutput, s, index);
        float* plane = accumulator + bin.plane;
        for (int i = bin.sy.begin; i < bin.sy.end; ++i)
        {
            for (int j = bin.sx.begin; j < bin.sx.end; ++j)
            {
                atomicAdd(plane + i * s.width + j, featureGradWeightAt(bin, i, j));
            }
        }
    }
}

__global__ void toHalfKernel(const float* source, __half* target, int64_t count)
{
    for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < count;
         index += int64_t(gridDim.x) * blockDim.x)
    {
        target[index] = __float2half_rn(source[index]);
    }
}

float* accumulatorFor(float* gradFeatures, float*)
{
    return gradFeatures;
}

float* accumulatorFor(__half*, float* workspace)
{
    return workspace;
}

cudaError_t finishFeatureGrad(float*, float*, int64_t, cudaStream_t)
{
    return cudaSuccess;
}

cudaError_t finishFeatureGrad(__half* gradFeatures, float* workspace, int64_t count, cudaStream_t stream)
{
    IOUNET_LAUNCH(blocksFor(count), kThreads, 0, stream, toHalfKernel)(workspace, gradFeatures, count);
    return cudaGetLastError();
}

} // namespace

template <typename T, typename R>
cudaError_t prroiPoolForwardCuda(
    const T* features, const R* rois, T* output, const PrRoIPoolShape& shape, cudaStream_t stream)
{
    const int64_t total = pooledCount(shape);
    if (total == 0)
    {
        return cudaSuccess;
    }
    IOUNET_LAUNCH(blocksFor(total), kThreads, 0, stream, forwardKernel<T, R>)(features, rois, output, shape);
    return cudaGetLastError();
}

template <typename T, typename R>
cudaError_t prroiPoolCoordGradCuda(const T* features, const R* rois, const T* gradOutput, R* gradRois,
    const PrRoIPoolShape& shape, cudaStream_t stream)
{
    if (shape.numRois == 0)
    {
        return cudaSuccess;
    }
    IOUNET_LAUNCH(shape.numRois, kCoordGradThreads, 0, stream, coordGradKernel<T, R>)(
        features, rois, gradOutput, gradRois, shape);
    return cudaGetLastError();
}

template <typename T, typename R>
cudaError_t prroiPoolFeatureGradCuda(const R* rois, const T* gradOutput, T* gradFeatures, float* workspace,
    const PrRoIPoolShape& shape, cudaStream_t stream)
{
    const int64_t count = int64_t(shape.batch) * shape.channels * shape.height * shape.width;
    float* accumulator = accumulatorFor(gradFeatures, workspace);
    if (count == 0)
    {
        return cudaSuccess;
    }
    if (accumulator == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    cudaError_t status = cudaMemsetAsync(accumulator, 0, count * sizeof(float), stream);
    const int64_t total = pooledCount(shape);
    if (status == cudaSuccess && total > 0)
    {
        IOUNET_LAUNCH(blocksFor(total), kThreads, 0, stream, featureGradKernel<T, R>)(
            rois, gradOutput, accumulator, shape);
        status = cudaGetLastError();
    }
    return status == cudaSuccess ? finishFeatureGrad(gradFeatures, workspace, count, stream) : status;
}

cudaError_t prroiPoolCudaProbe()
{
    cudaFuncAttributes attributes;
    return cudaFuncGetAttributes(&attributes, forwardKernel<float, float>);
}

#define IOUNET_INSTANTIATE(T, R)                                                                                       \
    template cudaError_t prroiPoolForwardCuda<T, R>(const T*, const R*, T*, const PrRoIPoolShape&, cudaStream_t);     \
    template cudaError_t prroiPoolCoordGradCuda<T, R>(                                                                 \
        const T*, const R*, const T*, R*, const PrRoIPoolShape&, cudaStream_t);                                        \
    template cudaError_t prroiPoolFeatureGradCuda<T, R>(                                                               \
        const R*, const T*, T*, float*, const PrRoIPoolShape&, cudaStream_t);

IOUNET_INSTANTIATE(float, float)
IOUNET_INSTANTIATE(__half, __half)
IOUNET_INSTANTIATE(__half, float)

} // namespace iounet
