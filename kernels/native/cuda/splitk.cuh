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
// block arrived last) at the end of its range and writes the output, then resets the counter
// for the next launch.
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

// ---- the fix-up, in two steps for all `threads` threads of the block's computing warps (named barrier 1) ----
//
// streamKArrive, once the block has stored its partial of a shared tile: thread 0 takes the tile's
// ticket. The block does not wait for the answer; it goes on with its range, and streamKFinish,
// at the range's end, sums every tile whose last contributor the block turned out to be. A
// block's first tile is shared with the blocks before it, which reach that tile at the ends of
// their ranges, so it is almost never the first tile's last contributor: waiting for that
// ticket mid-stream only stalled the stream. Measured against the fix-up it replaced (a fence in
// every thread, the ticket's round trip mid-stream, one contributor's loads at a time):
// kernels/gpu/RESULTS.md, 2026-12-04.
//
// Ordering. A contributor's stores of its partial, then named barrier 1, then thread 0's ticket
// with release semantics at gpu scope: the barrier makes every thread's stores part of what the
// release publishes, so no thread needs a fence of its own. The last contributor's thread 0 reads
// the tickets' count, then an acquire fence, then named barrier 1 before any thread reads the
// partials (from L2: ld.cg).

__device__ __forceinline__ unsigned atomicAddReleaseGpu(unsigned* p, unsigned v) {
  unsigned old;
  asm volatile("atom.release.gpu.global.add.u32 %0, [%1], %2;" : "=r"(old) : "l"(p), "r"(v) : "memory");
  return old;
}
__device__ __forceinline__ void fenceAcquireGpu() { asm volatile("fence.acq_rel.gpu;" ::: "memory"); }

// A ticket's answer: the count it read (the contributors before this block), or kNoTicket where
// the block took none.
constexpr unsigned kNoTicket = ~0u;

// A block's fix-up state, in shared memory: thread 0 sets firstTicket to kNoTicket before the
// block's first __syncthreads().
struct StreamKShared {
  unsigned firstTicket;  // the range's first tile's ticket, where the block left that tile shared mid-range
  int sum[2];            // the tiles the block sums at the end of its range, or -1
};

// Once every thread has stored its share of the block's partial of tile t: the tile's ticket.
// Mid-range (`final` false: only a range's first tile is left shared mid-range) thread 0 keeps the
// answer in `sh` for streamKFinish, and only its warp waits for it; at the range's end it returns
// the answer to thread 0 (kNoTicket to the others).
__device__ __forceinline__ unsigned streamKArrive(StreamKShared& sh, unsigned* tickets, int t, bool final, int tid,
                                                  int threads) {
  namedBarrier(1, threads);  // every thread's share of the partial is stored
  if (tid != 0) return kNoTicket;
  const unsigned got = atomicAddReleaseGpu(&tickets[t], 1u);
  if (!final) sh.firstTicket = got;
  return got;
}

// Tile t's output from its contributors' partials (rows x tileN fp32 at partials + slot * rowsCap
// * tileN; tileN a multiple of 4), summed in block order: the result does not depend on which
// block arrived last. By 16-byte vectors, kFixupVectors a thread, the loads of kFixupBatch
// contributors in flight at once: the partials sit in L2, so the sum costs about one L2 round trip
// per kFixupBatch contributors and 32 rows (measured on an H200 at 1f8d01a: element by element the
// sum held every M = 64 matmul ~0.07 ms past its stream). Gated (awq_layout.h; tileN a multiple
// of 16, out f16 [M, N/2]): the vectors go in pairs, 4 gate columns and the 4 up columns 8
// further, and the sums leave as silu(gate) * up.
constexpr int kFixupVectors = 2, kFixupBatch = 4;
__device__ __forceinline__ void streamKSumTile(const StreamK& sk, int t, const float* partials, int rowsCap, int tileN,
                                               void* out, bool outF16, int M, int N, int tid, int threads,
                                               bool gated) {
  const int tileEnd = (t + 1) * sk.G < sk.units ? (t + 1) * sk.G : sk.units;
  const int first = sk.blockOf(t * sk.G), last = sk.blockOf(tileEnd - 1);
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
    for (int b0 = first; b0 <= last; b0 += kFixupBatch) {
      float4 p[kFixupBatch][kFixupVectors];
#pragma unroll
      for (int c = 0; c < kFixupBatch; ++c) {
        const int b = b0 + c;
        const float4* src = reinterpret_cast<const float4*>(
            partials + static_cast<int64_t>(b == first ? firstSlot : 2 * b) * rowsCap * tileN);
#pragma unroll
        for (int j = 0; j < kFixupVectors; ++j) {
          const int i = vecOf(i0, j);
          p[c][j] = b <= last && i < vecs ? __ldcg(src + i) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
      }
#pragma unroll
      for (int c = 0; c < kFixupBatch; ++c) {
        if (b0 + c > last) break;  // in block order
#pragma unroll
        for (int j = 0; j < kFixupVectors; ++j) {
          v[j].x += p[c][j].x;
          v[j].y += p[c][j].y;
          v[j].z += p[c][j].z;
          v[j].w += p[c][j].w;
        }
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
}

// At the end of block b's range: the tiles whose last contributor it was, summed, and their
// counters reset for the next launch. t is the range's last tile and lastTicket thread 0's answer
// for it (kNoTicket where the block wrote it whole); the first tile's answer is in `sh`.
__device__ __forceinline__ void streamKFinish(const StreamK& sk, int b, StreamKShared& sh, int t, unsigned lastTicket,
                                              const float* partials, int rowsCap, int tileN, unsigned* tickets,
                                              void* out, bool outF16, int M, int N, int tid, int threads,
                                              bool gated = false) {
  auto lastToArrive = [&](int tile, unsigned ticket) {
    const int tileEnd = (tile + 1) * sk.G < sk.units ? (tile + 1) * sk.G : sk.units;
    return ticket == static_cast<unsigned>(sk.blockOf(tileEnd - 1) - sk.blockOf(tile * sk.G));
  };
  if (tid == 0) {
    const int t0 = sk.start(b) / sk.G;
    sh.sum[0] = sh.firstTicket != kNoTicket && lastToArrive(t0, sh.firstTicket) ? t0 : -1;
    sh.sum[1] = lastTicket != kNoTicket && lastToArrive(t, lastTicket) ? t : -1;
    if (sh.sum[0] >= 0 || sh.sum[1] >= 0) fenceAcquireGpu();  // the other contributors' partials
  }
  namedBarrier(1, threads);
#pragma unroll 1
  for (int i = 0; i < 2; ++i) {
    const int tile = sh.sum[i];
    if (tile < 0) continue;
    streamKSumTile(sk, tile, partials, rowsCap, tileN, out, outF16, M, N, tid, threads, gated);
    if (tid == 0) tickets[tile] = 0;
  }
}

}  // namespace cuda
}  // namespace medcluster
