// The AWQ matmul family on the packed layout (../awq_layout.h): what its kernels share.
//   awq_pack.cu     AutoAWQ tensors -> packed bytes (once, at load)
//   awq_gemv.cu     the persistent stream-K tensor-core GEMV, up to 64 rows per launch
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
};

// out [M, N] (f16 or f32) = x f16 [M, K] @ W, M <= 64 rows in one launch (awq_gemv.cu).
void launchAwqGemv(const Ctx& c, const __half* x, const PackedAwq& w, void* out, bool outF16, int M);
// out = x @ W through an f16 copy of W and cuBLAS (awq_dequant.cu); needs c.blas.
void launchAwqDequantGemm(const Ctx& c, const __half* x, const PackedAwq& w, void* out, bool outF16, int M);

// ---- dequantization, shared by the GEMV and the dequantization kernel ----
//
// The default (one FMA per pair of weights): the fragment nibbles are f16 subnormals
// q * 2^-18 (exact), so (q * 2^-18) * (s * 2^(18-e)) + (-z * s * 2^-e) = (q - z) * s * 2^-e,
// where the product is exact inside the FMA and -z * s is rounded to f16 once. e > 0 only when
// the matrix has a scale so large that s * 2^18 would overflow f16 (|s| >= 0.25): the kernels
// multiply their fp32 results by 2^e. The SubMul variant computes ((1 + q/16) - (1 + z/16)) * 16s
// instead: the subtraction is exact and the product is the only rounding (two f16 ops).

// e for a matrix whose largest |scale| has f16 bits maxBits (the packed header's word 0).
__device__ __forceinline__ int awqScaleShift(uint32_t maxBits) {
  const float maxS = __half2float(__ushort_as_half(static_cast<unsigned short>(maxBits & 0x7fffu)));
  int e = 0;
  while (e < 24 && maxS * exp2f(static_cast<float>(18 - e)) > 65504.f) ++e;
  return e;
}

// The powers of two of a matrix's shift e (once per kernel): the multiplier's and the addend's.
template <bool SUBMUL>
__device__ __forceinline__ void awqShiftFactors(int e, float& mulScale, float& addScale) {
  mulScale = exp2f(static_cast<float>((SUBMUL ? 4 : 18) - e));
  addScale = exp2f(static_cast<float>(-e));
}

// The two f16 constants of one column in one group: the FMA's multiplier and addend, or
// SubMul's multiplier (mul) and subtrahend (add).
template <bool SUBMUL>
__device__ __forceinline__ void awqColumnConstants(__half s, int z, float mulScale, float addScale, __half& mul,
                                                   __half& add) {
  const float sf = __half2float(s);
  mul = __float2half_rn(sf * mulScale);  // exact: s times a power of two
  if (SUBMUL) add = __float2half_rn(1.f + static_cast<float>(z) * 0.0625f);  // exact
  else add = __float2half_rn(-static_cast<float>(z) * sf * addScale);
}

__device__ __forceinline__ __half2 u2h2(uint32_t u) { return *reinterpret_cast<__half2*>(&u); }
__device__ __forceinline__ uint32_t h22u(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }

// Two weights from fragNibbles' output (bits 6-9 and 22-25 of each half).
template <bool SUBMUL>
__device__ __forceinline__ uint32_t awqDequantPair(uint32_t nibbles, __half2 mul, __half2 add) {
  if (SUBMUL) return h22u(__hmul2(__hsub2(u2h2(nibbles | 0x3C003C00u), add), mul));
  return h22u(__hfma2(u2h2(nibbles), mul, add));
}

}  // namespace cuda
}  // namespace medcluster
