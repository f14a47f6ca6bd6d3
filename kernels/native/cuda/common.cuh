// Shared helpers of the CUDA backend: error translation, scratch memory, launch sizes.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>
#include <utility>
#include <vector>

#include "../backend.h"
#include "cublas_loader.h"
#include "tuning.h"

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
// Grow it outside CUDA graph capture (a warm-up call does that). A graph keeps the address
// it was captured with, so once a capture has used the current buffer, growing keeps the
// old one alive (until release) instead of freeing it under the graph.
class Scratch {
 public:
  void* get(size_t bytes, cudaStream_t s);
  // The same, zero-filled when it grows (cross-block counters that kernels reset to zero
  // themselves after use, so they are zero at every launch).
  void* getZeroed(size_t bytes, cudaStream_t s);
  void release(cudaStream_t s);
  // Called when a capture begins: the current buffer may be baked into a graph.
  void pin() { pinned_ = ptr_ != nullptr; }
 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  bool pinned_ = false;
  std::vector<void*> retired_;
};

// cuBLAS bound to the backend's stream, when the library could be loaded.
struct Blas {
  cublasdl::Api api;
  cublasdl::cublasHandle_t handle = nullptr;
};

// What a launcher needs: the stream, the device's size, and workspaces the backend owns
// (kernels keep no state of their own between launches).
struct Ctx {
  cudaStream_t stream;
  int numSMs;
  int computeCapability;  // major * 10 + minor
  Scratch* splitK;        // fp32 partial sums of split-K / stream-K matmuls
  Scratch* tickets;       // zeroed counters for split-K fix-ups (self-resetting)
  Scratch* attnScratch;   // attention partials
  Scratch* dequant;       // f16 weights dequantized for a cuBLAS GEMM
  Scratch* gatedGemm;     // a gated AWQ matmul's cuBLAS output f16 [M, N], before its gate
  const Blas* blas;       // null: cuBLAS unavailable (or not loadable now: during graph capture)
};

// out [M, N] (f16 or f32) = x f16 [M, K] @ w f16, where w is [K, N] row-major (wKN) or
// [N, K] row-major (nn.Linear layout); fp32 accumulation. Throws on a cuBLAS error.
void blasGemm(const Blas& b, const __half* x, const __half* w, bool wKN, void* out, bool outF16, int M, int K, int N);

inline int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Launches kernel<<<grid, block, smem, c.stream>>>(args...) with programmatic dependent launch
// where tuning().pdl and the device (sm_90) allow it: the kernel's blocks may start while the
// kernel before it finishes (they take the place of its blocks as these exit, ~2 us sooner than a
// plain launch's: measured on an H200 at 48fb04a). So every kernel launched here calls pdlWait()
// (ptx.cuh) before it reads or writes memory that the kernels before it use, and may call
// pdlLaunchDependents() to let the next one start early in turn.
template <class... Params, class... Args>
void launchKernel(const Ctx& c, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = c.stream;
  cudaLaunchAttribute attrs[1];
  attrs[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attrs[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attrs;
  cfg.numAttrs = tuning().pdl && c.computeCapability >= 90 ? 1 : 0;
  MC_CUDA(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

// Launchers implemented in awq_linear.cu (and awq_*.cu), linear.cu, attention.cu and sample.cu.
void launchAwqLinear(const Ctx& c, const View& x, const PackedAwqWeights& w, const View& out);
void launchAwqPack(const Ctx& c, const AwqWeights& src, const View& dst, bool gated);
// out f16 [T, I] = silu(gate) * up from gateUp f16 [T, 2I]: gate columns then up columns, or
// (pairedBy8) runs of 8 of each in turn, a gated pack's column order (awq_layout.h). In cuda_backend.cu.
void launchSiluMul(const Ctx& c, const __half* gateUp, __half* out, int64_t T, int64_t I, bool pairedBy8);
void launchLinear(const Ctx& c, const View& x, const View& w, const View& out);
void launchAttention(const Ctx& c, const View& q, const View& kCache, const View& vCache,
                     const View& blockTables, const View& tokenSeq, const View& positions,
                     const AttentionShape& shape, const View& out);
// Pinned host memory that Device.sample's row specs go through, and the event of its last copy.
struct SampleStaging {
  void* host = nullptr;
  size_t bytes = 0;
  cudaEvent_t done = nullptr;
  void reserve(size_t bytes);
  void release();
};

// Device.sample (sample.cu): row specs, scores and sort buffers live in `scratch`.
void launchSample(cudaStream_t s, Scratch& scratch, SampleStaging& staging, const View& logits,
                  const SampleBatch& batch, const View& ids, const View& logprobs);

}  // namespace cuda
}  // namespace medcluster

namespace medcluster {
namespace cuda {
// The stream a CUDA backend issues its work on (benchmarks, CUDA graph capture).
cudaStream_t backendStream(Backend& b);
}  // namespace cuda
}  // namespace medcluster
