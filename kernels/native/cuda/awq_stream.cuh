// How the AWQ matmuls on the packed layout stream their operands: one producer warp fills a ring
// of shared-memory stages, each holding one unit (128 columns x one 128-row group) of packed
// weights and the group's 128 columns of x, for the consumer warps of awq_gemv.cu (mma.sync) and
// awq_wgmma.cu (wgmma) alike.
//
// A stage: x's two half planes (one per 64 rows of the group: MT * 8 rows of 128 bytes each, in
// the copy engine's 128-byte swizzle, 1024-byte aligned as the swizzle needs; rows past M arrive
// as zeros), then the unit's 8704 bytes; a multiple of 1024 bytes. On sm_90 x goes in by one 2-D
// tensor copy per half plane and the unit by one bulk copy, completing on the stage's `full`
// mbarrier; consumers release a stage on its `empty` mbarrier. With programmatic dependent launch
// the weight copies of the first stages are issued before griddepcontrol.wait, so they overlap the
// kernel before this one; x is copied after it (the kernel before writes x).
//
// x goes in by one tensor copy per half group, not one bulk copy per row: the copy engine takes
// ~100 cycles a request whatever its size (measured on an H200 at a47474f: with 64 rows the
// per-row copies alone held a 70B block at 1.05 ms, against 0.37 for the weights).
#pragma once

#include <cuda.h>  // CUtensorMap (the encoder is reached through the runtime: no libcuda link)

#include <algorithm>
#include <cstdint>
#include <string>

#include "awq.cuh"
#include "ptx.cuh"
#include "tuning.h"

namespace medcluster {
namespace cuda {

constexpr int kAwqMaxStages = 12;
// The shared memory a multiprocessor's rings are planned in (both launchers): below the 228 KB of
// an H100 or H200 multiprocessor, leaving room for each block's static shared memory and the 1 KB
// the runtime reserves per block.
constexpr int kAwqSmemPerSM = 220 * 1024;

template <int MT> __host__ __device__ constexpr int awqXPlaneBytes() { return MT * 8 * 128; }
template <int MT> __host__ __device__ constexpr int awqStageBytes() {
  return (2 * awqXPlaneBytes<MT>() + awqpack::kUnitBytes + 1023) / 1024 * 1024;
}
// Byte offset in a stage of 16-byte chunk c (0..7) of x row m's half h: the copy engine's 128-byte
// swizzle puts chunk c of a plane's row m at chunk c ^ (m % 8).
__device__ __forceinline__ int awqXChunk(int MT8, int h, int m, int c) {
  return h * MT8 * 128 + m * 128 + ((c ^ (m & 7)) << 4);
}

// The ring's barriers, set up by one thread before the block's __syncthreads(): a stage's `full`
// completes on the producer's copies (sm_90: its one arrive.expect_tx and the bytes; sm_80: one
// cp.async arrival per producer lane), its `empty` on one arrival per consumer warp.
__device__ __forceinline__ void awqRingInit(uint64_t* full, uint64_t* empty, int S, int consumerWarps) {
  for (int s = 0; s < S; ++s) {
#if __CUDA_ARCH__ >= 900
    mbarInit(&full[s], 1);
#else
    mbarInit(&full[s], 32);
#endif
    mbarInit(&empty[s], consumerWarps);
  }
  fenceMbarInit();
}

// What the producer streams: units [u0, u0 + n) of the packed matrix `units` (after the header),
// x [M, K] (xMap on sm_90, x itself on sm_80), into S stages at `smem`.
struct AwqStream {
  const unsigned char* units;
  const __half* x;
  const CUtensorMap* xMap;
  int M, K, G, u0, n, S;
};

// The producer warp's whole work (all 32 lanes call it).
template <int MT>
__device__ __forceinline__ void awqProduce(const AwqStream& p, unsigned char* smem, uint64_t* full, uint64_t* empty,
                                           int lane) {
  using namespace awqpack;
  constexpr int SB = awqStageBytes<MT>(), WOFF = 2 * awqXPlaneBytes<MT>();
  const int S = p.S, G = p.G, n = p.n, u0 = p.u0;
  const int pro = min(S, n);
#if __CUDA_ARCH__ >= 900
  auto weights = [&](int i, int s) {  // lane 0
    mbarArriveExpectTx(&full[s], static_cast<uint32_t>(kUnitBytes + 2 * awqXPlaneBytes<MT>()));
    bulkCopyG2S(smem + s * SB + WOFF, p.units + static_cast<int64_t>(u0 + i) * kUnitBytes, kUnitBytes, &full[s]);
  };
  auto xRows = [&](int s, int g) {  // lane 0, after its expect_tx for this stage
    for (int h = 0; h < 2; ++h)
      tensorCopy2dG2S(smem + s * SB + h * awqXPlaneBytes<MT>(), p.xMap, g * kGroup + h * 64, 0, &full[s]);
  };
  if (lane == 0) {
    for (int i = 0; i < pro; ++i) weights(i, i);
    pdlWait();  // x is written by the kernel before this one
    int g = u0 % G;  // counters instead of divisions: the unit's group, the ring slot, its phase
    for (int i = 0; i < pro; ++i) {
      xRows(i, g);
      if (++g == G) g = 0;
    }
    int s = pro % S;
    uint32_t phase = 0;  // of the empty barrier's completions this refill waits for
    for (int i = pro; i < n; ++i) {
      mbarWait(&empty[s], phase);
      weights(i, s);
      xRows(s, g);
      if (++g == G) g = 0;
      if (++s == S) {
        s = 0;
        phase ^= 1;
      }
    }
  }
#else
  // sm_80: 16-byte cp.async by every lane, then one arrival per lane when its copies land.
  auto stage = [&](int i) {
    const int s = i % S, g = (u0 + i) % G;
    unsigned char* dst = smem + s * SB;
    const unsigned char* src = p.units + static_cast<int64_t>(u0 + i) * kUnitBytes;
    for (int c = lane; c < kUnitBytes / 16; c += 32) cpAsync16(dst + WOFF + c * 16, src + c * 16);
    for (int c = lane; c < MT * 8 * 16; c += 32) {  // x in the layout the tensor copies make
      const int r = c >> 4, q = c & 15;
      cpAsync16OrZero(dst + awqXChunk(MT * 8, q >> 3, r, q & 7),
                      p.x + static_cast<int64_t>(r < p.M ? r : 0) * p.K + g * kGroup + q * 8, r < p.M);
    }
    cpAsyncArriveNoinc(&full[s]);
  };
  for (int i = 0; i < pro; ++i) stage(i);
  for (int i = pro; i < n; ++i) {
    mbarWait(&empty[i % S], static_cast<uint32_t>((i / S - 1) & 1));
    stage(i);
  }
#endif
}

// The consumers' side of the ring, for every consumer warp: units [u0, u0 + n) in order, each
// `unit(s)` once stage s has landed, then the stage released (one arrival per warp on `empty`);
// `tileEnd(t, g0, g1)` after the block's last unit of tile t (groups [g0, g1) of it), which writes
// the tile's sums and clears the accumulators.
template <class Unit, class TileEnd>
__device__ __forceinline__ void awqConsume(int u0, int n, int G, int S, uint64_t* full, uint64_t* empty, int lane,
                                           Unit unit, TileEnd tileEnd) {
  // Counters instead of divisions in the loop: the unit's tile and group, the ring slot and its phase.
  int tile = u0 / G, g0 = u0 % G, g = g0, s = 0;
  uint32_t phase = 0;
  for (int i = 0; i < n; ++i) {
    if (g == G) {  // the previous unit ended tile `tile`
      tileEnd(tile, g0, G);
      ++tile;
      g0 = g = 0;
    }
    mbarWait(&full[s], phase);
    unit(s);
    __syncwarp();
    if (lane == 0) mbarArrive(&empty[s]);
    ++g;
    if (++s == S) {
      s = 0;
      phase ^= 1;
    }
  }
  if (n > 0) tileEnd(tile, g0, g);
}

// The dynamic shared memory a launch of `bps` blocks per multiprocessor asks: at least `ring`
// bytes, and enough that one block more does not fit, whatever the registers allow. With a place
// to spare, the next launch's blocks (programmatic dependent launch) take it early and stream
// beside this launch's. Measured on an H200 on 2026-12-04: once the raw M <= 8 GEMV's registers
// fell from 80 to 72, three fitted and M = 1 took 0.173 ms a 70B block chained (0.167 isolated),
// against 0.138.
inline size_t awqExclusiveSmem(size_t ring, int bps) {
  int dev = 0, perSM = 0, reserved = 0;
  MC_CUDA(cudaGetDevice(&dev));
  MC_CUDA(cudaDeviceGetAttribute(&perSM, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev));
  MC_CUDA(cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, dev));
  return std::max(ring, static_cast<size_t>(perSM / (bps + 1) - reserved + 1));  // bps + 1 of these do not fit
}

// The stream-K grid of a launch with `bps` blocks per multiprocessor (a.sk.P) and its scratch:
// two partial slots of `rows` x 128 fp32 per block, one zeroed counter per tile (Ctx::splitK,
// Ctx::tickets). Args: the kernel's arguments (sk, partials, tickets, N).
template <class Args>
void awqStreamKGrid(const Ctx& c, Args& a, int bps, int rows) {
  a.sk.P = std::max(1, std::min(a.sk.units, bps * c.numSMs));
  // StreamK's 32-bit arithmetic: units x blocks must fit.
  if (static_cast<int64_t>(a.sk.units) * a.sk.P >= (int64_t{1} << 31))
    throw BackendError("awqLinear (CUDA): " + std::to_string(a.sk.units) + " units over " + std::to_string(a.sk.P) +
                       " blocks: past the stream-K schedule's 32-bit arithmetic");
  a.partials = static_cast<float*>(
      c.splitK->get(static_cast<size_t>(2 * a.sk.P) * rows * awqpack::kTileN * sizeof(float), c.stream));
  a.tickets = static_cast<unsigned*>(
      c.tickets->getZeroed(static_cast<size_t>(awqpack::tiles(a.N)) * sizeof(unsigned), c.stream));
}

// x [M, K] f16 as a 2-D tensor map whose boxes are one half group: 64 columns x `boxRows` rows
// (the row tiles' 8 MT: the copy engine writes zeros for rows past M, so the consumers read every
// row tile without a test), 128-byte swizzle (what awqXChunk and the wgmma descriptors read).
// `who` names the caller in errors.
CUtensorMap awqXTensorMap(const __half* x, int M, int K, int boxRows, const char* who);

}  // namespace cuda
}  // namespace medcluster
