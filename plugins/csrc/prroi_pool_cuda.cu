// PrRoIPool and IoU-guided NMS CUDA kernels. Each kernel is a thin launch shell around the
// __host__ __device__ bodies in prroi_pool_kernel_bodies.h (all arithmetic in float32 for
// PrRoIPool), which the host test runs on the CPU with the same loops.
#include "prroi_pool_cuda.h"

#include "prroi_pool_kernel_bodies.h"

#include <algorithm>

// Every launch is IOUNET_LAUNCH(grid, block, sharedBytes, stream, kernel)(arguments...): nvcc's
// kernel<<<grid, block, sharedBytes, stream>>>(arguments...) here; the host emulation
// (plugins/cuda_host) defines it to run the same kernel on CPU threads.
#ifndef IOUNET_LAUNCH
#define IOUNET_LAUNCH(grid, block, sharedBytes, stream, ...) __VA_ARGS__<<<grid, block, sharedBytes, stream>>>
#endif

namespace iounet {
namespace {

constexpr int kThreads = 256;
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

int blocksFor(int64_t count)
{
    const int64_t blocks = (count + kThreads - 1) / kThreads;
    return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535 * 8));
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

// IoU-guided NMS: one thread per mask word, then one thread for the sequential pass.
template <typename S>
__global__ void iouNmsMaskKernel(
    const S* boxes, const int64_t* labels, const int64_t* order, int64_t n, S threshold, uint64_t* mask)
{
    const int64_t words = nmsMaskWords(n);
    const int64_t total = n * words;
    for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
         index += int64_t(gridDim.x) * blockDim.x)
    {
        mask[index] = iouNmsMaskWord(boxes, labels, order, n, threshold, index / words, index % words);
    }
}

template <typename S>
__global__ void iouNmsPassKernel(const uint64_t* mask, const S* scores, const int64_t* order, int64_t n,
    uint64_t* removed, int64_t* keep, S* keptScores, int64_t* numKept)
{
    if (blockIdx.x == 0 && threadIdx.x == 0)
    {
        iouNmsSequentialPass(mask, scores, order, n, removed, keep, keptScores, numKept);
    }
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

int64_t iouNmsCudaWorkspaceBytes(int64_t n)
{
    const int64_t words = n > 0 ? nmsMaskWords(n) : 0;
    return (n * words + words) * int64_t(sizeof(uint64_t));
}

template <typename S>
cudaError_t iouNmsCuda(const S* boxes, const S* scores, const int64_t* order, const int64_t* labels, int64_t n,
    S threshold, void* workspace, int64_t* keep, S* keptScores, int64_t* numKept, cudaStream_t stream)
{
    if (n <= 0)
    {
        return cudaMemsetAsync(numKept, 0, sizeof(int64_t), stream);
    }
    uint64_t* mask = static_cast<uint64_t*>(workspace);
    uint64_t* removed = mask + n * nmsMaskWords(n);
    IOUNET_LAUNCH(blocksFor(n * nmsMaskWords(n)), kThreads, 0, stream, iouNmsMaskKernel<S>)(
        boxes, labels, order, n, threshold, mask);
    cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess)
    {
        return status;
    }
    IOUNET_LAUNCH(1, 1, 0, stream, iouNmsPassKernel<S>)(mask, scores, order, n, removed, keep, keptScores, numKept);
    return cudaGetLastError();
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

template cudaError_t iouNmsCuda<float>(const float*, const float*, const int64_t*, const int64_t*, int64_t, float,
    void*, int64_t*, float*, int64_t*, cudaStream_t);
template cudaError_t iouNmsCuda<double>(const double*, const double*, const int64_t*, const int64_t*, int64_t, double,
    void*, int64_t*, double*, int64_t*, cudaStream_t);

} // namespace iounet
