// Host emulation of the CUDA execution model: what the CUDA kernel sources of plugins/csrc use
// (built-in indices, __shared__, __syncthreads, atomicAdd, __half, launches, streams, memory and
// error calls) as C++ for the CPU, so that the unchanged sources compile with g++ and run under
// ThreadSanitizer and AddressSanitizer. Included before each kernel source (as nvcc includes
// cuda_runtime.h), and by the headers cuda_runtime_api.h, cuda_runtime.h and cuda_fp16.h of
// include/ that stand in for the toolkit's.
//
// Execution: a launch runs to completion before it returns. Every thread of a block is an OS thread;
// blocks run one after another; the threads of the running block share its __shared__ variables
// (static storage: zeros at first, then what the previous block left, as a GPU leaves it).
// __syncthreads is a barrier of the block's threads that have not returned (as on Volta and newer);
// threads waiting at different __syncthreads calls are reported, and a barrier or block that does
// not complete within the watchdog time (IOUNET_CUDA_HOST_WATCHDOG_S, default 60 s) ends the process
// with a report (exit status 124). A reported fault fails the launch with cudaErrorLaunchFailure, which stays (sticky)
// as on a device. Memory from cudaMalloc is host memory filled with 0xFF bytes.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <utility>

#if __cplusplus < 202002L
#error "the CUDA host emulation needs C++20 (std::atomic_ref)"
#endif

// ------------------------------------------------------------------------------------------------
// Function and variable qualifiers

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

// ------------------------------------------------------------------------------------------------
// Types and errors (values as in the CUDA runtime)

struct uint3
{
    unsigned int x, y, z;
};

struct dim3
{
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
        : x(vx)
        , y(vy)
        , z(vz)
    {
    }
};

enum cudaError
{
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNoDevice = 100,
    cudaErrorLaunchFailure = 719,
};
using cudaError_t = cudaError;

enum cudaMemcpyKind
{
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;
struct CUevent_st;
using cudaEvent_t = CUevent_st*;

struct cudaFuncAttributes
{
    size_t sharedSizeBytes;
    size_t constSizeBytes;
    size_t localSizeBytes;
    int maxThreadsPerBlock;
    int numRegs;
    int ptxVersion;
    int binaryVersion;
};

// Built-in variables of the running thread.
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

// ------------------------------------------------------------------------------------------------
// Runtime API

extern "C" {
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char* cudaGetErrorString(cudaError_t error);
const char* cudaGetErrorName(cudaError_t error);
cudaError_t cudaMalloc(void** pointer, size_t bytes);
cudaError_t cudaFree(void* pointer);
cudaError_t cudaMemcpy(void* destination, const void* source, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(
    void* destination, const void* source, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream);
cudaError_t cudaMemset(void* pointer, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t stream);
cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
//! Marks a library built on this emulation (iounet.plugins.cuda then takes CPU tensors).
int iounet_cuda_host_emulation(void);
}

//! Attributes of a kernel: the emulation runs any kernel, so only the limits are filled in.
template <typename Kernel>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, Kernel* kernel)
{
    if (attributes == nullptr || kernel == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    *attributes = cudaFuncAttributes{0, 0, 0, 1024, 0, 0, 0};
    return cudaSuccess;
}

// ------------------------------------------------------------------------------------------------
// Device functions

namespace iounet_cuda_host {

//! __syncthreads at `file`:`line`.
void syncthreads(const char* file, int line);

//! Runs `thread` for every thread of every block (see the top of this file); `kernel` names it in
//! reports. Sets the calling thread's last error.
void run(const char* kernel, dim3 grid, dim3 block, size_t sharedBytes, cudaStream_t stream,
    const std::function<void()>& thread);

//! A configured launch of `kernel`: called with the kernel's arguments, it runs the kernel.
template <typename... Parameters>
struct Launch
{
    const char* name;
    dim3 grid;
    dim3 block;
    size_t sharedBytes;
    cudaStream_t stream;
    void (*kernel)(Parameters...);

    template <typename... Arguments>
    void operator()(Arguments&&... arguments) const
    {
        // Converted once to the parameter types, as a launch copies its arguments; each thread
        // receives its own copy.
        const std::tuple<std::decay_t<Parameters>...> values(std::forward<Arguments>(arguments)...);
        run(name, grid, block, sharedBytes, stream, [&] { std::apply(kernel, values); });
    }
};

template <typename... Parameters>
Launch<Parameters...> launch(
    const char* name, dim3 grid, dim3 block, size_t sharedBytes, cudaStream_t stream, void (*kernel)(Parameters...))
{
    return Launch<Parameters...>{name, grid, block, sharedBytes, stream, kernel};
}

} // namespace iounet_cuda_host

#define __syncthreads() ::iounet_cuda_host::syncthreads(__FILE__, __LINE__)

//! kernel<<<grid, block, sharedBytes, stream>>>(arguments) of the CUDA sources.
#define IOUNET_LAUNCH(grid, block, sharedBytes, stream, ...)                                                           \
    ::iounet_cuda_host::launch(#__VA_ARGS__, grid, block, sharedBytes, stream, __VA_ARGS__)

template <typename T>
T atomicAdd(T* address, T value)
{
    return std::atomic_ref<T>(*address).fetch_add(value);
}

// ------------------------------------------------------------------------------------------------
// Half precision: IEEE binary16 storage, conversions rounded to nearest even.

namespace iounet_cuda_host {

uint16_t floatToHalfBits(float value);
float halfBitsToFloat(uint16_t bits);

} // namespace iounet_cuda_host

struct __half
{
    uint16_t bits;

    __half() = default;
    __half(float value)
        : bits(iounet_cuda_host::floatToHalfBits(value))
    {
    }
    __half(double value)
        : __half(static_cast<float>(value))
    {
    }
    operator float() const
    {
        return iounet_cuda_host::halfBitsToFloat(bits);
    }
};

inline __half __float2half_rn(float value)
{
    return __half(value);
}

inline __half __float2half(float value)
{
    return __half(value);
}

inline float __half2float(__half value)
{
    return static_cast<float>(value);
}
