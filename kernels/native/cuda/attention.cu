// Causal attention over the paged KV cache (backend.h semantics).
//
// One block per (token, KV head, split of the context): the G query heads that share
// the KV head are handled together, so each K/V row is read once for all of them (GQA).
// Each of the 4 warps takes tiles of 32 keys: a lane scores one key against the G
// queries, the warp updates its online softmax (running max m, sum l, per head), then
// the lanes switch to owning head dimensions and accumulate P x V. The block merges its
// warps; with several splits the partial (m, l, unnormalized O) goes to a workspace and
// a combine kernel merges the splits. The score matrix is never materialized.
//
// Steps with several tokens per sequence (prefill) use a tensor-core flash kernel instead
// (attnPrefill below): tiles of query rows against chunks of keys, mma.sync.
#include "common.cuh"
#include "mma.cuh"
#include "ptx.cuh"
#include "tuning.h"

namespace medcluster {
namespace cuda {
namespace {

constexpr int kWarps = 4;
constexpr float kLog2e = 1.4426950408889634f;

struct AttnArgs {
  const __half* q; const __half* kc; const __half* vc;
  const int32_t* blockTables; const int32_t* tokenSeq; const int32_t* positions;
  __half* out; float* wsAcc; float* wsML;
  int nh, nkv, G, blockSize, maxBlocks, chunk, splits;
  float scale;
};

template <int GT, int EPL>  // GT >= G query heads per KV head; EPL = headDim / 32
__global__ void __launch_bounds__(kWarps * 32) attnKernel(AttnArgs a) {
  constexpr int HD = EPL * 32;
  pdlLaunchDependents();  // the o matmul after attention may start prefetching its weights
  __shared__ __align__(16) float qs[GT][HD];
  __shared__ float ps[kWarps][32][GT];
  __shared__ float wm[kWarps][GT], wl[kWarps][GT];
  __shared__ float wacc[kWarps][GT][HD];

  const int t = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int ctx = a.positions[t] + 1;
  const int start = split * a.chunk, end = min(ctx, start + a.chunk);
  const int64_t rowStride = (int64_t)a.nkv * HD;

  if (start >= end) {  // this split holds none of the token's keys
    for (int g = threadIdx.x; g < a.G; g += blockDim.x) {
      int64_t o = ((int64_t)t * a.nh + kvh * a.G + g) * a.splits + split;
      a.wsML[2 * o] = -INFINITY;
      a.wsML[2 * o + 1] = 0.f;
    }
    return;
  }
  for (int i = threadIdx.x; i < GT * HD; i += blockDim.x) {
    int g = i / HD, e = i % HD;
    qs[g][e] = g < a.G ? __half2float(a.q[((int64_t)t * a.nh + kvh * a.G + g) * HD + e]) * a.scale * kLog2e : 0.f;
  }
  __syncthreads();

  const int32_t* table = a.blockTables + (int64_t)a.tokenSeq[t] * a.maxBlocks;
  float m[GT], l[GT], acc[GT][EPL];
#pragma unroll
  for (int g = 0; g < GT; ++g) {
    m[g] = -INFINITY; l[g] = 0.f;
#pragma unroll
    for (int e = 0; e < EPL; ++e) acc[g][e] = 0.f;
  }

  for (int base = start + warp * 32; base < end; base += kWarps * 32) {
    // Scores: lane owns key base + lane.
    const int j = base + lane;
    const bool valid = j < end;
    float s[GT];
#pragma unroll
    for (int g = 0; g < GT; ++g) s[g] = 0.f;
    // This lane's key slot, looked up once: the P x V loop below takes each key's from its lane.
    const int slot = valid ? table[j / a.blockSize] * a.blockSize + j % a.blockSize : 0;
    if (valid) {
      const uint4* kr = reinterpret_cast<const uint4*>(a.kc + (int64_t)slot * rowStride + (int64_t)kvh * HD);
#pragma unroll 4
      for (int c = 0; c < HD / 8; ++c) {
        uint4 kv = __ldg(kr + c);
        const __half2* k2 = reinterpret_cast<const __half2*>(&kv);
        float kf[8];
#pragma unroll
        for (int i = 0; i < 4; ++i) { float2 f = __half22float2(k2[i]); kf[2 * i] = f.x; kf[2 * i + 1] = f.y; }
#pragma unroll
        for (int g = 0; g < GT; ++g) {
          float4 q0 = *reinterpret_cast<const float4*>(&qs[g][c * 8]);
          float4 q1 = *reinterpret_cast<const float4*>(&qs[g][c * 8 + 4]);
          s[g] += q0.x * kf[0] + q0.y * kf[1] + q0.z * kf[2] + q0.w * kf[3] +
                  q1.x * kf[4] + q1.y * kf[5] + q1.z * kf[6] + q1.w * kf[7];
        }
      }
    }
    // Online softmax per head (base-2 exponent: the scores carry log2(e)).
#pragma unroll
    for (int g = 0; g < GT; ++g) {
      float sv = valid ? s[g] : -INFINITY;
      float mt = sv;
      for (int o = 16; o > 0; o >>= 1) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, o));
      float mNew = fmaxf(m[g], mt);
      float p = valid ? exp2f(sv - mNew) : 0.f;
      float corr = exp2f(m[g] - mNew);
      float ps_ = p;
      for (int o = 16; o > 0; o >>= 1) ps_ += __shfl_xor_sync(0xffffffffu, ps_, o);
      l[g] = l[g] * corr + ps_;
      m[g] = mNew;
#pragma unroll
      for (int e = 0; e < EPL; ++e) acc[g][e] *= corr;
      ps[warp][lane][g] = p;
    }
    __syncwarp();
    // P x V: lane owns dims [lane*EPL, lane*EPL + EPL). Unrolled so that several V rows are
    // in flight at once (one row at a time made decode latency-bound: ~30 us per layer at batch 1).
    const int nKeys = min(32, end - base);
#pragma unroll 8
    for (int jj = 0; jj < nKeys; ++jj) {
      const int64_t keySlot = __shfl_sync(0xffffffffu, slot, jj);
      const __half* vr = a.vc + keySlot * rowStride + (int64_t)kvh * HD + lane * EPL;
      float vf[EPL];
      if constexpr (EPL == 4) {
        uint2 vv = __ldg(reinterpret_cast<const uint2*>(vr));
        float2 f0 = __half22float2(*reinterpret_cast<__half2*>(&vv.x));
        float2 f1 = __half22float2(*reinterpret_cast<__half2*>(&vv.y));
        vf[0] = f0.x; vf[1] = f0.y; vf[2] = f1.x; vf[3] = f1.y;
      } else {
#pragma unroll
        for (int e = 0; e < EPL; ++e) vf[e] = __half2float(vr[e]);
      }
#pragma unroll
      for (int g = 0; g < GT; ++g) {
        float p = ps[warp][jj][g];
#pragma unroll
        for (int e = 0; e < EPL; ++e) acc[g][e] = fmaf(p, vf[e], acc[g][e]);
      }
    }
    __syncwarp();
  }

  // Merge the warps.
#pragma unroll
  for (int g = 0; g < GT; ++g) {
    if (lane == 0) { wm[warp][g] = m[g]; wl[warp][g] = l[g]; }
#pragma unroll
    for (int e = 0; e < EPL; ++e) wacc[warp][g][lane * EPL + e] = acc[g][e];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < a.G * HD; i += blockDim.x) {
    int g = i / HD, e = i % HD;
    float M = -INFINITY;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, wm[w][g]);
    float L = 0.f, O = 0.f;
    for (int w = 0; w < kWarps; ++w) {
      float f = exp2f(wm[w][g] - M);  // 0 for a warp that saw no keys
      L += wl[w][g] * f;
      O += wacc[w][g][e] * f;
    }
    const int head = kvh * a.G + g;
    if (a.splits == 1) {
      a.out[((int64_t)t * a.nh + head) * HD + e] = __float2half(O / L);
    } else {
      int64_t o = ((int64_t)t * a.nh + head) * a.splits + split;
      a.wsAcc[o * HD + e] = O;
      if (e == 0) { a.wsML[2 * o] = M; a.wsML[2 * o + 1] = L; }
    }
  }
}

// grid (T, nh), block HD threads: merges the splits of one (token, head).
__global__ void attnCombine(const float* wsAcc, const float* wsML, __half* out, int nh, int splits, int hd) {
  pdlLaunchDependents();
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

template <int GT, int EPL>
void launchT(dim3 grid, const AttnArgs& a, cudaStream_t s) {
  attnKernel<GT, EPL><<<grid, kWarps * 32, 0, s>>>(a);
}
template <int EPL>
void launchG(int gt, dim3 grid, const AttnArgs& a, cudaStream_t s) {
  switch (gt) {
    case 1: return launchT<1, EPL>(grid, a, s);
    case 2: return launchT<2, EPL>(grid, a, s);
    case 4: return launchT<4, EPL>(grid, a, s);
    default: return launchT<8, EPL>(grid, a, s);
  }
}

}  // namespace

// Tokens per sequence (T / number of block-table rows) from which a step's attention runs on
// the tensor-core prefill kernel (0: never; the check program moves it to test both kernels).

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
  const int gt = G == 1 ? 1 : G == 2 ? 2 : G <= 4 ? 4 : 8;
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
    if (hd == 128) attnPrefill<128><<<grid, 128, 0, c.stream>>>(a, T, gShift);
    else attnPrefill<64><<<grid, 128, 0, c.stream>>>(a, T, gShift);
    MC_LAUNCHED("attnPrefill");
    return;
  }
  // The longest context a row of blockTables can hold; the real lengths live on the GPU.
  const int64_t cap = (int64_t)a.maxBlocks * a.blockSize;
  const int64_t base = (int64_t)T * nkv;
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>(ceilDiv(cap, 128), ceilDiv(8 * c.numSMs, base)));
  int64_t chunk = ceilDiv(ceilDiv(cap, splits), 128) * 128;
  // Deterministic mode: splits of a fixed 256 keys, so a row's sums do not depend on the batch
  // (T) or on the block table's width; splits past a row's context are skipped by the combine,
  // and one non-empty split combines to exactly the unsplit result.
  if (tuning().deterministic) chunk = 256;
  splits = ceilDiv(cap, chunk);
  a.chunk = (int)chunk;
  a.splits = (int)splits;
  if (splits > 1) {
    size_t accBytes = (size_t)T * nh * splits * hd * 4;
    size_t mlBytes = (size_t)T * nh * splits * 2 * 4;
    char* ws = static_cast<char*>(c.attnScratch->get(accBytes + mlBytes, c.stream));
    a.wsAcc = reinterpret_cast<float*>(ws);
    a.wsML = reinterpret_cast<float*>(ws + accBytes);
  }
  dim3 grid(T, nkv, (unsigned)splits);
  if (hd == 128) launchG<4>(gt, grid, a, c.stream);
  else launchG<2>(gt, grid, a, c.stream);
  MC_LAUNCHED("attention");
  if (splits > 1) {
    attnCombine<<<dim3(T, nh), hd, 0, c.stream>>>(a.wsAcc, a.wsML, a.out, nh, (int)splits, hd);
    MC_LAUNCHED("attnCombine");
  }
}

}  // namespace cuda
}  // namespace medcluster
