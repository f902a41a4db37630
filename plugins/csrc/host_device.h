// IOUNET_HD marks the kernel arithmetic that both the CPU code and the CUDA kernels compile.
#pragma once

#if defined(__CUDACC__)
#define IOUNET_HD __host__ __device__ __forceinline__
#else
#define IOUNET_HD inline
#endif
