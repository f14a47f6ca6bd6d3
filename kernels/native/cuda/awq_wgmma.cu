// The AWQ matmul on Hopper's warpgroup MMA: out [M, N] = x [M, K] @ W for M <= 256 rows a launch,
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
// producer warp (awq_stream.cuh) per block (at 256 rows, one warp of a producer warpgroup that
// gives its registers to the consumers: wgmmaProducerWarpgroup). The consumers are two
// warpgroups; warp w (0..7) owns n16 tile w of the unit (its A rows: 16 columns), over the whole
// group of 128 k. Per stage it reads its 32 bytes of weights (two 128-bit shared loads) and its
// columns' pairs, dequantizes with one FMA per pair of weights into eight A fragments (as the GEMV
// does), then its warpgroup issues the unit's 8 wgmma against the two x planes and waits for them
// before releasing the stage.
//
// The k order. The packed layout holds each k step's A fragments in the MMA's own order (lane tl's
// register set j: rows 16j + 2tl + {0, 1, 8, 9} of its half group, awq_layout.h), so the B operand
// is x as it lies: the producer's tensor copy of x is the operand. (Until 2026-12-04 the layout
// kept a lane's 16 physical rows contiguous, for the GEMV's 16-byte x loads, and a small kernel
// wrote x in that k order before every launch: one more launch and ~3 us a matmul at 64 rows,
// measured on an H200. The GEMV now reads its B fragments by ldmatrix.)
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
// + the producer: one warp, or at 32 row tiles a whole warpgroup (one warp of it streams) that
// hands its registers to the consumers: 128 accumulators a thread do not fit the 168 registers
// that each of 9 warps gets (ptxas spilled), and (40 + 2 x 232) x 128 <= 65536.
template <int MT> __host__ __device__ constexpr bool wgmmaProducerWarpgroup() { return MT == 32; }
template <int MT> __host__ __device__ constexpr int wgmmaThreads() {
  return kConsumers + (wgmmaProducerWarpgroup<MT>() ? 128 : 32);
}
constexpr int kProducerRegisters = 40, kConsumerRegisters = 232;

struct WgmmaArgs {
  const unsigned char* w;  // packed: header + units
  void* out;               // [M, N] f16 or f32
  float* partials;         // [2P][MT * 8][128] fp32 stream-K partials
  unsigned* tickets;       // [tiles] counters, zero at launch, reset by the kernel
  StreamK sk;              // units (tile by tile, group by group), P, G (= K / 128)
  int M, K, N, stages;
  bool outF16;
};

// xMap: x [M, K] as a 2-D tensor map, boxes of 64 columns x 8 MT rows. Gated: a gated pack, out
// f16 [M, N/2] = silu(gate) * up (awq_layout.h).
// Two blocks a multiprocessor, but one from MT = 16 (64 or 128 accumulators a thread).
template <int MT, bool Gated>
__global__ void __launch_bounds__(wgmmaThreads<MT>(), MT >= 16 ? 1 : 2) awqWgmmaKernel(const WgmmaArgs a, const __grid_constant__ CUtensorMap xMap) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(128) unsigned char smemRaw[];
  // The swizzle needs 1024-byte aligned stages: the launch adds 1024 bytes for this.
  unsigned char* smem = smemRaw + ((1024u - (smemAddr(smemRaw) & 1023u)) & 1023u);
  __shared__ __align__(8) uint64_t full[kAwqMaxStages], empty[kAwqMaxStages];
  __shared__ int fixupFlag;
  constexpr int SB = awqStageBytes<MT>(), WOFF = 2 * awqXPlaneBytes<MT>();
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int b = blockIdx.x, S = a.stages, G = a.sk.G;
  const int u0 = a.sk.start(b), n = a.sk.start(b + 1) - u0;

  pdlLaunchDependents();
  if (tid == 0) awqRingInit(full, empty, S, kConsumerWarps);
  __syncthreads();

  if (warp >= kConsumerWarps) {  // the producer
    if constexpr (wgmmaProducerWarpgroup<MT>()) {
      warpgroupRegistersDown<kProducerRegisters>();
      if (warp != kConsumerWarps) return;
    }
    const AwqStream p{a.w + kHeaderBytes, nullptr, &xMap, a.M, a.K, G, u0, n, S};
    awqProduce<MT>(p, smem, full, empty, lane);
    return;
  }
  if constexpr (wgmmaProducerWarpgroup<MT>()) warpgroupRegistersUp<kConsumerRegisters>();

  // ---- consumers ----
  pdlWait();  // outputs and partials are written only after the kernel before has finished
  const int gl = lane >> 2, tl = lane & 3;
  const int colA = warp * 16 + gl, colB = colA + 8;  // this lane's two columns of the unit
  const int e = static_cast<int>(reinterpret_cast<const uint32_t*>(a.w)[1]);
  const float outScale = exp2f(static_cast<float>(e));
  float acc[MT * 4];  // D fragment: [row tile (8 rows of x)][column A / B x 2 rows]

  auto zero = [&]() {
#pragma unroll
    for (int r = 0; r < MT * 4; ++r) acc[r] = 0.f;
  };
  // End of this block's part of tile t, groups [g0, g1): the output, or a partial and the fix-up;
  // then the accumulators start again from zero.
  auto flush = [&](int t, int g0, int g1) {
    const bool whole = g0 == 0 && g1 == G;
    float* part = a.partials + static_cast<int64_t>(a.sk.slot(b, t)) * (MT * 8) * kTileN;
    const int nA = t * kTileN + colA, nB = nA + 8;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      // D fragment r of row tile mt: column colA (r < 2) or colB, row mt*8 + 2tl + (r & 1).
      if constexpr (Gated) {  // colA a gate column, colB its up column
#pragma unroll
        for (int r = 0; r < 2; ++r)
          streamKStoreGated(whole, part, kTileN, mt * 8 + 2 * tl + r, colA, nA, static_cast<__half*>(a.out), a.M, a.N,
                            acc[mt * 4 + r] * outScale, acc[mt * 4 + r + 2] * outScale);
      } else {
#pragma unroll
        for (int r = 0; r < 4; ++r)
          streamKStore(whole, part, kTileN, mt * 8 + 2 * tl + (r & 1), r < 2 ? colA : colB, r < 2 ? nA : nB, a.out,
                       a.outF16, a.M, a.N, acc[mt * 4 + r] * outScale);
      }
    }
    if (!whole)
      streamKFixup(a.sk, t, a.partials, MT * 8, kTileN, a.tickets, a.out, a.outF16, a.M, a.N, &fixupFlag, tid,
                   kConsumers, Gated);
    zero();
  };

  // Per lane, the same in every stage: its weights' and its columns' pairs' byte offsets, and
  // the descriptor of stage 0's first x plane (a stage's and a k step's are offsets from it).
  const int wOff = WOFF + (warp * 2 * 32 + lane) * 16, pOff = WOFF + kPairOffset + colA * 4;
  const uint32_t desc0 = static_cast<uint32_t>(wgmmaDescK128(smemAddr(smem), 0));  // its low word

  zero();
  awqConsume(u0, n, G, S, full, empty, lane, [&](int s) {
    const unsigned char* st = smem + s * SB;
    // This warp's weights (n16 tile `warp`, both halves of the group) and its columns' pairs.
    const uint4 wq0 = *reinterpret_cast<const uint4*>(st + wOff);
    const uint4 wq1 = *reinterpret_cast<const uint4*>(st + wOff + 32 * 16);
    const uint32_t pa = *reinterpret_cast<const uint32_t*>(st + pOff);
    const uint32_t pb = *reinterpret_cast<const uint32_t*>(st + pOff + 8 * 4);  // column colB = colA + 8
    const uint32_t mA = awqPairMul2(pa), dA = awqPairAdd2(pa), mB = awqPairMul2(pb), dB = awqPairAdd2(pb);
    const uint32_t wv[8] = {wq0.x, wq0.y, wq0.z, wq0.w, wq1.x, wq1.y, wq1.z, wq1.w};
    uint32_t af[8][4];  // k step 4h + j: half h, register j of the lane's 16 bytes
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      af[k][0] = awqDequantPair(fragNibbles(wv[k], 0), mA, dA);
      af[k][1] = awqDequantPair(fragNibbles(wv[k], 1), mB, dB);
      af[k][2] = awqDequantPair(fragNibbles(wv[k], 2), mA, dA);
      af[k][3] = awqDequantPair(fragNibbles(wv[k], 3), mB, dB);
    }
    const uint32_t desc = desc0 + static_cast<uint32_t>(wgmmaDescAdvance(s * SB));
    wgmmaFence();  // the A fragments (and, after a flush, the zeroed accumulators) are ordinary writes
#pragma unroll
    for (int k = 0; k < 8; ++k)
      wgmmaRegA<MT * 8>(acc, af[k],
                        desc + static_cast<uint32_t>(wgmmaDescAdvance((k >> 2) * awqXPlaneBytes<MT>() + (k & 3) * 32)));
    wgmmaCommit();
    wgmmaWait<0>();  // the stage's x and the A registers are free again
  }, flush);
#else
  __trap();  // launched only where the sm_90a code exists (launchAwqWgmma checks)
#endif
}

template <int MT, bool Gated>
void wgmmaT(const Ctx& c, WgmmaArgs a, const __half* x) {
  const auto kernel = awqWgmmaKernel<MT, Gated>;
  const Tuning& tu = tuning();
  constexpr int SB = awqStageBytes<MT>();
  int bps = MT >= 16 ? 1 : std::max(1, std::min(2, tu.awqWgmmaBlocksPerSM));
  // The ring: as deep as the shared memory of bps blocks per multiprocessor allows; at two, at most
  // the tuning's depth.
  int stages = std::max(2, std::min(kAwqMaxStages, (kAwqSmemPerSM / bps - 1024) / SB));
  if (bps == 2 && tu.awqWgmmaStages > 0) stages = std::max(2, std::min(stages, tu.awqWgmmaStages));
  // + the alignment slack; no place for one block more (awqExclusiveSmem)
  const size_t smem = awqExclusiveSmem(static_cast<size_t>(stages) * SB + 1024, bps);
  static size_t attr = 0;  // per instantiation, per process (the attribute is per function)
  if (smem > attr) {
    MC_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    attr = smem;
  }
  int resident = 0;
  MC_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, wgmmaThreads<MT>(), smem));
  bps = std::max(1, std::min(bps, resident));
  a.stages = stages;
  awqStreamKGrid(c, a, bps, MT * 8);

  const CUtensorMap xMap = awqXTensorMap(x, a.M, a.K, MT * 8, "awqLinear (CUDA wgmma)");
  launchKernel(c, kernel, static_cast<unsigned>(a.sk.P), wgmmaThreads<MT>(), smem, a, xMap);
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
  WgmmaArgs a = {};
  a.w = w.data;
  a.out = out;
  a.outF16 = outF16;
  a.M = M;
  a.K = w.K;
  a.N = w.N;
  a.sk.G = w.K / kGroup;
  a.sk.units = static_cast<int>(units(w.K, w.N));
  auto rows = [&](auto g) {
    constexpr bool G = decltype(g)::value;
    if (M <= 8) wgmmaT<1, G>(c, a, x);
    else if (M <= 16) wgmmaT<2, G>(c, a, x);
    else if (M <= 32) wgmmaT<4, G>(c, a, x);
    else if (M <= 64) wgmmaT<8, G>(c, a, x);
    else if (M <= 128) wgmmaT<16, G>(c, a, x);
    else wgmmaT<32, G>(c, a, x);
  };
  if (w.gated) rows(std::true_type{});
  else rows(std::false_type{});
}

}  // namespace cuda
}  // namespace medcluster
