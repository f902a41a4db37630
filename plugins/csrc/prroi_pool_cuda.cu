// PrRoIPool CUDA kernels. Each output element (forward), box (coordinate gradient) or bin
// (feature gradient) is computed with the shared math core in float32.
#include "prroi_pool_cuda.h"

#include "prroi_pool_math.h"

#include <algorithm>

namespace iounet {
namespace {

constexpr int kThreads = 256;

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

struct BinIndex
{
    int64_t k;
    int64_t c;
    int ph;
    int pw;
};

__device__ BinIndex unravel(int64_t index, const PrRoIPoolShape& s)
{
    BinIndex b;
    b.pw = static_cast<int>(index % s.pooledWidth);
    index /= s.pooledWidth;
    b.ph = static_cast<int>(index % s.pooledHeight);
    index /= s.pooledHeight;
    b.c = index % s.channels;
    b.k = index / s.channels;
    return b;
}

__device__ bool usable(const BoxBins<float>& box, const PrRoIPoolShape& s)
{
    return box.batch >= 0 && box.batch < s.batch && box.invArea != 0.0f;
}

template <typename T, typename R>
__global__ void forwardKernel(const T* features, const R* rois, T* output, PrRoIPoolShape s)
{
    const int64_t total = static_cast<int64_t>(s.numRois) * s.channels * s.pooledHeight * s.pooledWidth;
    for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
         index += int64_t(gridDim.x) * blockDim.x)
    {
        const BinIndex b = unravel(index, s);
        const BoxBins<float> box = boxBins<float>(rois + 5 * b.k, s.spatialScale, s.pooledHeight, s.pooledWidth);
        float value = 0.0f;
        if (usable(box, s))
        {
            const T* plane = features + (box.batch * int64_t(s.channels) + b.c) * s.height * s.width;
            value = box.invArea
                * binIntegral(plane, s.height, s.width, binEdge(box.x0, box.binW, b.pw),
                    binEdge(box.x0, box.binW, b.pw + 1), binEdge(box.y0, box.binH, b.ph),
                    binEdge(box.y0, box.binH, b.ph + 1));
        }
        output[index] = fromFloat<T>(value);
    }
}

// One block per box: its threads stride over (channel, bin) and reduce the four corner gradients
// in shared memory, so no atomics are needed.
template <typename T, typename R>
__global__ void coordGradKernel(const T* features, const R* rois, const T* gradOutput, R* gradRois, PrRoIPoolShape s)
{
    __shared__ float partial[kThreads][4];
    const int64_t k = blockIdx.x;
    const BoxBins<float> box = boxBins<float>(rois + 5 * k, s.spatialScale, s.pooledHeight, s.pooledWidth);
    float grad[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (usable(box, s))
    {
        const int bins = s.pooledHeight * s.pooledWidth;
        const int64_t work = int64_t(s.channels) * bins;
        for (int64_t index = threadIdx.x; index < work; index += blockDim.x)
        {
            const int64_t c = index / bins;
            const int ph = static_cast<int>(index % bins) / s.pooledWidth;
            const int pw = static_cast<int>(index % bins) % s.pooledWidth;
            const float g = static_cast<float>(gradOutput[(k * s.channels + c) * bins + ph * s.pooledWidth + pw]);
            if (g == 0.0f)
            {
                continue;
            }
            const T* plane = features + (box.batch * int64_t(s.channels) + c) * s.height * s.width;
            const float xa = binEdge(box.x0, box.binW, pw);
            const float xb = binEdge(box.x0, box.binW, pw + 1);
            const float ya = binEdge(box.y0, box.binH, ph);
            const float yb = binEdge(box.y0, box.binH, ph + 1);
            BinMoments<float> m;
            m.integral = g * binIntegral(plane, s.height, s.width, xa, xb, ya, yb);
            m.left = g * verticalLineIntegral(plane, s.height, s.width, xa, ya, yb);
            m.right = g * verticalLineIntegral(plane, s.height, s.width, xb, ya, yb);
            m.top = g * horizontalLineIntegral(plane, s.height, s.width, ya, xa, xb);
            m.bottom = g * horizontalLineIntegral(plane, s.height, s.width, yb, xa, xb);
            accumulateCornerGradient(box, m, ph, pw, s.pooledHeight, s.pooledWidth, grad);
        }
    }
    for (int d = 0; d < 4; ++d)
    {
        partial[threadIdx.x][d] = grad[d];
    }
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2)
    {
        if (threadIdx.x < stride)
        {
            for (int d = 0; d < 4; ++d)
            {
                partial[threadIdx.x][d] += partial[threadIdx.x + stride][d];
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0)
    {
        gradRois[5 * k] = fromFloat<R>(0.0f);
        for (int d = 0; d < 4; ++d)
        {
            gradRois[5 * k + 1 + d] = fromFloat<R>(partial[0][d] * s.spatialScale);
        }
    }
}

template <typename T, typename R>
__global__ void featureGradKernel(const R* rois, const T* gradOutput, float* accumulator, PrRoIPoolShape s)
{
    const int64_t total = static_cast<int64_t>(s.numRois) * s.channels * s.pooledHeight * s.pooledWidth;
    for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
         index += int64_t(gridDim.x) * blockDim.x)
    {
        const BinIndex b = unravel(index, s);
        const BoxBins<float> box = boxBins<float>(rois + 5 * b.k, s.spatialScale, s.pooledHeight, s.pooledWidth);
        const float g = static_cast<float>(gradOutput[index]);
        if (!usable(box, s) || g == 0.0f)
        {
            continue;
        }
        const float xa = binEdge(box.x0, box.binW, b.pw);
        const float xb = binEdge(box.x0, box.binW, b.pw + 1);
        const float ya = binEdge(box.y0, box.binH, b.ph);
        const float yb = binEdge(box.y0, box.binH, b.ph + 1);
        const Span sx = gridSpan(xa, xb, s.width);
        const Span sy = gridSpan(ya, yb, s.height);
        float* plane = accumulator + (box.batch * int64_t(s.channels) + b.c) * s.height * s.width;
        for (int i = sy.begin; i < sy.end; ++i)
        {
            for (int j = sx.begin; j < sx.end; ++j)
            {
                atomicAdd(plane + i * s.width + j, g * featureGradWeight(box, xa, xb, ya, yb, i, j));
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
    toHalfKernel<<<blocksFor(count), kThreads, 0, stream>>>(workspace, gradFeatures, count);
    return cudaGetLastError();
}

} // namespace

template <typename T, typename R>
cudaError_t prroiPoolForwardCuda(
    const T* features, const R* rois, T* output, const PrRoIPoolShape& shape, cudaStream_t stream)
{
    const int64_t total = int64_t(shape.numRois) * shape.channels * shape.pooledHeight * shape.pooledWidth;
    if (total == 0)
    {
        return cudaSuccess;
    }
    forwardKernel<T, R><<<blocksFor(total), kThreads, 0, stream>>>(features, rois, output, shape);
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
    coordGradKernel<T, R><<<shape.numRois, kThreads, 0, stream>>>(features, rois, gradOutput, gradRois, shape);
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
    const int64_t total = int64_t(shape.numRois) * shape.channels * shape.pooledHeight * shape.pooledWidth;
    if (status == cudaSuccess && total > 0)
    {
        featureGradKernel<T, R><<<blocksFor(total), kThreads, 0, stream>>>(rois, gradOutput, accumulator, shape);
        status = cudaGetLastError();
    }
    return status == cudaSuccess ? finishFeatureGrad(gradFeatures, workspace, count, stream) : status;
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
