// fp16 linear (lm_head), out [M, N] = x f16 [M, K] @ w f16 [N, K]^T, fp32 accumulation.
// A memory-bound GEMV: one warp per output column, 16-byte loads of the weight row,
// up to 8 rows of x per launch (larger M launches passes of 8; lm_head usually runs on
// the few rows gathered for sampling).
#include "common.cuh"
#include "tuning.h"

namespace medcluster {
namespace cuda {
namespace {

template <int MT, int P>  // P passes of MT rows (M <= MT * P)
__global__ void __launch_bounds__(256) linearGemv(const __half* __restrict__ x,  // [M, K]
                                                  const __half* __restrict__ w,  // [N, K]
                                                  void* __restrict__ out, bool outF16, int M, int K, int N) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * 8 + (threadIdx.x >> 5);
  if (n >= N) return;
  const __half* wr = w + (int64_t)n * K;
  float acc[P][MT];
#pragma unroll
  for (int p = 0; p < P; ++p)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[p][m] = 0.f;
  if (K % 8 == 0) {
    // K in chunks of 1024 (P > 1 passes over a chunk re-read its 2 KB of the weight row from
    // L1; the launcher uses P = 1 only, see there).
    for (int kc = 0; kc < K; kc += 1024) {
      const int kEnd = min(K, kc + 1024);
#pragma unroll
      for (int p = 0; p < P; ++p) {
        if (p * MT >= M) break;
        for (int k = kc + lane * 8; k < kEnd; k += 32 * 8) {
          uint4 wv = __ldg(reinterpret_cast<const uint4*>(wr + k));
          const __half2* w2 = reinterpret_cast<const __half2*>(&wv);
#pragma unroll
          for (int m = 0; m < MT; ++m) {
            if (p * MT + m >= M) break;
            uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + (int64_t)(p * MT + m) * K + k));
            const __half2* x2 = reinterpret_cast<const __half2*>(&xv);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              float2 a = __half22float2(w2[j]), b = __half22float2(x2[j]);
              acc[p][m] = fmaf(a.x, b.x, fmaf(a.y, b.y, acc[p][m]));
            }
          }
        }
      }
    }
  } else {
    for (int k = lane; k < K; k += 32) {
      float a = __half2float(wr[k]);
#pragma unroll
      for (int p = 0; p < P; ++p)
#pragma unroll
        for (int m = 0; m < MT; ++m)
          if (p * MT + m < M) acc[p][m] = fmaf(a, __half2float(x[(int64_t)(p * MT + m) * K + k]), acc[p][m]);
    }
  }
#pragma unroll
  for (int p = 0; p < P; ++p)
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      float v = acc[p][m];
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0 && p * MT + m < M) {
        const int64_t oi = (int64_t)(p * MT + m) * N + n;
        if (outF16) static_cast<__half*>(out)[oi] = __float2half(v);
        else static_cast<float*>(out)[oi] = v;
      }
    }
}

}  // namespace

void blasGemm(const Blas& b, const __half* x, const __half* w, bool wKN, void* out, bool outF16, int M, int K,
              int N) {
  // Column-major view: out^T [N, M] = op(w) [N, K] x^T [K, M]. Row-major w [K, N] is a
  // column-major [N, K] (no transpose, ld N); row-major [N, K] is a column-major [K, N]
  // (transposed, ld K). Row-major x [M, K] is a column-major [K, M] (ld K).
  const float one = 1.f, zero = 0.f;
  int st = b.api.gemmEx(b.handle, wKN ? cublasdl::CUBLAS_OP_N : cublasdl::CUBLAS_OP_T, cublasdl::CUBLAS_OP_N, N, M, K,
                        &one, w, cublasdl::CUDA_R_16F, wKN ? N : K, x, cublasdl::CUDA_R_16F, K, &zero, out,
                        outF16 ? cublasdl::CUDA_R_16F : cublasdl::CUDA_R_32F, N, cublasdl::CUBLAS_COMPUTE_32F,
                        cublasdl::CUBLAS_GEMM_DEFAULT);
  if (st != 0)
    throw BackendError("cublasGemmEx failed with status " + std::to_string(st) + " (M=" + std::to_string(M) +
                       " K=" + std::to_string(K) + " N=" + std::to_string(N) + ")");
}

// Rows above which the fp16 linear runs through cuBLAS (when loaded): the GEMV below
// re-reads the weights once per 8 rows (the 70B lm_head at M = 64: 4.0 ms per step).

void launchLinear(const Ctx& c, const View& x, const View& w, const View& out) {
  const int N = (int)w.dim(0), K = (int)w.dim(1);
  const int M = (int)(x.numel() / K);
  const bool f16 = out.dtype == DType::F16;
  if (M == 0) return;
  // (Never in deterministic mode: each row's sums then run in the GEMV's order whatever M is.)
  if (c.blas && !tuning().deterministic && M >= tuning().linearBlasMinM) {
    blasGemm(*c.blas, x.as<__half>(), w.as<__half>(), false, out.data, f16, M, K, N);
    return;
  }
  const size_t rowOut = (size_t)N * dtypeSize(out.dtype);
  unsigned grid = (unsigned)ceilDiv(N, 8);
  // Passes of 8 rows per launch (an in-kernel loop over 64 rows with x re-read from L1,
  // tried at fb64f51, was 2.5x slower at M = 64: 9.9 ms vs 4.0 ms for the 70B lm_head).
  for (int m0 = 0; m0 < M; m0 += 8) {
    const int mm = std::min(8, M - m0);
    const __half* xp = x.as<__half>() + (size_t)m0 * K;
    void* op = static_cast<char*>(out.data) + m0 * rowOut;
    if (mm == 1) linearGemv<1, 1><<<grid, 256, 0, c.stream>>>(xp, w.as<__half>(), op, f16, mm, K, N);
    else if (mm <= 4) linearGemv<4, 1><<<grid, 256, 0, c.stream>>>(xp, w.as<__half>(), op, f16, mm, K, N);
    else linearGemv<8, 1><<<grid, 256, 0, c.stream>>>(xp, w.as<__half>(), op, f16, mm, K, N);
    MC_LAUNCHED("linear");
  }
}

}  // namespace cuda
}  // namespace medcluster
