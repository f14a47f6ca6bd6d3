// The AWQ GEMV: out [M, N] = x [M, K] @ W for M <= 64 rows, on the packed layout.
//
// Memory-bound for the decode batch sizes, so it is built to stream: a persistent grid (one to
// three blocks per multiprocessor, tuning().awqGemvBlocksPerSM) on a stream-K schedule
// (splitk.cuh): block b streams one contiguous byte range of the packed matrix, the same size
// for every block, from the first byte to the last, with no second wave and no idle tail.
//
// Block = 8 consumer warps + 1 producer warp. The producer fills a ring of `stages` shared-memory
// stages, one unit (8704 bytes of weights and column pairs) plus the unit's 128 columns of x
// (M rows x 256 bytes) per stage, with bulk copies (cp.async.bulk, sm_90) that complete on the
// stage's `full` mbarrier; consumers release a stage on its `empty` mbarrier. With programmatic
// dependent launch the weight copies of the first stages are issued before griddepcontrol.wait,
// so they overlap the kernel before this one; x is copied after it (the kernel before writes x).
//
// Consumer warp w owns 32 columns (two n16 tiles, 32 (w % 4) .. +31) of the unit's tile and one
// half of its 128 rows (w / 4). Per tile it reads its 16 bytes of weights (4 mma A fragments,
// one 128-bit shared load) and its two columns' pairs, dequantizes with one FMA per pair of
// weights, reads its 32 bytes of each 8-row slice of x (B fragments, shared by both tiles), and
// issues mma.m16n8k16 with the weights as A (16 columns x 16 k) and x^T as B (k x 8 rows): the
// batch rows are the mma's n, so M <= 8 costs one mma per 256 weights and M <= 64 eight, with
// the same dequantization. The two halves' sums meet in shared memory when a tile ends.
// Accumulation is fp32 on the tensor cores; each output element's sum runs in a fixed order,
// the same for every M: rows of the result do not depend on the batch.
#include <algorithm>

#include "awq.cuh"
#include "mma.cuh"
#include "ptx.cuh"
#include "splitk.cuh"
#include "tuning.h"

namespace medcluster {
namespace cuda {

namespace {

using namespace awqpack;

constexpr int kConsumerWarps = 8;
constexpr int kConsumers = kConsumerWarps * 32;
constexpr int kThreads = kConsumers + 32;
constexpr int kMaxStages = 12;
// Bytes per x row in a stage: the unit's 256 bytes + 16 of padding, so the 8 lanes of each
// quarter-warp's 128-bit reads (rows gl, gl+1 x 4 lanes 32 bytes apart) hit distinct banks.
constexpr int kXStride = 272;

template <int MT> __host__ __device__ constexpr int stageBytes() { return kUnitBytes + MT * 8 * kXStride; }
// Shared memory where the second half's warps hand their sums to the first half's: [4][32][2][MT][4] floats.
template <int MT> __host__ __device__ constexpr int handoffBytes() { return 4 * 32 * 2 * MT * 4 * 4; }

struct GemvArgs {
  const __half* x;            // [M, K] f16, 16-byte aligned rows
  const unsigned char* w;     // packed: header + units
  void* out;                  // [M, N] f16 or f32
  float* partials;            // [2P][MT * 8][128] fp32 stream-K partials
  unsigned* tickets;          // [tiles] counters, zero at launch, reset by the kernel
  StreamK sk;                 // units, P, G (= K / 128)
  int M, K, N, stages;
  bool outF16;
};

template <int MT>
// Compiled for two resident blocks per multiprocessor (registers capped at ~100), except MT = 8,
// whose 64 accumulators need more (two of its blocks per SM then run one after the other).
__global__ void __launch_bounds__(kThreads, MT == 8 ? 1 : 2) awqGemvKernel(const GemvArgs a) {
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ __align__(8) uint64_t full[kMaxStages], empty[kMaxStages];
  __shared__ int fixupFlag;
  constexpr int SB = stageBytes<MT>();
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int b = blockIdx.x, S = a.stages, G = a.sk.G;
  const int u0 = a.sk.start(b), n = a.sk.start(b + 1) - u0;

  pdlLaunchDependents();
  if (tid == 0) {
    for (int s = 0; s < S; ++s) {
#if __CUDA_ARCH__ >= 900
      mbarInit(&full[s], 1);  // the producer's arrive.expect_tx; the bytes complete the phase
#else
      mbarInit(&full[s], 32);  // one cp.async arrival per producer lane
#endif
      mbarInit(&empty[s], kConsumerWarps);
    }
    fenceMbarInit();
  }
  __syncthreads();

  if (warp == kConsumerWarps) {
    // ---- producer ----
    const unsigned char* units = a.w + kHeaderBytes;
    const int pro = min(S, n);
#if __CUDA_ARCH__ >= 900
    const uint32_t stageTx = kUnitBytes + static_cast<uint32_t>(a.M) * 256u;
    auto weights = [&](int i, int s) {  // lane 0
      mbarArriveExpectTx(&full[s], stageTx);
      bulkCopyG2S(smem + s * SB, units + static_cast<int64_t>(u0 + i) * kUnitBytes, kUnitBytes, &full[s]);
    };
    auto xRows = [&](int s, int g) {  // every lane, after lane 0's expect_tx for this stage
      for (int r = lane; r < a.M; r += 32)
        bulkCopyG2S(smem + s * SB + kUnitBytes + r * kXStride, a.x + static_cast<int64_t>(r) * a.K + g * kGroup, 256,
                    &full[s]);
    };
    if (lane == 0)
      for (int i = 0; i < pro; ++i) weights(i, i);
    pdlWait();  // x is written by the kernel before this one
    __syncwarp();
    int g = u0 % G;
    for (int i = 0; i < pro; ++i) {
      xRows(i, g);
      if (++g == G) g = 0;
    }
    int s = pro % S;
    uint32_t phase = 0;  // of the empty barrier's completions this refill waits for
    for (int i = pro; i < n; ++i) {
      mbarWait(&empty[s], phase);
      if (lane == 0) weights(i, s);
      __syncwarp();
      xRows(s, g);
      if (++g == G) g = 0;
      if (++s == S) {
        s = 0;
        phase ^= 1;
      }
    }
#else
    // sm_80: 16-byte cp.async by every lane, then one arrival per lane when its copies land.
    auto stage = [&](int i) {
      const int s = i % S, g = (u0 + i) % G;
      unsigned char* dst = smem + s * SB;
      const unsigned char* src = units + static_cast<int64_t>(u0 + i) * kUnitBytes;
      for (int c = lane; c < kUnitBytes / 16; c += 32) cpAsync16(dst + c * 16, src + c * 16);
      for (int c = lane; c < a.M * 16; c += 32) {
        const int r = c >> 4, q = c & 15;
        cpAsync16(dst + kUnitBytes + r * kXStride + q * 16, a.x + static_cast<int64_t>(r) * a.K + g * kGroup + q * 8);
      }
      cpAsyncArriveNoinc(&full[s]);
    };
    for (int i = 0; i < pro; ++i) stage(i);
    for (int i = pro; i < n; ++i) {
      mbarWait(&empty[i % S], static_cast<uint32_t>((i / S - 1) & 1));
      stage(i);
    }
#endif
    return;
  }

  // ---- consumers ----
  pdlWait();  // outputs and partials are written only after the kernel before has finished
  const int gl = lane >> 2, tl = lane & 3;
  const int cp = warp & 3, h = warp >> 2;  // columns 32cp .. 32cp+31 (n16 tiles 2cp, 2cp+1), k half h
  const int e = static_cast<int>(reinterpret_cast<const uint32_t*>(a.w)[1]);
  const float outScale = exp2f(static_cast<float>(e));
  float* handoff = reinterpret_cast<float*>(smem + S * SB);
  float acc[2][MT][4];  // [n16 tile][row tile][C fragment]

  auto zero = [&]() {
#pragma unroll
    for (int q = 0; q < 2; ++q)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[q][mt][r] = 0.f;
  };
  // End of this block's part of tile t, groups [g0, g1): the second half's warps hand their sums
  // to the first half's, which write the output, or a partial followed by the fix-up.
  auto flush = [&](int t, int g0, int g1) {
    float* mine = handoff + ((cp * 32 + lane) * 2 * MT) * 4;
    if (h == 1) {
#pragma unroll
      for (int q = 0; q < 2; ++q)
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int r = 0; r < 4; ++r) mine[(q * MT + mt) * 4 + r] = acc[q][mt][r];
    }
    namedBarrier(1, kConsumers);
    const bool whole = g0 == 0 && g1 == G;
    if (h == 0) {
      float* part = a.partials + static_cast<int64_t>(a.sk.slot(b, t)) * (MT * 8) * kTileN;
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const int colA = cp * 32 + q * 16 + gl, colB = colA + 8;
        const int nA = t * kTileN + colA, nB = nA + 8;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            // C fragment r: column colA (r < 2) or colB, row mt*8 + 2tl + (r & 1); halves added in order.
            const float v = (acc[q][mt][r] + mine[(q * MT + mt) * 4 + r]) * outScale;
            const int m = mt * 8 + 2 * tl + (r & 1);
            const int col = r < 2 ? colA : colB, n = r < 2 ? nA : nB;
            if (m >= a.M) continue;
            if (whole) {
              if (n < a.N) storeOut(a.out, a.outF16, static_cast<int64_t>(m) * a.N + n, v);
            } else {
              part[m * kTileN + col] = v;
            }
          }
      }
    }
    if (!whole)
      streamKFixup(a.sk, t, a.partials, MT * 8, kTileN, a.tickets, a.out, a.outF16, a.M, a.N, &fixupFlag, tid,
                   kConsumers);
    namedBarrier(1, kConsumers);  // the handoff buffer is free again
  };

  zero();
  // Counters instead of divisions in the loop: the unit's tile and group, the ring slot and its phase.
  int tile = u0 / G, g0 = u0 % G, g = g0, s = 0;
  uint32_t phase = 0;
  for (int i = 0; i < n; ++i) {
    if (g == G) {  // the previous unit ended tile `tile`
      flush(tile, g0, G);
      zero();
      ++tile;
      g0 = g = 0;
    }
    mbarWait(&full[s], phase);
    const unsigned char* st = smem + s * SB;

    // Everything this warp reads from the stage, issued before the first use: its weights for
    // both n16 tiles, their columns' pairs, and x (rows past M read as zeros).
    uint4 wq[2];
    uint32_t pa[2], pb[2];
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      wq[q] = *reinterpret_cast<const uint4*>(st + (((cp * 2 + q) * 2 + h) * 32 + lane) * 16);
      const int colA = cp * 32 + q * 16 + gl;
      pa[q] = reinterpret_cast<const uint32_t*>(st + kPairOffset)[colA];
      pb[q] = reinterpret_cast<const uint32_t*>(st + kPairOffset)[colA + 8];
    }
    uint32_t af[2][4][4];
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const uint32_t mA = awqPairMul2(pa[q]), dA = awqPairAdd2(pa[q]), mB = awqPairMul2(pb[q]), dB = awqPairAdd2(pb[q]);
      const uint32_t wv[4] = {wq[q].x, wq[q].y, wq[q].z, wq[q].w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        af[q][j][0] = awqDequantPair(fragNibbles(wv[j], 0), mA, dA);
        af[q][j][1] = awqDequantPair(fragNibbles(wv[j], 1), mB, dB);
        af[q][j][2] = awqDequantPair(fragNibbles(wv[j], 2), mA, dA);
        af[q][j][3] = awqDequantPair(fragNibbles(wv[j], 3), mB, dB);
      }
    }
    // Every row tile, unconditionally (no early exit: the loop unrolls and its loads and mmas
    // interleave; tiles past M multiply zeros).
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int row = mt * 8 + gl;
      uint4 x0 = make_uint4(0, 0, 0, 0), x1 = x0;
      if (row < a.M) {
        const unsigned char* xp = st + kUnitBytes + row * kXStride + h * 128 + tl * 32;
        x0 = *reinterpret_cast<const uint4*>(xp);
        x1 = *reinterpret_cast<const uint4*>(xp + 16);
      }
      const uint32_t xv[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int q = 0; q < 2; ++q) mma16816(acc[q][mt], af[q][j], xv[2 * j], xv[2 * j + 1]);
    }
    __syncwarp();
    if (lane == 0) mbarArrive(&empty[s]);
    ++g;
    if (++s == S) {
      s = 0;
      phase ^= 1;
    }
  }
  if (n > 0) flush(tile, g0, g);
}

template <int MT>
void gemvT(const Ctx& c, GemvArgs a) {
  const auto kernel = awqGemvKernel<MT>;
  const Tuning& tu = tuning();
  constexpr int MTI = MT == 1 ? 0 : MT == 2 ? 1 : MT == 4 ? 2 : 3;
  // In deterministic mode the grid depends on the shape and the card only, not on M: one
  // schedule (and summation order) for every batch size.
  const int bps = tu.deterministic ? 2 : std::max(1, std::min(3, tu.awqGemvBlocksPerSM[MTI]));
  // The ring: the tuned depth, within the shared memory of bps blocks per multiprocessor.
  constexpr int kSmemPerSM = 220 * 1024;
  int stages = std::min({kMaxStages, std::max(2, tu.awqGemvStages[MTI]),
                         (kSmemPerSM / bps - handoffBytes<MT>()) / stageBytes<MT>()});
  stages = std::max(2, stages);
  const size_t smem = static_cast<size_t>(stages) * stageBytes<MT>() + handoffBytes<MT>();
  static size_t attr = 0;  // per instantiation, per process (the attribute is per function)
  if (smem > attr) {
    MC_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    attr = smem;
  }
  a.stages = stages;
  a.sk.P = std::max(1, std::min(a.sk.units, bps * c.numSMs));
  a.partials = static_cast<float*>(
      c.splitK->get(static_cast<size_t>(2 * a.sk.P) * MT * 8 * kTileN * sizeof(float), c.stream));
  a.tickets = static_cast<unsigned*>(c.tickets->getZeroed(static_cast<size_t>(tiles(a.N)) * sizeof(unsigned), c.stream));

  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(a.sk.P));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = c.stream;
  cudaLaunchAttribute attrs[1];
  attrs[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attrs[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attrs;
  cfg.numAttrs = tu.pdl && c.computeCapability >= 90 ? 1 : 0;
  MC_CUDA(cudaLaunchKernelEx(&cfg, kernel, a));
}

}  // namespace

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
  if (M <= 8) gemvT<1>(c, a);
  else if (M <= 16) gemvT<2>(c, a);
  else if (M <= 32) gemvT<4>(c, a);
  else gemvT<8>(c, a);
}

}  // namespace cuda
}  // namespace medcluster
