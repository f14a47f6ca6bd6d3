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
// Prefill uses the same kernel per query token (correct, CUDA cores only): a tensor-core
// flash kernel over query tiles is the next step for prefill throughput.
#include "common.cuh"

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
    if (valid) {
      int64_t slot = (int64_t)table[j / a.blockSize] * a.blockSize + j % a.blockSize;
      const uint4* kr = reinterpret_cast<const uint4*>(a.kc + slot * rowStride + (int64_t)kvh * HD);
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
    // P x V: lane owns dims [lane*EPL, lane*EPL + EPL).
    const int nKeys = min(32, end - base);
    for (int jj = 0; jj < nKeys; ++jj) {
      int jk = base + jj;
      int64_t slot = (int64_t)table[jk / a.blockSize] * a.blockSize + jk % a.blockSize;
      const __half* vr = a.vc + slot * rowStride + (int64_t)kvh * HD + lane * EPL;
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
  // The longest context a row of blockTables can hold; the real lengths live on the GPU.
  const int64_t cap = (int64_t)a.maxBlocks * a.blockSize;
  const int64_t base = (int64_t)T * nkv;
  int64_t splits = std::max<int64_t>(1, std::min<int64_t>(ceilDiv(cap, 128), ceilDiv(8 * c.numSMs, base)));
  int64_t chunk = ceilDiv(ceilDiv(cap, splits), 128) * 128;
  splits = ceilDiv(cap, chunk);
  a.chunk = (int)chunk;
  a.splits = (int)splits;
  if (splits > 1) {
    size_t accBytes = (size_t)T * nh * splits * hd * 4;
    size_t mlBytes = (size_t)T * nh * splits * 2 * 4;
    char* ws = static_cast<char*>(c.scratch2->get(accBytes + mlBytes, c.stream));
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
