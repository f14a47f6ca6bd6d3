// Shared helpers of the CUDA backend: error translation, scratch memory, launch sizes.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "../backend.h"

namespace medcluster {
namespace cuda {

// A CUDA error becomes a BackendError naming the failing call, file and line.
[[noreturn]] void throwCudaError(cudaError_t err, const char* call, const char* file, int line);

#define MC_CUDA(call)                                                              \
  do {                                                                             \
    cudaError_t mc_err_ = (call);                                                  \
    if (mc_err_ != cudaSuccess) ::medcluster::cuda::throwCudaError(mc_err_, #call, __FILE__, __LINE__); \
  } while (0)
// After a kernel launch: reports bad launch configurations at once (asynchronous
// faults surface at the next synchronizing call, named there).
#define MC_LAUNCHED(name) MC_CUDA(cudaGetLastError())

// Stream-ordered scratch memory that only grows (split-K workspaces, attention partials).
// Grow it outside CUDA graph capture (a warm-up call does that).
class Scratch {
 public:
  void* get(size_t bytes, cudaStream_t s);
  void release(cudaStream_t s);
 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

struct Ctx {
  cudaStream_t stream;
  int numSMs;
  Scratch* scratch;   // fp32 workspace for split-K reductions
  Scratch* scratch2;  // attention partials
};

inline int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Launchers implemented in awq_linear.cu, linear.cu and attention.cu.
void launchAwqLinear(const Ctx& c, const View& x, const AwqWeights& w, const View& out);
void launchLinear(const Ctx& c, const View& x, const View& w, const View& out);
void launchAttention(const Ctx& c, const View& q, const View& kCache, const View& vCache,
                     const View& blockTables, const View& tokenSeq, const View& positions,
                     const AttentionShape& shape, const View& out);

}  // namespace cuda
}  // namespace medcluster

namespace medcluster {
namespace cuda {
// The stream a CUDA backend issues its work on (benchmarks, CUDA graph capture).
cudaStream_t backendStream(Backend& b);
}  // namespace cuda
}  // namespace medcluster
