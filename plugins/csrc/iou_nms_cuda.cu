// IoU-guided NMS CUDA kernels: thin launch shells around the __host__ __device__ bodies of
// iou_nms_kernel_bodies.h, which the host test runs on the CPU with the same loops.
#include "iou_nms_cuda.h"

#include "cuda_launch.h"
#include "iou_nms_kernel_bodies.h"

namespace iounet {
namespace {

// One thread per mask word, then one thread for the sequential pass.
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

template cudaError_t iouNmsCuda<float>(const float*, const float*, const int64_t*, const int64_t*, int64_t, float,
    void*, int64_t*, float*, int64_t*, cudaStream_t);
template cudaError_t iouNmsCuda<double>(const double*, const double*, const int64_t*, const int64_t*, int64_t, double,
    void*, int64_t*, double*, int64_t*, cudaStream_t);

} // namespace iounet
