// The AWQ matmul on Hopper's warpgroup MMA: out [M, N] = x [M, K] @ W for M <= 128 rows a launch,
// on the packed layout (../awq_layout.h), sm_90a only (launchAwqLinear picks it from
// tuning().awqWgmmaMinM rows on a compute capability 9.0 device).
//
// Why: the mma.sync GEMV (awq_gemv.cu) loads x's B fragments from shared memory and issues one
// mma per 8 rows of x for every 16 x 16 weights, so from ~16 rows its consumer warps are bound by
// instruction issue, not by the weights' stream (at M = 64 a 70B block takes 0.47 ms against 0.14
// for its FLOPs). Here x stays in shared memory where the producer's tensor copies put it and the
// tensor cores read it through a descriptor: per unit (128 columns x 128 k) a warpgroup issues 8
// wgmma (m64 nN k16, N = 8 MT rows), whatever M is.
//
// Same stream as the GEMV: a persistent grid on the stream-K schedule (splitk.cuh) and the one
// producer warp (awq_stream.cuh) per block. The consumers are two warpgroups; warp w (0..7) owns
// n16 tile w of the unit (its A rows: 16 columns), over the whole group of 128 k. Per stage it
// reads its 32 bytes of weights (two 128-bit shared loads) and its columns' pairs, dequantizes with
// one FMA per pair of weights into eight A fragments (as the GEMV does), then its warpgroup issues
// the unit's 8 wgmma against the two x planes and waits for them before releasing the stage.
//
// The k order. The packed layout puts in register j of a lane the weights of physical rows
// 64h + 16tl + 4j + e (tl = lane % 4, e = 0..3) (awq_layout.h), while the MMA's B operand takes the
// rows of k step j in the order they sit in shared memory. So x goes in through a copy in that
// order, `xo`: within each 64-row half of a group, position 16j + 8e1 + 2tl + e0 holds physical row
// 16tl + 4j + 2e1 + e0 (e = 2e1 + e0). A small kernel writes it before the matmul (M x K f16 read
// and written once: ~2 MB at M = 64, K = 8192), with programmatic dependent launch on both sides.
//
// Wide tiles (TW = 2, from tuning().awqWgmmaWideMinM rows): a work item is one group of two
// adjacent packed tiles, 256 columns; each warp owns n16 tile w of both units and keeps both
// accumulator sets. Why: the stage's x (MT * 2 KB) crosses from L2 once for 256 columns instead
// of once per 128, and from 32 rows x is most of a stage (at 128 rows 32 KB against 8.5 KB of
// weights): the x reads, not the tensor cores, set the pace there.
//
// Accumulation is fp32; each output element's sum over k runs in a fixed order, the stream-K
// fix-up too.
#include <algorithm>

#include "awq.cuh"
#include "awq_stream.cuh"
#include "ptx.cuh"
#include "splitk.cuh"
#include "tuning.h"
#include "wgmma.cuh"

namespace medcluster {
namespace cuda {

namespace {

using namespace awqpack;

constexpr int kConsumerWarps = 8;  // two warpgroups of 64 columns
constexpr int kConsumers = kConsumerWarps * 32;
// + the producer: one warp, or at 16 row tiles with wide tiles a whole warpgroup (one warp of it
// copies) that hands its registers to the consumers: 2 x 64 accumulators and the fragments do
// not fit the 168 registers a thread of 9 warps gets (ptxas serializes the MMAs).
template <int MT, int TW> __host__ __device__ constexpr bool wgmmaProducerWarpgroup() { return MT == 16 && TW == 2; }
template <int MT, int TW> __host__ __device__ constexpr int wgmmaThreads() { return kConsumers + (wgmmaProducerWarpgroup<MT, TW>() ? 128 : 32); }
constexpr int kProducerRegisters = 40, kConsumerRegisters = 232;  // (40 + 2 x 232) x 128 <= 65536

// xo = x with each half group's rows in the packed layout's k order (see above), by 32-bit words
// (e0 pairs stay together: awqpack::xOrderedSource).
__global__ void awqOrderXKernel(const uint32_t* __restrict__ x, uint32_t* __restrict__ xo, int64_t words) {
  pdlLaunchDependents();
  pdlWait();  // x is written by the kernel before this one
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < words;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    xo[i] = x[(i & ~int64_t{31}) + xOrderedSource(static_cast<int>(i & 31))];
  }
}

struct WgmmaArgs {
  const unsigned char* w;  // packed: header + units
  void* out;               // [M, N] f16 or f32
  float* partials;         // [2P][MT * 8][128 TW] fp32 stream-K partials
  unsigned* tickets;       // [tiles / TW] counters, zero at launch, reset by the kernel
  StreamK sk;              // items (wide tile by wide tile, group by group), P, G (= K / 128)
  int M, K, N, stages;
  bool outF16;
};

// One block a multiprocessor where a thread's accumulators pass 32 (MT * 4 TW): its registers.
template <int MT, int TW> __host__ __device__ constexpr int wgmmaMaxBlocksPerSM() { return MT * 4 * TW > 32 ? 1 : 2; }

// xMap: xo [M, K] as a 2-D tensor map, boxes of 64 columns x 8 MT rows.
template <int MT, int TW>
__global__ void __launch_bounds__((wgmmaThreads<MT, TW>()), (wgmmaMaxBlocksPerSM<MT, TW>()))
    awqWgmmaKernel(const WgmmaArgs a, const __grid_constant__ CUtensorMap xMap) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(128) unsigned char smemRaw[];
  // The swizzle needs 1024-byte aligned stages: the launch adds 1024 bytes for this.
  unsigned char* smem = smemRaw + ((1024u - (smemAddr(smemRaw) & 1023u)) & 1023u);
  __shared__ __align__(8) uint64_t full[kAwqMaxStages], empty[kAwqMaxStages];
  __shared__ int fixupFlag;
  constexpr int SB = awqStageBytes<MT, TW>(), WOFF = 2 * awqXPlaneBytes<MT>(), TN = TW * kTileN;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int b = blockIdx.x, S = a.stages, G = a.sk.G;
  const int u0 = a.sk.start(b), n = a.sk.start(b + 1) - u0;

  pdlLaunchDependents();
  if (tid == 0) awqRingInit(full, empty, S, kConsumerWarps);
  __syncthreads();

  if (warp >= kConsumerWarps) {  // the producer
    if constexpr (wgmmaProducerWarpgroup<MT, TW>()) {
      warpgroupRegistersDown<kProducerRegisters>();
      if (warp != kConsumerWarps) return;
    }
    const AwqStream p{a.w + kHeaderBytes, nullptr, &xMap, a.M, a.K, G, static_cast<int>(tiles(a.N)), u0, n, S};
    awqProduce<MT, TW>(p, smem, full, empty, lane);
    return;
  }
  if constexpr (wgmmaProducerWarpgroup<MT, TW>()) warpgroupRegistersUp<kConsumerRegisters>();

  // ---- consumers ----
  pdlWait();  // outputs and partials are written only after the kernel before has finished
  const int gl = lane >> 2, tl = lane & 3;
  const int colA = warp * 16 + gl;  // this lane's columns of each unit: colA and colA + 8
  const int e = static_cast<int>(reinterpret_cast<const uint32_t*>(a.w)[1]);
  const float outScale = exp2f(static_cast<float>(e));
  float acc[TW][MT * 4];  // D fragments: [packed tile][row tile (8 rows of x)][column A / B x 2 rows]

  auto zero = [&]() {
#pragma unroll
    for (int j = 0; j < TW; ++j)
#pragma unroll
      for (int r = 0; r < MT * 4; ++r) acc[j][r] = 0.f;
  };
  // End of this block's part of (wide) tile t, groups [g0, g1): the output, or a partial and the
  // fix-up; then the accumulators start again from zero.
  auto flush = [&](int t, int g0, int g1) {
    const bool whole = g0 == 0 && g1 == G;
    float* part = a.partials + static_cast<int64_t>(a.sk.slot(b, t)) * (MT * 8) * TN;
#pragma unroll
    for (int j = 0; j < TW; ++j) {
      const int cA = j * kTileN + colA, cB = cA + 8, nA = t * TN + cA, nB = nA + 8;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          // D fragment r of row tile mt: column cA (r < 2) or cB, row mt*8 + 2tl + (r & 1).
          const float v = acc[j][mt * 4 + r] * outScale;
          streamKStore(whole, part, TN, mt * 8 + 2 * tl + (r & 1), r < 2 ? cA : cB, r < 2 ? nA : nB, a.out, a.outF16,
                       a.M, a.N, v);
        }
    }
    if (!whole)
      streamKFixup(a.sk, t, a.partials, MT * 8, TN, a.tickets, a.out, a.outF16, a.M, a.N, &fixupFlag, tid, kConsumers);
    zero();
  };

  // Per lane, the same in every stage: its weights' and its columns' pairs' byte offsets, and
  // the descriptor of stage 0's first x plane (a stage's and a k step's are offsets from it).
  const int wOff = WOFF + (warp * 2 * 32 + lane) * 16, pOff = WOFF + kPairOffset + colA * 4;
  const uint32_t desc0 = static_cast<uint32_t>(wgmmaDescK128(smemAddr(smem), 0));  // its low word

  zero();
  awqConsume(u0, n, G, S, full, empty, lane, [&](int s) {
    const unsigned char* st = smem + s * SB;
    const uint32_t desc = desc0 + static_cast<uint32_t>(wgmmaDescAdvance(s * SB));
    auto xDesc = [&](int k) {  // k step k (half k / 4) of the stage's x
      return desc + static_cast<uint32_t>(wgmmaDescAdvance((k >> 2) * awqXPlaneBytes<MT>() + (k & 3) * 32));
    };
    // This warp's weights of unit j (n16 tile `warp`): the words of k steps k0 .. k0 + KS - 1 (word
    // i of half h's 16 bytes is k step 4h + i), and its columns' pairs.
    auto weights = [&](int j, int k0, auto ks, uint32_t (&wv)[decltype(ks)::value]) {
      const unsigned char* src = st + j * kUnitBytes + wOff + (k0 >> 2) * 32 * 16 + (k0 & 3) * 4;
      if constexpr (decltype(ks)::value == 4) {
        const uint4 q = *reinterpret_cast<const uint4*>(src);
        wv[0] = q.x, wv[1] = q.y, wv[2] = q.z, wv[3] = q.w;
      } else {
        const uint2 q = *reinterpret_cast<const uint2*>(src);
        wv[0] = q.x, wv[1] = q.y;
      }
    };
    auto pairs = [&](int j, uint32_t (&mul)[2], uint32_t (&add)[2]) {
      const uint32_t pa = *reinterpret_cast<const uint32_t*>(st + j * kUnitBytes + pOff);
      const uint32_t pb = *reinterpret_cast<const uint32_t*>(st + j * kUnitBytes + pOff + 8 * 4);  // colB = colA + 8
      mul[0] = awqPairMul2(pa), add[0] = awqPairAdd2(pa), mul[1] = awqPairMul2(pb), add[1] = awqPairAdd2(pb);
    };
    // The A fragment of a k step from its word of weights.
    auto dequant = [&](uint32_t w, const uint32_t (&mul)[2], const uint32_t (&add)[2], uint32_t (&af)[4]) {
#pragma unroll
      for (int r = 0; r < 4; ++r) af[r] = awqDequantPair(fragNibbles(w, r), mul[r & 1], add[r & 1]);
    };
    if constexpr (TW == 1) {
      // All 8 k steps' fragments, then the unit's 8 MMAs as one group.
      uint32_t mul[2], add[2], wv[2][4], af[8][4];
      pairs(0, mul, add);
      weights(0, 0, std::integral_constant<int, 4>{}, wv[0]);
      weights(0, 4, std::integral_constant<int, 4>{}, wv[1]);
#pragma unroll
      for (int k = 0; k < 8; ++k) dequant(wv[k >> 2][k & 3], mul, add, af[k]);
      wgmmaFence();  // the A fragments (and, after a flush, the zeroed accumulators) are ordinary writes
#pragma unroll
      for (int k = 0; k < 8; ++k) wgmmaRegA<MT * 8>(acc[0], af[k], xDesc(k));
      wgmmaCommit();
    } else {
      // Groups of KS k steps, unit by unit within each run of k steps: each group's fragments are
      // made while the group before runs, and the group before that is waited for first, so two
      // sets of fragments are live, not all of the stage's (the accumulators of both units take
      // the rest of the registers: with every fragment live, ptxas serializes the MMAs).
      constexpr int KS = 4;
      uint32_t mul[TW][2], add[TW][2], af[2][KS][4];
#pragma unroll
      for (int j = 0; j < TW; ++j) pairs(j, mul[j], add[j]);
#pragma unroll
      for (int q = 0; q < 8 / KS * TW; ++q) {
        const int k0 = q / TW * KS, j = q % TW;
        uint32_t wv[KS];
        weights(j, k0, std::integral_constant<int, KS>{}, wv);
#pragma unroll
        for (int i = 0; i < KS; ++i) dequant(wv[i], mul[j], add[j], af[q & 1][i]);
        wgmmaFence();
#pragma unroll
        for (int i = 0; i < KS; ++i) wgmmaRegA<MT * 8>(acc[j], af[q & 1][i], xDesc(k0 + i));
        wgmmaCommit();
        if (q + 1 < 8 / KS * TW) wgmmaWait<1>();  // the group before is done: its fragments are free
      }
    }
    wgmmaWait<0>();  // the stage's x and the A registers are free again
  }, flush);
#else
  __trap();  // launched only where the sm_90a code exists (launchAwqWgmma checks)
#endif
}

template <int MT, int TW>
void wgmmaT(const Ctx& c, WgmmaArgs a, const __half* xo) {
  const auto kernel = awqWgmmaKernel<MT, TW>;
  constexpr int SB = awqStageBytes<MT, TW>();
  int bps = std::max(1, std::min(wgmmaMaxBlocksPerSM<MT, TW>(), tuning().awqWgmmaBlocksPerSM));
  // The ring: as deep as the shared memory of bps blocks per multiprocessor allows (228 KB an SM,
  // 1 KB of it reserved per block, 227 KB at most for one block; the barriers' static bytes beside).
  constexpr int kSmemPerSM = 228 * 1024, kPerBlockMax = 227 * 1024, kStatic = 256;
  const int budget = std::min(kPerBlockMax, kSmemPerSM / bps - 1024) - kStatic - 1024;  // - the alignment slack
  const int stages = std::max(2, std::min(kAwqMaxStages, budget / SB));
  const size_t smem = static_cast<size_t>(stages) * SB + 1024;  // + the alignment slack
  static size_t attr = 0;  // per instantiation, per process (the attribute is per function)
  if (smem > attr) {
    MC_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    attr = smem;
  }
  int resident = 0;
  MC_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, wgmmaThreads<MT, TW>(), smem));
  bps = std::max(1, std::min(bps, resident));
  a.stages = stages;
  a.sk.units = static_cast<int>(ceilDiv(tiles(a.N), TW)) * a.sk.G;
  awqStreamKGrid(c, a, bps, MT * 8, TW);

  const CUtensorMap xMap = awqXTensorMap(xo, a.M, a.K, MT * 8, "awqLinear (CUDA wgmma)");
  launchKernel(c, kernel, static_cast<unsigned>(a.sk.P), wgmmaThreads<MT, TW>(), smem, a, xMap);
}

// The one choice of kernel for an M-row launch: f(integral_constant<MT>, integral_constant<TW>).
template <class F>
void withWgmmaKernel(int M, F f) {
  const int wideMin = tuning().awqWgmmaWideMinM;
  const bool wide = wideMin > 0 && M >= wideMin;
  using One = std::integral_constant<int, 1>;
  using Two = std::integral_constant<int, 2>;
  if (M <= 8) f(std::integral_constant<int, 1>{}, One{});  // one row tile: x is a sliver of the stage
  else if (M <= 16) wide ? f(std::integral_constant<int, 2>{}, Two{}) : f(std::integral_constant<int, 2>{}, One{});
  else if (M <= 32) wide ? f(std::integral_constant<int, 4>{}, Two{}) : f(std::integral_constant<int, 4>{}, One{});
  else if (M <= 64) wide ? f(std::integral_constant<int, 8>{}, Two{}) : f(std::integral_constant<int, 8>{}, One{});
  else wide ? f(std::integral_constant<int, 16>{}, Two{}) : f(std::integral_constant<int, 16>{}, One{});
}

}  // namespace

void launchAwqWgmma(const Ctx& c, const __half* x, const PackedAwq& w, void* out, bool outF16, int M) {
  if (M <= 0) return;
  if (c.computeCapability != 90)
    throw BackendError("awqLinear (CUDA wgmma): needs a compute capability 9.0 device (this one is " +
                       std::to_string(c.computeCapability) + ")");
  if (M > kAwqWgmmaMaxRows)
    throw BackendError("awqLinear (CUDA wgmma): M=" + std::to_string(M) + " rows in one launch (at most " +
                       std::to_string(kAwqWgmmaMaxRows) + ")");
  if (reinterpret_cast<uintptr_t>(x) & 15 || w.K % kGroup)
    throw BackendError("awqLinear (CUDA wgmma): x must be 16-byte aligned and K a multiple of 128 (M=" +
                       std::to_string(M) + " K=" + std::to_string(w.K) + " N=" + std::to_string(w.N) + ")");
  // x in the packed layout's k order, in scratch the backend owns.
  const int64_t words = static_cast<int64_t>(M) * w.K / 2;
  __half* xo = static_cast<__half*>(c.xOrdered->get(static_cast<size_t>(words) * 4, c.stream));
  launchKernel(c, awqOrderXKernel, static_cast<unsigned>(std::min<int64_t>(ceilDiv(words, 256), 4 * c.numSMs)), 256, 0,
            reinterpret_cast<const uint32_t*>(x), reinterpret_cast<uint32_t*>(xo), words);
  WgmmaArgs a = {};
  a.w = w.data;
  a.out = out;
  a.outF16 = outF16;
  a.M = M;
  a.K = w.K;
  a.N = w.N;
  a.sk.G = w.K / kGroup;
  withWgmmaKernel(M, [&](auto mt, auto tw) { wgmmaT<decltype(mt)::value, decltype(tw)::value>(c, a, xo); });
}

}  // namespace cuda
}  // namespace medcluster
