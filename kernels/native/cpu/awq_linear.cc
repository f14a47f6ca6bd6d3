// AWQ GEMM linear on the CPU, reading AutoAWQ's packing directly.
//
// Threads take tiles of packed int32 columns (8 outputs each). Within a tile, the
// qweight rows are streamed once per block of token rows, each int32 is unpacked and
// dequantized as q*s - s*z (one fma with per-group s and s*z, never an fp16 weight
// matrix), and every token row accumulates into its own fp32 sums. Each output's sum
// runs over k = 0..K-1 in order with the same arithmetic whatever M, the tile width
// or the thread is, so a token row's result is bit-identical alone or in any batch.
#include <algorithm>
#include <memory>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MEDCLUSTER_X86 1
#endif

#include "half.h"
#include "kernels.h"

namespace medcluster::cpu {
namespace {

// Up to 64 int32 columns (256 contiguous bytes of each qweight row, 512 outputs) per
// tile: long enough runs for the prefetchers, small enough that 16 rows of fp32 sums
// (32 KiB) stay in L1/L2.
constexpr int kMaxTileWords = 64;
constexpr int kMaxTileCols = kMaxTileWords * 8;
constexpr int64_t kRowBlock = 16;  // token rows sharing one pass over the weights

// Bit offset of column j (0..7) inside its int32: nibble [0,4,1,5,2,6,3,7][j].
constexpr int kShift[8] = {0, 16, 4, 20, 8, 24, 12, 28};

struct Problem {
  const float* x;  // [M, K], converted from f16 once per call
  int64_t M, K, N, N8, G;
  const uint32_t* qweight;
  const uint32_t* qzeros;
  const uint16_t* scales;
  const View* out;
};

struct Scratch {
  alignas(64) float acc[kRowBlock * kMaxTileCols];
  alignas(64) float scale[kMaxTileCols];
  alignas(64) float scaledZero[kMaxTileCols];
  alignas(64) float w[kMaxTileCols];
};

// Per-group constants s and s*z for the tile's columns.
void groupConstants(const Problem& p, int64_t g, int64_t w0, int nw, Scratch& s) {
  for (int c = 0; c < nw * 8; c++) {
    const int64_t word = w0 + c / 8;
    const float sc = halfToFloat(p.scales[g * p.N + word * 8 + c % 8]);
    const uint32_t z = (p.qzeros[g * p.N8 + word] >> kShift[c % 8]) & 15u;
    s.scale[c] = sc;
    s.scaledZero[c] = sc * static_cast<float>(z);
  }
}

void storeTile(const Problem& p, int64_t m0, int64_t mb, int64_t w0, int nw, const Scratch& s) {
  for (int64_t m = 0; m < mb; m++) storeRow(s.acc + m * kMaxTileCols, *p.out, (m0 + m) * p.N + w0 * 8, nw * 8);
}

// Portable path: separate multiply and add (the build disables contraction).
void tilePlain(const Problem& p, int64_t w0, int nw, Scratch& s) {
  const int cols = nw * 8;
  for (int64_t m0 = 0; m0 < p.M; m0 += kRowBlock) {
    const int64_t mb = std::min(kRowBlock, p.M - m0);
    std::fill(s.acc, s.acc + mb * kMaxTileCols, 0.0f);
    for (int64_t g = 0; g < p.K / p.G; g++) {
      groupConstants(p, g, w0, nw, s);
      for (int64_t k = g * p.G; k < (g + 1) * p.G; k++) {
        const uint32_t* row = p.qweight + k * p.N8 + w0;
        for (int c = 0; c < cols; c++) {
          const float q = static_cast<float>((row[c / 8] >> kShift[c % 8]) & 15u);
          s.w[c] = q * s.scale[c] - s.scaledZero[c];
        }
        for (int64_t m = 0; m < mb; m++) {
          const float xv = p.x[(m0 + m) * p.K + k];
          float* a = s.acc + m * kMaxTileCols;
          for (int c = 0; c < cols; c++) a[c] = xv * s.w[c] + a[c];
        }
      }
    }
    storeTile(p, m0, mb, w0, nw, s);
  }
}

#ifdef MEDCLUSTER_X86
// AVX2 + FMA path: one variable shift unpacks an int32's 8 columns in order.
// Chosen once per process from CPUID, so every call on a machine rounds the same way.
__attribute__((target("avx2,fma"))) void tileFma(const Problem& p, int64_t w0, int nw, Scratch& s) {
  const __m256i shifts = _mm256_setr_epi32(0, 16, 4, 20, 8, 24, 12, 28);
  const __m256i mask = _mm256_set1_epi32(15);
  for (int64_t m0 = 0; m0 < p.M; m0 += kRowBlock) {
    const int64_t mb = std::min(kRowBlock, p.M - m0);
    std::fill(s.acc, s.acc + mb * kMaxTileCols, 0.0f);
    for (int64_t g = 0; g < p.K / p.G; g++) {
      groupConstants(p, g, w0, nw, s);
      for (int64_t k = g * p.G; k < (g + 1) * p.G; k++) {
        const uint32_t* row = p.qweight + k * p.N8 + w0;
        for (int i = 0; i < nw; i++) {
          const __m256i q = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(row[i])), shifts), mask);
          const __m256 w = _mm256_fmsub_ps(_mm256_cvtepi32_ps(q), _mm256_load_ps(s.scale + 8 * i),
                                           _mm256_load_ps(s.scaledZero + 8 * i));
          _mm256_store_ps(s.w + 8 * i, w);
        }
        for (int64_t m = 0; m < mb; m++) {
          const __m256 xv = _mm256_set1_ps(p.x[(m0 + m) * p.K + k]);
          float* a = s.acc + m * kMaxTileCols;
          for (int i = 0; i < nw; i++) {
            _mm256_store_ps(a + 8 * i, _mm256_fmadd_ps(xv, _mm256_load_ps(s.w + 8 * i), _mm256_load_ps(a + 8 * i)));
          }
        }
      }
    }
    storeTile(p, m0, mb, w0, nw, s);
  }
}

bool haveFma() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#else
void tileFma(const Problem& p, int64_t w0, int nw, Scratch& s) { tilePlain(p, w0, nw, s); }
bool haveFma() { return false; }
#endif

}  // namespace

void awqLinear(ThreadPool& pool, const View& x, const AwqWeights& w, const View& out) {
  Problem p;
  p.M = x.dim(0);
  p.K = x.dim(1);
  p.N = out.dim(1);
  p.N8 = p.N / 8;
  p.G = w.groupSize;
  p.qweight = w.qweight.as<uint32_t>();
  p.qzeros = w.qzeros.as<uint32_t>();
  p.scales = w.scales.as<uint16_t>();
  p.out = &out;

  std::vector<float> xf(static_cast<size_t>(p.M * p.K));
  const uint16_t* xh = x.as<uint16_t>();
  pool.parallelFor(p.M, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) halfToFloatRow(xh + r * p.K, xf.data() + r * p.K, p.K);
  });
  p.x = xf.data();

  // Tile width only changes which thread computes a column, never how, so it may
  // follow the thread count: aim for a few tiles per thread.
  const int64_t want = p.N8 / (4 * pool.size());
  const int tileWords = static_cast<int>(std::clamp<int64_t>(want / 8 * 8, 8, kMaxTileWords));
  const int64_t tiles = (p.N8 + tileWords - 1) / tileWords;
  const bool fma = haveFma();
  pool.parallelFor(tiles, 1, [&](int64_t t0, int64_t t1) {
    auto scratch = std::make_unique<Scratch>();
    for (int64_t t = t0; t < t1; t++) {
      const int64_t w0 = t * tileWords;
      const int nw = static_cast<int>(std::min<int64_t>(tileWords, p.N8 - w0));
      if (fma) {
        tileFma(p, w0, nw, *scratch);
      } else {
        tilePlain(p, w0, nw, *scratch);
      }
    }
  });
}

}  // namespace medcluster::cpu
