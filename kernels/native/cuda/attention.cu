// Causal attention over the paged KV cache (backend.h semantics).
//
// Steps of one query token per sequence (decode, and mixed steps) run attnDecode: one block per
// (token, KV head, split of the context) on tensor cores, the G query heads that share a KV head
// taken together so each K/V row is read once for all of them (GQA). With several splits the
// partial (m, l, unnormalized O) goes to a workspace and attnCombine merges the splits. The
// score matrix is never materialized.
//
// Steps with several tokens per sequence (prefill) use a tensor-core flash kernel instead
// (attnPrefill below): tiles of query rows against chunks of keys.
#include "common.cuh"
#include "mma.cuh"
#include "ptx.cuh"
#include "tuning.h"

namespace medcluster {
namespace cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;

struct AttnArgs {
  const __half* q; const __half* kc; const __half* vc;
  const int32_t* blockTables; const int32_t* tokenSeq; const int32_t* positions;
  __half* out; float* wsAcc; float* wsML;
  int nh, nkv, G, blockSize, maxBlocks;
  int chunk;   // keys per split; 0: each token's context in `splits` equal parts of whole tiles
  int splits;
  float scale;
};

// ---- decode: tensor-core attention, one query token per block -----------------------
//
// Decode attention reads each K/V row once for the G <= 8 query heads that share it, so it is
// an m16n8k16 problem with the heads as the n = 8 side: S^T = K Q^T (keys x heads) and
// O^T = V^T P^T (dims x heads); no mma work is padding for G = 8. One block per (token, KV
// head, split of the context); its 4 warps take tiles of 16 keys in turn, each with its own
// online softmax, merged at the end (where the grid is small, each warp loads its next tile while
// it computes one: Prefetch). K and V go from global memory straight into fragments:
// a sum over head dims may take the dims in any order (A and B agreeing), so a lane loads whole
// 16-byte chunks of two K rows (chunk 4p + tq feeds k-steps 2p and 2p + 1) and of four V rows
// (chunks g and g + 8), and a byte permute pairs two keys' halves of one dim into V^T's
// fragment register. P^T reaches the B fragments through 256 bytes of shared memory per warp:
// the lanes that hold a head's scores (by tq) are not those that need them as B (by g).
constexpr int kDecWarps = 4;
constexpr int kDecKeys = 16;                      // keys per warp tile
constexpr int kDecKeysPerRound = kDecWarps * kDecKeys;

// Prefetch: two tiles in flight a warp (219 registers, two blocks per multiprocessor), for grids
// of at most that many blocks; otherwise one (126 registers, four blocks).
template <int HD, bool Prefetch>
__global__ void __launch_bounds__(kDecWarps * 32, Prefetch ? 2 : 4) attnDecode(AttnArgs a) {
  constexpr int KSTEPS = HD / 16;  // k-steps of S (over dims) = m16 tiles of O^T (dims)
  constexpr int KCH = HD / 32;     // 16-byte K chunks per lane and row: chunks 4p + tq
  constexpr int VCH = HD / 64;     // 16-byte V chunks per lane and row: chunks g + 8r
  pdlLaunchDependents();           // the o matmul after attention may start prefetching its weights
  pdlWait();
  __shared__ __align__(16) __half pT[kDecWarps][8][kDecKeys];  // P as [head][key]
  __shared__ float wm[kDecWarps][8], wl[kDecWarps][8];
  __shared__ __align__(16) float wacc[kDecWarps][8][HD];

  const int t = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
  const int ctx = a.positions[t] + 1;
  const int perSplit = (ctx + a.splits - 1) / a.splits;
  const int chunk = a.chunk > 0 ? a.chunk : (perSplit + kDecKeysPerRound - 1) / kDecKeysPerRound * kDecKeysPerRound;
  const int start = split * chunk, end = min(ctx, start + chunk);
  if (start >= end) {  // this split holds none of the token's keys
    for (int h = threadIdx.x; h < a.G; h += blockDim.x) {
      const int64_t o = ((int64_t)t * a.nh + kvh * a.G + h) * a.splits + split;
      a.wsML[2 * o] = -INFINITY;
      a.wsML[2 * o + 1] = 0.f;
    }
    return;
  }
  const int64_t rowStride = (int64_t)a.nkv * HD;
  const __half* kBase = a.kc + (int64_t)kvh * HD;
  const __half* vBase = a.vc + (int64_t)kvh * HD;
  const int32_t* table = a.blockTables + (int64_t)a.tokenSeq[t] * a.maxBlocks;
  const float scaleLog2 = a.scale * kLog2e;

  // Q^T as B fragments: head g's chunks 4p + tq (zero for the padding heads past G).
  uint4 qb[KCH];
#pragma unroll
  for (int p = 0; p < KCH; ++p)
    qb[p] = g < a.G ? __ldg(reinterpret_cast<const uint4*>(a.q + ((int64_t)t * a.nh + kvh * a.G + g) * HD) + 4 * p + tq)
                    : make_uint4(0, 0, 0, 0);

  // The lane's heads are 2tq and 2tq + 1: running max (warp-uniform per head), this lane's
  // part of the sum, and O^T's fragments (o[τ][j]: head 2tq + j; [j + 2]: the tile's row g + 8).
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float o[KSTEPS][4];
#pragma unroll
  for (int i = 0; i < KSTEPS; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;

  // A tile's parts: the slot of the lane's key (lane i < 16: key base + i; -1 past the split's end,
  // which loads zeros), its K and V rows into fragments, and the tile's scores, softmax and P x V.
  auto slotOf = [&](int base) {
    const int myKey = base + (lane & 15);
    return myKey < end ? table[myKey / a.blockSize] * a.blockSize + myKey % a.blockSize : -1;
  };
  auto load = [&](int mySlot, uint4 (&kr)[2][KCH], uint4 (&vr)[4][VCH]) {
    const int kSlot[2] = {__shfl_sync(0xffffffffu, mySlot, g), __shfl_sync(0xffffffffu, mySlot, g + 8)};
    const int vSlot[4] = {__shfl_sync(0xffffffffu, mySlot, 2 * tq), __shfl_sync(0xffffffffu, mySlot, 2 * tq + 1),
                          __shfl_sync(0xffffffffu, mySlot, 2 * tq + 8), __shfl_sync(0xffffffffu, mySlot, 2 * tq + 9)};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const uint4* src = reinterpret_cast<const uint4*>(kBase + (int64_t)kSlot[r] * rowStride);
#pragma unroll
      for (int p = 0; p < KCH; ++p) kr[r][p] = kSlot[r] >= 0 ? __ldg(src + 4 * p + tq) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const uint4* src = reinterpret_cast<const uint4*>(vBase + (int64_t)vSlot[r] * rowStride);
#pragma unroll
      for (int c = 0; c < VCH; ++c) vr[r][c] = vSlot[r] >= 0 ? __ldg(src + g + 8 * c) : make_uint4(0, 0, 0, 0);
    }
  };
  auto tile = [&](const uint4 (&kr)[2][KCH], const uint4 (&vr)[4][VCH], int base) {
    // S^T = K Q^T: k-step 2p + j takes words 2j, 2j + 1 of chunk p (K rows g, g + 8; Q head g).
    float sc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int p = 0; p < KCH; ++p)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const uint32_t* k0 = reinterpret_cast<const uint32_t*>(&kr[0][p]);
        const uint32_t* k1 = reinterpret_cast<const uint32_t*>(&kr[1][p]);
        const uint32_t* qw = reinterpret_cast<const uint32_t*>(&qb[p]);
        const uint32_t af[4] = {k0[2 * j], k1[2 * j], k0[2 * j + 1], k1[2 * j + 1]};
        mma16816(sc, af, qw[2 * j], qw[2 * j + 1]);
      }

    // Online softmax (base 2) per head column: keys base + g (sc[0], sc[1]) and + g + 8 (sc[2], sc[3]).
    const bool valid[2] = {base + g < end, base + g + 8 < end};
    float pr[4];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float s0 = valid[0] ? sc[j] * scaleLog2 : -INFINITY;
      const float s1 = valid[1] ? sc[2 + j] * scaleLog2 : -INFINITY;
      float mx = fmaxf(s0, s1);
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
      const float mNew = fmaxf(m[j], mx);  // finite: key `base` is in the split
      const float corr = exp2f(m[j] - mNew);
      pr[j] = exp2f(s0 - mNew);
      pr[2 + j] = exp2f(s1 - mNew);
      l[j] = l[j] * corr + pr[j] + pr[2 + j];
      m[j] = mNew;
#pragma unroll
      for (int i = 0; i < KSTEPS; ++i) {
        o[i][j] *= corr;
        o[i][2 + j] *= corr;
      }
    }
    __half* pw = &pT[warp][0][0];
    pw[(2 * tq) * kDecKeys + g] = __float2half(pr[0]);
    pw[(2 * tq + 1) * kDecKeys + g] = __float2half(pr[1]);
    pw[(2 * tq) * kDecKeys + g + 8] = __float2half(pr[2]);
    pw[(2 * tq + 1) * kDecKeys + g + 8] = __float2half(pr[3]);
    __syncwarp();
    const uint32_t pb0 = *reinterpret_cast<const uint32_t*>(pw + g * kDecKeys + 2 * tq);
    const uint32_t pb1 = *reinterpret_cast<const uint32_t*>(pw + g * kDecKeys + 2 * tq + 8);
    __syncwarp();  // read before the next tile writes

    // O^T += V^T P^T: tile τ's row g is the lane's dim e = τ, row g + 8 is e = KSTEPS + τ, where
    // the lane's dim e is 8 (g + 8 (e / 8)) + e % 8; keys 2tq, 2tq + 1 (+ 8) pair up in a register.
#pragma unroll
    for (int tau = 0; tau < KSTEPS; ++tau) {
      uint32_t af[4];
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        const int e = hi * KSTEPS + tau;
        const uint32_t sel = (e & 1) ? 0x7632u : 0x5410u;
        const int c = e / 8, w = (e % 8) / 2;
        af[hi] = __byte_perm(reinterpret_cast<const uint32_t*>(&vr[0][c])[w],
                             reinterpret_cast<const uint32_t*>(&vr[1][c])[w], sel);
        af[2 + hi] = __byte_perm(reinterpret_cast<const uint32_t*>(&vr[2][c])[w],
                                 reinterpret_cast<const uint32_t*>(&vr[3][c])[w], sel);
      }
      mma16816(o[tau], af, pb0, pb1);
    }
  };

  const int first = start + warp * kDecKeys;
  if constexpr (!Prefetch) {
    for (int base = first; base < end; base += kDecKeysPerRound) {
      uint4 kr[2][KCH], vr[4][VCH];
      load(slotOf(base), kr, vr);
      tile(kr, vr, base);
    }
  } else {
    // Two tiles in flight a warp: the next tile's K and V load while this one computes, and the
    // slot lookup runs a tile ahead of those loads. The same sums in the same order as above.
    constexpr int R = kDecKeysPerRound;
    uint4 kA[2][KCH], vA[4][VCH], kB[2][KCH], vB[4][VCH];
    load(slotOf(first), kA, vA);
    int next = slotOf(first + R);
    for (int base = first; base < end; base += 2 * R) {
      const bool more = base + R < end;
      if (more) load(next, kB, vB), next = slotOf(base + 2 * R);
      tile(kA, vA, base);
      if (!more) break;
      if (base + 2 * R < end) load(next, kA, vA), next = slotOf(base + 3 * R);
      tile(kB, vB, base + R);
    }
  }

  // Merge the warps: each lane's part of l, then every warp's (m, l, O) through shared memory.
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    l[j] += __shfl_xor_sync(0xffffffffu, l[j], 4);
    l[j] += __shfl_xor_sync(0xffffffffu, l[j], 8);
    l[j] += __shfl_xor_sync(0xffffffffu, l[j], 16);
    if (g == 0) { wm[warp][2 * tq + j] = m[j]; wl[warp][2 * tq + j] = l[j]; }
#pragma unroll
    for (int i = 0; i < KSTEPS; ++i)
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {
        const int e = hi * KSTEPS + i;
        wacc[warp][2 * tq + j][8 * (g + 8 * (e / 8)) + e % 8] = o[i][2 * hi + j];
      }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < a.G * HD; i += blockDim.x) {
    const int h = i / HD, e = i % HD;
    float M = -INFINITY;
    for (int w = 0; w < kDecWarps; ++w) M = fmaxf(M, wm[w][h]);
    float L = 0.f, O = 0.f;
    for (int w = 0; w < kDecWarps; ++w) {
      const float f = exp2f(wm[w][h] - M);  // 0 for a warp that saw no keys
      L += wl[w][h] * f;
      O += wacc[w][h][e] * f;
    }
    const int head = kvh * a.G + h;
    if (a.splits == 1) {
      a.out[((int64_t)t * a.nh + head) * HD + e] = __float2half(O / L);
    } else {
      const int64_t so = ((int64_t)t * a.nh + head) * a.splits + split;
      a.wsAcc[so * HD + e] = O;
      if (e == 0) { a.wsML[2 * so] = M; a.wsML[2 * so + 1] = L; }
    }
  }
}

// grid (T, nh), block HD threads: merges the splits of one (token, head).
__global__ void attnCombine(const float* wsAcc, const float* wsML, __half* out, int nh, int splits, int hd) {
  pdlLaunchDependents();
  pdlWait();
  const int t = blockIdx.x, h = blockIdx.y, e = threadIdx.x;
  const int64_t o0 = ((int64_t)t * nh + h) * splits;
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s) M = fmaxf(M, wsML[2 * (o0 + s)]);
  float L = 0.f, O = 0.f;
  for (int s = 0; s < splits; ++s) {
    float ms = wsML[2 * (o0 + s)];
    if (ms == -INFINITY) continue;
    float f = exp2f(ms - M);
    L += wsML[2 * (o0 + s) + 1] * f;
    O += wsAcc[(o0 + s) * hd + e] * f;
  }
  out[((int64_t)t * nh + h) * hd + e] = __float2half(O / L);
}

// ---- prefill: tensor-core flash attention -------------------------------------------
//
// A block takes 64 query rows = (64 / G) consecutive tokens x the G query heads of one KV
// head (GQA: the rows share every K/V row); each of its 4 warps owns 16 rows. Keys come in
// chunks of 64, gathered through the block table into shared memory; S = Q K^T and O += P V
// run on m16n8k16 MMAs (f16 inputs, f32 accumulation), with the online softmax on the S
// fragments in registers, and P reused as the A operand of P V without leaving registers.
// The tokens of one block may belong to several sequences (the step's sequences follow one
// another): the block makes one pass per sequence present, masking the other rows.
constexpr int kPfRows = 64;   // query rows per block
constexpr int kPfKeys = 64;   // keys per chunk

template <int HD>
__global__ void __launch_bounds__(128) attnPrefill(AttnArgs a, int T, int gShift) {
  constexpr int LD = HD + 8;  // padded smem row (halves): conflict-free fragment loads
  pdlLaunchDependents();
  pdlWait();
  __shared__ __align__(16) __half ks[kPfKeys][LD];
  __shared__ __align__(16) __half vs[kPfKeys][LD];
  __shared__ int tokSeq[kPfRows], tokPos[kPfRows];
  __shared__ int passSeq, passEnd;

  const int G = 1 << gShift, tokens = kPfRows >> gShift;
  const int t0 = blockIdx.x * tokens, kvh = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
  const int64_t rowStride = (int64_t)a.nkv * HD;
  const float scaleLog2 = a.scale * kLog2e;

  for (int i = threadIdx.x; i < tokens; i += blockDim.x) {
    const int t = t0 + i;
    tokSeq[i] = t < T ? a.tokenSeq[t] : -1;
    tokPos[i] = t < T ? a.positions[t] : -1;
  }
  // This lane's two rows (g and g + 8 of the warp's 16): token index in the block, head.
  int rTok[2], rHead[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = warp * 16 + g + 8 * h;
    rTok[h] = r >> gShift;
    rHead[h] = kvh * G + (r & (G - 1));
  }
  __syncthreads();
  // Q fragments (A operand, rows g / g+8, dims 16k + 2tq (+8)), zero for rows past T.
  uint32_t qf[HD / 16][4];
#pragma unroll
  for (int k = 0; k < HD / 16; ++k)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int h = i & 1, col = k * 16 + 2 * tq + (i >> 1) * 8;
      const int t = t0 + rTok[h];
      qf[k][i] = t < T ? *reinterpret_cast<const uint32_t*>(a.q + ((int64_t)t * a.nh + rHead[h]) * HD + col) : 0u;
    }

  for (;;) {
    // The next sequence with rows left in this block, and its longest context here.
    if (threadIdx.x == 0) {
      int seq = -1, end = 0;
      for (int i = 0; i < tokens; ++i)
        if (tokSeq[i] >= 0 && (seq < 0 || tokSeq[i] == seq)) { seq = tokSeq[i]; end = max(end, tokPos[i] + 1); }
      passSeq = seq;
      passEnd = end;
    }
    __syncthreads();
    const int seq = passSeq, keyEnd = passEnd;
    if (seq < 0) break;
    bool active[2];
    int pos[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      active[h] = tokSeq[rTok[h]] == seq;
      pos[h] = tokPos[rTok[h]];
    }
    const bool warpActive = __any_sync(0xffffffffu, active[0] || active[1]);
    const int32_t* table = a.blockTables + (int64_t)seq * a.maxBlocks;

    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    float o[HD / 8][4];
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

    for (int kc0 = 0; kc0 < keyEnd; kc0 += kPfKeys) {
      __syncthreads();  // the previous chunk is consumed
      for (int i = threadIdx.x; i < kPfKeys * (HD / 8); i += blockDim.x) {
        const int key = i / (HD / 8), c = i % (HD / 8), j = kc0 + key;
        uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
        if (j < keyEnd) {
          const int64_t slot = (int64_t)table[j / a.blockSize] * a.blockSize + j % a.blockSize;
          const int64_t off = slot * rowStride + (int64_t)kvh * HD + c * 8;
          kv = __ldg(reinterpret_cast<const uint4*>(a.kc + off));
          vv = __ldg(reinterpret_cast<const uint4*>(a.vc + off));
        }
        *reinterpret_cast<uint4*>(&ks[key][c * 8]) = kv;
        *reinterpret_cast<uint4*>(&vs[key][c * 8]) = vv;
      }
      __syncthreads();
      if (!warpActive) continue;

      // S = Q K^T: 8 tiles of 8 keys; lane holds keys 8n + 2tq (+1) of rows g (s[n][0..1]) and g+8 (s[n][2..3]).
      float sc[kPfKeys / 8][4];
#pragma unroll
      for (int n = 0; n < kPfKeys / 8; ++n) {
        sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
#pragma unroll
        for (int k = 0; k < HD / 16; ++k) {
          const uint32_t b0 = *reinterpret_cast<const uint32_t*>(&ks[n * 8 + g][k * 16 + 2 * tq]);
          const uint32_t b1 = *reinterpret_cast<const uint32_t*>(&ks[n * 8 + g][k * 16 + 8 + 2 * tq]);
          mma16816(sc[n], qf[k], b0, b1);
        }
      }
      // Online softmax (base 2) per row; a quad of lanes shares a row.
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < kPfKeys / 8; ++n)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int j = kc0 + n * 8 + 2 * tq + e;
            const float v = active[h] && j <= pos[h] ? sc[n][2 * h + e] * scaleLog2 : -INFINITY;
            sc[n][2 * h + e] = v;
            mx = fmaxf(mx, v);
          }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mNew = fmaxf(m[h], mx);
        const float base = mNew == -INFINITY ? 0.f : mNew;  // a row with no key yet stays empty
        const float corr = exp2f(m[h] - base);
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < kPfKeys / 8; ++n)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float p = exp2f(sc[n][2 * h + e] - base);
            sc[n][2 * h + e] = p;
            sum += p;
          }
        l[h] = l[h] * corr + sum;
        m[h] = mNew;
#pragma unroll
        for (int n = 0; n < HD / 8; ++n) {
          o[n][2 * h] *= corr;
          o[n][2 * h + 1] *= corr;
        }
      }
      // O += P V: P's C fragments are the A fragments of 16-key steps.
#pragma unroll
      for (int kk = 0; kk < kPfKeys / 16; ++kk) {
        uint32_t pa[4];
        const float* s0 = sc[2 * kk];
        const float* s1 = sc[2 * kk + 1];
        __half2 h0 = __floats2half2_rn(s0[0], s0[1]), h1 = __floats2half2_rn(s0[2], s0[3]);
        __half2 h2 = __floats2half2_rn(s1[0], s1[1]), h3 = __floats2half2_rn(s1[2], s1[3]);
        pa[0] = *reinterpret_cast<uint32_t*>(&h0);
        pa[1] = *reinterpret_cast<uint32_t*>(&h1);
        pa[2] = *reinterpret_cast<uint32_t*>(&h2);
        pa[3] = *reinterpret_cast<uint32_t*>(&h3);
#pragma unroll
        for (int np = 0; np < HD / 16; ++np) {
          uint32_t vb[4];
          ldmatrixX4T(vb, &vs[kk * 16 + (lane & 15)][np * 16 + (lane >> 4) * 8]);
          mma16816(o[2 * np], pa, vb[0], vb[1]);
          mma16816(o[2 * np + 1], pa, vb[2], vb[3]);
        }
      }
    }

    // Normalize and store this pass's rows.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float L = l[h];
      L += __shfl_xor_sync(0xffffffffu, L, 1);
      L += __shfl_xor_sync(0xffffffffu, L, 2);
      if (!active[h] || L == 0.f) continue;
      const float inv = 1.f / L;
      __half* dst = a.out + ((int64_t)(t0 + rTok[h]) * a.nh + rHead[h]) * HD + 2 * tq;
#pragma unroll
      for (int n = 0; n < HD / 8; ++n)
        *reinterpret_cast<__half2*>(dst + n * 8) = __floats2half2_rn(o[n][2 * h] * inv, o[n][2 * h + 1] * inv);
    }
    __syncthreads();  // every thread has read passSeq and tokSeq for this pass
    for (int i = threadIdx.x; i < tokens; i += blockDim.x)
      if (tokSeq[i] == seq) tokSeq[i] = -1;
    __syncthreads();  // before thread 0 scans tokSeq again
  }
}

}  // namespace

void launchAttention(const Ctx& c, const View& q, const View& kCache, const View& vCache,
                     const View& blockTables, const View& tokenSeq, const View& positions,
                     const AttentionShape& shape, const View& out) {
  const int T = (int)positions.numel();
  if (!T) return;
  const int nh = (int)shape.numHeads, nkv = (int)shape.numKvHeads, hd = (int)shape.headDim;
  if (nkv <= 0 || nh % nkv) throw BackendError("attention (CUDA): numHeads must be a multiple of numKvHeads");
  const int G = nh / nkv;
  if (G > 8 || (hd != 64 && hd != 128))
    throw BackendError("attention (CUDA): supports headDim 64 or 128 and at most 8 query heads per KV head; got headDim " +
                       std::to_string(hd) + ", " + std::to_string(G) + " heads per KV head");
  AttnArgs a{};
  a.q = q.as<__half>(); a.kc = kCache.as<__half>(); a.vc = vCache.as<__half>();
  a.blockTables = blockTables.as<int32_t>(); a.tokenSeq = tokenSeq.as<int32_t>(); a.positions = positions.as<int32_t>();
  a.out = out.as<__half>();
  a.nh = nh; a.nkv = nkv; a.G = G;
  a.blockSize = (int)kCache.dim(1);
  a.maxBlocks = (int)blockTables.dim(1);
  a.scale = shape.scale;
  // Several tokens per sequence on average (prefill): the tensor-core flash kernel.
  const int64_t numSeqs = blockTables.dim(0);
  if (tuning().attnPrefillMinTokensPerSeq > 0 && T >= tuning().attnPrefillMinTokensPerSeq * numSeqs && (hd == 64 || hd == 128) &&
      G <= 8 && (G & (G - 1)) == 0) {
    const int gShift = G == 1 ? 0 : G == 2 ? 1 : G == 4 ? 2 : 3;
    dim3 grid((unsigned)ceilDiv(T, kPfRows >> gShift), (unsigned)nkv);
    launchKernel(c, hd == 128 ? attnPrefill<128> : attnPrefill<64>, grid, dim3(128), 0, a, T, gShift);
    MC_LAUNCHED("attnPrefill");
    return;
  }
  // Decode: enough splits for ~attnDecodeBlocksPerSM blocks per multiprocessor, each token's
  // context cut on the GPU into that many parts of whole 64-key rounds (the real lengths live
  // there; a row of blockTables only bounds them).
  const int64_t cap = (int64_t)a.maxBlocks * a.blockSize;
  const int64_t base = (int64_t)T * nkv;
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>(ceilDiv(cap, kDecKeysPerRound),
                                                          ceilDiv((int64_t)tuning().attnDecodeBlocksPerSM * c.numSMs, base)));
  a.chunk = 0;
  // Deterministic mode: splits of a fixed 256 keys, so a row's sums do not depend on the batch
  // (T) or on the block table's width; splits past a row's context are skipped by the combine,
  // and one non-empty split combines to exactly the unsplit result.
  if (tuning().deterministic) {
    a.chunk = 256;
    splits = ceilDiv(cap, a.chunk);
  }
  a.splits = (int)splits;
  if (splits > 1) {
    size_t accBytes = (size_t)T * nh * splits * hd * 4;
    size_t mlBytes = (size_t)T * nh * splits * 2 * 4;
    char* ws = static_cast<char*>(c.attnScratch->get(accBytes + mlBytes, c.stream));
    a.wsAcc = reinterpret_cast<float*>(ws);
    a.wsML = reinterpret_cast<float*>(ws + accBytes);
  }
  dim3 grid(T, nkv, (unsigned)splits);
  const bool prefetch = tuning().attnDecodePrefetch && T * nkv * splits <= 2 * c.numSMs;
  auto kernel = hd == 128 ? (prefetch ? attnDecode<128, true> : attnDecode<128, false>)
                          : (prefetch ? attnDecode<64, true> : attnDecode<64, false>);
  launchKernel(c, kernel, grid, dim3(kDecWarps * 32), 0, a);
  MC_LAUNCHED("attention");
  if (splits > 1) {
    launchKernel(c, attnCombine, dim3((unsigned)T, (unsigned)nh), dim3((unsigned)hd), 0, a.wsAcc, a.wsML, a.out, nh,
                 (int)splits, hd);
    MC_LAUNCHED("attnCombine");
  }
}

}  // namespace cuda
}  // namespace medcluster
