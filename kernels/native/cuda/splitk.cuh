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

#include "../awq_layout.h"
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

// silu(gate) * up, as the gated matmul's epilogue applies it (fp32, one rounding to f16 at the store;
// the fast exponential and division: ~2^-21 relative, far below the f16 output's 2^-11; the
// precise ones cost the 70B gate_up 2-3% at 16-128 rows, measured on an H200).
__device__ __forceinline__ float siluGate(float gate, float up) {
  return __fdividef(gate, 1.f + __expf(-gate)) * up;  // gate -> -inf: gate / inf = -0
}

// The gated form (awq_layout.h): a gate sum (column colA of the tile, packed column nA, whose
// nA % 16 < 8) and its up sum (colA + 8), row m. Whole tile: silu(gate) * up to output column
// gatedOutColumn(nA) of out f16 [M, N/2]; else both to the block's partial.
__device__ __forceinline__ void streamKStoreGated(bool whole, float* part, int tileN, int m, int colA, int nA,
                                                  __half* out, int M, int N, float gate, float up) {
  if (m >= M) return;
  if (!whole) {
    part[m * tileN + colA] = gate;
    part[m * tileN + colA + 8] = up;
  } else if (nA < N) {
    out[static_cast<int64_t>(m) * (N / 2) + awqpack::gatedOutColumn(nA)] = __float2half_rn(siluGate(gate, up));
  }
}

// Called by all `threads` threads of the block's computing warps (named barrier 1) once this
// block has stored its partial of tile t (rows x tileN fp32 at partials + slot * rowsCap * tileN;
// tileN a multiple of 4). `flag` is a shared int the barrier-protected handoff uses.
//
// The last contributor reads the partials by 16 bytes, kFixupVectors a thread at once, each
// contributor's loads issued together: the partials sit in L2, so the fix-up costs about one L2
// round trip per contributor and 32 rows, not one per element a thread (measured on an H200 at
// 1f8d01a: the element-by-element loop held every M = 64 matmul ~0.07 ms past its stream).
// Gated (awq_layout.h; tileN a multiple of 16, out f16 [M, N/2]): the vectors go in pairs, 4 gate
// columns and the 4 up columns 8 further, and the sums leave as silu(gate) * up.
constexpr int kFixupVectors = 4;
__device__ __forceinline__ void streamKFixup(const StreamK& sk, int t, const float* partials, int rowsCap,
                                             int tileN, unsigned* tickets, void* out, bool outF16, int M, int N,
                                             int* flag, int tid, int threads, bool gated = false) {
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
  // Vector j of an iteration: i0 + j threads, or gated, of pair i0 + (j / 2) threads (pair p: row
  // p / (tileN / 8), gate vector 4 (p % (tileN / 8)) - 2 (p % 2) of the row's, its up vector 2 after).
  const int step = (gated ? kFixupVectors / 2 : kFixupVectors) * threads;
  const int items = gated ? vecs / 2 : vecs;
  auto vecOf = [&](int i0, int j) {
    if (!gated) return i0 + j * threads;
    const int p = i0 + (j >> 1) * threads;
    return 2 * p - (p & 1) + 2 * (j & 1);  // pairs 2r, 2r + 1 -> gate vectors 4r, 4r + 1; up 4r + 2, 4r + 3
  };
  for (int i0 = tid; i0 < items; i0 += step) {
    float4 v[kFixupVectors];
#pragma unroll
    for (int j = 0; j < kFixupVectors; ++j) v[j] = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int b = first; b <= last; ++b) {  // in block order: the sum does not depend on arrival
      const int slot = b == first ? firstSlot : 2 * b;
      const float4* src = reinterpret_cast<const float4*>(partials + static_cast<int64_t>(slot) * rowsCap * tileN);
      float4 p[kFixupVectors];
#pragma unroll
      for (int j = 0; j < kFixupVectors; ++j) {
        const int i = vecOf(i0, j);
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
      const int i = vecOf(i0, j);
      if (i >= vecs || (gated && (j & 1))) continue;  // gated: vector j + 1 is vector j's up
      const int m = i * 4 / tileN, c = i * 4 - m * tileN;
      const float e[4] = {v[j].x, v[j].y, v[j].z, v[j].w};
      if (gated) {
        const float u[4] = {v[j + 1].x, v[j + 1].y, v[j + 1].z, v[j + 1].w};
        const int n = t * tileN + c;  // packed gate column of e[0]
        if (n >= N) continue;  // N a multiple of 16: the run of 4 is all in or all out
        __half* o = static_cast<__half*>(out) + static_cast<int64_t>(m) * (N / 2) + awqpack::gatedOutColumn(n);
#pragma unroll
        for (int q = 0; q < 4; ++q) o[q] = __float2half_rn(siluGate(e[q], u[q]));
        continue;
      }
      const int64_t o = static_cast<int64_t>(m) * N + t * tileN + c;
#pragma unroll
      for (int q = 0; q < 4; ++q)
        if (t * tileN + c + q < N) storeOut(out, outF16, o + q, e[q]);
    }
  }
  if (tid == 0) tickets[t] = 0;
}

}  // namespace cuda
}  // namespace medcluster
