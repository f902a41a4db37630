// Runtime of the CUDA host emulation (cuda_host.h): launches on OS threads, the block barrier and
// its watchdog, memory, streams and errors.
#include "cuda_host.h"

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

struct CUstream_st
{
};

namespace iounet_cuda_host {
namespace {

using Clock = std::chrono::steady_clock;

//! Exit status of a process the watchdog ends.
constexpr int kHangExitStatus = 124;

thread_local cudaError_t tLastError = cudaSuccess;
std::atomic<cudaError_t> gStickyError{cudaSuccess};
// One launch at a time, as on one in-order stream.
std::mutex gLaunchMutex;
std::mutex gMemoryMutex;
std::map<const char*, size_t> gAllocations;

cudaError_t fail(cudaError_t error)
{
    tLastError = error;
    return error;
}

//! The sticky error of a failed launch, else cudaSuccess.
cudaError_t sticky()
{
    return gStickyError.load();
}

std::chrono::seconds watchdog()
{
    static const std::chrono::seconds seconds = [] {
        const char* text = std::getenv("IOUNET_CUDA_HOST_WATCHDOG_S");
        const long value = text != nullptr ? std::strtol(text, nullptr, 10) : 0;
        return std::chrono::seconds(value > 0 ? value : 60);
    }();
    return seconds;
}

//! Thrown inside a kernel thread to abandon its block after a reported fault.
struct BlockFault
{
};

//! The barrier of the running block and the gate between blocks.
class Block
{
public:
    Block(const char* kernel, unsigned threads)
        : mKernel(kernel)
        , mThreads(threads)
    {
    }

    //! Waits until every thread has finished the previous block; the last one to arrive prepares
    //! the next block. False when the launch is abandoned.
    bool enter(uint64_t block)
    {
        std::unique_lock<std::mutex> lock(mMutex);
        if (++mAtGate == mThreads)
        {
            mAtGate = 0;
            mLive = mThreads;
            mArrived = 0;
            mBlock = block;
            ++mGate;
            mChanged.notify_all();
        }
        else
        {
            const uint64_t gate = mGate;
            waitFor(lock, [&] { return mGate != gate; }, "threads to finish the previous block");
        }
        return mFault.empty();
    }

    void syncthreads(const char* file, int line)
    {
        std::unique_lock<std::mutex> lock(mMutex);
        if (!mFault.empty())
        {
            throw BlockFault{};
        }
        if (mArrived == 0)
        {
            mFile = file;
            mLine = line;
        }
        else if (line != mLine || std::strcmp(file, mFile) != 0)
        {
            report(lock,
                "threads wait at different __syncthreads: " + site(mFile, mLine) + " and " + site(file, line));
            throw BlockFault{};
        }
        if (++mArrived == mLive)
        {
            release();
            return;
        }
        const uint64_t generation = mGeneration;
        waitFor(lock, [&] { return mGeneration != generation || !mFault.empty(); },
            "the block's other threads at __syncthreads (" + site(file, line) + ")");
        if (mGeneration == generation)
        {
            throw BlockFault{};
        }
    }

    //! The calling thread has returned from the kernel: barriers no longer wait for it.
    void leave()
    {
        std::lock_guard<std::mutex> lock(mMutex);
        --mLive;
        if (mArrived > 0 && mArrived == mLive)
        {
            release();
        }
    }

    bool faulted()
    {
        std::lock_guard<std::mutex> lock(mMutex);
        return !mFault.empty();
    }

private:
    static std::string site(const char* file, int line)
    {
        return std::string(file) + ":" + std::to_string(line);
    }

    void release()
    {
        mArrived = 0;
        ++mGeneration;
        mChanged.notify_all();
    }

    void report(std::unique_lock<std::mutex>&, const std::string& what)
    {
        if (mFault.empty())
        {
            mFault = what;
            std::fprintf(stderr, "CUDA host emulation: kernel %s, block %llu: %s\n", mKernel,
                static_cast<unsigned long long>(mBlock), what.c_str());
        }
        mChanged.notify_all();
    }

    template <typename Done>
    void waitFor(std::unique_lock<std::mutex>& lock, Done done, const std::string& what)
    {
        if (!mChanged.wait_until(lock, Clock::now() + watchdog(), done))
        {
            std::fprintf(stderr,
                "CUDA host emulation: kernel %s, block %llu: a thread waited %lld s for %s "
                "(%u of the block's %u threads, %u still running, at the barrier): hang\n",
                mKernel, static_cast<unsigned long long>(mBlock), static_cast<long long>(watchdog().count()),
                what.c_str(), mArrived, mThreads, mLive);
            std::fflush(stderr);
            std::_Exit(kHangExitStatus); // the hanging threads cannot be joined
        }
    }

    const char* mKernel;
    const unsigned mThreads;
    std::mutex mMutex;
    std::condition_variable mChanged;
    unsigned mAtGate = 0;
    uint64_t mGate = 0;
    uint64_t mBlock = 0;
    unsigned mLive = 0;
    unsigned mArrived = 0;
    uint64_t mGeneration = 0;
    const char* mFile = "";
    int mLine = 0;
    std::string mFault;
};

Block* gBlock = nullptr; // the running launch's; guarded by gLaunchMutex, read by its threads

//! OS threads that run the threads of every block, kept between launches (creating hundreds of
//! threads per launch would dominate the run time under the sanitizers).
class Workers
{
public:
    ~Workers()
    {
        {
            std::lock_guard<std::mutex> lock(mMutex);
            mStop = true;
            for (const auto& worker : mWorkers)
            {
                worker->wake.notify_one();
            }
        }
        for (const auto& worker : mWorkers)
        {
            worker->thread.join();
        }
    }

    //! Runs work(t) on workers t = 0 .. threads - 1 and waits until every one has returned.
    void run(unsigned threads, const std::function<void(unsigned)>& work)
    {
        std::unique_lock<std::mutex> lock(mMutex);
        while (mWorkers.size() < threads)
        {
            mWorkers.push_back(std::make_unique<Worker>());
            const unsigned index = unsigned(mWorkers.size() - 1);
            mWorkers.back()->thread = std::thread([this, index] { loop(index); });
        }
        mWork = &work;
        mRemaining = threads;
        ++mJob;
        for (unsigned t = 0; t < threads; ++t)
        {
            mWorkers[t]->job = mJob;
            mWorkers[t]->wake.notify_one();
        }
        mDone.wait(lock, [&] { return mRemaining == 0; });
        mWork = nullptr;
    }

private:
    struct Worker
    {
        std::thread thread;
        std::condition_variable wake;
        uint64_t job = 0;
    };

    void loop(unsigned index)
    {
        std::unique_lock<std::mutex> lock(mMutex);
        Worker& self = *mWorkers[index];
        uint64_t done = 0;
        for (;;)
        {
            self.wake.wait(lock, [&] { return mStop || self.job != done; });
            if (mStop)
            {
                return;
            }
            done = self.job;
            const std::function<void(unsigned)>* work = mWork;
            lock.unlock();
            (*work)(index);
            lock.lock();
            if (--mRemaining == 0)
            {
                mDone.notify_one();
            }
        }
    }

    std::mutex mMutex;
    std::condition_variable mDone;
    std::vector<std::unique_ptr<Worker>> mWorkers;
    const std::function<void(unsigned)>* mWork = nullptr;
    uint64_t mJob = 0;
    unsigned mRemaining = 0;
    bool mStop = false;
};

Workers& workers()
{
    static Workers instance;
    return instance;
}

bool validConfiguration(dim3 grid, dim3 block, size_t sharedBytes)
{
    const uint64_t threads = uint64_t(block.x) * block.y * block.z;
    return grid.x >= 1 && grid.x <= 0x7FFFFFFFu && grid.y >= 1 && grid.y <= 65535 && grid.z >= 1
        && grid.z <= 65535 && threads >= 1 && threads <= 1024 && block.x <= 1024 && block.y <= 1024
        && block.z <= 64 && sharedBytes <= 48 * 1024;
}

} // namespace

void syncthreads(const char* file, int line)
{
    gBlock->syncthreads(file, line);
}

void run(const char* kernel, dim3 grid, dim3 block, size_t sharedBytes, cudaStream_t,
    const std::function<void()>& thread)
{
    if (sticky() != cudaSuccess)
    {
        fail(sticky());
        return;
    }
    if (!validConfiguration(grid, block, sharedBytes))
    {
        fail(cudaErrorInvalidConfiguration);
        return;
    }
    std::lock_guard<std::mutex> launchLock(gLaunchMutex);
    const unsigned threads = block.x * block.y * block.z;
    const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
    Block state(kernel, threads);
    gBlock = &state;
    workers().run(threads, [&](unsigned t) {
        blockDim = block;
        gridDim = grid;
        threadIdx = uint3{t % block.x, t / block.x % block.y, t / (block.x * block.y)};
        for (uint64_t b = 0; b < blocks && state.enter(b); ++b)
        {
            blockIdx = uint3{
                unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / (uint64_t(grid.x) * grid.y))};
            try
            {
                thread();
            }
            catch (const BlockFault&)
            {
            }
            state.leave();
        }
    });
    gBlock = nullptr;
    if (state.faulted())
    {
        gStickyError.store(cudaErrorLaunchFailure);
        fail(cudaErrorLaunchFailure);
    }
}

uint16_t floatToHalfBits(float value)
{
    uint32_t f;
    std::memcpy(&f, &value, sizeof f);
    const uint32_t sign = (f >> 16) & 0x8000u;
    const uint32_t exponent = (f >> 23) & 0xFFu;
    uint32_t mantissa = f & 0x7FFFFFu;
    if (exponent == 0xFFu)
    {
        return uint16_t(sign | 0x7C00u | (mantissa != 0 ? 0x200u | (mantissa >> 13) : 0u));
    }
    const int e = int(exponent) - 127 + 15;
    if (e >= 31)
    {
        return uint16_t(sign | 0x7C00u);
    }
    uint32_t shift;
    uint32_t base;
    if (e <= 0)
    {
        // Subnormal half (or zero): the implicit bit joins the mantissa, shifted further right.
        if (e < -10)
        {
            return uint16_t(sign);
        }
        mantissa |= 0x800000u;
        shift = uint32_t(14 - e);
        base = 0;
    }
    else
    {
        shift = 13;
        base = uint32_t(e) << 10;
    }
    uint32_t half = base + (mantissa >> shift);
    const uint32_t rest = mantissa & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (half & 1u)))
    {
        ++half; // a carry into the exponent is the correct rounding (up to infinity)
    }
    return uint16_t(sign | half);
}

float halfBitsToFloat(uint16_t bits)
{
    const uint32_t sign = uint32_t(bits & 0x8000u) << 16;
    const uint32_t exponent = (bits >> 10) & 0x1Fu;
    uint32_t mantissa = bits & 0x3FFu;
    uint32_t f;
    if (exponent == 0x1Fu)
    {
        f = sign | 0x7F800000u | (mantissa << 13);
    }
    else if (exponent != 0)
    {
        f = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
    }
    else if (mantissa == 0)
    {
        f = sign;
    }
    else
    {
        int e = -14;
        while ((mantissa & 0x400u) == 0)
        {
            mantissa <<= 1;
            --e;
        }
        f = sign | (uint32_t(e + 127) << 23) | ((mantissa & 0x3FFu) << 13);
    }
    float value;
    std::memcpy(&value, &f, sizeof value);
    return value;
}

} // namespace iounet_cuda_host

using iounet_cuda_host::fail;
using iounet_cuda_host::sticky;

extern "C" {

cudaError_t cudaGetLastError(void)
{
    const cudaError_t error = iounet_cuda_host::tLastError;
    iounet_cuda_host::tLastError = sticky();
    return error;
}

cudaError_t cudaPeekAtLastError(void)
{
    return iounet_cuda_host::tLastError;
}

const char* cudaGetErrorName(cudaError_t error)
{
    switch (error)
    {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    }
    return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t error)
{
    switch (error)
    {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    }
    return "unrecognized error code";
}

cudaError_t cudaMalloc(void** pointer, size_t bytes)
{
    if (pointer == nullptr)
    {
        return fail(cudaErrorInvalidValue);
    }
    char* memory = static_cast<char*>(std::malloc(bytes > 0 ? bytes : 1));
    if (memory == nullptr)
    {
        return fail(cudaErrorMemoryAllocation);
    }
    std::memset(memory, 0xFF, bytes);
    std::lock_guard<std::mutex> lock(iounet_cuda_host::gMemoryMutex);
    iounet_cuda_host::gAllocations[memory] = bytes;
    *pointer = memory;
    return cudaSuccess;
}

cudaError_t cudaFree(void* pointer)
{
    if (pointer == nullptr)
    {
        return cudaSuccess;
    }
    std::lock_guard<std::mutex> lock(iounet_cuda_host::gMemoryMutex);
    if (iounet_cuda_host::gAllocations.erase(static_cast<const char*>(pointer)) == 0)
    {
        return fail(cudaErrorInvalidDevicePointer);
    }
    std::free(pointer);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void* destination, const void* source, size_t bytes, cudaMemcpyKind)
{
    if (sticky() != cudaSuccess)
    {
        return fail(sticky());
    }
    if (bytes > 0 && (destination == nullptr || source == nullptr))
    {
        return fail(cudaErrorInvalidValue);
    }
    if (bytes > 0)
    {
        std::memmove(destination, source, bytes);
    }
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* destination, const void* source, size_t bytes, cudaMemcpyKind kind, cudaStream_t)
{
    return cudaMemcpy(destination, source, bytes, kind);
}

cudaError_t cudaMemset(void* pointer, int value, size_t bytes)
{
    if (sticky() != cudaSuccess)
    {
        return fail(sticky());
    }
    if (bytes > 0 && pointer == nullptr)
    {
        return fail(cudaErrorInvalidValue);
    }
    if (bytes > 0)
    {
        std::memset(pointer, value, bytes);
    }
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t)
{
    return cudaMemset(pointer, value, bytes);
}

cudaError_t cudaStreamCreate(cudaStream_t* stream)
{
    if (stream == nullptr)
    {
        return fail(cudaErrorInvalidValue);
    }
    *stream = new CUstream_st;
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    if (stream == nullptr)
    {
        return fail(cudaErrorInvalidResourceHandle);
    }
    delete stream;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t)
{
    return sticky();
}

cudaError_t cudaDeviceSynchronize(void)
{
    return sticky();
}

cudaError_t cudaGetDevice(int* device)
{
    if (device == nullptr)
    {
        return fail(cudaErrorInvalidValue);
    }
    *device = 0;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device)
{
    return device == 0 ? cudaSuccess : fail(cudaErrorInvalidValue);
}

int iounet_cuda_host_emulation(void)
{
    return 1;
}

} // extern "C"
