// launchAwqLinear: out [M, N] = x f16 [M, K] @ dequant(W), W packed at load (../awq_layout.h).
//
//   M < tuning().awqDequantMinM, or no cuBLAS:  the stream-K GEMV (awq_gemv.cu), one launch
//       per 64 rows. Memory-bound up to M ~ 50 (it reads the weights once per launch).
//       From tuning().awqWgmmaMinM rows on a compute capability 9.0 device, the wgmma kernel
//       (awq_wgmma.cu) instead, on the same schedule, one launch per tuning().awqWgmmaPassRows
//       (128 or 256) rows.
//   M >= awqDequantMinM with cuBLAS loaded:      dequantize to f16 and one cuBLAS GEMM
//       (awq_dequant.cu), compute-bound.
// In deterministic mode (tuning().deterministic) every M runs the GEMV on one grid, whose per-row
// sums run in the same order for every M: a row's output does not depend on the other rows.
// A gated pack (w.gated, awq_layout.h): out f16 [M, N/2] = silu(gate) * up, applied by the GEMV's
// and the wgmma kernel's epilogues; the cuBLAS path writes the sums to scratch and a siluMul
// pass gates them.
#include <algorithm>

#include "awq.cuh"
#include "tuning.h"

namespace medcluster {
namespace cuda {

void launchAwqLinear(const Ctx& c, const View& x, const PackedAwqWeights& w, const View& out) {
  const int K = static_cast<int>(w.K), N = static_cast<int>(w.N);
  const int M = static_cast<int>(x.numel() / K);
  if (M == 0) return;
  if (w.groupSize != awqpack::kGroup)
    throw BackendError("awqLinear (CUDA): group size " + std::to_string(w.groupSize) +
                       " is not supported (the packed layout is for 128); M=" + std::to_string(M) +
                       " N=" + std::to_string(N) + " K=" + std::to_string(K));
  if (w.gated && (out.dtype != DType::F16 || N % 16))
    throw BackendError("awqLinear (CUDA): a gated pack writes f16 (N a multiple of 16); M=" + std::to_string(M) +
                       " N=" + std::to_string(N) + " out " + dtypeName(out.dtype));
  const PackedAwq pw{static_cast<const unsigned char*>(w.packed.data), K, N, w.gated};
  const bool f16 = out.dtype == DType::F16;
  const __half* xp = x.as<__half>();
  const int dq = tuning().deterministic ? 0 : tuning().awqDequantMinM;
  if (c.blas && dq > 0 && M >= dq) {
    if (!w.gated) return launchAwqDequantGemm(c, xp, pw, out.data, f16, M);
    __half* sums = static_cast<__half*>(c.gatedGemm->get(static_cast<size_t>(M) * N * 2, c.stream));
    launchAwqDequantGemm(c, xp, pw, sums, true, M);
    return launchSiluMul(c, sums, out.as<__half>(), M, N / 2, true);
  }
  char* op = static_cast<char*>(out.data);
  const size_t rowBytes = static_cast<size_t>(w.gated ? N / 2 : N) * dtypeSize(out.dtype);
  // Passes of awqWgmmaPassRows on the wgmma kernel (from tuning().awqWgmmaMinM rows), of 64 on the GEMV.
  const int wgmmaMin = tuning().awqWgmmaMinM;
  const bool wgmma = !tuning().deterministic && c.computeCapability == 90 && wgmmaMin > 0 && M >= wgmmaMin;
  auto gemv = [&](int m0, int rows) {
    for (int r0 = m0; r0 < m0 + rows; r0 += 64)
      launchAwqGemv(c, xp + static_cast<int64_t>(r0) * K, pw, op + r0 * rowBytes, f16, std::min(64, m0 + rows - r0));
  };
  if (!wgmma) return gemv(0, M);
  const int pass = tuning().awqWgmmaPassRows > 128 ? kAwqWgmmaMaxRows : 128;
  for (int m0 = 0; m0 < M; m0 += pass) {
    const int rows = std::min(pass, M - m0);
    if (rows >= wgmmaMin) launchAwqWgmma(c, xp + static_cast<int64_t>(m0) * K, pw, op + m0 * rowBytes, f16, rows);
    else gemv(m0, rows);
  }
}

}  // namespace cuda
}  // namespace medcluster
