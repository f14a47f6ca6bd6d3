// The AWQ matmul family on the packed layout (../awq_layout.h): what its kernels share.
//   awq_pack.cu     AutoAWQ tensors -> packed bytes (once, at load)
//   awq_stream.cuh  the producer warp that streams units and x to the consumers of both matmuls
//   awq_gemv.cu     the persistent stream-K tensor-core GEMV (mma.sync), up to 64 rows per launch
//   awq_wgmma.cu    the same schedule on Hopper's warpgroup MMA, x read by the tensor cores from
//                   shared memory (sm_90a)
//   awq_dequant.cu  packed -> f16 [K, N] for a cuBLAS GEMM (large M)
//   awq_linear.cu   launchAwqLinear: picks between them
#pragma once

#include <cuda_fp16.h>

#include "../awq_layout.h"
#include "common.cuh"

namespace medcluster {
namespace cuda {

// A packed matrix as the kernels see it.
struct PackedAwq {
  const unsigned char* data;  // header + units
  int K, N;
  bool gated;  // columns paired gate / up: the GEMV and wgmma kernels write silu(gate) * up, f16 [M, N/2]
};

// out [M, N] (f16 or f32) = x f16 [M, K] @ W, M <= 64 rows in one launch (awq_gemv.cu).
void launchAwqGemv(const Ctx& c, const __half* x, const PackedAwq& w, void* out, bool outF16, int M);
// The blocks per multiprocessor an M-row GEMV launch asks with the current tuning, and how many
// of its kernel reside (registers and shared memory); the launch caps its grid at the latter.
struct GemvOccupancy {
  int tuned, resident;
};
GemvOccupancy awqGemvOccupancy(int M, bool gated);
// The same on Hopper's warpgroup MMA (awq_wgmma.cu): compute capability 9.0 only, M <= 256.
constexpr int kAwqWgmmaMaxRows = 256;
void launchAwqWgmma(const Ctx& c, const __half* x, const PackedAwq& w, void* out, bool outF16, int M);
// out = x @ W through an f16 copy of W and cuBLAS (awq_dequant.cu); needs c.blas. (W in the
// packed column order: a gated pack's sums come out paired, and launchAwqLinear applies the gate.)
void launchAwqDequantGemm(const Ctx& c, const __half* x, const PackedAwq& w, void* out, bool outF16, int M);

// ---- dequantization, shared by the pack, the GEMV and the dequantization kernel ----
//
// The fragment nibbles are f16 subnormals q * 2^-18 (exact), so
// (q * 2^-18) * (s * 2^(18-e)) + (-z * s * 2^-e) = (q - z) * s * 2^-e: the product is exact
// inside the FMA and -z * s is rounded to f16 once, when the pack computes the column's pair.
// e > 0 only for a matrix with a scale so large that s * 2^18 would overflow f16 (|s| >= 0.25):
// the kernels multiply their fp32 results by 2^e.

// A column's pair (multiplier, addend) as the pack writes it (the low half: the multiplier).
__device__ __forceinline__ uint32_t awqColumnPair(__half s, int z, int e) {
  const float sf = __half2float(s);
  const __half mul = __float2half_rn(sf * exp2f(static_cast<float>(18 - e)));  // exact: s times a power of two
  const __half add = __float2half_rn(-static_cast<float>(z) * sf * exp2f(static_cast<float>(-e)));
  return static_cast<uint32_t>(__half_as_ushort(mul)) | static_cast<uint32_t>(__half_as_ushort(add)) << 16;
}

__device__ __forceinline__ __half2 u2h2(uint32_t u) { return *reinterpret_cast<__half2*>(&u); }
__device__ __forceinline__ uint32_t h22u(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }

// Two weights from fragNibbles' output, with the column's pair broadcast: mul2 = (m, m), add2 = (a, a).
__device__ __forceinline__ uint32_t awqDequantPair(uint32_t nibbles, uint32_t mul2, uint32_t add2) {
  return h22u(__hfma2(u2h2(nibbles), u2h2(mul2), u2h2(add2)));
}
// The pair's halves broadcast to both halves of a register.
__device__ __forceinline__ uint32_t awqPairMul2(uint32_t pair) { return __byte_perm(pair, 0, 0x1010); }
__device__ __forceinline__ uint32_t awqPairAdd2(uint32_t pair) { return __byte_perm(pair, 0, 0x3232); }

}  // namespace cuda
}  // namespace medcluster
