// Host-only test of the packed AWQ layout and of the GEMV's index arithmetic, runnable on a
// machine without a GPU (nvcc compiles it; nothing runs on a device):
//   nvcc -std=c++17 -O2 -x cu kernels/gpu/layout-test.cu -o /tmp/layout-test && /tmp/layout-test
//
// 1. locate() and weightAt() are inverse bijections over a unit.
// 2. A host copy of the pack kernel's loop (awq_pack.cu) packs random AutoAWQ tensors.
// 3. An emulation of the GEMV (awq_gemv.cu) reads the packed bytes exactly as its warps do:
//    per lane the 16-byte weight chunk, fragNibbles() per mma register (M > 8) or fragRawNibbles()
//    with the columns' pairs applied to the half group's sums of x q and of x (M <= 8), x's B
//    fragments by ldmatrix from the stage's swizzled planes, the mma.m16n8k16 fragment layouts of
//    the PTX ISA (A row-major 16x16, B column-major 16x8, C 16x8), the C fragment -> output
//    mapping of the flush, and the stream-K schedule with its partial slots and block-ordered
//    fix-up (splitk.cuh's StreamK). The dequantized values are exact ((q - z) * s in double): this
//    tests where every byte goes, not rounding.
// 4. An emulation of the wgmma kernel (awq_wgmma.cu): the stage's swizzled planes of x as the
//    tensor copy writes them, B read back through the kernel's matrix descriptors, the A and D
//    fragments of its warps, the same stream-K schedule.
// The result must equal a plain float64 GEMM on the AutoAWQ tensors for every shape.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "../native/awq_layout.h"
#include "../native/cuda/splitk.cuh"
#include "../native/cuda/wgmma.cuh"

using namespace medcluster;
using namespace medcluster::awqpack;
using medcluster::cuda::StreamK;

static int failures = 0;
#define CHECK(cond, ...)            \
  do {                              \
    if (!(cond)) {                  \
      ++failures;                   \
      std::printf("FAIL " __VA_ARGS__); \
      std::printf("\n");            \
    }                               \
  } while (0)

static float halfToFloat(uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  float v = e == 0 ? std::ldexp((float)m, -24) : std::ldexp((float)(m | 1024), e - 25);
  return s ? -v : v;
}

static uint16_t floatToHalf(float f) { return __half_as_ushort(__float2half_rn(f)); }

// A column's (multiplier, addend) pair, computed as awqColumnPair does on the device.
static uint32_t hostPair(uint16_t s, int z, int e) {
  const float sf = halfToFloat(s);
  const uint16_t mul = floatToHalf(sf * std::ldexp(1.f, 18 - e));
  const uint16_t add = floatToHalf(-(float)z * sf * std::ldexp(1.f, -e));
  return (uint32_t)mul | (uint32_t)add << 16;
}

// The pack kernel's loop, on the host.
static std::vector<uint8_t> pack(const std::vector<uint32_t>& qw, const std::vector<uint32_t>& qz,
                                 const std::vector<uint16_t>& sc, int K, int N) {
  const int W = N / 8, G = K / kGroup;
  std::vector<uint8_t> out(packedBytes(K, N), 0);
  uint32_t maxBits = 0;
  for (uint16_t v : sc) maxBits = std::max<uint32_t>(maxBits, v & 0x7fffu);
  const int e = scaleShiftFor(halfToFloat((uint16_t)maxBits));
  std::memcpy(out.data(), &maxBits, 4);
  std::memcpy(out.data() + 4, &e, 4);
  for (int64_t u = 0; u < units(K, N); ++u) {
    const int t = (int)(u / G), g = (int)(u % G);
    uint8_t* unit = out.data() + kHeaderBytes + u * kUnitBytes;
    for (int word = 0; word < 2048; ++word) {
      uint32_t v = 0;
      for (int bit = 0; bit < 32; bit += 4) {
        int kr, c;
        weightAt(word, bit, kr, c);
        const int n = t * kTileN + c, k = g * kGroup + kr;
        if (n < N) v |= ((qw[(size_t)k * W + n / 8] >> autoAwqShift(n)) & 15u) << bit;
      }
      std::memcpy(unit + word * 4, &v, 4);
    }
    for (int c = 0; c < kTileN; ++c) {
      const int n = t * kTileN + c;
      if (n >= N) continue;
      const int z = (int)((qz[(size_t)g * W + n / 8] >> autoAwqShift(n)) & 15u);
      const uint32_t pair = hostPair(sc[(size_t)g * N + n], z, e);
      std::memcpy(unit + kPairOffset + 4 * c, &pair, 4);
    }
  }
  return out;
}

// The row tiles (of 8 rows of x) a launch of M rows runs with, as both launchers choose them.
static int rowTiles(int M) { return M <= 8 ? 1 : M <= 16 ? 2 : M <= 32 ? 4 : M <= 64 ? 8 : M <= 128 ? 16 : 32; }

// The stream-K schedule (splitk.cuh's StreamK) as both kernels run it: block b of P takes its
// range of units; `unit(acc, tile, group)` adds one unit into the block's accumulators, and
// `flushed(acc, emit)` hands out each of a tile's sums as emit(m, column in the tile, value). A
// tile the block covers whole is written to out; the others go to the block's partial slot and
// are summed over their contributors in block order (the fix-up). Returns out [M, N].
template <class Unit, class Flushed>
static std::vector<double> emulateStreamK(int M, int K, int N, int P, size_t accN, Unit unit, Flushed flushed) {
  const int G = K / kGroup, MT = rowTiles(M);
  const int U = (int)units(K, N);
  StreamK sk{U, P < U ? P : U, G};
  std::vector<double> out((size_t)M * N, NAN), partials((size_t)2 * sk.P * MT * 8 * kTileN, NAN);
  auto flush = [&](int b, int t, int g0, int g1, const std::vector<double>& acc) {
    const bool whole = g0 == 0 && g1 == G;
    flushed(acc, [&](int m, int col, double v) {
      if (m >= M) return;
      const int n = t * kTileN + col;
      if (whole) {
        if (n < N) out[(size_t)m * N + n] = v;
      } else {
        partials[((size_t)sk.slot(b, t) * MT * 8 + m) * kTileN + col] = v;
      }
    });
  };
  std::vector<int> partialTiles;
  for (int b = 0; b < sk.P; ++b) {
    const int i0 = sk.start(b), n = sk.start(b + 1) - i0;
    std::vector<double> acc(accN, 0.0);
    int tile = i0 / G, g0 = i0 % G;
    for (int i = 0; i < n; ++i) {
      const int it = i0 + i, p = it / G, g = it % G;
      if (p != tile) {
        if (g0 != 0) partialTiles.push_back(tile);
        flush(b, tile, g0, G, acc);
        std::fill(acc.begin(), acc.end(), 0.0);
        tile = p;
        g0 = 0;
      }
      unit(acc, p, g);
    }
    if (n > 0) {
      const int g1 = (i0 + n - 1) % G + 1;
      if (!(g0 == 0 && g1 == G)) partialTiles.push_back(tile);
      flush(b, tile, g0, g1, acc);
    }
  }
  // The fix-ups: each shared tile summed over its contributors in block order.
  for (int t : partialTiles) {
    const int tileEnd = (t + 1) * G < U ? (t + 1) * G : U;
    const int first = sk.blockOf(t * G), last = sk.blockOf(tileEnd - 1);
    CHECK(last > first, "a partial tile with one contributor (tile %d)", t);
    for (int m = 0; m < M; ++m)
      for (int c = 0; c < kTileN; ++c) {
        const int n = t * kTileN + c;
        if (n >= N) continue;
        double v = 0;
        for (int bb = first; bb <= last; ++bb) v += partials[((size_t)sk.slot(bb, t) * MT * 8 + m) * kTileN + c];
        out[(size_t)m * N + n] = v;
      }
  }
  return out;
}

// A stage's two planes of x for group g, by byte address / 2 (the stage at address 0: 1024-byte
// aligned), as a 2-D tensor copy in the 128-byte swizzle writes them: 16-byte chunk c of row n of
// half h at h NR 128 + n 128 + 16 (c ^ (n % 8)) (awq_stream.cuh's awqXChunk); rows past M zero.
static int xChunk(int NR, int h, int n, int c) { return h * NR * 128 + n * 128 + ((c ^ (n & 7)) << 4); }
static std::vector<double> stagePlanes(const std::vector<float>& x, int M, int K, int NR, int g) {
  std::vector<double> planes((size_t)2 * NR * 64, NAN);
  for (int h = 0; h < 2; ++h)
    for (int n = 0; n < NR; ++n)
      for (int c = 0; c < 64; ++c)
        planes[(xChunk(NR, h, n, c >> 3) + (c & 7) * 2) / 2] = n < M ? x[(size_t)n * K + g * kGroup + h * 64 + c] : 0.0;
  return planes;
}

// Lane `lane`'s A fragments of n16 tile w, half h of a unit (the four k steps of its 16-byte chunk)
// as mma.m16n8k16 and wgmma's A (per warp) lay them out: A[j][row][k] in logical coordinates,
// row = column of the tile - 16 w. a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..).
static void laneAFragments(const uint8_t* unit, int w, int h, int lane, double (&A)[4][16][16]) {
  const int gl = lane >> 2, tl = lane & 3, colA = w * 16 + gl, colB = colA + 8;
  uint32_t pA, pB;
  std::memcpy(&pA, unit + kPairOffset + 4 * colA, 4);
  std::memcpy(&pB, unit + kPairOffset + 4 * colB, 4);
  // the weight = q * 2^-18 * mul + add (exact in double; the kernel's FMA rounds once)
  const double mA = halfToFloat((uint16_t)pA) * std::ldexp(1.0, -18), aA = halfToFloat((uint16_t)(pA >> 16));
  const double mB = halfToFloat((uint16_t)pB) * std::ldexp(1.0, -18), aB = halfToFloat((uint16_t)(pB >> 16));
  uint32_t wv[4];
  std::memcpy(wv, unit + ((w * 2 + h) * 32 + lane) * 16, 16);
  for (int j = 0; j < 4; ++j)
    for (int r = 0; r < 4; ++r) {
      const uint32_t v = fragNibbles(wv[j], r);
      const int lo = (v >> 6) & 15, hi = (v >> 22) & 15;
      CHECK((v & ~0x03C003C0u) == 0, "fragNibbles leaves stray bits");
      const bool isB = r & 1;
      const double m = isB ? mB : mA, ad = isB ? aB : aA;
      const int row = gl + (isB ? 8 : 0), k0 = 2 * tl + (r >= 2 ? 8 : 0);
      A[j][row][k0] = lo * m + ad;
      A[j][row][k0 + 1] = hi * m + ad;
    }
}

// The same fragments as the GEMV reads them (fragRawNibbles): A[j][row][k] = q * 2^-24 (rows 0-7)
// or q * 2^-20 (rows 8-15), and each row's (mul, add) pair as f16 values.
static void laneRawFragments(const uint8_t* unit, int w, int h, int lane, double (&A)[4][16][16], double (&mul)[16],
                             double (&add)[16]) {
  const int gl = lane >> 2, tl = lane & 3;
  for (int isB = 0; isB < 2; ++isB) {
    uint32_t pr;
    std::memcpy(&pr, unit + kPairOffset + 4 * (w * 16 + gl + 8 * isB), 4);
    mul[gl + 8 * isB] = halfToFloat((uint16_t)pr);
    add[gl + 8 * isB] = halfToFloat((uint16_t)(pr >> 16));
  }
  uint32_t wv[4];
  std::memcpy(wv, unit + ((w * 2 + h) * 32 + lane) * 16, 16);
  for (int j = 0; j < 4; ++j)
    for (int r = 0; r < 4; ++r) {
      const uint32_t v = fragRawNibbles(wv[j], r);
      const bool isB = r & 1;
      CHECK((v & ~(isB ? 0x00F000F0u : 0x000F000Fu)) == 0, "fragRawNibbles leaves stray bits");
      // the halves as f16 bits: subnormals m * 2^-24
      const int row = gl + (isB ? 8 : 0), k0 = 2 * tl + (r >= 2 ? 8 : 0);
      A[j][row][k0] = std::ldexp((double)(v & 0xFFFFu), -24);
      A[j][row][k0 + 1] = std::ldexp((double)(v >> 16), -24);
    }
}

// The GEMV, emulated lane by lane: 8 consumer warps of NT = 2 n16 tiles; at M <= 8 the raw nibbles
// as A, a half group's sums of x q and (from the constant A of 2^-6 / 2^-2) of x, and the columns'
// pairs applied to them. x: [M, K] as floats; returns out [M, N].
static std::vector<double> emulateGemv(const std::vector<uint8_t>& packed, const std::vector<float>& x, int M, int K,
                                       int N, int P) {
  constexpr int NT = 2, CG = 8 / NT;
  const int G = K / kGroup, MT = rowTiles(M);
  const bool raw = MT == 1;  // the kernel's Raw reading (M <= 8; deterministic mode aside)
  // acc: [warp column group cp 0..3][half h][lane][q][mt][4]; the flush adds the halves.
  const size_t accN = (size_t)CG * 2 * 32 * NT * MT * 4;
  auto accAt = [=](std::vector<double>& acc, int cp, int h, int lane, int q, int mt) {
    return &acc[(((((size_t)cp * 2 + h) * 32 + lane) * NT + q) * MT + mt) * 4];
  };
  auto unit = [&](std::vector<double>& acc, int p, int g) {
    for (int cp = 0; cp < CG; ++cp)
      for (int h = 0; h < 2; ++h)
        for (int q = 0; q < NT; ++q) {
          // The kernel's indices: n16 tile w0 + q of the unit (tile p, group g).
          const int w0 = NT * cp, w = w0 + q;
          const uint8_t* st = packed.data() + kHeaderBytes + ((size_t)p * G + g) * kUnitBytes;
          double A[4][16][16], B[4][16][8];  // per step j: the mma operands in logical coordinates
          double mul[16], add[16];               // each A row's (column's) pair
          for (int lane = 0; lane < 32; ++lane) {
            if (raw) laneRawFragments(st, w, h, lane, A, mul, add);
            else laneAFragments(st, w, h, lane, A);
          }
          const std::vector<double> planes = stagePlanes(x, M, K, MT * 8, g);
          for (int mt = 0; mt < MT; ++mt) {
            // PTX B fragment: b0 (rows 2t, 2t+1; col g), b1 (rows 2t+8, 2t+9; col g), as the kernel's
            // two ldmatrix.x4 give them: matrix i (0..7 over both) has its row r at the address lane
            // 8 (i % 4) + r gives, row tile mt's row (that lane) % 8, chunk (that lane) / 8 + 4 (i / 4);
            // lane (g, t) receives halves 2t, 2t + 1 of row g of each, register i; step j takes
            // registers 2j (b0) and 2j + 1 (b1).
            for (int lane = 0; lane < 32; ++lane) {
              const int gl = lane >> 2, tl = lane & 3;
              for (int i = 0; i < 8; ++i) {
                const int giver = 8 * (i % 4) + gl;  // the lane whose address is row gl of matrix i
                const int addr = xChunk(MT * 8, h, mt * 8 + (giver & 7), (giver >> 3) + 4 * (i / 4));
                for (int e0 = 0; e0 < 2; ++e0) {
                  const double xv = planes[(addr + (2 * tl + e0) * 2) / 2];
                  B[i / 2][(i % 2) * 8 + 2 * tl + e0][gl] = xv;
                }
              }
            }
            for (int lane = 0; lane < 32; ++lane) {
              const int gl = lane >> 2, tl = lane & 3;
              double* a = accAt(acc, cp, h, lane, q, mt);
              // C fragment: c0, c1 (row g, cols 2t, 2t+1); c2, c3 (row g+8, same cols)
              for (int r = 0; r < 4; ++r) {
                const int crow = gl + (r >= 2 ? 8 : 0), ccol = 2 * tl + (r & 1);
                const double ones = std::ldexp(1.0, crow < 8 ? -6 : -2);  // kXSumA's rows
                double sq = 0, sx = 0;
                for (int j = 0; j < 4; ++j)
                  for (int kk = 0; kk < 16; ++kk) {
                    sq += A[j][crow][kk] * B[j][kk][ccol];
                    sx += ones * B[j][kk][ccol];
                  }
                a[r] += raw ? mul[crow] * sq + add[crow] * sx : sq;
              }
            }
          }
        }
  };
  auto flushed = [&](const std::vector<double>& accC, auto emit) {
    std::vector<double>& acc = const_cast<std::vector<double>&>(accC);
    for (int cp = 0; cp < CG; ++cp)
      for (int lane = 0; lane < 32; ++lane) {
        const int gl = lane >> 2, tl = lane & 3;
        for (int q = 0; q < NT; ++q) {
          const int colA = cp * 16 * NT + q * 16 + gl, colB = colA + 8;
          for (int mt = 0; mt < MT; ++mt)
            for (int r = 0; r < 4; ++r)
              emit(mt * 8 + 2 * tl + (r & 1), r < 2 ? colA : colB,
                   (accAt(acc, cp, 0, lane, q, mt)[r] + accAt(acc, cp, 1, lane, q, mt)[r]) * (raw ? (r < 2 ? 64 : 4) : 1));
        }
      }
  };
  return emulateStreamK(M, K, N, P, accN, unit, flushed);
}

// The wgmma kernel (awq_wgmma.cu), emulated: x in a stage's two planes as a 2-D tensor copy in the
// 128-byte swizzle writes them (stagePlanes); B read back through wgmmaDescK128's descriptor as the tensor cores
// read a K-major 128-byte-swizzled operand (element (k, n) at start + (n / 8) SBO + (n % 8) 128 +
// 2k, then bits 4-6 of the address XORed with bits 7-9); warp w's A fragments and its D fragments
// (wgmma's D: per 8 columns the C fragment of mma.m16n8k16), and the flush's mapping.
static std::vector<double> emulateWgmma(const std::vector<uint8_t>& packed, const std::vector<float>& x, int M, int K,
                                        int N, int P) {
  const int G = K / kGroup, MT = rowTiles(M), NR = MT * 8;  // NR: the MMA's N (rows of x, padded)
  const size_t accN = (size_t)8 * 32 * MT * 4;  // [warp][lane][mt * 4 + r], the kernel's registers
  auto unit = [&](std::vector<double>& acc, int p, int g) {
    const uint8_t* st = packed.data() + kHeaderBytes + ((size_t)p * G + g) * kUnitBytes;
    const std::vector<double> planes = stagePlanes(x, M, K, NR, g);
    for (int w = 0; w < 8; ++w)
      for (int h = 0; h < 2; ++h) {
        double A[4][16][16];
        for (int lane = 0; lane < 32; ++lane) laneAFragments(st, w, h, lane, A);
        for (int j = 0; j < 4; ++j) {
          // As the kernel forms it: stage 0's descriptor advanced to plane h, k step j.
          const uint64_t desc = cuda::wgmmaDescK128(0, 0) + cuda::wgmmaDescAdvance(h * NR * 128 + 32 * j);
          CHECK(desc == cuda::wgmmaDescK128(static_cast<uint32_t>(h * NR * 128), j),
                "descriptor %016llx: advancing it is not addressing the operand", (unsigned long long)desc);
          const uint32_t start = (uint32_t)(desc & 0x3FFF) << 4, sbo = (uint32_t)((desc >> 32) & 0x3FFF) << 4;
          CHECK((desc >> 62) == 1 && ((desc >> 49) & 7) == 0, "descriptor %016llx: not the 128-byte swizzle",
                (unsigned long long)desc);
          std::vector<double> B((size_t)16 * NR);
          for (int kk = 0; kk < 16; ++kk)
            for (int n = 0; n < NR; ++n) {
              uint32_t a = start + (n >> 3) * sbo + (n & 7) * 128 + 2 * kk;
              a ^= ((a >> 7) & 7) << 4;
              CHECK(a / 2 < planes.size(), "B address %u past the stage's planes", a);
              B[(size_t)kk * NR + n] = planes[a / 2];
            }
          for (int lane = 0; lane < 32; ++lane) {
            const int gl = lane >> 2, tl = lane & 3;
            double* d = &acc[((size_t)w * 32 + lane) * MT * 4];
            for (int mt = 0; mt < MT; ++mt)
              for (int r = 0; r < 4; ++r) {
                const int row = gl + (r >= 2 ? 8 : 0), col = mt * 8 + 2 * tl + (r & 1);
                double sum = 0;
                for (int kk = 0; kk < 16; ++kk) sum += A[j][row][kk] * B[(size_t)kk * NR + col];
                d[mt * 4 + r] += sum;
              }
          }
        }
      }
  };
  auto flushed = [&](const std::vector<double>& acc, auto emit) {
    for (int w = 0; w < 8; ++w)
      for (int lane = 0; lane < 32; ++lane) {
        const int gl = lane >> 2, tl = lane & 3, colA = w * 16 + gl, colB = colA + 8;
        for (int mt = 0; mt < MT; ++mt)
          for (int r = 0; r < 4; ++r)
            emit(mt * 8 + 2 * tl + (r & 1), r < 2 ? colA : colB, acc[((size_t)w * 32 + lane) * MT * 4 + mt * 4 + r]);
      }
  };
  return emulateStreamK(M, K, N, P, accN, unit, flushed);
}

int main() {
  // 1. locate / weightAt
  std::vector<int> seen(2048 * 8, 0);
  for (int kr = 0; kr < 128; ++kr)
    for (int c = 0; c < 128; ++c) {
      int word, bit, kr2, c2;
      locate(kr, c, word, bit);
      CHECK(word >= 0 && word < 2048 && bit % 4 == 0 && bit < 32, "locate(%d, %d) out of range", kr, c);
      seen[word * 8 + bit / 4]++;
      weightAt(word, bit, kr2, c2);
      CHECK(kr2 == kr && c2 == c, "weightAt(locate(%d, %d)) = (%d, %d)", kr, c, kr2, c2);
    }
  for (int i = 0; i < 2048 * 8; ++i) CHECK(seen[i] == 1, "nibble slot %d used %d times", i, seen[i]);
  std::printf("locate/weightAt: a bijection over the unit's 16384 nibbles\n");
  // The dequantization kernel's reading of a chunk (awq_dequant.cu): chunk ch, word j, register r,
  // half e2 -> row and column, as weightAt says.
  for (int ch = 0; ch < 512; ++ch)
    for (int j = 0; j < 4; ++j)
      for (int r = 0; r < 4; ++r)
        for (int hi = 0; hi < 2; ++hi) {
          const int n16 = ch >> 6, h = (ch >> 5) & 1, lane = ch & 31, gl = lane >> 2, tl = lane & 3;
          const int col = n16 * 16 + gl + (r & 1) * 8, row = h * 64 + j * 16 + 2 * tl + (r >= 2 ? 8 : 0) + hi;
          // register r of word j holds bits shifted to 6-9 (low half) and 22-25 (high half)
          const int bit = (r == 0 ? 0 : r == 1 ? 4 : r == 2 ? 8 : 12) + hi * 16;
          int kr, c;
          weightAt(ch * 4 + j, bit, kr, c);
          CHECK(kr == row && c == col, "dequant kernel chunk %d word %d reg %d: (%d, %d) vs (%d, %d)", ch, j, r, row,
                col, kr, c);
        }
  // fragNibbles(word, r) takes exactly those bits
  for (int r = 0; r < 4; ++r)
    for (int hi = 0; hi < 2; ++hi) {
      const int bit = (r == 0 ? 0 : r == 1 ? 4 : r == 2 ? 8 : 12) + hi * 16;
      const uint32_t v = fragNibbles(0xFu << bit, r);
      CHECK(v == (hi ? 0x03C00000u : 0x000003C0u), "fragNibbles(%d) of bit %d = %08x", r, bit, v);
    }
  std::printf("the dequantization kernel's and fragNibbles' reading of a chunk agree with weightAt\n");

  // 2-3. pack + emulated GEMV against a float64 GEMM
  std::mt19937 rng(7);
  struct Case { int M, K, N, P; } cases[] = {
      {1, 128, 128, 1}, {3, 256, 296, 5}, {8, 384, 1032, 7}, {9, 1280, 384, 4}, {16, 512, 256, 3},
      {17, 1024, 520, 9}, {40, 640, 768, 6}, {64, 256, 136, 2}, {5, 2048, 256, 132}, {2, 896, 1024, 13},
      {100, 384, 264, 5}, {128, 256, 128, 3}, {200, 256, 264, 5}, {256, 384, 136, 4}};
  for (const Case& cs : cases) {
    const int M = cs.M, K = cs.K, N = cs.N, W = N / 8, G = K / kGroup;
    std::vector<uint32_t> qw((size_t)K * W), qz((size_t)G * W);
    for (auto& v : qw) v = rng();
    for (auto& v : qz) v = rng();
    std::vector<uint16_t> sc((size_t)G * N);
    std::uniform_real_distribution<float> us(0.001f, 0.02f), ux(-1.f, 1.f);
    for (auto& v : sc) {  // an f16 in [2^-10, 2^-6): exponent 5..8, random mantissa
      v = (uint16_t)(((5 + rng() % 4) << 10) | (rng() & 1023));
    }
    std::vector<float> x((size_t)M * K);
    for (auto& v : x) v = ux(rng);
    const std::vector<uint8_t> packed = pack(qw, qz, sc, K, N);
    std::vector<double> ref((size_t)M * N, 0.0);
    uint32_t maxBits = 0;
    for (uint16_t v : sc) maxBits = std::max<uint32_t>(maxBits, v & 0x7fffu);
    const int e = scaleShiftFor(halfToFloat((uint16_t)maxBits));
    CHECK(e == 0, "shift %d for scales < 0.25", e);
    for (int k = 0; k < K; ++k)
      for (int n = 0; n < N; ++n) {
        const int g = k / kGroup;
        const int q = (qw[(size_t)k * W + n / 8] >> autoAwqShift(n)) & 15;
        const int z = (qz[(size_t)g * W + n / 8] >> autoAwqShift(n)) & 15;
        const uint32_t pr = hostPair(sc[(size_t)g * N + n], z, e);
        // from the AutoAWQ tensors: (q - z) * s, with -z * s rounded to f16 as the pack does
        const double w = q * (double)halfToFloat(sc[(size_t)g * N + n]) + halfToFloat((uint16_t)(pr >> 16));
        for (int m = 0; m < M; ++m) ref[(size_t)m * N + n] += x[(size_t)m * K + k] * w;
      }
    for (int gemv = 0; gemv < 2; ++gemv) {  // 0: the wgmma kernel (up to 256 rows a launch; the GEMV 64)
      if (gemv && M > 64) continue;
      const std::vector<double> got = gemv ? emulateGemv(packed, x, M, K, N, cs.P) : emulateWgmma(packed, x, M, K, N, cs.P);
      double worst = 0;
      int bad = 0;
      for (size_t i = 0; i < ref.size(); ++i) {
        const double d = std::fabs(got[i] - ref[i]);
        if (!(d <= 1e-9 * (1 + std::fabs(ref[i])))) ++bad;
        if (d > worst || std::isnan(d)) worst = std::isnan(d) ? INFINITY : d;
      }
      const char* what = gemv ? "GEMV " : "wgmma";
      CHECK(bad == 0, "%s M=%d K=%d N=%d P=%d: %d of %zu elements differ (worst %.3e)", what, M, K, N, cs.P, bad,
            ref.size(), worst);
      std::printf("%s %s M=%d K=%d N=%d over %d blocks: emulated on the packed layout = float64 GEMM (max |diff| %.1e)\n",
                  bad ? "FAIL" : "ok  ", what, M, K, N, cs.P, worst);
    }
  }
  // 4. The stream-K schedule (32-bit arithmetic): the blocks' ranges partition the units in
  // order, differ by at most one unit, and blockOf inverts start.
  {
    int bad = 0, schedules = 0;
    for (int U : {1, 7, 64, 5120, 14336, 28672, 100352})
      for (int P : {1, 2, 5, 132, 264, 396, 528}) {
        if (P > U) continue;
        const StreamK sk{U, P, 64};
        ++schedules;
        for (int b = 0; b < P && bad < 10; ++b) {
          const int s0 = sk.start(b), s1 = sk.start(b + 1);
          if ((b == 0 && s0 != 0) || (b == P - 1 && s1 != U) || s1 - s0 < U / P || s1 - s0 > U / P + 1) ++bad;
          for (int u = s0; u < s1; ++u)
            if (sk.blockOf(u) != b) ++bad;
        }
      }
    CHECK(bad == 0, "the stream-K schedule: %d violations", bad);
    std::printf("%s the stream-K schedule over %d (units, blocks) pairs: ranges partition the units, shares differ by\n"
                "     <= 1 unit, blockOf inverts start\n",
                bad ? "FAIL" : "ok  ", schedules);
  }
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
  return failures ? 1 : 0;
}
