// The AWQ GEMV: out [M, N] = x [M, K] @ W for M <= 64 rows, on the packed layout.
//
// Memory-bound for the decode batch sizes, so it is built to stream: a persistent grid (one to
// three blocks per multiprocessor, tuning().awqGemvBlocksPerSM) on a stream-K schedule
// (splitk.cuh): block b streams one contiguous range of units, the same count for every
// block, with no second wave and no idle tail.
//
// Block = 8 consumer warps + 1 producer warp, which streams units and x through a ring of
// shared-memory stages (awq_stream.cuh).
//
// Consumer warp w owns NT = 2 n16 tiles of the unit (32 columns, from 32 (w % 4)) and one half of
// its 128 rows (w / 4). Per stage it reads its 16 bytes of weights per n16 tile (4
// mma A fragments, one 128-bit shared load) and the columns' pairs, reads its slices of x (B
// fragments, shared by its NT tiles), and issues mma.m16n8k16 with the weights as A (16 columns x
// 16 k) and x^T as B (k x 8 rows): the batch rows are the mma's n, so M <= 8 costs one mma per 256
// weights and M <= 64 eight. The two halves' sums meet in shared memory when a tile ends.
//
// Two ways to read the weights (the template's Raw):
// - dequantized (M > 8, and every M in deterministic mode): one FMA with the column's pair per two
//   weights, 12 instructions per 8 weights whatever M.
// - raw (M <= 8): the nibbles go in as they lie (one mask each, f16 subnormals: awq_layout.h) and
//   the column's pair acts on the half group's sums, two FMAs a sum, with sum_k x from one more
//   mma per k step, shared by the NT tiles: 5 instructions per 8 weights, plus what grows with M.
//   Measured on an H200 against the dequantized reading (per 70B block chained): M = 1
//   0.154 -> 0.148 ms, M = 8 0.158 -> 0.153, but M = 16 0.184 -> 0.189, deterministic M = 64
//   0.44 -> 0.64 and M = 17-32 0.24 -> 0.44 (spills): so only at M <= 8, and the deterministic
//   mode keeps one arithmetic for every M.
//
// One shape of block for every M. (A 16-warp block of 16 columns a warp, once faster from 17 rows,
// was slower at every M once the stream-K fix-up stopped stalling the tail: measured on an H200
// at c99f91b, per 70B block, M = 24 / 32 / 48 / 64 0.244 / 0.249 / 0.352 / 0.368 ms for this
// block against 0.262 / 0.263 / 0.369 / 0.381; it was deleted.)
//
// Accumulation is fp32 on the tensor cores; each output element's sum runs in a fixed order. For
// one block shape and one grid, rows of the result do not depend on the batch; the
// deterministic mode (tuning().deterministic) keeps one grid for every M.
#include <algorithm>
#include <type_traits>

#include "awq.cuh"
#include "awq_stream.cuh"
#include "mma.cuh"
#include "ptx.cuh"
#include "splitk.cuh"
#include "tuning.h"

namespace medcluster {
namespace cuda {

namespace {

using namespace awqpack;

// n16 tiles per consumer warp; warps per k half (each NT of the unit's 8 n16 tiles), consumer
// warps (both halves), block size.
constexpr int NT = 2;
constexpr int kColGroups = 8 / NT;
constexpr int kConsumerWarps = 2 * kColGroups;
constexpr int kThreads = kConsumerWarps * 32 + 32;
// Shared memory where the second half's warps hand their sums to the first half's:
// [kColGroups][32][NT][MT][4] floats.
template <int MT> __host__ __device__ constexpr int handoffBytes() { return kColGroups * 32 * NT * MT * 4 * 4; }

struct GemvArgs {
  const __half* x;            // [M, K] f16, 16-byte aligned rows
  const unsigned char* w;     // packed: header + units
  void* out;                  // [M, N] f16 or f32
  float* partials;            // [2P][MT * 8][128] fp32 stream-K partials
  unsigned* tickets;          // [tiles] counters, zero at launch, reset by the kernel
  StreamK sk;                 // units (tile by tile, group by group), P, G (= K / 128)
  int M, K, N, stages;
  bool outF16;
};

// Raw: the weights as raw nibbles, the pairs applied to the sums (M <= 8 outside deterministic mode);
// otherwise dequantized with one FMA per two weights (awq.cuh). Gated: a gated pack, out f16
// [M, N/2] = silu(gate) * up (awq_layout.h).
template <int MT, bool Raw, bool Gated>
// Compiled for two resident blocks per multiprocessor (registers capped at ~100) where the
// accumulators allow it; MT = 8 needs more (one block per SM).
// xMap: x [M, K] as a 2-D tensor map, boxes of 64 columns x 8 MT rows (sm_90; unused on sm_80).
__global__ void __launch_bounds__(kThreads, MT == 8 ? 1 : 2)
    awqGemvKernel(const GemvArgs a, const __grid_constant__ CUtensorMap xMap) {
  extern __shared__ __align__(128) unsigned char smemRaw[];
  // The swizzle needs 1024-byte aligned stages: the launch adds 1024 bytes for this.
  unsigned char* smem = smemRaw + ((1024u - (smemAddr(smemRaw) & 1023u)) & 1023u);
  __shared__ __align__(8) uint64_t full[kAwqMaxStages], empty[kAwqMaxStages];
  __shared__ int fixupFlag;
  constexpr int CG = kColGroups, kConsumers = kConsumerWarps * 32;
  constexpr int SB = awqStageBytes<MT>(), WOFF = 2 * awqXPlaneBytes<MT>();
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int b = blockIdx.x, S = a.stages, G = a.sk.G;
  const int u0 = a.sk.start(b), n = a.sk.start(b + 1) - u0;

  pdlLaunchDependents();
  if (tid == 0) awqRingInit(full, empty, S, kConsumerWarps);
  __syncthreads();

  if (warp == kConsumerWarps) {  // the producer
    const AwqStream p{a.w + kHeaderBytes, a.x, &xMap, a.M, a.K, G, u0, n, S};
    awqProduce<MT>(p, smem, full, empty, lane);
    return;
  }

  // ---- consumers ----
  pdlWait();  // outputs and partials are written only after the kernel before has finished
  const int gl = lane >> 2, tl = lane & 3;
  const int cp = warp % CG, h = warp / CG;  // n16 tiles NT cp .. NT cp + NT - 1, k half h
  const int w0 = NT * cp;
  const int e = static_cast<int>(reinterpret_cast<const uint32_t*>(a.w)[1]);
  // Raw sums carry 2^-6 (rows nA) and 2^-2 (rows nB) beside the matrix's scale shift 2^-e.
  const float scaleA = exp2f(static_cast<float>(e + (Raw ? 6 : 0))), scaleB = exp2f(static_cast<float>(e + (Raw ? 2 : 0)));
  float* handoff = reinterpret_cast<float*>(smem + S * SB);  // (after the aligned stages)
  float acc[NT][MT][4];  // [n16 tile][row tile][C fragment]
  // The A operand whose mma sums x over a k step: f16 2^-6 in rows nA (registers 0, 2), 2^-2 in
  // rows nB (1, 3), the powers of two the raw nibbles carry beyond 2^-18 (awq_layout.h).
  const uint32_t kXSumA[4] = {0x24002400u, 0x34003400u, 0x24002400u, 0x34003400u};

  auto zero = [&]() {
#pragma unroll
    for (int q = 0; q < NT; ++q)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[q][mt][r] = 0.f;
  };
  // End of this block's part of tile t, groups [g0, g1): the second half's warps hand their sums
  // to the first half's, which write the output, or a partial followed by the fix-up; then the
  // accumulators start again from zero.
  auto flush = [&](int t, int g0, int g1) {
    // [element][cp][lane]: a warp's 32 lanes store to consecutive words (no bank conflicts).
    float* mine = handoff + cp * 32 + lane;
    constexpr int kStride = CG * 32;
    if (h == 1) {
#pragma unroll
      for (int q = 0; q < NT; ++q)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int r = 0; r < 4; ++r) mine[((q * MT + mt) * 4 + r) * kStride] = acc[q][mt][r];
    }
    namedBarrier(1, kConsumers);
    const bool whole = g0 == 0 && g1 == G;
    if (h == 0) {
      float* part = a.partials + static_cast<int64_t>(a.sk.slot(b, t)) * (MT * 8) * kTileN;
#pragma unroll
      for (int q = 0; q < NT; ++q) {
        const int colA = cp * 16 * NT + q * 16 + gl, colB = colA + 8;
        const int nA = t * kTileN + colA, nB = nA + 8;
        // C fragment r: column colA (r < 2) or colB, row mt*8 + 2tl + (r & 1); halves added in order.
        auto sum = [&](int mt, int r) {
          return (acc[q][mt][r] + mine[((q * MT + mt) * 4 + r) * kStride]) * (r < 2 ? scaleA : scaleB);
        };
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          if constexpr (Gated) {  // colA a gate column, colB its up column
#pragma unroll
            for (int r = 0; r < 2; ++r)
              streamKStoreGated(whole, part, kTileN, mt * 8 + 2 * tl + r, colA, nA, static_cast<__half*>(a.out), a.M,
                                a.N, sum(mt, r), sum(mt, r + 2));
          } else {
#pragma unroll
            for (int r = 0; r < 4; ++r)
              streamKStore(whole, part, kTileN, mt * 8 + 2 * tl + (r & 1), r < 2 ? colA : colB, r < 2 ? nA : nB,
                           a.out, a.outF16, a.M, a.N, sum(mt, r));
          }
        }
      }
    }
    if (!whole)
      streamKFixup(a.sk, t, a.partials, MT * 8, kTileN, a.tickets, a.out, a.outF16, a.M, a.N, &fixupFlag, tid,
                   kConsumers, Gated);
    namedBarrier(1, kConsumers);  // the handoff buffer is free again
    zero();
  };

  // x's B fragments of row tile mt, all 4 k steps of this warp's half: (b0, b1) of step j in
  // registers 2j, 2j + 1. Two ldmatrix.x4: matrix i of the first is 16-byte chunk i of the half's
  // rows (k 8i .. 8i + 7), of the second chunk 4 + i; lane l gives the address of row l % 8 of
  // matrix l / 8 and receives elements 2 tl, 2 tl + 1 of row gl of each.
  auto xFragments = [&](const unsigned char* st, int mt, uint32_t (&xv)[8]) {
    uint32_t lo[4], hi[4];
    ldmatrixX4(lo, st + awqXChunk(MT * 8, h, mt * 8 + (lane & 7), lane >> 3));
    ldmatrixX4(hi, st + awqXChunk(MT * 8, h, mt * 8 + (lane & 7), 4 + (lane >> 3)));
#pragma unroll
    for (int i = 0; i < 4; ++i) xv[i] = lo[i], xv[4 + i] = hi[i];
  };

  zero();
  awqConsume(u0, n, G, S, full, empty, lane, [&](int s) {
    const unsigned char* st = smem + s * SB;
    const unsigned char* ut = st + WOFF;

    // This warp's weights for its NT n16 tiles and their columns' pairs, issued before the first use.
    uint4 wq[NT];
    uint32_t pa[NT], pb[NT];
#pragma unroll
    for (int q = 0; q < NT; ++q) {
      wq[q] = *reinterpret_cast<const uint4*>(ut + (((w0 + q) * 2 + h) * 32 + lane) * 16);
      const int colA = (w0 + q) * 16 + gl;
      pa[q] = reinterpret_cast<const uint32_t*>(ut + kPairOffset)[colA];
      pb[q] = reinterpret_cast<const uint32_t*>(ut + kPairOffset)[colA + 8];
    }
    if constexpr (Raw) {
      // The A fragments are the nibbles as they lie (fragRawNibbles, one mask each, made where an
      // mma takes them): f16 subnormals q * 2^-24 (rows nA) and q * 2^-20 (rows nB); the columns'
      // pairs act on the sums below.
      auto aFragment = [&](int q, int j, uint32_t (&f)[4]) {
        const uint32_t word = j == 0 ? wq[q].x : j == 1 ? wq[q].y : j == 2 ? wq[q].z : wq[q].w;
  #pragma unroll
        for (int i = 0; i < 4; ++i) f[i] = fragRawNibbles(word, i);
      };
      float2 colA[NT], colB[NT];  // (mul, add) of the lane's columns nA and nB
  #pragma unroll
      for (int q = 0; q < NT; ++q) colA[q] = __half22float2(u2h2(pa[q])), colB[q] = __half22float2(u2h2(pb[q]));
      // x for up to 2 row tiles at a time (8 registers each: all 4 k steps of the half), then the
      // mmas k step by k step, so consecutive mmas update different accumulators (a chain's next
      // mma is 2 x (row tiles) mmas later, not 2: the tensor core's latency stays hidden). Every
      // row tile unconditionally (no early exit: the loop unrolls and its loads and mmas interleave;
      // tiles past M multiply zeros).
      constexpr int MG = MT < 4 ? MT : 2;  // within the registers of two blocks per SM (MT = 4), one (8)
  #pragma unroll
      for (int m0 = 0; m0 < MT; m0 += MG) {
        uint32_t xv[MG][8];
  #pragma unroll
        for (int mi = 0; mi < MG; ++mi) xFragments(st, m0 + mi, xv[mi]);
        // sq: the half group's sums of x q (scaled as the rows' nibbles); sx: of x, 2^-6 (C fragment
        // 0, 1: rows nA) and 2^-2 (2, 3: rows nB) times, from A = kXSumA.
        float sq[NT][MG][4], sx[MG][4];
  #pragma unroll
        for (int j = 0; j < 4; ++j)
  #pragma unroll
          for (int mi = 0; mi < MG; ++mi) {
            if (j == 0) mma16816First(sx[mi], kXSumA, xv[mi][0], xv[mi][1]);
            else mma16816(sx[mi], kXSumA, xv[mi][2 * j], xv[mi][2 * j + 1]);
  #pragma unroll
            for (int q = 0; q < NT; ++q) {
              uint32_t af[4];
              aFragment(q, j, af);
              if (j == 0) mma16816First(sq[q][mi], af, xv[mi][0], xv[mi][1]);
              else mma16816(sq[q][mi], af, xv[mi][2 * j], xv[mi][2 * j + 1]);
            }
          }
        // acc += mul sq + add sx: the group's (q - z) s, times 2^-6 (rows nA) or 2^-2 (rows nB).
  #pragma unroll
        for (int mi = 0; mi < MG; ++mi)
  #pragma unroll
          for (int q = 0; q < NT; ++q)
  #pragma unroll
            for (int r = 0; r < 4; ++r) {
              const float2 p = r < 2 ? colA[q] : colB[q];
              float& d = acc[q][m0 + mi][r];
              d = fmaf(p.x, sq[q][mi][r], fmaf(p.y, sx[mi][r], d));
            }
      }
    } else {
      // Every k step's A fragments first (32 registers), then every row tile unconditionally (no
      // early exit: the loop unrolls and its loads and mmas interleave; tiles past M multiply zeros).
      uint32_t af[NT][4][4];
  #pragma unroll
      for (int q = 0; q < NT; ++q) {
        const uint32_t mA = awqPairMul2(pa[q]), dA = awqPairAdd2(pa[q]), mB = awqPairMul2(pb[q]),
                       dB = awqPairAdd2(pb[q]);
        const uint32_t wv[4] = {wq[q].x, wq[q].y, wq[q].z, wq[q].w};
  #pragma unroll
        for (int j = 0; j < 4; ++j) {
          af[q][j][0] = awqDequantPair(fragNibbles(wv[j], 0), mA, dA);
          af[q][j][1] = awqDequantPair(fragNibbles(wv[j], 1), mB, dB);
          af[q][j][2] = awqDequantPair(fragNibbles(wv[j], 2), mA, dA);
          af[q][j][3] = awqDequantPair(fragNibbles(wv[j], 3), mB, dB);
        }
      }
      // x for up to 4 row tiles at a time (8 registers each: all 4 k steps of the half), then the
      // mmas k step by k step, so consecutive mmas update different accumulators (a chain's next
      // mma is 2 x (row tiles) mmas later, not 2: the tensor core's latency stays hidden).
      constexpr int MG = MT == 4 ? 2 : MT < 4 ? MT : 4;  // MT = 4 holds 2 (96 registers: two blocks per SM)
  #pragma unroll
      for (int m0 = 0; m0 < MT; m0 += MG) {
        uint32_t xv[MG][8];
  #pragma unroll
        for (int mi = 0; mi < MG; ++mi) xFragments(st, m0 + mi, xv[mi]);
  #pragma unroll
        for (int j = 0; j < 4; ++j)
  #pragma unroll
          for (int mi = 0; mi < MG; ++mi)
  #pragma unroll
            for (int q = 0; q < NT; ++q) mma16816(acc[q][m0 + mi], af[q][j], xv[mi][2 * j], xv[mi][2 * j + 1]);
      }
    }
  }, flush);
}

// The tuning's index of a row-tile count MT = 1, 2, 4, 8.
constexpr int tuningIndex(int MT) { return MT == 1 ? 0 : MT == 2 ? 1 : MT == 4 ? 2 : 3; }

// A launch's ring depth and dynamic shared memory for `bps` blocks per multiprocessor, and how
// many such blocks reside (registers and shared memory).
struct GemvSmem {
  int stages;
  size_t bytes;
  int resident;
};
template <int MT, bool Raw, bool Gated>
GemvSmem gemvSmem(int bps) {
  const auto kernel = awqGemvKernel<MT, Raw, Gated>;
  constexpr int MTI = tuningIndex(MT);
  constexpr int SB = awqStageBytes<MT>(), HB = handoffBytes<MT>();
  // The ring: the tuned depth, within the shared memory of bps blocks per multiprocessor.
  int stages =
      std::min({kAwqMaxStages, std::max(2, tuning().awqGemvStages[MTI]), (kAwqSmemPerSM / bps - HB - 1024) / SB});
  stages = std::max(2, stages);
  // + the alignment slack; no place for one block more (awqExclusiveSmem)
  const size_t smem = awqExclusiveSmem(static_cast<size_t>(stages) * SB + HB + 1024, bps);
  static size_t attr = 0;  // per instantiation, per process (the attribute is per function)
  if (smem > attr) {
    MC_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    attr = smem;
  }
  int resident = 0;
  MC_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, kThreads, smem));
  return {stages, smem, resident};
}

// The blocks per multiprocessor a launch of MT row tiles asks: the tuning's, or 2 in deterministic
// mode, whose grid depends on the shape and the card only, not on M (one schedule and summation
// order for every batch size).
inline int gemvBlocksPerSM(int MTI) {
  const Tuning& tu = tuning();
  return tu.deterministic ? 2 : std::max(1, std::min(3, tu.awqGemvBlocksPerSM[MTI]));
}

template <int MT, bool Raw, bool Gated>
void gemvT(const Ctx& c, GemvArgs a) {
  const auto kernel = awqGemvKernel<MT, Raw, Gated>;
  constexpr int MTI = tuningIndex(MT);
  int bps = gemvBlocksPerSM(MTI);
  const GemvSmem sm = gemvSmem<MT, Raw, Gated>(bps);
  const size_t smem = sm.bytes;
  // A grid larger than what resides would run as two waves: never more blocks per SM than fit
  // (except in deterministic mode, whose grid must not depend on M).
  if (!tuning().deterministic) bps = std::max(1, std::min(bps, sm.resident));
  a.stages = sm.stages;
  awqStreamKGrid(c, a, bps, MT * 8);

  CUtensorMap xMap = {};
  if (c.computeCapability >= 90) xMap = awqXTensorMap(a.x, a.M, a.K, MT * 8, "awqLinear (CUDA GEMV)");
  launchKernel(c, kernel, static_cast<unsigned>(a.sk.P), kThreads, smem, a, xMap);
}

// The one choice of kernel for an M-row launch: f(integral_constant<MT>, bool_constant<Raw>,
// bool_constant<Gated>). Raw nibbles only where they pay, and never in deterministic mode (one
// arithmetic for every M).
template <class F>
void withGemvKernel(int M, bool gated, F f) {
  auto rows = [&](auto g) {
    if (M <= 8 && !tuning().deterministic) f(std::integral_constant<int, 1>{}, std::true_type{}, g);
    else if (M <= 8) f(std::integral_constant<int, 1>{}, std::false_type{}, g);
    else if (M <= 16) f(std::integral_constant<int, 2>{}, std::false_type{}, g);
    else if (M <= 32) f(std::integral_constant<int, 4>{}, std::false_type{}, g);
    else f(std::integral_constant<int, 8>{}, std::false_type{}, g);
  };
  if (gated) rows(std::true_type{});
  else rows(std::false_type{});
}

}  // namespace

GemvOccupancy awqGemvOccupancy(int M, bool gated) {
  GemvOccupancy o = {};
  withGemvKernel(M, gated, [&](auto mt, auto raw, auto g) {
    constexpr int MT = decltype(mt)::value;
    o.tuned = gemvBlocksPerSM(tuningIndex(MT));
    o.resident = gemvSmem<MT, decltype(raw)::value, decltype(g)::value>(o.tuned).resident;
  });
  return o;
}

void launchAwqGemv(const Ctx& c, const __half* x, const PackedAwq& w, void* out, bool outF16, int M) {
  if (M <= 0) return;
  if (M > 64) throw BackendError("awqLinear (CUDA GEMV): M=" + std::to_string(M) + " rows in one launch (at most 64)");
  if (reinterpret_cast<uintptr_t>(x) & 15 || w.K % kGroup)
    throw BackendError("awqLinear (CUDA GEMV): x must be 16-byte aligned and K a multiple of 128 (M=" +
                       std::to_string(M) + " K=" + std::to_string(w.K) + " N=" + std::to_string(w.N) + ")");
  GemvArgs a = {};
  a.x = x;
  a.w = w.data;
  a.out = out;
  a.outF16 = outF16;
  a.M = M;
  a.K = w.K;
  a.N = w.N;
  a.sk.G = w.K / kGroup;
  a.sk.units = static_cast<int>(units(w.K, w.N));
  withGemvKernel(M, w.gated, [&](auto mt, auto raw, auto g) {
    gemvT<decltype(mt)::value, decltype(raw)::value, decltype(g)::value>(c, a);
  });
}

}  // namespace cuda
}  // namespace medcluster
