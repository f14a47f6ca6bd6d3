// AutoAWQ tensors -> the packed layout (../awq_layout.h), once per matrix at load (a gated pack:
// the gate / up columns paired, sourceColumn).
//
// One thread per 16 bytes of output: a weight chunk gathers its 32 nibbles from 16 rows x
// 2 AutoAWQ words (re-reading each word from cache for each of its nibbles: load-time code,
// written for obviousness), a pair chunk computes 4 columns' (multiplier, addend) pairs from
// their scales and zeros. The header's largest |scale| comes from a first pass of atomicMax
// over the scales' f16 bits, and the shift e from it.
#include <algorithm>

#include "awq.cuh"

namespace medcluster {
namespace cuda {

namespace {

using namespace awqpack;

__global__ void awqScaleMaxKernel(const __half* __restrict__ sc, int64_t n, unsigned* __restrict__ header) {
  unsigned m = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    m = max(m, static_cast<unsigned>(__half_as_ushort(sc[i])) & 0x7fffu);
  for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
  if ((threadIdx.x & 31) == 0) atomicMax(header, m);
}

__global__ void awqPackKernel(const uint32_t* __restrict__ qw,  // [K, N/8]
                              const uint32_t* __restrict__ qz,  // [K/128, N/8]
                              const __half* __restrict__ sc,    // [K/128, N]
                              unsigned char* __restrict__ dst, int K, int N, bool gated) {
  const int W = N / 8, G = K / kGroup;
  constexpr int kChunks = kUnitBytes / 16;  // 544: 512 of weights, 32 of column pairs
  const int e = scaleShiftFor(__half2float(__ushort_as_half(static_cast<unsigned short>(
      *reinterpret_cast<const unsigned*>(dst) & 0x7fffu))));  // header word 0, from awqScaleMaxKernel
  if (blockIdx.x == 0 && threadIdx.x == 0) reinterpret_cast<unsigned*>(dst)[1] = static_cast<unsigned>(e);
  const int64_t total = tiles(N) * G * kChunks;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t u = i / kChunks;
    const int ch = static_cast<int>(i - u * kChunks);
    const int t = static_cast<int>(u / G), g = static_cast<int>(u - static_cast<int64_t>(t) * G);
    uint32_t out[4] = {0, 0, 0, 0};
    if (ch < 512) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int word = ch * 4 + j;
        uint32_t v = 0;
#pragma unroll
        for (int bit = 0; bit < 32; bit += 4) {
          int kr, c;
          weightAt(word, bit, kr, c);
          const int n = t * kTileN + c, k = g * kGroup + kr;
          if (n >= N) continue;
          const int sn = sourceColumn(n, N, gated);
          v |= ((qw[static_cast<int64_t>(k) * W + sn / 8] >> autoAwqShift(sn)) & 15u) << bit;
        }
        out[j] = v;
      }
    } else {
      for (int q = 0; q < 4; ++q) {
        const int n = t * kTileN + (ch - 512) * 4 + q;
        if (n >= N) continue;
        const int sn = sourceColumn(n, N, gated);
        const int z = static_cast<int>((qz[static_cast<int64_t>(g) * W + sn / 8] >> autoAwqShift(sn)) & 15u);
        out[q] = awqColumnPair(sc[static_cast<int64_t>(g) * N + sn], z, e);
      }
    }
    *reinterpret_cast<uint4*>(dst + kHeaderBytes + u * kUnitBytes + ch * 16) = make_uint4(out[0], out[1], out[2], out[3]);
  }
}

// Does nothing. Launched after the pack so that the kernel right after it in the stream is this
// one: a GEMV launched with programmatic dependent launch reads its first weight stages before
// waiting for its predecessor, so that predecessor must not be the kernel that wrote them.
__global__ void awqPackFence() {}

}  // namespace

void launchAwqPack(const Ctx& c, const AwqWeights& src, const View& dst, bool gated) {
  const int K = static_cast<int>(src.qweight.dim(0)), N = static_cast<int>(src.qweight.dim(1) * 8);
  if (gated && N % 16)
    throw BackendError("packAwq (CUDA): a gated pack pairs runs of 8 gate and 8 up columns; N=" + std::to_string(N) +
                       " is not a multiple of 16");
  if (src.groupSize != kGroup || K % kGroup)
    throw BackendError("packAwq (CUDA): group size " + std::to_string(src.groupSize) + " with K=" + std::to_string(K) +
                       " is not supported (the packed layout is for groups of 128 rows)");
  if (static_cast<int64_t>(dst.numel()) * static_cast<int64_t>(dtypeSize(dst.dtype)) < packedBytes(K, N))
    throw BackendError("packAwq (CUDA): destination too small for K=" + std::to_string(K) + " N=" + std::to_string(N));
  unsigned char* out = static_cast<unsigned char*>(dst.data);
  MC_CUDA(cudaMemsetAsync(out, 0, kHeaderBytes, c.stream));
  const int64_t nScales = static_cast<int64_t>(K / kGroup) * N;
  awqScaleMaxKernel<<<static_cast<unsigned>(std::min<int64_t>(ceilDiv(nScales, 256), 4 * c.numSMs)), 256, 0,
                      c.stream>>>(src.scales.as<__half>(), nScales, reinterpret_cast<unsigned*>(out));
  MC_LAUNCHED("awqScaleMax");
  const int64_t chunks = units(K, N) * (kUnitBytes / 16);
  awqPackKernel<<<static_cast<unsigned>(std::min<int64_t>(ceilDiv(chunks, 256), 32 * c.numSMs)), 256, 0, c.stream>>>(
      src.qweight.as<uint32_t>(), src.qzeros.as<uint32_t>(), src.scales.as<__half>(), out, K, N, gated);
  MC_LAUNCHED("awqPack");
  awqPackFence<<<1, 32, 0, c.stream>>>();
  MC_LAUNCHED("awqPackFence");
}

}  // namespace cuda
}  // namespace medcluster
