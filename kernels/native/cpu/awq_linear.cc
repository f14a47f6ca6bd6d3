// AWQ GEMM linear on the CPU, reading AutoAWQ's packing directly.
//
// Threads take tiles of packed int32 columns; a tile is processed in units of 8 int32
// words (64 outputs). For each group of G inputs and each unit, every token row sums
//   A[m,c] = sum_k x[m,k] * q[k,c]        (k in the group, in order, fp32)
// in registers, then the group is folded in as
//   out[m,c] += fma(s[c], A[m,c], -(s[c]*z[c]) * X[m,g])      X[m,g] = sum_k x[m,k]
// which is (q - z) * s summed over the group, never an fp16 weight matrix.
// Every output's arithmetic is a fixed function of (K, G, its row of x, its column's
// weights): the same whatever M, the row's neighbours, the tile width or the thread,
// so a token row's result is bit-identical alone or in any batch.
//
// Why it is exact to skip shifts: x is an f16 value (11 significant bits) and q has 4,
// so x*q is exact in fp32 and an fma(x, q, A) rounds exactly like A + x*q. In the AVX2
// path nibble i of a word is taken as (word & (15 << 4i)) = q * 16^i (nibble 7 as
// word >> 28); scaling every term by a power of two scales every rounding with it,
// and s * 16^-i is exact, so fma(s*16^-i, A*16^i, ...) gives the same bits as the
// unscaled sum. The portable path computes the same function with std::fmaf (only
// in the once-per-group fold), so both paths give the same bits.
//
// Register blocking (16 ymm): a unit's int32 row is one 8-lane vector whose nibble i
// gives 8 columns (one per word) at once. R token rows x NB nibbles accumulators per
// pass over the group's k: R=1: 8 nibbles (8 accs); R=2: 4; R=3,4: 2. The group's
// words (G x 32 B) stay in L1 across passes and row blocks; the next group's rows are
// prefetched during the first pass.
//
// Performance (node kernels/dist/bench/cpu-bench.js, 2 threads, AMD EPYC Zen 5,
// memcpy ~31 GB/s read+write):
//   prediction before measuring, ms/call (M=1 / M=4 / M=16):
//     4096x4096:    0.7 / 1.0 / 3.5
//     8192x10240:   3.5 / 4.5 / 15
//     28672x8192:   8   / 11  / 40
//   before (scratch dequant + per-row L1 accumulators):
//     4096x4096:    4.25 / 7.19 / 19.68
//     8192x10240:  51.77 / 74.93 / 110.62
//     28672x8192: 118.29 / 183.09 / 350.62
//   after (two runs, machine is noisy by ~10%):
//     4096x4096:    0.63-0.66 / 1.37-1.49 / 4.67-4.89   (6.6x / 5.0x / 4.1x)
//     8192x10240:   2.78-2.99 / 6.50-6.65 / 22.1        (18x  / 11x  / 5.0x)
//     28672x8192:  10.8-10.9  / 26.1-26.2 / 89.5-94.1   (11x  / 7.0x / 3.8x)
//   Misses vs prediction: M=1 is still compute-bound (in-cache 2048x2048 runs at the
//   same per-weight rate), at 3 vector uops per 8 weights (and, cvt, fma) on 2 cores;
//   M>=4 is bound by the FMA pipes (one fma per 8 weights per row is the floor) plus
//   8-chain fma latency at R=4; 28672x8192 (qweight rows exactly 4 KiB apart) also
//   pays L1 set conflicts and a TLB walk per row run.
#include <algorithm>
#include <cmath>
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

// Up to 256 int32 columns (1 KiB of each qweight row, 2048 outputs) per tile: rows
// of big layers are a page apart, so long runs per row amortize the TLB walk; 16
// rows of fp32 sums (128 KiB) stay in L2.
constexpr int kMaxTileWords = 256;
constexpr int kMaxTileCols = kMaxTileWords * 8;
constexpr int kUnitWords = 8;
constexpr int kMaxUnits = kMaxTileWords / kUnitWords;
constexpr int64_t kRowBlock = 16;  // token rows sharing one pass over the weights

// Bit offset of column j (0..7) inside its int32: nibble [0,4,1,5,2,6,3,7][j].
constexpr int kShift[8] = {0, 16, 4, 20, 8, 24, 12, 28};
// Column (0..7) held by nibble i.
constexpr int kColOfNibble[8] = {0, 2, 4, 6, 1, 3, 5, 7};

struct Problem {
  const float* x;     // [M, K], converted from f16 once per call
  const float* xsum;  // [M, K/G], sum of x over each group, fixed order
  int64_t M, K, N, N8, G, NG;
  const uint32_t* qweight;
  const uint32_t* qzeros;
  const uint16_t* scales;
  const View* out;
};

// Sum of n floats in an order that depends only on n: 8 interleaved partial sums,
// a fixed pairwise fold, then the tail in order (built with -ffp-contract=off).
float sumFixed(const float* a, int64_t n) {
  float acc[8] = {};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    for (int j = 0; j < 8; j++) acc[j] += a[k + j];
  }
  for (int width = 4; width >= 1; width /= 2) {
    for (int j = 0; j < width; j++) acc[j] += acc[j + width];
  }
  float sum = acc[0];
  for (; k < n; k++) sum += a[k];
  return sum;
}

// ---------------------------------------------------------------------------------
// Portable path: natural column order; the same function as the AVX2 path.
struct PlainScratch {
  alignas(64) float acc[kRowBlock * kMaxTileCols];
  alignas(64) float scale[kMaxTileCols];
  alignas(64) float scaledZero[kMaxTileCols];
  alignas(64) float gsum[kMaxTileCols];
};

void tilePlain(const Problem& p, int64_t w0, int nw, PlainScratch& s) {
  const int cols = nw * 8;
  for (int64_t m0 = 0; m0 < p.M; m0 += kRowBlock) {
    const int64_t mb = std::min(kRowBlock, p.M - m0);
    std::fill(s.acc, s.acc + mb * kMaxTileCols, 0.0f);
    for (int64_t g = 0; g < p.NG; g++) {
      for (int c = 0; c < cols; c++) {
        const int64_t word = w0 + c / 8;
        const float sc = halfToFloat(p.scales[g * p.N + word * 8 + c % 8]);
        const uint32_t z = (p.qzeros[g * p.N8 + word] >> kShift[c % 8]) & 15u;
        s.scale[c] = sc;
        s.scaledZero[c] = sc * static_cast<float>(z);
      }
      for (int64_t m = 0; m < mb; m++) {
        std::fill(s.gsum, s.gsum + cols, 0.0f);
        const float* xr = p.x + (m0 + m) * p.K;
        for (int64_t k = g * p.G; k < (g + 1) * p.G; k++) {
          const uint32_t* row = p.qweight + k * p.N8 + w0;
          const float xv = xr[k];
          for (int c = 0; c < cols; c++) {
            const float q = static_cast<float>((row[c / 8] >> kShift[c % 8]) & 15u);
            s.gsum[c] = s.gsum[c] + xv * q;  // xv * q is exact
          }
        }
        const float xs = p.xsum[(m0 + m) * p.NG + g];
        float* a = s.acc + m * kMaxTileCols;
        for (int c = 0; c < cols; c++) a[c] = a[c] + std::fmaf(s.scale[c], s.gsum[c], -(s.scaledZero[c] * xs));
      }
    }
    for (int64_t m = 0; m < mb; m++) storeRow(s.acc + m * kMaxTileCols, *p.out, (m0 + m) * p.N + w0 * 8, cols);
  }
}

#ifdef MEDCLUSTER_X86
// ---------------------------------------------------------------------------------
// AVX2 + FMA (+F16C) path. Chosen once per process from CPUID.
//
// Accumulators are kept nibble-major per unit: acc[row][unit][nibble i][lane c] is
// output column 8*(unit word c) + kColOfNibble[i].
struct FmaScratch {
  alignas(64) float acc[kRowBlock * kMaxTileCols];
  alignas(64) float scale[64];       // [nibble][lane]: s * 16^-i (nibble 7: s)
  alignas(64) float scaledZero[64];  // [nibble][lane]: s * z
  alignas(64) float row[kMaxTileCols];
  alignas(64) uint16_t padScales[64];
  alignas(64) uint32_t padZeros[8];
  std::vector<uint32_t> padWords;  // [G][8] for a unit narrower than 8 words
};

__attribute__((target("avx2,fma,f16c"), always_inline)) inline __m256 nibble(__m256i v, int i) {
  if (i == 7) return _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 28));
  return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15 << (4 * i))));
}

// One pass over a group's k for R token rows and nibbles I0..I0+NB-1 of one unit,
// then the fold into the row accumulators.
template <int R, int I0, int NB>
__attribute__((target("avx2,fma,f16c"))) void groupPass(const uint32_t* w, int64_t stride, int64_t G,
                                                        const float* x, int64_t K, const float* xs,
                                                        int64_t ng, const float* scale,
                                                        const float* scaledZero, float* out,
                                                        const uint32_t* prefetch) {
  __m256 acc[R][NB];
  for (int r = 0; r < R; r++)
    for (int j = 0; j < NB; j++) acc[r][j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < G; k++) {
    if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(prefetch + k * stride), _MM_HINT_T0);
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k * stride));
    __m256 xb[R];
    for (int r = 0; r < R; r++) xb[r] = _mm256_broadcast_ss(x + r * K + k);
    for (int j = 0; j < NB; j++) {
      const __m256 q = nibble(v, I0 + j);
      for (int r = 0; r < R; r++) acc[r][j] = _mm256_fmadd_ps(xb[r], q, acc[r][j]);
    }
  }
  for (int r = 0; r < R; r++) {
    const __m256 xsv = _mm256_set1_ps(xs[r * ng]);
    float* o = out + r * kMaxTileCols;
    for (int j = 0; j < NB; j++) {
      const int i = I0 + j;
      const __m256 u = _mm256_mul_ps(_mm256_load_ps(scaledZero + 8 * i), xsv);
      const __m256 t = _mm256_fmsub_ps(_mm256_load_ps(scale + 8 * i), acc[r][j], u);
      _mm256_store_ps(o + 8 * i, _mm256_add_ps(_mm256_load_ps(o + 8 * i), t));
    }
  }
}

// Per-group constants of one unit, nibble-major: scale[i][c] = s(c, i) * 16^-i and
// scaledZero[i][c] = s(c, i) * z(c, i), for column 8c + kColOfNibble[i].
__attribute__((target("avx2,fma,f16c"))) void unitConstants(const uint16_t* scales, const uint32_t* zeros,
                                                            FmaScratch& s) {
  __m256 r[8];
  for (int c = 0; c < 8; c++)
    r[c] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + 8 * c)));
  // 8x8 transpose: t[j] lane c = r[c][j].
  const __m256 a0 = _mm256_unpacklo_ps(r[0], r[1]), a1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 a2 = _mm256_unpacklo_ps(r[2], r[3]), a3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 a4 = _mm256_unpacklo_ps(r[4], r[5]), a5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 a6 = _mm256_unpacklo_ps(r[6], r[7]), a7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 b0 = _mm256_shuffle_ps(a0, a2, 0x44), b1 = _mm256_shuffle_ps(a0, a2, 0xEE);
  const __m256 b2 = _mm256_shuffle_ps(a1, a3, 0x44), b3 = _mm256_shuffle_ps(a1, a3, 0xEE);
  const __m256 b4 = _mm256_shuffle_ps(a4, a6, 0x44), b5 = _mm256_shuffle_ps(a4, a6, 0xEE);
  const __m256 b6 = _mm256_shuffle_ps(a5, a7, 0x44), b7 = _mm256_shuffle_ps(a5, a7, 0xEE);
  __m256 t[8];
  t[0] = _mm256_permute2f128_ps(b0, b4, 0x20);
  t[1] = _mm256_permute2f128_ps(b1, b5, 0x20);
  t[2] = _mm256_permute2f128_ps(b2, b6, 0x20);
  t[3] = _mm256_permute2f128_ps(b3, b7, 0x20);
  t[4] = _mm256_permute2f128_ps(b0, b4, 0x31);
  t[5] = _mm256_permute2f128_ps(b1, b5, 0x31);
  t[6] = _mm256_permute2f128_ps(b2, b6, 0x31);
  t[7] = _mm256_permute2f128_ps(b3, b7, 0x31);
  const __m256i zw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(zeros));
  const __m256i mask = _mm256_set1_epi32(15);
  for (int i = 0; i < 8; i++) {
    const __m256 sc = t[kColOfNibble[i]];
    const __m256 z = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(zw, _mm256_set1_epi32(4 * i)), mask));
    _mm256_store_ps(s.scaledZero + 8 * i, _mm256_mul_ps(sc, z));
    const float pow = i == 7 ? 1.0f : std::ldexp(1.0f, -4 * i);
    _mm256_store_ps(s.scale + 8 * i, _mm256_mul_ps(sc, _mm256_set1_ps(pow)));
  }
}

__attribute__((target("avx2,fma,f16c"))) void tileFma(const Problem& p, int64_t w0, int nw, FmaScratch& s) {
  const int units = (nw + kUnitWords - 1) / kUnitWords;
  for (int64_t m0 = 0; m0 < p.M; m0 += kRowBlock) {
    const int64_t mb = std::min(kRowBlock, p.M - m0);
    std::fill(s.acc, s.acc + mb * kMaxTileCols, 0.0f);
    for (int64_t g = 0; g < p.NG; g++) {
      for (int u = 0; u < units; u++) {
        const int64_t uw0 = w0 + u * kUnitWords;
        const int uw = static_cast<int>(std::min<int64_t>(kUnitWords, w0 + nw - uw0));
        const uint32_t* w = p.qweight + g * p.G * p.N8 + uw0;
        int64_t stride = p.N8;
        const uint32_t* prefetch = g + 1 < p.NG ? w + p.G * stride : nullptr;
        if (uw == kUnitWords) {
          unitConstants(p.scales + g * p.N + uw0 * 8, p.qzeros + g * p.N8 + uw0, s);
        } else {
          // Narrow unit (the last of the matrix): zero-padded copies, same arithmetic.
          std::fill(s.padScales, s.padScales + 64, uint16_t{0});
          std::fill(s.padZeros, s.padZeros + 8, 0u);
          std::copy_n(p.scales + g * p.N + uw0 * 8, uw * 8, s.padScales);
          std::copy_n(p.qzeros + g * p.N8 + uw0, uw, s.padZeros);
          unitConstants(s.padScales, s.padZeros, s);
          s.padWords.assign(static_cast<size_t>(p.G * kUnitWords), 0u);
          for (int64_t k = 0; k < p.G; k++) std::copy_n(w + k * stride, uw, s.padWords.data() + k * kUnitWords);
          w = s.padWords.data();
          stride = kUnitWords;
          prefetch = nullptr;
        }
        for (int64_t r0 = 0; r0 < mb; r0 += 4) {
          const int64_t rr = std::min<int64_t>(4, mb - r0);
          const float* x = p.x + (m0 + r0) * p.K + g * p.G;
          const float* xs = p.xsum + (m0 + r0) * p.NG + g;
          float* o = s.acc + r0 * kMaxTileCols + u * 64;
          const uint32_t* pf = r0 == 0 ? prefetch : nullptr;
          const float* sc = s.scale;
          const float* sz = s.scaledZero;
          const int64_t K = p.K, G = p.G, ng = p.NG;
          switch (rr) {
            case 4:
              groupPass<4, 0, 2>(w, stride, G, x, K, xs, ng, sc, sz, o, pf);
              groupPass<4, 2, 2>(w, stride, G, x, K, xs, ng, sc, sz, o, nullptr);
              groupPass<4, 4, 2>(w, stride, G, x, K, xs, ng, sc, sz, o, nullptr);
              groupPass<4, 6, 2>(w, stride, G, x, K, xs, ng, sc, sz, o, nullptr);
              break;
            case 3:
              groupPass<3, 0, 2>(w, stride, G, x, K, xs, ng, sc, sz, o, pf);
              groupPass<3, 2, 2>(w, stride, G, x, K, xs, ng, sc, sz, o, nullptr);
              groupPass<3, 4, 2>(w, stride, G, x, K, xs, ng, sc, sz, o, nullptr);
              groupPass<3, 6, 2>(w, stride, G, x, K, xs, ng, sc, sz, o, nullptr);
              break;
            case 2:
              groupPass<2, 0, 4>(w, stride, G, x, K, xs, ng, sc, sz, o, pf);
              groupPass<2, 4, 4>(w, stride, G, x, K, xs, ng, sc, sz, o, nullptr);
              break;
            default:
              groupPass<1, 0, 8>(w, stride, G, x, K, xs, ng, sc, sz, o, pf);
              break;
          }
        }
      }
    }
    // Back to natural column order.
    for (int64_t m = 0; m < mb; m++) {
      const float* a = s.acc + m * kMaxTileCols;
      for (int u = 0; u < units; u++)
        for (int i = 0; i < 8; i++)
          for (int c = 0; c < 8; c++) s.row[(u * 8 + c) * 8 + kColOfNibble[i]] = a[u * 64 + i * 8 + c];
      storeRow(s.row, *p.out, (m0 + m) * p.N + w0 * 8, nw * 8);
    }
  }
}

bool haveFma() {
  static const bool ok =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return ok;
}
#else
struct FmaScratch {};
void tileFma(const Problem&, int64_t, int, FmaScratch&) {}
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
  p.NG = p.K / p.G;
  p.qweight = w.qweight.as<uint32_t>();
  p.qzeros = w.qzeros.as<uint32_t>();
  p.scales = w.scales.as<uint16_t>();
  p.out = &out;

  std::vector<float> xf(static_cast<size_t>(p.M * p.K));
  std::vector<float> xsum(static_cast<size_t>(p.M * p.NG));
  const uint16_t* xh = x.as<uint16_t>();
  pool.parallelFor(p.M, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      float* xr = xf.data() + r * p.K;
      halfToFloatRow(xh + r * p.K, xr, p.K);
      for (int64_t g = 0; g < p.NG; g++) xsum[r * p.NG + g] = sumFixed(xr + g * p.G, p.G);
    }
  });
  p.x = xf.data();
  p.xsum = xsum.data();

  // Tile width only changes which thread computes a column, never how, so it may
  // follow the thread count: aim for a few tiles per thread.
  // Wide tiles read long runs of each qweight row (a row of a big layer is a page
  // apart from the next, so each run costs a TLB walk); as many tiles as a multiple
  // of the thread count keeps the threads even.
  const int64_t threads = pool.size();
  int64_t tiles = (p.N8 + kMaxTileWords - 1) / kMaxTileWords;
  tiles = (tiles + threads - 1) / threads * threads;
  const int tileWords = static_cast<int>(
      std::clamp<int64_t>(((p.N8 + tiles - 1) / tiles + 7) / 8 * 8, 8, kMaxTileWords));
  tiles = (p.N8 + tileWords - 1) / tileWords;
  const bool fma = haveFma();
  pool.parallelFor(tiles, 1, [&](int64_t t0, int64_t t1) {
    std::unique_ptr<FmaScratch> fs;
    std::unique_ptr<PlainScratch> ps;
    if (fma) {
      fs = std::make_unique<FmaScratch>();
    } else {
      ps = std::make_unique<PlainScratch>();
    }
    for (int64_t t = t0; t < t1; t++) {
      const int64_t w0 = t * tileWords;
      const int nw = static_cast<int>(std::min<int64_t>(tileWords, p.N8 - w0));
      if (fma) {
        tileFma(p, w0, nw, *fs);
      } else {
        tilePlain(p, w0, nw, *ps);
      }
    }
  });
}

}  // namespace medcluster::cpu
