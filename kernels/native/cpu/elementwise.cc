// Row-wise and element-wise ops: RMSNorm (with the fused residual add), residual
// add, SwiGLU's silu(gate) * up, RoPE, embedding, row gather, column copy,
// KV writes.
// All split over rows; reductions within a row run in one fixed order.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "dot.h"
#include "half.h"
#include "kernels.h"

namespace medcluster::cpu {

void storeRow(const float* src, const View& out, int64_t offset, int64_t n) {
  if (out.dtype == DType::F32) {
    std::memcpy(out.as<float>() + offset, src, static_cast<size_t>(n) * 4);
  } else {
    uint16_t* dst = out.as<uint16_t>() + offset;
    for (int64_t i = 0; i < n; i++) dst[i] = floatToHalf(src[i]);
  }
}

// HF LlamaRMSNorm on an f32 residual: f16(w * (x * rsqrt(mean(x^2) + eps))).
void rmsNorm(ThreadPool& pool, const View& x, const View* delta, const View& w, float eps,
             const View& out) {
  const int64_t T = x.dim(0), H = x.dim(1);
  float* xs = x.as<float>();
  const float* ds = delta ? delta->as<float>() : nullptr;
  std::vector<float> wf(static_cast<size_t>(H));
  halfToFloatRow(w.as<uint16_t>(), wf.data(), H);
  uint16_t* o = out.as<uint16_t>();
  pool.parallelFor(T, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      float* row = xs + r * H;
      if (ds) {
        for (int64_t i = 0; i < H; i++) row[i] += ds[r * H + i];
      }
      const float variance = dotFixed(row, row, H) / static_cast<float>(H);
      const float inv = 1.0f / std::sqrt(variance + eps);
      for (int64_t i = 0; i < H; i++) o[r * H + i] = floatToHalf(wf[i] * (row[i] * inv));
    }
  });
}

void addInPlace(ThreadPool& pool, const View& residual, const View& delta) {
  float* r = residual.as<float>();
  const float* d = delta.as<float>();
  pool.parallelFor(residual.numel(), 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) r[i] += d[i];
  });
}

void siluMul(ThreadPool& pool, const View& gateUp, const View& out) {
  const uint16_t* gu = gateUp.as<uint16_t>();
  uint16_t* o = out.as<uint16_t>();
  const int64_t I = out.dim(1);
  pool.parallelFor(out.numel(), 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) {
      const int64_t t = i / I, c = i % I;
      const float gv = halfToFloat(gu[t * 2 * I + c]);
      const float silu = gv / (1.0f + std::exp(-gv));
      o[i] = floatToHalf(silu * halfToFloat(gu[t * 2 * I + I + c]));
    }
  });
}

// HF rotate-half RoPE: inv_freq[i] = 1 / theta^(2i/hd) and angle = (float)pos * inv_freq,
// both in fp32 as transformers computes them; cos/sin and the rotation in fp32, one
// rounding to f16 at the end.
void rope(ThreadPool& pool, const View& q, const View& k, const View& positions, int64_t headDim,
          float theta) {
  const int64_t T = q.dim(0), half = headDim / 2;
  std::vector<float> invFreq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; i++) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(headDim);
    invFreq[i] = 1.0f / std::pow(theta, exponent);
  }
  const int32_t* pos = positions.as<int32_t>();
  pool.parallelFor(T, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> cosv(half), sinv(half);
    for (int64_t t = t0; t < t1; t++) {
      for (int64_t i = 0; i < half; i++) {
        const float angle = static_cast<float>(pos[t]) * invFreq[i];
        cosv[i] = std::cos(angle);
        sinv[i] = std::sin(angle);
      }
      for (const View* v : {&q, &k}) {
        const int64_t width = v->dim(1);
        uint16_t* row = v->as<uint16_t>() + t * width;
        for (int64_t h = 0; h < width / headDim; h++) {
          uint16_t* x = row + h * headDim;
          for (int64_t i = 0; i < half; i++) {
            const float a = halfToFloat(x[i]), b = halfToFloat(x[i + half]);
            x[i] = floatToHalf(a * cosv[i] - b * sinv[i]);
            x[i + half] = floatToHalf(b * cosv[i] + a * sinv[i]);
          }
        }
      }
    }
  });
}

void embedding(ThreadPool& pool, const View& table, const View& ids, const View& out) {
  const int64_t T = ids.dim(0), H = table.dim(1);
  const uint16_t* tab = table.as<uint16_t>();
  const int32_t* id = ids.as<int32_t>();
  float* o = out.as<float>();
  pool.parallelFor(T, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) halfToFloatRow(tab + static_cast<int64_t>(id[t]) * H, o + t * H, H);
  });
}

void gatherRows(const View& x, const View& rows, const View& out) {
  const int64_t R = rows.dim(0);
  const size_t rowBytes = static_cast<size_t>(x.numel() / x.dim(0)) * dtypeSize(x.dtype);
  const int32_t* r = rows.as<int32_t>();
  for (int64_t i = 0; i < R; i++) {
    std::memcpy(static_cast<char*>(out.data) + i * rowBytes,
                static_cast<const char*>(x.data) + static_cast<int64_t>(r[i]) * rowBytes, rowBytes);
  }
}

void copyCols(ThreadPool& pool, const View& src, int64_t srcCol0, const View& dst, int64_t dstCol0,
              int64_t cols) {
  const int64_t R = src.dim(0);
  const size_t es = dtypeSize(src.dtype);
  const size_t srcPitch = static_cast<size_t>(src.dim(1)) * es;
  const size_t dstPitch = static_cast<size_t>(dst.dim(1)) * es;
  const size_t rowBytes = static_cast<size_t>(cols) * es;
  if (R == 0 || rowBytes == 0) return;
  const char* s = static_cast<const char*>(src.data) + static_cast<size_t>(srcCol0) * es;
  char* d = static_cast<char*>(dst.data) + static_cast<size_t>(dstCol0) * es;
  // Rows of at least ~64 KiB per task.
  const int64_t grain = std::max<int64_t>(1, static_cast<int64_t>((size_t{1} << 16) / rowBytes));
  pool.parallelFor(R, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) std::memcpy(d + r * dstPitch, s + r * srcPitch, rowBytes);
  });
}

void writeKv(const View& kCache, const View& vCache, const View& k, const View& v, const View& slots) {
  const int64_t T = k.dim(0), width = k.dim(1);
  const int32_t* s = slots.as<int32_t>();
  const size_t bytes = static_cast<size_t>(width) * 2;
  for (int64_t t = 0; t < T; t++) {
    const int64_t at = static_cast<int64_t>(s[t]) * width;
    std::memcpy(kCache.as<uint16_t>() + at, k.as<uint16_t>() + t * width, bytes);
    std::memcpy(vCache.as<uint16_t>() + at, v.as<uint16_t>() + t * width, bytes);
  }
}

}  // namespace medcluster::cpu
