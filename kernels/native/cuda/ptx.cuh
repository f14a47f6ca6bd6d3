// One small wrapper per PTX instruction the CUDA kernels use beyond plain C++, each with why.
// sm_90 (Hopper) instructions have an sm_80 stand-in where the kernels need one, chosen at
// compile time by __CUDA_ARCH__.
#pragma once

#include <cstdint>

namespace medcluster {
namespace cuda {

__device__ __forceinline__ uint32_t smemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- mbarrier: a shared-memory barrier that async copies complete on (sm_80+) ----
__device__ __forceinline__ void mbarInit(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared.b64 [%0], %1;" ::"r"(smemAddr(bar)), "r"(count) : "memory");
}
// Makes the initialized barriers visible to the async (copy engine) proxy before first use.
__device__ __forceinline__ void fenceMbarInit() {
#if __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}
__device__ __forceinline__ void mbarArrive(uint64_t* bar) {
  asm volatile("{ .reg .b64 st; mbarrier.arrive.shared.b64 st, [%0]; }" ::"r"(smemAddr(bar)) : "memory");
}
// Spins until the barrier's phase with this parity has completed.
__device__ __forceinline__ void mbarWait(uint64_t* bar, uint32_t parity) {
  const uint32_t a = smemAddr(bar);
  uint32_t done;
  do {
#if __CUDA_ARCH__ >= 900
    asm volatile(
        "{ .reg .pred p; mbarrier.try_wait.parity.shared.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
        : "=r"(done) : "r"(a), "r"(parity) : "memory");
#else
    asm volatile(
        "{ .reg .pred p; mbarrier.test_wait.parity.shared.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
        : "=r"(done) : "r"(a), "r"(parity) : "memory");
#endif
  } while (!done);
}

#if __CUDA_ARCH__ >= 900
// Arrives (the barrier's one producer arrival) and tells it to also wait for `bytes` of copies.
__device__ __forceinline__ void mbarArriveExpectTx(uint64_t* bar, uint32_t bytes) {
  asm volatile("{ .reg .b64 st; mbarrier.arrive.expect_tx.shared.b64 st, [%0], %1; }"
               ::"r"(smemAddr(bar)), "r"(bytes) : "memory");
}
// A contiguous global -> shared copy by the copy engine (one instruction for kilobytes, no
// registers in flight); completes its bytes on `bar`. 16-byte aligned, size a multiple of 16.
__device__ __forceinline__ void bulkCopyG2S(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               ::"r"(smemAddr(dst)), "l"(src), "r"(bytes), "r"(smemAddr(bar)) : "memory");
}
// A 2-D box of a tensor map (a kernel parameter: __grid_constant__ CUtensorMap) -> shared, by
// the copy engine, at element coordinates (c0 innermost, c1); completes its bytes on `bar`.
__device__ __forceinline__ void tensorCopy2dG2S(void* dst, const void* tensorMap, int c0, int c1, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
      ::"r"(smemAddr(dst)), "l"(reinterpret_cast<uint64_t>(tensorMap)), "r"(c0), "r"(c1), "r"(smemAddr(bar))
      : "memory");
}
#endif

// ---- cp.async (sm_80): 16-byte global -> shared copies, the pre-Hopper way ----
__device__ __forceinline__ void cpAsync16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smemAddr(dst)), "l"(src) : "memory");
}
// The same, or 16 zero bytes (nothing read) where !ok.
__device__ __forceinline__ void cpAsync16OrZero(void* dst, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smemAddr(dst)), "l"(src), "r"(ok ? 16 : 0)
               : "memory");
}
// The barrier counts one arrival once this thread's earlier cp.asyncs have landed (the
// arrival is one of the count the barrier was initialized with).
__device__ __forceinline__ void cpAsyncArriveNoinc(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared.b64 [%0];" ::"r"(smemAddr(bar)) : "memory");
}

// ---- programmatic dependent launch (sm_90; no-ops before) ----
// Lets the next kernel in the stream, when launched with the programmatic-serialization
// attribute, start its blocks now. Safe anywhere: that kernel still waits (pdlWait) for this
// one to finish before it reads what this one writes.
__device__ __forceinline__ void pdlLaunchDependents() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// Waits until the kernels this one depends on have finished and their writes are visible.
// Every read of their outputs (and every write they might still read) must come after it.
__device__ __forceinline__ void pdlWait() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Barrier among the first `threads` threads of the block (a subset: the consumer warps).
__device__ __forceinline__ void namedBarrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace cuda
}  // namespace medcluster
