// What the CUDA kernel files share: the launch macro and the grid of a grid-stride loop.
#pragma once

#include <algorithm>
#include <cstdint>

// Every launch is IOUNET_LAUNCH(grid, block, sharedBytes, stream, kernel)(arguments...): nvcc's
// kernel<<<grid, block, sharedBytes, stream>>>(arguments...) here; the host emulation
// (plugins/cuda_host) defines it to run the same kernel on CPU threads.
#ifndef IOUNET_LAUNCH
#define IOUNET_LAUNCH(grid, block, sharedBytes, stream, ...) __VA_ARGS__<<<grid, block, sharedBytes, stream>>>
#endif

namespace iounet {

//! Threads per block of the grid-stride kernels.
constexpr int kThreads = 256;

//! Blocks of kThreads threads for a grid-stride loop over `count` items (at least 1).
inline int blocksFor(int64_t count)
{
    const int64_t blocks = (count + kThreads - 1) / kThreads;
    return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535 * 8));
}

} // namespace iounet
