// The packed AWQ layout: AutoAWQ's int4 weights, zeros and scales rewritten once at load
// (Backend::awqPack) into the order the CUDA matmul kernels consume. The checkpoint is never
// rewritten; this is a copy in device memory, the same size as the original.
//
// The matrix is cut into units of 128 output columns (an n-tile) x 128 input rows (one
// quantization group). Units are stored n-tile by n-tile, and inside an n-tile group by group
// (unit u = tile * groups + group), so a range of units is one contiguous byte range: a
// stream-K schedule hands each block such a range and the block streams it with bulk copies.
//
// One unit (kUnitBytes = 8704):
//   [0, 8192)     int4 weights, fragment-ordered: [n16 tile w 0..7][half h 0..1][lane 0..31][4 words]
//   [8192, 8704)  per column c of the tile, at 8192 + 4c, the f16 pair (s * 2^(18-e), -z * s * 2^-e):
//                 the zero point folded into the dequantization's one FMA (e: see the header)
//
// Fragment order. The GEMV computes out^T = W^T x^T with mma.m16n8k16: the weights are the
// A operand (16 output columns x 16 k) and x^T the B operand (n = the batch rows). Warp w of
// a block reads tile columns 16w .. 16w+15; lane (gl = lane/4, tl = lane%4) holds rows
// (columns of W) nA = 16w + gl and nB = nA + 8. In half h of the group, register set j (0..3)
// of a lane is the A fragment of k step j, physical rows 64h + 16j + 2tl + {0, 1, 8, 9}: the
// mma's own fragment order, so x goes into the tensor cores as it lies (the GEMV's B fragments by
// ldmatrix, the wgmma kernel's B operand straight from the tensor copy of x). Word j of the
// lane's 16 bytes holds the 8 nibbles of that A fragment (e = 0, 1, 2, 3: rows 2tl, 2tl + 1,
// 2tl + 8, 2tl + 9 of the step):
//   bits  0-3 / 16-19: W[nA][e=0] / W[nA][e=1]   (register a0, a half2)
//   bits  4-7 / 20-23: W[nB][e=0] / W[nB][e=1]   (a1)
//   bits 8-11 / 24-27: W[nA][e=2] / W[nA][e=3]   (a2)
//   bits 12-15/ 28-31: W[nB][e=2] / W[nB][e=3]   (a3)
// The kernels read a word in one of two ways:
// - dequantized (the wgmma and dequantization kernels, the GEMV above 8 rows): register i is (word << 6 >> 4i) masked
//   to bits 6-9 and 22-25 (fragNibbles below): each half holds q * 2^-18 as an exact f16
//   subnormal, and one FMA with the column's pair gives (q - z) * s * 2^-e (the product exact
//   inside the FMA, -z * s rounded to f16 once).
// - raw (the GEMV up to 8 rows): registers 0 and 1 are the word masked to bits 0-3 / 16-19 and 4-7 / 20-23,
//   registers 2 and 3 the same of word >> 8 (fragRawNibbles below): f16 subnormals q * 2^-24 in
//   rows nA and q * 2^-20 in rows nB, multiplied as they are. The pair is applied to the group's
//   sums instead: sum_k x (q mul 2^-18 + add) = mul 2^-18 sum_k x q + add sum_k x, sum_k x from
//   one more mma with a constant A (2^-6 in rows nA, 2^-2 in rows nB: both sums then carry the
//   same power of two, which the flush multiplies away).
//
// A 16-byte header precedes the units: word 0 holds the largest |scale| of the matrix as f16
// bits, word 1 the shift e >= 0, the smallest with (largest |scale|) * 2^(18-e) <= 65504 (0 for
// any |s| < 0.25): the kernels multiply their fp32 results by 2^e. Columns past N (the last tile
// of an N that is not a multiple of 128) are zero, their pairs too.
//
// A gated pack (the fused gate / up matrix [gate | up] of N = 2I columns, for the matmul whose
// epilogue applies silu(gate) * up) puts the columns in pairs of runs of 8: packed columns
// 16j .. 16j + 7 are gate columns 8j .. 8j + 7, packed 16j + 8 .. 16j + 15 the same up columns
// (source columns I + 8j ..). Every kernel lane holds packed columns nA and nA + 8 of the same
// rows (see "Fragment order"): a gate value and its up value meet in one thread's registers.
// Output column o of the gated matmul is gate column o: packed column 16 (o / 8) + o % 8.
//
// Everything here is plain integer arithmetic, shared by the pack, matmul and dequantization
// kernels, the check program's host reference, and the host-only layout test.
//
// The pair costs 4 bytes per column and group where AutoAWQ's scale and zero take 2.5: the
// packed copy is 2.3% larger than the checkpoint's tensors, and it keeps the dequantization one
// FMA per two weights (the wgmma kernel) or two FMAs per sum and group (the GEMV, bound by
// instruction issue at M <= 8 on an H200).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MC_HD __host__ __device__ __forceinline__
#else
#define MC_HD inline
#endif

namespace medcluster {
namespace awqpack {

constexpr int kGroup = 128;        // input rows per quantization group (the only size the layout supports)
constexpr int kTileN = 128;        // output columns per unit
constexpr int kWeightBytes = 8192;  // 128 x 128 nibbles
constexpr int kPairOffset = 8192;   // the per-column (multiplier, addend) f16 pairs
constexpr int kUnitBytes = 8704;    // a multiple of 16: every unit starts 16-byte aligned
constexpr int kHeaderBytes = 16;

MC_HD int64_t tiles(int64_t N) { return (N + kTileN - 1) / kTileN; }
MC_HD int64_t units(int64_t K, int64_t N) { return tiles(N) * (K / kGroup); }
MC_HD int64_t packedBytes(int64_t K, int64_t N) { return kHeaderBytes + units(K, N) * kUnitBytes; }

// The shift e for a matrix whose largest |scale| is maxScale (see the header above).
MC_HD int scaleShiftFor(float maxScale) {
  int e = 0;
  while (e < 24 && maxScale * static_cast<float>(1 << 18) > 65504.f * static_cast<float>(1 << e)) ++e;
  return e;
}

// Where weight (kr, c) of a unit lives (kr: row in the group, c: column in the tile, both
// 0..127): the index of its 32-bit word among the unit's 2048 and the bit of its nibble.
MC_HD void locate(int kr, int c, int& word, int& bit) {
  const int w = c >> 4, r = c & 15, gl = r & 7, isB = r >> 3;
  const int h = kr >> 6, j = (kr >> 4) & 3, e1 = (kr >> 3) & 1, tl = (kr >> 1) & 3, e0 = kr & 1;
  const int lane = gl * 4 + tl;
  word = ((w * 2 + h) * 32 + lane) * 4 + j;
  bit = isB * 4 + e1 * 8 + e0 * 16;  // e = 2 e1 + e0: 0 -> 0, 1 -> 16, 2 -> 8, 3 -> 24 (+4 for nB)
}

// The inverse: which (kr, c) the nibble at `bit` of word `word` holds.
MC_HD void weightAt(int word, int bit, int& kr, int& c) {
  const int j = word & 3, lane = (word >> 2) & 31, wh = word >> 7;
  const int w = wh >> 1, h = wh & 1, gl = lane >> 2, tl = lane & 3;
  const int isB = (bit >> 2) & 1, e1 = (bit >> 3) & 1, e0 = (bit >> 4) & 1;
  kr = h * 64 + j * 16 + e1 * 8 + tl * 2 + e0;
  c = w * 16 + isB * 8 + gl;
}

// Register i (0..3) of an mma A fragment from its word: the two nibbles moved to bits 6-9 and
// 22-25, everything else cleared (an f16x2 of q * 2^-18 each).
MC_HD uint32_t fragNibbles(uint32_t word, int i) {
  const uint32_t v = i == 0 ? word << 6 : i == 1 ? word << 2 : i == 2 ? word >> 2 : word >> 6;
  return v & 0x03C003C0u;
}

// Register i (0..3) of an mma A fragment from its word, the nibbles left in place (the GEMV's
// reading): bits 0-3 and 16-19 (i = 0, 2) or 4-7 and 20-23 (i = 1, 3) of word (i < 2) or word >> 8.
MC_HD uint32_t fragRawNibbles(uint32_t word, int i) {
  return (i < 2 ? word : word >> 8) & (i & 1 ? 0x00F000F0u : 0x000F000Fu);
}

// The AutoAWQ column that packed column n holds: n itself, or in a gated pack of N columns
// (N a multiple of 16) the pairing of runs above.
MC_HD int sourceColumn(int n, int N, bool gated) {
  if (!gated) return n;
  return (n >> 4) * 8 + (n & 7) + ((n & 8) ? N / 2 : 0);
}
// The gated matmul's output column (0 .. N/2 - 1) of packed gate column n (n % 16 < 8).
MC_HD int gatedOutColumn(int n) { return (n >> 4) * 8 + (n & 7); }

// The AutoAWQ layout (MODEL.md): nibble i of qweight word [k][n/8] holds column 8(n/8) + order[i].
MC_HD int autoAwqShift(int n) {
  const int j = n & 7;  // column within the word -> nibble index [0,4,1,5,2,6,3,7][j]
  return 4 * ((j >> 1) + (j & 1) * 4);
}

}  // namespace awqpack
}  // namespace medcluster
