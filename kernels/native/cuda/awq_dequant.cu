// Large M: the packed weights dequantized to an f16 [K, N] scratch, then one cuBLAS GEMM.
//
// From M ~ 256 the matmul is bound by arithmetic, and cuBLAS's sm_90 GEMM on f16 weights is
// faster than the GEMV's mma.sync passes of 64 rows; the pass over the weights (read K*N/2 bytes,
// write K*N*2) is paid once per call. A block per unit: each thread dequantizes 16-byte chunks
// of weights exactly as a GEMV lane does (the same f16 FMAs: the same values) into a 128 x 128
// f16 tile in shared memory, which then goes out in 16-byte runs, 256 contiguous bytes per row.
#include <algorithm>

#include "awq.cuh"
#include "tuning.h"

namespace medcluster {
namespace cuda {

namespace {

using namespace awqpack;

__global__ void __launch_bounds__(256) awqDequantKernel(const unsigned char* __restrict__ w, __half* __restrict__ out,
                                                         int K, int N) {
  constexpr int kLd = kTileN + 8;  // halves per staged row: 272 bytes, 16-byte aligned runs
  __shared__ __align__(16) __half tile[kGroup][kLd];
  const int G = K / kGroup;
  const int64_t U = tiles(N) * G;
  const int e = static_cast<int>(reinterpret_cast<const uint32_t*>(w)[1]);
  const float outScale = exp2f(static_cast<float>(e));
  for (int64_t u = blockIdx.x; u < U; u += gridDim.x) {
    const unsigned char* unit = w + kHeaderBytes + u * kUnitBytes;
    const int t = static_cast<int>(u / G), g = static_cast<int>(u - static_cast<int64_t>(t) * G);
    __syncthreads();  // the previous unit's tile has been written out
    // Each 16-byte weight chunk as a GEMV lane reads it: 4 words, each 4 f16 pairs of two columns.
    for (int ch = threadIdx.x; ch < kWeightBytes / 16; ch += blockDim.x) {
      const uint4 wq = __ldg(reinterpret_cast<const uint4*>(unit) + ch);
      const int n16 = ch >> 6, h = (ch >> 5) & 1, lane = ch & 31, gl = lane >> 2, tl = lane & 3;
      const int colA = n16 * 16 + gl, colB = colA + 8;
      const uint32_t pa = __ldg(reinterpret_cast<const uint32_t*>(unit + kPairOffset) + colA);
      const uint32_t pb = __ldg(reinterpret_cast<const uint32_t*>(unit + kPairOffset) + colB);
      const uint32_t mA = awqPairMul2(pa), dA = awqPairAdd2(pa), mB = awqPairMul2(pb), dB = awqPairAdd2(pb);
      const uint32_t wv[4] = {wq.x, wq.y, wq.z, wq.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int kb = h * 64 + j * 16 + 2 * tl;  // rows e = 0, 1 of this step; e = 2, 3 are 8 further
        const __half2 a0 = u2h2(awqDequantPair(fragNibbles(wv[j], 0), mA, dA));  // column A, e = 0, 1
        const __half2 a1 = u2h2(awqDequantPair(fragNibbles(wv[j], 1), mB, dB));  // column B, e = 0, 1
        const __half2 a2 = u2h2(awqDequantPair(fragNibbles(wv[j], 2), mA, dA));  // column A, e = 2, 3
        const __half2 a3 = u2h2(awqDequantPair(fragNibbles(wv[j], 3), mB, dB));  // column B, e = 2, 3
        tile[kb + 0][colA] = __low2half(a0);
        tile[kb + 1][colA] = __high2half(a0);
        tile[kb + 8][colA] = __low2half(a2);
        tile[kb + 9][colA] = __high2half(a2);
        tile[kb + 0][colB] = __low2half(a1);
        tile[kb + 1][colB] = __high2half(a1);
        tile[kb + 8][colB] = __low2half(a3);
        tile[kb + 9][colB] = __high2half(a3);
      }
    }
    __syncthreads();
    // The staged 128 x 128 tile out in 16-byte runs (256 contiguous bytes per row).
    for (int i = threadIdx.x; i < kGroup * (kTileN / 8); i += blockDim.x) {
      const int kr = i >> 4, c0 = (i & 15) * 8, n0 = t * kTileN + c0;
      if (n0 >= N) continue;  // N is a multiple of 8: a run of 8 columns is all in or all out
      uint4 o = *reinterpret_cast<const uint4*>(&tile[kr][c0]);
      if (e) {
        __half* oh = reinterpret_cast<__half*>(&o);
#pragma unroll
        for (int q = 0; q < 8; ++q) oh[q] = __float2half_rn(__half2float(oh[q]) * outScale);
      }
      *reinterpret_cast<uint4*>(out + static_cast<int64_t>(g * kGroup + kr) * N + n0) = o;
    }
  }
}

}  // namespace

void launchAwqDequantGemm(const Ctx& c, const __half* x, const PackedAwq& w, void* out, bool outF16, int M) {
  __half* deq = static_cast<__half*>(c.dequant->get(static_cast<size_t>(w.K) * w.N * 2, c.stream));
  const int64_t U = units(w.K, w.N);
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(U, 8 * c.numSMs));
  awqDequantKernel<<<grid, 256, 0, c.stream>>>(w.data, deq, w.K, w.N);
  MC_LAUNCHED("awqDequant");
  blasGemm(*c.blas, x, deq, true, out, outF16, M, w.K, w.N);
}

}  // namespace cuda
}  // namespace medcluster
