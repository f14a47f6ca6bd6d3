// The stream-K schedule and its fix-up: the one split-K epilogue of the CUDA matmuls.
//
// A matmul's work is a row of `units` (for the AWQ GEMV: 128 columns x one 128-row group,
// ordered tile by tile, group by group). Block b of P persistent blocks takes the contiguous
// range [start(b), start(b + 1)): every block gets the same work to within one unit, however
// the units fall into tiles, so no block waits for a second wave and none idles at the end.
// A block whose range covers a whole tile writes that tile's output itself. A tile shared by
// several blocks (at most the first and the last tile of each block's range) is finished by
// the fix-up: each contributor stores its fp32 partial in its own slot (block, 0 for the first
// tile of its range / 1 for the last), takes a ticket from the tile's counter, and the last to
// arrive sums the slots in block order (a fixed order: the result does not depend on which
// block arrived last) and writes the output, then resets the counter for the next launch.
// Partials and counters live in scratch the caller owns (Ctx::splitK, Ctx::tickets).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "ptx.cuh"

namespace medcluster {
namespace cuda {

struct StreamK {
  int units;  // work units, tile-major
  int P;      // blocks (P <= units)
  int G;      // units per tile
  // 32-bit arithmetic (awqStreamKGrid checks that units x P fits): a 64-bit division is a long
  // dependent subroutine on the GPU, and the fix-up took several on its critical path (measured
  // on an H200 against 848c4be: M = 16 0.183 -> 0.176 ms a 70B block, the wgmma kernel's M = 64
  // 0.277 -> 0.262).
  __host__ __device__ int start(int b) const { return b * units / P; }
  // The block whose range holds unit u.
  __host__ __device__ int blockOf(int u) const { return ((u + 1) * P - 1) / units; }
  // Slot of block b's partial of tile t (t is the first or the last tile of b's range).
  __host__ __device__ int slot(int b, int t) const { return 2 * b + (start(b) / G == t ? 0 : 1); }
};

__device__ __forceinline__ void storeOut(void* out, bool outF16, int64_t i, float v) {
  if (outF16) static_cast<__half*>(out)[i] = __float2half_rn(v);
  else static_cast<float*>(out)[i] = v;
}

// Where one fp32 sum of tile t goes (row m, column col of the tile, n = t * tileN + col): to the
// output when this block covers the whole tile, else to the block's partial (part: its slot),
// which the fix-up sums. Rows past M and columns past N go nowhere.
__device__ __forceinline__ void streamKStore(bool whole, float* part, int tileN, int m, int col, int n, void* out,
                                             bool outF16, int M, int N, float v) {
  if (m >= M) return;
  if (!whole) part[m * tileN + col] = v;
  else if (n < N) storeOut(out, outF16, static_cast<int64_t>(m) * N + n, v);
}

// Called by all `threads` threads of the block's computing warps (named barrier 1) once this
// block has stored its partial of tile t (rows x tileN fp32 at partials + slot * rowsCap * tileN;
// tileN a multiple of 4). `flag` is a shared int the barrier-protected handoff uses.
//
// The last contributor reads the partials by 16 bytes, kFixupVectors a thread at once, each
// contributor's loads issued together: the partials sit in L2, so the fix-up costs about one L2
// round trip per contributor and 32 rows, not one per element a thread (measured on an H200 at
// 1f8d01a: the element-by-element loop held every M = 64 matmul ~0.07 ms past its stream).
constexpr int kFixupVectors = 4;
__device__ __forceinline__ void streamKFixup(const StreamK& sk, int t, const float* partials, int rowsCap,
                                             int tileN, unsigned* tickets, void* out, bool outF16, int M, int N,
                                             int* flag, int tid, int threads) {
  __threadfence();  // this block's partial is visible before its ticket
  namedBarrier(1, threads);
  const int tileEnd = (t + 1) * sk.G < sk.units ? (t + 1) * sk.G : sk.units;
  const int first = sk.blockOf(t * sk.G), last = sk.blockOf(tileEnd - 1);
  if (tid == 0) *flag = atomicAdd(&tickets[t], 1u) == static_cast<unsigned>(last - first);
  namedBarrier(1, threads);
  if (!*flag) return;
  __threadfence();  // the other contributors' partials, published before their tickets
  const int vecs = M * tileN / 4;  // 16-byte vectors of the tile's rows below M
  // Every contributor after the first starts its range in tile t (its slot 0); the first's slot
  // is 0 only if its range starts at the tile.
  const int firstSlot = sk.slot(first, t);
  for (int i0 = tid; i0 < vecs; i0 += kFixupVectors * threads) {
    float4 v[kFixupVectors];
#pragma unroll
    for (int j = 0; j < kFixupVectors; ++j) v[j] = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int b = first; b <= last; ++b) {  // in block order: the sum does not depend on arrival
      const int slot = b == first ? firstSlot : 2 * b;
      const float4* src = reinterpret_cast<const float4*>(partials + static_cast<int64_t>(slot) * rowsCap * tileN);
      float4 p[kFixupVectors];
#pragma unroll
      for (int j = 0; j < kFixupVectors; ++j) {
        const int i = i0 + j * threads;
        p[j] = i < vecs ? __ldcg(src + i) : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int j = 0; j < kFixupVectors; ++j) {
        v[j].x += p[j].x;
        v[j].y += p[j].y;
        v[j].z += p[j].z;
        v[j].w += p[j].w;
      }
    }
#pragma unroll
    for (int j = 0; j < kFixupVectors; ++j) {
      const int i = i0 + j * threads;
      if (i >= vecs) continue;
      const int m = i * 4 / tileN, c = i * 4 - m * tileN;
      const int64_t o = static_cast<int64_t>(m) * N + t * tileN + c;
      const float e[4] = {v[j].x, v[j].y, v[j].z, v[j].w};
#pragma unroll
      for (int q = 0; q < 4; ++q)
        if (t * tileN + c + q < N) storeOut(out, outF16, o + q, e[q]);
    }
  }
  if (tid == 0) tickets[t] = 0;
}

}  // namespace cuda
}  // namespace medcluster
