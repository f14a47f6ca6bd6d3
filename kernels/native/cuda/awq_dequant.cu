// Large M: the packed weights dequantized to an f16 [K, N] scratch, then one cuBLAS GEMM.
//
// From M ~ 256 the matmul is bound by arithmetic, and cuBLAS's sm_90 GEMM on f16 weights is
// faster than the GEMV's mma.sync passes of 64 rows; the pass over the weights (read K*N/2 bytes,
// write K*N*2) is paid once per call. A block per unit: the unit's 8512 bytes are read into
// shared memory with 16-byte loads, then each thread writes 16-byte runs of 8 columns of one
// row (every row of the unit's tile: 256 contiguous bytes). The values are exactly the GEMV's:
// the same f16 FMA (awqDequantPair on one weight).
#include <algorithm>

#include "awq.cuh"
#include "tuning.h"

namespace medcluster {
namespace cuda {

namespace {

using namespace awqpack;

__global__ void __launch_bounds__(256) awqDequantKernel(const unsigned char* __restrict__ w, __half* __restrict__ out,
                                                         int K, int N) {
  __shared__ uint4 unit[kUnitBytes / 16];
  const int G = K / kGroup;
  const int64_t U = tiles(N) * G;
  const int e = static_cast<int>(reinterpret_cast<const uint32_t*>(w)[1]);
  const float outScale = exp2f(static_cast<float>(e));
  const uint32_t* words = reinterpret_cast<const uint32_t*>(unit);
  // This thread writes columns c0 .. c0+7 of rows r0, r0 + 16, ... of every unit.
  const int c0 = (threadIdx.x & 15) * 8, r0 = threadIdx.x >> 4;
  for (int64_t u = blockIdx.x; u < U; u += gridDim.x) {
    __syncthreads();  // the previous unit's readers are done
    const uint4* src = reinterpret_cast<const uint4*>(w + kHeaderBytes + u * kUnitBytes);
    for (int i = threadIdx.x; i < kUnitBytes / 16; i += blockDim.x) unit[i] = __ldg(src + i);
    __syncthreads();
    const int t = static_cast<int>(u / G), g = static_cast<int>(u - static_cast<int64_t>(t) * G);
    const int n0 = t * kTileN + c0;
    if (n0 >= N) continue;  // N is a multiple of 8: a run of 8 columns is all in or all out
    uint32_t mul[8], add[8];
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      const uint32_t pair = words[kPairOffset / 4 + c0 + q];
      mul[q] = awqPairMul2(pair);
      add[q] = awqPairAdd2(pair);
    }
    for (int kr = r0; kr < kGroup; kr += 16) {
      uint4 o;
      __half* oh = reinterpret_cast<__half*>(&o);
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        int word, bit;
        locate(kr, c0 + q, word, bit);
        // The weight as the GEMV's fragment holds it: the nibble at bits 6-9 of an f16.
        const uint32_t nib = ((words[word] >> bit) & 15u) << 6;
        __half v = __low2half(u2h2(awqDequantPair(nib, mul[q], add[q])));
        if (e) v = __float2half_rn(__half2float(v) * outScale);
        oh[q] = v;
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
