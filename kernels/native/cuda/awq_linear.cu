// AWQ int4 linear, out [M, N] = x f16 [M, K] @ dequant(qweight, qzeros, scales) [K, N].
//
// Reads the raw AutoAWQ GEMM layout (MODEL.md): qweight i32 [K, N/8], nibble i of a word
// holds column 8c + [0,2,4,6,1,3,5,7][i]. That order makes nibbles (i, i+4) adjacent
// columns (2j, 2j+1), so one lop3 turns a word shifted by 4j into a half2 pair of columns.
//
// Kernels:
//  - awqCore<MT, ...>: M <= awqCoreMaxM (default 1; since 168c2e1), CUDA cores, no shared memory in the main
//    loop: 8-16 independent 16-byte streaming loads per thread, fp32 FMAs, in-kernel split-K reduction.
//  - awqSkinnyPipe<MI> / awqSkinny<MI>: M <= 64 (default path), tensor cores with B fragments
//    dequantized in registers from the raw layout, one launch (split-K reduced by the last block).
//  - awqGemv<MT>: legacy (off by default, awqGemvMaxM = 0), CUDA cores. Memory-bound: 16-byte loads, 16 rows of loads in
//    flight per thread, warps split each group's rows, blocks split K (fp32 atomics into
//    a workspace, then one conversion pass).
//  - awqMma<BM>:  M > 64 (and N/8 % 4 == 0), tensor cores (mma.sync m16n8k16, f16 x f16 -> f32). A 4-stage
//    cp.async pipeline brings raw int4 tiles and x tiles to shared memory; each stage
//    is dequantized to an f16 [BK, BN] tile and fed to the MMAs through ldmatrix.trans.
//    Split-K over blocks when the M x N tiles alone cannot fill the GPU.
#include "common.cuh"
#include "mma.cuh"

namespace medcluster {
namespace cuda {

int awqSkinnyStages1 = 4;  // cp.async ring depth of the M <= 16 skinny variant (4 or 5; 5 measured no faster, at fb64f51)
// Split-K cap: the last block of a column tile reads splits x M x 256 partials, so
// splits x M is bounded (0: no cap, the behaviour at be64677; M = 64 k/v then took ~0.1 ms each).
int awqSkinnySplitCap = 256;
// Since 168c2e1: CUDA-core GEMV (awqCore) for M <= awqCoreMaxM (1..4 compiled; default 1); variant and split cap are bench knobs.
int awqCoreMaxM = 1;  // M = 2 measured slower than the tensor-core path (MT = 2 needs 254 registers: 1 block/SM)
int awqCoreVariant = 0;
int awqCoreMaxSplits = 0;  // 0: no cap beyond one wave
// Since 04550c5: from this M up, dequantize the weights to an f16 [K, N] scratch and run a
// cuBLAS GEMM (when cuBLAS loads): the dequantization (read K*N/2 bytes, write K*N*2) is
// paid once per call and cuBLAS's GEMM beats awqMma at large M (0 = never).
int awqDequantMinM = 256;

namespace {

int capSplits(int splits, int M) {
  if (awqSkinnySplitCap > 0) splits = std::min(splits, std::max(1, awqSkinnySplitCap / M));
  return std::max(1, splits);
}

constexpr int kGroup = 128;

// Nibble pair j of a word (columns 2j, 2j+1) as half2 {1024 + q0, 1024 + q1}: the
// exponent 0x6400 makes the mantissa's low bits an exact integer offset by 1024.
__device__ __forceinline__ __half2 nibblePair(uint32_t w, int j) {
  uint32_t r;
  uint32_t v = w >> (4 * j);
  asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(r) : "r"(v), "n"(0x000F000F), "n"(0x64006400));  // (a & b) | c
  return *reinterpret_cast<__half2*>(&r);
}

// Dequantized columns (2j, 2j+1) of one word: ((1024 + q) - (1024 + z)) * s, exact until the multiply.
__device__ __forceinline__ __half2 dequantPair(uint32_t q, __half2 z1024, __half2 s, int j) {
  return __hmul2(__hsub2(nibblePair(q, j), z1024), s);
}

// ---------------------------------------------------------------------------------
// GEMV for M <= 8. Block = 8 warps; a block covers 32 * VEC words (256 * VEC columns)
// and a range of whole groups; in each group warp w takes rows [16w, 16w + 16).
template <int MT, int VEC>
__global__ void __launch_bounds__(256) awqGemv(
    const __half* __restrict__ x,        // [M, K]
    const uint32_t* __restrict__ qw,     // [K, N/8]
    const uint32_t* __restrict__ qz,     // [K/G, N/8]
    const __half* __restrict__ sc,       // [K/G, N]
    float* __restrict__ ws,              // [M, N] fp32 (split-K) or nullptr
    void* __restrict__ out, bool outF16, // [M, N] when ws == nullptr
    int M, int K, int N, int groupsPerBlock) {
  const int W = N / 8;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int word0 = (blockIdx.x * 32 + lane) * VEC;
  const bool active = word0 < W;
  const int g0 = blockIdx.y * groupsPerBlock;
  const int g1 = min(K / kGroup, g0 + groupsPerBlock);

  float acc[MT][VEC * 8];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int i = 0; i < VEC * 8; ++i) acc[m][i] = 0.f;

  if (active) {
    for (int g = g0; g < g1; ++g) {
      const int kRow = g * kGroup + warp * 16;
      // 16 rows of loads in flight before the first use.
      uint32_t q[16][VEC];
#pragma unroll
      for (int r = 0; r < 16; ++r) {
        const uint32_t* p = qw + (int64_t)(kRow + r) * W + word0;
        if constexpr (VEC == 4) {
          uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
          q[r][0] = v.x; q[r][1] = v.y; q[r][2] = v.z; q[r][3] = v.w;
        } else if constexpr (VEC == 2) {
          uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
          q[r][0] = v.x; q[r][1] = v.y;
        } else {
          q[r][0] = __ldg(p);
        }
      }
      __half2 z2[VEC][4], s2[VEC][4];
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        uint32_t zw = __ldg(qz + (int64_t)g * W + word0 + v);
        const __half2* sp = reinterpret_cast<const __half2*>(sc + (int64_t)g * N + (int64_t)(word0 + v) * 8);
#pragma unroll
        for (int j = 0; j < 4; ++j) { z2[v][j] = nibblePair(zw, j); s2[v][j] = sp[j]; }
      }
      float xv[MT][16];
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (m < M) {
          const uint4* xp = reinterpret_cast<const uint4*>(x + (int64_t)m * K + kRow);
          uint4 a = __ldg(xp), b = __ldg(xp + 1);
          const __half* ha = reinterpret_cast<const __half*>(&a);
          const __half* hb = reinterpret_cast<const __half*>(&b);
#pragma unroll
          for (int r = 0; r < 8; ++r) { xv[m][r] = __half2float(ha[r]); xv[m][r + 8] = __half2float(hb[r]); }
        } else {
#pragma unroll
          for (int r = 0; r < 16; ++r) xv[m][r] = 0.f;
        }
      }
#pragma unroll
      for (int r = 0; r < 16; ++r)
#pragma unroll
        for (int v = 0; v < VEC; ++v)
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            float2 wf = __half22float2(dequantPair(q[r][v], z2[v][j], s2[v][j], j));
#pragma unroll
            for (int m = 0; m < MT; ++m) {
              acc[m][v * 8 + 2 * j] = fmaf(xv[m][r], wf.x, acc[m][v * 8 + 2 * j]);
              acc[m][v * 8 + 2 * j + 1] = fmaf(xv[m][r], wf.y, acc[m][v * 8 + 2 * j + 1]);
            }
          }
    }
  }

  // Reduce the 8 warps' partial sums in shared memory (one output row at a time;
  // element i of lane l sits at i*32 + l, so the stores hit 32 distinct banks), then
  // one write (or one fp32 atomic into the split-K workspace) per output.
  constexpr int COLS = 32 * VEC * 8;
  __shared__ float red[8][COLS];
  const int col0 = blockIdx.x * COLS;
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (m >= M) break;
#pragma unroll
    for (int i = 0; i < VEC * 8; ++i) red[warp][i * 32 + lane] = acc[m][i];
    __syncthreads();
    for (int idx = threadIdx.x; idx < COLS; idx += blockDim.x) {
      float v = 0.f;
#pragma unroll
      for (int w = 0; w < 8; ++w) v += red[w][idx];
      const int l = idx % 32, i = idx / 32;
      const int n = col0 + l * VEC * 8 + i;
      if (n < N) {
        if (ws) atomicAdd(ws + (int64_t)m * N + n, v);
        else if (outF16) static_cast<__half*>(out)[(int64_t)m * N + n] = __float2half(v);
        else static_cast<float*>(out)[(int64_t)m * N + n] = v;
      }
    }
    __syncthreads();
  }
}

__global__ void convertOut(const float* ws, void* out, bool outF16, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    if (outF16) static_cast<__half*>(out)[i] = __float2half(ws[i]);
    else static_cast<float*>(out)[i] = ws[i];
  }
}

// ---------------------------------------------------------------------------------
// Tensor-core kernel. Tile BM x 128 x 64 (BK = 64 lies inside one 128-row group).

__device__ __forceinline__ void cpAsync16(void* smem, const void* gmem, bool valid) {
  uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  int n = valid ? 16 : 0;  // src-size 0 fills the 16 bytes with zeros
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cpAsyncWait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }


constexpr int BN = 128, BK = 64, STAGES = 4;
constexpr int A_LD = BK + 8;   // halves per x row in shared memory (+16 B: no ldmatrix bank conflicts)
constexpr int B_LD = BN + 8;   // halves per dequantized row
constexpr int Q_WORDS = BK * BN / 8;  // raw int32 words per stage (1024 = one uint4 per thread)
// Per stage, the group's scales (BN halves = 256 B) and zeros (BN/8 words = 64 B) travel
// with the tile, so dequantization never waits on a global load.
constexpr int SZ_BYTES = BN * 2 + BN / 2;

template <int BM> struct MmaCfg {
  static constexpr int WARPS_M = BM == 16 ? 1 : BM == 32 ? 2 : BM == 64 ? 2 : 4;
  static constexpr int WARPS_N = 8 / WARPS_M;
  static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
  static constexpr int MI = WM / 16, NI = WN / 8;
  static constexpr size_t smemBytes =
      (size_t)STAGES * (BM * A_LD * 2 + Q_WORDS * 4 + SZ_BYTES) + (size_t)BK * B_LD * 2;
};

template <int BM>
__global__ void __launch_bounds__(256) awqMma(
    const __half* __restrict__ x,     // [M, K]
    const uint32_t* __restrict__ qw,  // [K, N/8]
    const uint32_t* __restrict__ qz,  // [K/G, N/8]
    const __half* __restrict__ sc,    // [K/G, N]
    float* __restrict__ ws, void* __restrict__ out, bool outF16,
    int M, int K, int N, int kTilesPerBlock) {
  using C = MmaCfg<BM>;
  extern __shared__ __align__(16) unsigned char smem[];
  __half* As = reinterpret_cast<__half*>(smem);                                         // [STAGES][BM][A_LD]
  uint32_t* Qs = reinterpret_cast<uint32_t*>(smem + (size_t)STAGES * BM * A_LD * 2);    // [STAGES][BK][BN/8]
  unsigned char* SZs = smem + (size_t)STAGES * (BM * A_LD * 2 + Q_WORDS * 4);                 // [STAGES][SZ_BYTES]
  __half* Bs = reinterpret_cast<__half*>(smem + (size_t)STAGES * (BM * A_LD * 2 + Q_WORDS * 4 + SZ_BYTES));  // [BK][B_LD]

  const int W = N / 8;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / C::WARPS_N, wn = warp % C::WARPS_N;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int kt0 = blockIdx.z * kTilesPerBlock;
  const int kt1 = min(K / BK, kt0 + kTilesPerBlock);
  const int nTiles = kt1 - kt0;

  // This thread's raw word chunk in a stage: row tid/4, words (tid%4)*4 .. +3.
  const int qRow = tid >> 2, qWord = (tid & 3) * 4;
  const bool qValid = n0 / 8 + qWord < W;

  auto fetch = [&](int stage, int kt) {
    const int k0 = kt * BK;
    for (int i = tid; i < BM * (BK / 8); i += 256) {
      int r = i / (BK / 8), c = i % (BK / 8);
      bool ok = m0 + r < M;
      const __half* src = x + (int64_t)(ok ? m0 + r : 0) * K + k0 + c * 8;
      cpAsync16(As + ((size_t)stage * BM + r) * A_LD + c * 8, src, ok);
    }
    const uint32_t* src = qw + (int64_t)(k0 + qRow) * W + (qValid ? n0 / 8 + qWord : 0);
    cpAsync16(Qs + (size_t)stage * Q_WORDS + qRow * (BN / 8) + qWord, src, qValid);
    // Threads 0..15: scales (16 x 16 B); threads 16..19: zeros (4 x 16 B).
    const int g = k0 / kGroup;
    if (tid < 16) {
      bool ok = n0 / 8 + tid < W;  // 16 B of scales = 8 columns = one word
      cpAsync16(SZs + (size_t)stage * SZ_BYTES + tid * 16, sc + (int64_t)g * N + (ok ? n0 + tid * 8 : 0), ok);
    } else if (tid < 20) {
      int wd = (tid - 16) * 4;
      bool ok = n0 / 8 + wd < W;
      cpAsync16(SZs + (size_t)stage * SZ_BYTES + BN * 2 + wd * 4, qz + (int64_t)g * W + (ok ? n0 / 8 + wd : 0), ok);
    }
  };

  float acc[C::MI][C::NI][4];
#pragma unroll
  for (int i = 0; i < C::MI; ++i)
#pragma unroll
    for (int j = 0; j < C::NI; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < nTiles) fetch(s, kt0 + s);
    cpAsyncCommit();
  }

  for (int t = 0; t < nTiles; ++t) {
    const int stage = t % STAGES;
    cpAsyncWait<STAGES - 2>();
    __syncthreads();  // stage t has landed for every thread; Bs is free again
    // Refill the stage consumed STAGES-1 tiles ago.
    if (t + STAGES - 1 < nTiles) fetch((t + STAGES - 1) % STAGES, kt0 + t + STAGES - 1);
    cpAsyncCommit();

    // Dequantize this thread's 32 columns of row qRow into Bs.
    {
      const unsigned char* sz = SZs + (size_t)stage * SZ_BYTES;
      uint4 q = *reinterpret_cast<const uint4*>(Qs + (size_t)stage * Q_WORDS + qRow * (BN / 8) + qWord);
      uint4 z = *reinterpret_cast<const uint4*>(sz + BN * 2 + qWord * 4);
      uint32_t qv[4] = {q.x, q.y, q.z, q.w}, zv[4] = {z.x, z.y, z.z, z.w};
      __half2 res[16];
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        uint4 sv = *reinterpret_cast<const uint4*>(sz + (qWord + v) * 16);
        const __half2* s2 = reinterpret_cast<const __half2*>(&sv);
#pragma unroll
        for (int j = 0; j < 4; ++j) res[v * 4 + j] = dequantPair(qv[v], nibblePair(zv[v], j), s2[j], j);
      }
      uint4* dst = reinterpret_cast<uint4*>(Bs + qRow * B_LD + qWord * 8);
#pragma unroll
      for (int i = 0; i < 4; ++i) dst[i] = *reinterpret_cast<uint4*>(&res[i * 4]);
    }
    __syncthreads();

    const __half* A = As + (size_t)stage * BM * A_LD;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      uint32_t af[C::MI][4];
#pragma unroll
      for (int i = 0; i < C::MI; ++i)
        ldmatrixX4(af[i], A + (wm * C::WM + i * 16 + (lane & 15)) * A_LD + kk + (lane >> 4) * 8);
#pragma unroll
      for (int j = 0; j < C::NI; j += 2) {
        uint32_t bf[4];
        ldmatrixX4T(bf, Bs + (kk + (lane & 7) + ((lane >> 3) & 1) * 8) * B_LD + wn * C::WN + j * 8 + (lane >> 4) * 8);
#pragma unroll
        for (int i = 0; i < C::MI; ++i) {
          mma16816(acc[i][j], af[i], bf[0], bf[1]);
          mma16816(acc[i][j + 1], af[i], bf[2], bf[3]);
        }
      }
    }
  }
  cpAsyncWait<0>();

  // Epilogue: c0,c1 at (row lane/4, cols 2*(lane%4) + {0,1}); c2,c3 eight rows below.
#pragma unroll
  for (int i = 0; i < C::MI; ++i)
#pragma unroll
    for (int j = 0; j < C::NI; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        int m = m0 + wm * C::WM + i * 16 + (lane >> 2) + h * 8;
        int n = n0 + wn * C::WN + j * 8 + (lane & 3) * 2;
        if (m >= M || n >= N) continue;
        float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
        int64_t o = (int64_t)m * N + n;
        if (ws) {
          atomicAdd(ws + o, v0);
          atomicAdd(ws + o + 1, v1);
        } else if (outF16) {
          *reinterpret_cast<__half2*>(static_cast<__half*>(out) + o) = __floats2half2_rn(v0, v1);
        } else {
          *reinterpret_cast<float2*>(static_cast<float*>(out) + o) = make_float2(v0, v1);
        }
      }
}

// ---------------------------------------------------------------------------------
// Small-M tensor-core GEMV ("awqSkinny"), M <= 64 (MI = ceil(M/16) m16 tiles).
//
// No shared-memory B tile: each lane loads raw AutoAWQ words straight into registers and
// dequantizes them into m16n8k16 B fragments. The trick: the mma sums over k, so any
// permutation of k applied to both A and B gives the same result. Lane (g = lane/4,
// t = lane%4) plays logical k rows {2t, 2t+1, 2t+8, 2t+9} of a 16-row k-step; we map them
// to physical rows {4t, 4t+1, 4t+2, 4t+3}, so a lane needs 4 consecutive rows of ONE word
// column (word w0+g): 4 x 4-byte loads, 8 lanes of a row reading 32 contiguous bytes.
// One word holds 8 columns, so each lane feeds 8 n8-tiles; n-tile i's column g is the
// physical column 8*(w0+g) + order[i] (nibble i). A prmt pairs rows (4t, 4t+1) into one
// register (low 16 bits of each), and (v >> 4i) & 0x000F000F | 0x64006400 is the half2
// {1024+q(4t), 1024+q(4t+1)} of nibble i: a B register, after (. - (1024+z)) * s.
// The A fragment under the same permutation is x[row][k0+4t .. k0+4t+3]: one 8-byte load.
//
// Block = 8 warps = WN (4) column sub-tiles of 8 words x WK (2) k-interleaved warps; a
// block covers 256 columns and a range of whole groups (split-K over blockIdx.y). Warps
// reduce through shared memory; with split-K each block stores fp32 partials (plain,
// coalesced stores), takes a ticket from a per-column-tile counter, and the last block
// to arrive sums the partials and writes the final f16/f32 output, then resets the
// counter to 0 for the next call. One launch, no memset, no conversion pass.
constexpr int SK_WN = 4, SK_WK = 2, SK_COLS = SK_WN * 64;
// The split-K tickets live in memory the backend owns (Ctx::tickets, kTicketSlots zeroed words
// per stream), not in a module global that every stream of the process would share.
static_assert(kTicketSlots == 1 << 14, "Ctx::tickets holds kTicketSlots counters");


// Split-K final reduction by the last-arriving block of a column tile: sums the fp32
// partials of `splits` blocks, 4 columns per thread with 16-byte loads (N % 8 == 0 always).
__device__ __forceinline__ void skinnyFinalReduce(const float* __restrict__ ws, void* __restrict__ out, bool outF16,
                                                  int M, int N, int rows, int col0, int splits) {
  constexpr int C4 = SK_COLS / 4;
  const bool vec = (reinterpret_cast<uintptr_t>(out) & 15) == 0;
  const int64_t MN = (int64_t)M * N;
  for (int idx = threadIdx.x; idx < rows * C4; idx += blockDim.x) {
    const int m = idx / C4, n = col0 + (idx % C4) * 4;
    if (n >= N) continue;
    const int64_t o = (int64_t)m * N + n;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
    for (int s = 0; s < splits; ++s) {
      float4 p = __ldcg(reinterpret_cast<const float4*>(ws + s * MN + o));
      v.x += p.x; v.y += p.y; v.z += p.z; v.w += p.w;
    }
    if (outF16) {
      __half2 a = __floats2half2_rn(v.x, v.y), b = __floats2half2_rn(v.z, v.w);
      __half* op = static_cast<__half*>(out) + o;
      if (vec) {
        uint2 u = make_uint2(*reinterpret_cast<uint32_t*>(&a), *reinterpret_cast<uint32_t*>(&b));
        *reinterpret_cast<uint2*>(op) = u;
      } else {
        reinterpret_cast<__half2*>(op)[0] = a; reinterpret_cast<__half2*>(op)[1] = b;  // 4-byte aligned (N % 8 == 0)
      }
    } else {
      float* op = static_cast<float*>(out) + o;
      if (vec) *reinterpret_cast<float4*>(op) = v;
      else { op[0] = v.x; op[1] = v.y; op[2] = v.z; op[3] = v.w; }
    }
  }
}

// The common end of the skinny kernels: reduces the warps' accumulators through shared
// memory one m16 tile at a time, then either writes the output (one split) or stores fp32
// partials, and the last-arriving split of this column tile sums them (self-resetting ticket).
// `red` is SK_WK x 16 x SK_COLS floats of shared memory; every thread of the block calls this.
template <int MI>
__device__ __forceinline__ void skinnyEpilogue(const float (&acc)[MI][8][4], float (*red)[16][SK_COLS],
                                               unsigned int& isLastSh, unsigned int* __restrict__ tickets,
                                               float* __restrict__ ws,
                                               void* __restrict__ out, bool outF16, int M, int N, int col0) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wn = warp % SK_WN, wk = warp / SK_WN;
  const int g = lane >> 2, t = lane & 3;
  const int split = blockIdx.y, splits = gridDim.y;
  // C element (row g [+8], col 2t+e of n-tile i) is physical column 8*(word of lane 4*(2t+e)) + order[i]
  // -> local column wn*64 + (2t+e)*8 + order[i].
#pragma unroll
  for (int a = 0; a < MI; ++a) {
    if (a * 16 >= M) break;
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int row = g + (e >> 1) * 8;
        int col = wn * 64 + (2 * t + (e & 1)) * 8 + ((i & 3) * 2 + (i >> 2));
        red[wk][row][col] = acc[a][i][e];
      }
    __syncthreads();
    for (int idx = tid; idx < 16 * SK_COLS; idx += 256) {
      int row = idx / SK_COLS, col = idx % SK_COLS;
      int m = a * 16 + row, n = col0 + col;
      if (m < M && n < N) {
        float v = red[0][row][col] + red[1][row][col];
        int64_t o = (int64_t)m * N + n;
        if (splits > 1) ws[(int64_t)split * M * N + o] = v;
        else if (outF16) static_cast<__half*>(out)[o] = __float2half(v);
        else static_cast<float*>(out)[o] = v;
      }
    }
    __syncthreads();
  }
  if (splits == 1) return;
  // Split-K: the last block to arrive for this column tile sums the partials.
  __threadfence();
  __syncthreads();
  if (tid == 0) isLastSh = atomicAdd(&tickets[blockIdx.x], 1u) == (unsigned)splits - 1;
  __syncthreads();
  if (!isLastSh) return;
  __threadfence();
  skinnyFinalReduce(ws, out, outF16, M, N, min(M, MI * 16), col0, splits);
  if (tid == 0) tickets[blockIdx.x] = 0;  // ready for the next call on this stream
}

__device__ __forceinline__ uint32_t ldStream(const uint32_t* p) {
  uint32_t v;
  asm("ld.global.nc.L1::no_allocate.b32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ uint32_t nib2(uint32_t v, int i) {  // i in 0..3: half2 {1024+lo_i, 1024+hi_i}
  uint32_t r, s = v >> (4 * i);
  asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(r) : "r"(s), "n"(0x000F000F), "n"(0x64006400));
  return r;
}
__device__ __forceinline__ uint32_t h2u(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }
__device__ __forceinline__ __half2 u2h(uint32_t u) { return *reinterpret_cast<__half2*>(&u); }

template <int MI, int MINB>
__global__ void __launch_bounds__(256, MINB) awqSkinny(
    const __half* __restrict__ x,     // [M, K]
    const uint32_t* __restrict__ qw,  // [K, N/8]
    const uint32_t* __restrict__ qz,  // [K/G, N/8]
    const __half* __restrict__ sc,    // [K/G, N]
    float* __restrict__ ws,           // [splits, M, N] fp32 partials (splits > 1)
    unsigned int* __restrict__ tickets,  // [kTicketSlots] zeroed split-K counters of this stream
    void* __restrict__ out, bool outF16, int M, int K, int N, int groupsPerBlock) {
  __shared__ float red[SK_WK][16][SK_COLS];  // one m16 tile at a time (32 KB)
  __shared__ unsigned int isLastSh;
  const int W = N / 8, G = K / kGroup;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wn = warp % SK_WN, wk = warp / SK_WN;
  const int g = lane >> 2, t = lane & 3;
  const int tileW0 = blockIdx.x * (SK_COLS / 8);
  const int myWord = tileW0 + wn * 8 + g;
  const bool wordOk = myWord < W;
  const int gBeg = blockIdx.y * groupsPerBlock;
  const int gEnd = min(G, gBeg + groupsPerBlock);

  float acc[MI][8][4];
#pragma unroll
  for (int a = 0; a < MI; ++a)
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[a][i][e] = 0.f;

  // x row pointers for this lane's A rows (g and g+8 of each m16 tile); rows >= M give zeros.
  const __half* xr[MI][2];
  bool xok[MI][2];
#pragma unroll
  for (int a = 0; a < MI; ++a)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      int m = a * 16 + g + h * 8;
      xok[a][h] = m < M;
      xr[a][h] = x + (int64_t)(xok[a][h] ? m : 0) * K + 4 * t;
    }

  const uint32_t* qcol = qw + (wordOk ? myWord : 0) + (int64_t)(4 * t) * W;
  auto loadGroup = [&](uint32_t (&dst)[8][4], int grp) {
#pragma unroll
    for (int s = 0; s < 8; ++s)
#pragma unroll
      for (int r = 0; r < 4; ++r)
        dst[s][r] = wordOk ? ldStream(qcol + (int64_t)(grp * kGroup + s * 16 + r) * W) : 0u;
  };

  auto compute = [&](const uint32_t (&qg)[8][4], int grp) {
    // Zeros and scales of this group for this lane's word.
    uint32_t zw = wordOk ? __ldg(qz + (int64_t)grp * W + myWord) : 0u;
    uint4 sv = wordOk ? __ldg(reinterpret_cast<const uint4*>(sc + (int64_t)grp * N + (int64_t)myWord * 8)) : make_uint4(0, 0, 0, 0);
    const __half* sh = reinterpret_cast<const __half*>(&sv);
    uint32_t zlo = __byte_perm(zw, 0, 0x1010), zhi = __byte_perm(zw, 0, 0x3232);
    __half2 z2[8], s2[8];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      z2[i] = u2h(nib2(zlo, i));
      z2[i + 4] = u2h(nib2(zhi, i));
    }
    // nibble i holds column order[i] = {0,2,4,6,1,3,5,7}[i]
#pragma unroll
    for (int i = 0; i < 8; ++i) s2[i] = __half2half2(sh[(i & 3) * 2 + (i >> 2)]);
#pragma unroll
    for (int s = 0; s < 8; ++s) {
      const int k0 = grp * kGroup + s * 16;
      uint32_t af[MI][4];
#pragma unroll
      for (int a = 0; a < MI; ++a) {
        uint2 v0 = xok[a][0] ? __ldg(reinterpret_cast<const uint2*>(xr[a][0] + k0)) : make_uint2(0, 0);
        uint2 v1 = xok[a][1] ? __ldg(reinterpret_cast<const uint2*>(xr[a][1] + k0)) : make_uint2(0, 0);
        af[a][0] = v0.x; af[a][1] = v1.x; af[a][2] = v0.y; af[a][3] = v1.y;
      }
      uint32_t lo01 = __byte_perm(qg[s][0], qg[s][1], 0x5410), hi01 = __byte_perm(qg[s][0], qg[s][1], 0x7632);
      uint32_t lo23 = __byte_perm(qg[s][2], qg[s][3], 0x5410), hi23 = __byte_perm(qg[s][2], qg[s][3], 0x7632);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        uint32_t r01 = i < 4 ? nib2(lo01, i & 3) : nib2(hi01, i & 3);
        uint32_t r23 = i < 4 ? nib2(lo23, i & 3) : nib2(hi23, i & 3);
        uint32_t b0 = h2u(__hmul2(__hsub2(u2h(r01), z2[i]), s2[i]));
        uint32_t b1 = h2u(__hmul2(__hsub2(u2h(r23), z2[i]), s2[i]));
#pragma unroll
        for (int a = 0; a < MI; ++a) mma16816(acc[a][i], af[a], b0, b1);
      }
    }
  };
  // Register double buffer: the next group of this warp is in flight while one is computed.
  uint32_t q0[8][4], q1[8][4];
  int grp = gBeg + wk;
  if (grp < gEnd) loadGroup(q0, grp);
  while (grp < gEnd) {
    int n1 = grp + SK_WK;
    if (n1 < gEnd) loadGroup(q1, n1);
    compute(q0, grp);
    grp = n1;
    if (grp >= gEnd) break;
    int n2 = grp + SK_WK;
    if (n2 < gEnd) loadGroup(q0, n2);
    compute(q1, grp);
    grp = n2;
  }

  skinnyEpilogue<MI>(acc, red, isLastSh, tickets, ws, out, outF16, M, N, tileW0 * 8);
}

template <int MI, int MINB = 1>
void skinny(const Ctx& c, const __half* x, const AwqWeights& w, void* out, bool f16, int M, int K, int N) {
  static int perSM = 0;
  if (!perSM) {
    MC_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSM, awqSkinny<MI, MINB>, 256, 0));
    if (perSM < 1) perSM = 1;
  }
  const int W = N / 8, G = K / kGroup;
  const int tiles = (int)ceilDiv(W, SK_COLS / 8);
  // Split K so that the grid is about one full wave (every block resident at once);
  // each warp keeps at least 2 groups so its double buffer has something to overlap.
  int slots = perSM * c.numSMs;
  int splits = capSplits(std::min(slots / std::max(1, tiles), G / (2 * SK_WK)), M);
  if (tiles > kTicketSlots) splits = 1;
  int gpb = (int)ceilDiv(G, splits);
  splits = (int)ceilDiv(G, gpb);
  float* ws = nullptr;
  if (splits > 1) ws = static_cast<float*>(c.scratch->get((size_t)splits * M * N * 4, c.stream));
  dim3 grid((unsigned)tiles, (unsigned)splits);
  awqSkinny<MI, MINB><<<grid, 256, 0, c.stream>>>(x, w.qweight.as<uint32_t>(), w.qzeros.as<uint32_t>(),
                                            w.scales.as<__half>(), ws, c.tickets, out, f16, M, K, N, gpb);
  MC_LAUNCHED("awqSkinny");
}

// ---------------------------------------------------------------------------------
// awqSkinnyPipe: the same fragment mapping as awqSkinny, but the raw int4 words, the
// group's scales/zeros and the x rows travel through a STAGES-deep cp.async ring in
// shared memory (one 128-row group of a 256-column tile per stage: 16 KB of weights), so
// bytes in flight do not cost registers. Both k-halves of a stage are computed by the two
// warp rows (wk: k-steps 4wk..4wk+3). Words are stored with their 16-byte chunk index
// XOR (2 * ((row >> 2) & 3)) so a lane's 4-row reads hit 32 distinct banks; x rows are
// padded to 144 halves so LDS.64 A-fragment reads are conflict-free per half-warp.
// Needs N/8 % 4 == 0 (16-byte aligned rows); awqSkinny serves the rest.
constexpr int SP_XLD = 144;
template <int MI, int ST = 4> struct SpCfg {
  static constexpr int STAGES = ST;
  static constexpr int Q_BYTES = 128 * 32 * 4, S_BYTES = 512, Z_BYTES = 128, X_BYTES = MI * 16 * SP_XLD * 2;
  static constexpr int STAGE = Q_BYTES + S_BYTES + Z_BYTES + X_BYTES;
  static constexpr int RED = SK_WK * 16 * SK_COLS * 4;
  static constexpr size_t SMEM = (size_t)STAGES * STAGE > (size_t)RED ? (size_t)STAGES * STAGE : (size_t)RED;
};

template <int MI, int ST>
__global__ void __launch_bounds__(256) awqSkinnyPipe(
    const __half* __restrict__ x, const uint32_t* __restrict__ qw, const uint32_t* __restrict__ qz,
    const __half* __restrict__ sc, float* __restrict__ ws, unsigned int* __restrict__ tickets,
    void* __restrict__ out, bool outF16, int M, int K, int N, int groupsPerBlock) {
  using C = SpCfg<MI, ST>;
  constexpr int SP_STAGES = ST;
  constexpr int ROWS = MI * 16;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ unsigned int isLastSh;
  const int W = N / 8, G = K / kGroup;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wn = warp % SK_WN, wk = warp / SK_WN;
  const int g = lane >> 2, t = lane & 3;
  const int tileW0 = blockIdx.x * (SK_COLS / 8);
  const int gBeg = blockIdx.y * groupsPerBlock;
  const int gEnd = min(G, gBeg + groupsPerBlock);
  const int nG = gEnd - gBeg;

  auto fetch = [&](int stage, int grp) {
    unsigned char* base = smem + (size_t)stage * C::STAGE;
    uint32_t* Qs = reinterpret_cast<uint32_t*>(base);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      int i = tid + 256 * j, row = i >> 3, c = i & 7;
      bool ok = tileW0 + c * 4 < W;
      const uint32_t* src = qw + (int64_t)(grp * kGroup + row) * W + (ok ? tileW0 + c * 4 : 0);
      cpAsync16(Qs + row * 32 + ((c ^ (((row >> 2) & 3) << 1)) << 2), src, ok);
    }
    if (tid < 32) {
      bool ok = tileW0 + tid < W;
      cpAsync16(base + C::Q_BYTES + tid * 16, sc + (int64_t)grp * N + (int64_t)(ok ? tileW0 + tid : 0) * 8, ok);
    } else if (tid < 40) {
      int c = tid - 32;
      bool ok = tileW0 + c * 4 < W;
      cpAsync16(base + C::Q_BYTES + C::S_BYTES + c * 16, qz + (int64_t)grp * W + (ok ? tileW0 + c * 4 : 0), ok);
    }
    __half* Xs = reinterpret_cast<__half*>(base + C::Q_BYTES + C::S_BYTES + C::Z_BYTES);
    for (int i = tid; i < ROWS * 16; i += 256) {
      int row = i >> 4, c = i & 15;
      bool ok = row < M;
      cpAsync16(Xs + row * SP_XLD + c * 8, x + (int64_t)(ok ? row : 0) * K + grp * kGroup + c * 8, ok);
    }
  };

  float acc[MI][8][4];
#pragma unroll
  for (int a = 0; a < MI; ++a)
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[a][i][e] = 0.f;

#pragma unroll
  for (int s = 0; s < SP_STAGES - 1; ++s) {
    if (s < nG) fetch(s, gBeg + s);
    cpAsyncCommit();
  }
  const int myW = wn * 8 + g;  // word within the tile
  for (int it = 0; it < nG; ++it) {
    cpAsyncWait<SP_STAGES - 2>();
    __syncthreads();
    if (it + SP_STAGES - 1 < nG) fetch((it + SP_STAGES - 1) % SP_STAGES, gBeg + it + SP_STAGES - 1);
    cpAsyncCommit();
    const unsigned char* base = smem + (size_t)(it % SP_STAGES) * C::STAGE;
    const uint32_t* Qs = reinterpret_cast<const uint32_t*>(base);
    const __half* Xs = reinterpret_cast<const __half*>(base + C::Q_BYTES + C::S_BYTES + C::Z_BYTES);
    uint32_t zw = reinterpret_cast<const uint32_t*>(base + C::Q_BYTES + C::S_BYTES)[myW];
    uint4 sv = reinterpret_cast<const uint4*>(base + C::Q_BYTES)[myW];
    const __half* sh = reinterpret_cast<const __half*>(&sv);
    uint32_t zlo = __byte_perm(zw, 0, 0x1010), zhi = __byte_perm(zw, 0, 0x3232);
    __half2 z2[8], s2[8];
#pragma unroll
    for (int i = 0; i < 4; ++i) { z2[i] = u2h(nib2(zlo, i)); z2[i + 4] = u2h(nib2(zhi, i)); }
#pragma unroll
    for (int i = 0; i < 8; ++i) s2[i] = __half2half2(sh[(i & 3) * 2 + (i >> 2)]);
    const int qoff = (((myW >> 2) ^ (t << 1)) << 2) + (myW & 3);
#pragma unroll
    for (int ss = 0; ss < 4; ++ss) {
      const int s = wk * 4 + ss;
      uint32_t qq[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) qq[r] = Qs[(s * 16 + 4 * t + r) * 32 + qoff];
      uint32_t af[MI][4];
#pragma unroll
      for (int a = 0; a < MI; ++a) {
        uint2 v0 = *reinterpret_cast<const uint2*>(Xs + (a * 16 + g) * SP_XLD + s * 16 + 4 * t);
        uint2 v1 = make_uint2(0, 0);
        if (a * 16 + 8 < M) v1 = *reinterpret_cast<const uint2*>(Xs + (a * 16 + g + 8) * SP_XLD + s * 16 + 4 * t);
        af[a][0] = v0.x; af[a][1] = v1.x; af[a][2] = v0.y; af[a][3] = v1.y;
      }
      uint32_t lo01 = __byte_perm(qq[0], qq[1], 0x5410), hi01 = __byte_perm(qq[0], qq[1], 0x7632);
      uint32_t lo23 = __byte_perm(qq[2], qq[3], 0x5410), hi23 = __byte_perm(qq[2], qq[3], 0x7632);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        uint32_t r01 = i < 4 ? nib2(lo01, i & 3) : nib2(hi01, i & 3);
        uint32_t r23 = i < 4 ? nib2(lo23, i & 3) : nib2(hi23, i & 3);
        uint32_t b0 = h2u(__hmul2(__hsub2(u2h(r01), z2[i]), s2[i]));
        uint32_t b1 = h2u(__hmul2(__hsub2(u2h(r23), z2[i]), s2[i]));
#pragma unroll
        for (int a = 0; a < MI; ++a) mma16816(acc[a][i], af[a], b0, b1);
      }
    }
  }
  cpAsyncWait<0>();
  __syncthreads();  // the ring is free: reuse it for the block reduction

  skinnyEpilogue<MI>(acc, reinterpret_cast<float (*)[16][SK_COLS]>(smem), isLastSh, tickets, ws, out, outF16, M, N,
                    tileW0 * 8);
}


template <int MI, int ST>
void skinnyPipeT(const Ctx& c, const __half* x, const AwqWeights& w, void* out, bool f16, int M, int K, int N) {
  using Cfg = SpCfg<MI, ST>;
  static int perSM = 0;
  if (!perSM) {
    MC_CUDA(cudaFuncSetAttribute(awqSkinnyPipe<MI, ST>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)Cfg::SMEM));
    MC_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSM, awqSkinnyPipe<MI, ST>, 256, Cfg::SMEM));
    if (perSM < 1) perSM = 1;
  }
  const int W = N / 8, G = K / kGroup;
  const int tiles = (int)ceilDiv(W, SK_COLS / 8);
  int slots = perSM * c.numSMs;
  int splits = capSplits(std::min(slots / std::max(1, tiles), G / 2), M);
  if (tiles > kTicketSlots) splits = 1;
  int gpb = (int)ceilDiv(G, splits);
  splits = (int)ceilDiv(G, gpb);
  float* ws = nullptr;
  if (splits > 1) ws = static_cast<float*>(c.scratch->get((size_t)splits * M * N * 4, c.stream));
  dim3 grid((unsigned)tiles, (unsigned)splits);
  awqSkinnyPipe<MI, ST><<<grid, 256, Cfg::SMEM, c.stream>>>(x, w.qweight.as<uint32_t>(), w.qzeros.as<uint32_t>(),
                                                            w.scales.as<__half>(), ws, c.tickets, out, f16, M, K, N, gpb);
  MC_LAUNCHED("awqSkinnyPipe");
}
template <int MI>
void skinnyPipe(const Ctx& c, const __half* x, const AwqWeights& w, void* out, bool f16, int M, int K, int N) {
  if (MI == 1 && awqSkinnyStages1 == 5) skinnyPipeT<1, 5>(c, x, w, out, f16, M, K, N);
  else skinnyPipeT<MI, 4>(c, x, w, out, f16, M, K, N);
}

// ---------------------------------------------------------------------------------
// awqCore<MT, CL, U, L2P>: CUDA-core GEMV for M <= 4 (since 168c2e1). No shared memory and no
// barrier in the main loop: each thread owns one 16-byte chunk (4 words = 32 columns) of a
// CL-chunk (CL x 16 B contiguous per row) column tile and streams "row chunks" of 8
// consecutive K rows: 8 independent 16-byte ld.global.nc.L1::no_allocate loads per row
// chunk (x U row chunks issued before the first use). Block = 256 threads = CL chunk lanes
// x S = 256/CL row slots; slot s takes row chunks rcBeg + s, + S, ... of the block's K range
// (split-K over blockIdx.y at row-chunk granularity, so small matrices still fill the GPU).
// Dequant: lop3 -> half2 {1024+q}, hsub2 (1024+z) (exact), hmul2 s (the same rounding as
// the tensor-core path), then fp32 FMAs with x (fp32 accumulation). Epilogue: shuffle +
// one shared-memory pass over the slots, then plain stores (one split) or fp32 partials,
// a per-tile ticket and the last block's reduction (no memset, no extra launch).
constexpr int kCoreTicketSlots = kTicketSlots;  // the same per-stream counters (Ctx::tickets)

__device__ __forceinline__ uint4 ldStream16(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ uint4 ldStream16L2(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

template <int MT, int CL, int U, bool L2P, int MINB>
__global__ void __launch_bounds__(256, MINB) awqCore(
    const __half* __restrict__ x, const uint32_t* __restrict__ qw, const uint32_t* __restrict__ qz,
    const __half* __restrict__ sc, float* __restrict__ ws, unsigned int* __restrict__ tickets,
    void* __restrict__ out, bool outF16, int M, int K, int N, int rcPerBlock) {
  constexpr int S = 256 / CL;          // row slots per block
  constexpr int TILE_W = 4 * CL;       // words per column tile
  constexpr int TILE_C = 8 * TILE_W;   // columns per column tile
  constexpr int RP = CL + 1;           // padded stride of the reduction buffer
  __shared__ float red[8][32][RP];
  __shared__ unsigned int isLastSh;
  const int W = N / 8;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int chunk = tid % CL, slot = tid / CL;
  const int w0 = blockIdx.x * TILE_W + 4 * chunk;
  const bool ok = w0 < W;
  const int RC = K / 8;
  const int rcBeg = blockIdx.y * rcPerBlock;
  const int rcEnd = min(RC, rcBeg + rcPerBlock);

  float acc[MT][32];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int i = 0; i < 32; ++i) acc[m][i] = 0.f;

  if (ok) {
    const uint32_t* qbase = qw + w0;
    for (int rc0 = rcBeg + slot; rc0 < rcEnd; rc0 += S * U) {
      uint4 q[U][8];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int rc = rc0 + u * S;
        if (u == 0 || rc < rcEnd) {
#pragma unroll
          for (int r = 0; r < 8; ++r) {
            const uint32_t* p = qbase + (int64_t)(rc * 8 + r) * W;
            q[u][r] = L2P ? ldStream16L2(p) : ldStream16(p);
          }
        } else {
#pragma unroll
          for (int r = 0; r < 8; ++r) q[u][r] = make_uint4(0x64006400u, 0x64006400u, 0x64006400u, 0x64006400u);
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int rc = rc0 + u * S;
        if (u > 0 && rc >= rcEnd) break;
        const int grp = rc >> 4;  // 16 row chunks per 128-row group
        const uint4 zw = __ldg(reinterpret_cast<const uint4*>(qz + (int64_t)grp * W + w0));
        const uint4* sp = reinterpret_cast<const uint4*>(sc + (int64_t)grp * N + (int64_t)w0 * 8);
        float xf[MT][8];
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          if (m < M) {
            uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + (int64_t)m * K + rc * 8));
            const __half2* xh = reinterpret_cast<const __half2*>(&xv);
#pragma unroll
            for (int p = 0; p < 4; ++p) { float2 f = __half22float2(xh[p]); xf[m][2 * p] = f.x; xf[m][2 * p + 1] = f.y; }
          } else {
#pragma unroll
            for (int r = 0; r < 8; ++r) xf[m][r] = 0.f;
          }
        }
        const uint32_t zv[4] = {zw.x, zw.y, zw.z, zw.w};
#pragma unroll
        for (int v = 0; v < 4; ++v) {
          const uint4 sv = __ldg(sp + v);
          const __half2* s2 = reinterpret_cast<const __half2*>(&sv);
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const __half2 z2 = nibblePair(zv[v], j);
#pragma unroll
            for (int r = 0; r < 8; ++r) {
              const uint32_t qv = v == 0 ? q[u][r].x : v == 1 ? q[u][r].y : v == 2 ? q[u][r].z : q[u][r].w;
              const float2 wf = __half22float2(__hmul2(__hsub2(nibblePair(qv, j), z2), s2[j]));
#pragma unroll
              for (int m = 0; m < MT; ++m) {
                acc[m][v * 8 + 2 * j] = fmaf(xf[m][r], wf.x, acc[m][v * 8 + 2 * j]);
                acc[m][v * 8 + 2 * j + 1] = fmaf(xf[m][r], wf.y, acc[m][v * 8 + 2 * j + 1]);
              }
            }
          }
        }
      }
    }
  }

  // Reduce over the S slots: lanes of one warp first (CL = 16: two slots per warp), then
  // across the 8 warps through shared memory, one output row at a time.
  const int split = blockIdx.y, splits = gridDim.y;
  const int col0 = blockIdx.x * TILE_C;
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (m >= M) break;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      float v = acc[m][i];
      if constexpr (CL == 16) v += __shfl_xor_sync(0xffffffffu, v, 16);
      if (CL == 32 || lane < 16) red[warp][i][chunk] = v;
    }
    __syncthreads();
    for (int c2 = tid; c2 < TILE_C / 2; c2 += 256) {
      const int cl = 2 * c2, ch = cl >> 5, i = cl & 31;
      float v0 = 0.f, v1 = 0.f;
#pragma unroll
      for (int w = 0; w < 8; ++w) { v0 += red[w][i][ch]; v1 += red[w][i + 1][ch]; }
      const int n = col0 + cl;
      if (n < N) {
        const int64_t o = (int64_t)m * N + n;
        if (splits > 1) *reinterpret_cast<float2*>(ws + (int64_t)split * M * N + o) = make_float2(v0, v1);
        else if (outF16) *reinterpret_cast<__half2*>(static_cast<__half*>(out) + o) = __floats2half2_rn(v0, v1);
        else *reinterpret_cast<float2*>(static_cast<float*>(out) + o) = make_float2(v0, v1);
      }
    }
    __syncthreads();
  }
  if (splits == 1) return;
  __threadfence();
  __syncthreads();
  if (tid == 0) isLastSh = atomicAdd(&tickets[blockIdx.x], 1u) == (unsigned)splits - 1;
  __syncthreads();
  if (!isLastSh) return;
  __threadfence();
  // Last block of this column tile: sum the splits' partials, 4 columns per thread, 8 loads in flight.
  constexpr int C4 = TILE_C / 4;
  const int64_t MN = (int64_t)M * N;
  for (int idx = tid; idx < M * C4; idx += 256) {
    const int m = idx / C4, n = col0 + (idx % C4) * 4;
    if (n >= N) continue;
    const int64_t o = (int64_t)m * N + n;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
    for (int s = 0; s < splits; ++s) {
      float4 p = __ldcg(reinterpret_cast<const float4*>(ws + s * MN + o));
      v.x += p.x; v.y += p.y; v.z += p.z; v.w += p.w;
    }
    if (outF16) {
      __half2 a = __floats2half2_rn(v.x, v.y), b = __floats2half2_rn(v.z, v.w);
      __half2* op = reinterpret_cast<__half2*>(static_cast<__half*>(out) + o);
      op[0] = a; op[1] = b;
    } else {
      float* op = static_cast<float*>(out) + o;
      *reinterpret_cast<float2*>(op) = make_float2(v.x, v.y);
      *reinterpret_cast<float2*>(op + 2) = make_float2(v.z, v.w);
    }
  }
  if (tid == 0) tickets[blockIdx.x] = 0;
}

template <int MT, int CL, int U, bool L2P, int MINB>
void coreT(const Ctx& c, const __half* x, const AwqWeights& w, void* out, bool f16, int M, int K, int N) {
  static int perSM = 0;
  if (!perSM) {
    MC_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSM, awqCore<MT, CL, U, L2P, MINB>, 256, 0));
    if (perSM < 1) perSM = 1;
  }
  constexpr int S = 256 / CL;
  const int W = N / 8, RC = K / 8;
  const int tiles = (int)ceilDiv(W, 4 * CL);
  // One full wave of resident blocks; every slot keeps at least one row chunk.
  int splits = std::max(1, std::min(perSM * c.numSMs / std::max(1, tiles), RC / S));
  if (awqCoreMaxSplits > 0) splits = std::min(splits, awqCoreMaxSplits);
  if (tiles > kCoreTicketSlots) splits = 1;
  int rpb = (int)ceilDiv(RC, splits);
  rpb = (int)ceilDiv(rpb, S) * S;  // whole passes of the S slots
  splits = (int)ceilDiv(RC, rpb);
  float* ws = nullptr;
  if (splits > 1) ws = static_cast<float*>(c.scratch->get((size_t)splits * M * N * 4, c.stream));
  dim3 grid((unsigned)tiles, (unsigned)splits);
  awqCore<MT, CL, U, L2P, MINB><<<grid, 256, 0, c.stream>>>(x, w.qweight.as<uint32_t>(), w.qzeros.as<uint32_t>(),
                                                           w.scales.as<__half>(), ws, c.tickets, out, f16, M, K, N, rpb);
  MC_LAUNCHED("awqCore");
}

template <int MT>
void coreM(const Ctx& c, const __half* x, const AwqWeights& w, void* out, bool f16, int M, int K, int N) {
  // awqCoreVariant: 0 = CL 16, U 1; 1 = CL 32, U 1; 2 = CL 16, U 2; 3 = CL 32, U 2; +4: L2::256B hint.
  constexpr int MB = MT == 1 ? 2 : 1;  // blocks per SM the U = 1 build is register-capped for (MT = 2 spills at 128)
  switch (awqCoreVariant) {
    case 1: return coreT<MT, 32, 1, false, MB>(c, x, w, out, f16, M, K, N);
    case 2: return coreT<MT, 16, 2, false, 1>(c, x, w, out, f16, M, K, N);
    case 3: return coreT<MT, 32, 2, false, 1>(c, x, w, out, f16, M, K, N);
    case 4: return coreT<MT, 16, 1, true, MB>(c, x, w, out, f16, M, K, N);
    case 5: return coreT<MT, 32, 1, true, MB>(c, x, w, out, f16, M, K, N);
    case 6: return coreT<MT, 16, 2, true, 1>(c, x, w, out, f16, M, K, N);
    case 7: return coreT<MT, 32, 2, true, 1>(c, x, w, out, f16, M, K, N);
    default: return coreT<MT, 16, 1, false, MB>(c, x, w, out, f16, M, K, N);
  }
}

template <int MT, int VEC>
void runGemv(const Ctx& c, const __half* x, const AwqWeights& w, float* ws, void* out, bool f16,
             int M, int K, int N, int splits, int gpb) {
  int W = N / 8;
  dim3 grid((unsigned)ceilDiv(W, 32 * VEC), (unsigned)splits);
  awqGemv<MT, VEC><<<grid, 256, 0, c.stream>>>(x, w.qweight.as<uint32_t>(), w.qzeros.as<uint32_t>(),
                                               w.scales.as<__half>(), ws, out, f16, M, K, N, gpb);
  MC_LAUNCHED("awqGemv");
}

template <int MT>
void gemvDispatchVec(const Ctx& c, const __half* x, const AwqWeights& w, float* ws, void* out, bool f16,
                     int M, int K, int N, int splits, int gpb, int vec) {
  if constexpr (MT <= 2) {
    if (vec == 4) return runGemv<MT, 4>(c, x, w, ws, out, f16, M, K, N, splits, gpb);
  }
  if constexpr (MT <= 4) {
    if (vec >= 2) return runGemv<MT, 2>(c, x, w, ws, out, f16, M, K, N, splits, gpb);
  }
  runGemv<MT, 1>(c, x, w, ws, out, f16, M, K, N, splits, gpb);
}

template <int MT, int VEC> int occ() {
  int n = 0;
  MC_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, awqGemv<MT, VEC>, 256, 0));
  return n < 1 ? 1 : n;
}
int gemvBlocksPerSM(int M, int vec) {
  static int cache[9][5] = {};
  int& v = cache[M][vec];
  if (!v) {
    if (M == 1) v = vec == 4 ? occ<1, 4>() : vec == 2 ? occ<1, 2>() : occ<1, 1>();
    else if (M == 2) v = vec == 4 ? occ<2, 4>() : vec == 2 ? occ<2, 2>() : occ<2, 1>();
    else if (M <= 4) v = vec == 2 ? occ<4, 2>() : occ<4, 1>();
    else v = occ<8, 1>();
  }
  return v;
}

// Rows [0, M) of x with M <= 8.
void gemv(const Ctx& c, const __half* x, const AwqWeights& w, void* out, bool f16, int M, int K, int N) {
  const int W = N / 8, groups = K / kGroup;
  int vec = M <= 2 ? 4 : M <= 4 ? 2 : 1;
  while (vec > 1 && W % vec) vec /= 2;
  int tilesN = (int)ceilDiv(W, 32 * vec);
  // One full wave: as many K splits as keep every block resident at once, so no
  // second, partial wave leaves most SMs idle at the end (the grid is bandwidth-bound).
  int perSM = gemvBlocksPerSM(M, vec);
  int splits = (int)std::max<int64_t>(1, std::min<int64_t>(groups, (int64_t)perSM * c.numSMs / tilesN));
  int gpb = (int)ceilDiv(groups, splits);
  splits = (int)ceilDiv(groups, gpb);
  float* ws = nullptr;
  if (splits > 1) {
    ws = static_cast<float*>(c.scratch->get((size_t)M * N * 4, c.stream));
    MC_CUDA(cudaMemsetAsync(ws, 0, (size_t)M * N * 4, c.stream));
  }
  switch (M) {
    case 1: gemvDispatchVec<1>(c, x, w, ws, out, f16, M, K, N, splits, gpb, vec); break;
    case 2: gemvDispatchVec<2>(c, x, w, ws, out, f16, M, K, N, splits, gpb, vec); break;
    case 3: case 4: gemvDispatchVec<4>(c, x, w, ws, out, f16, M, K, N, splits, gpb, vec); break;
    default: gemvDispatchVec<8>(c, x, w, ws, out, f16, M, K, N, splits, gpb, vec); break;
  }
  if (ws) {
    int64_t n = (int64_t)M * N;
    convertOut<<<(unsigned)std::min<int64_t>(ceilDiv(n, 256), 4 * c.numSMs), 256, 0, c.stream>>>(ws, out, f16, n);
    MC_LAUNCHED("convertOut");
  }
}

// grid-stride over the words of qweight [K, W]: word (k, w) -> f16 columns 8w .. 8w+7 of
// row k, in natural column order (the same fp16 rounding as the in-register paths).
__global__ void awqDequantKernel(const uint32_t* __restrict__ qw, const uint32_t* __restrict__ qz,
                                 const __half* __restrict__ sc, __half* __restrict__ out, int K, int W) {
  const int64_t n = (int64_t)K * W;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t k = i / W, w = i - k * W, g = k / kGroup;
    const uint32_t q = __ldg(qw + i), z = __ldg(qz + g * W + w);
    const uint4 s4 = __ldg(reinterpret_cast<const uint4*>(sc + g * (int64_t)W * 8 + w * 8));
    const __half2* s2 = reinterpret_cast<const __half2*>(&s4);
    uint4 r;
    __half2* r2 = reinterpret_cast<__half2*>(&r);
#pragma unroll
    for (int j = 0; j < 4; ++j) r2[j] = dequantPair(q, nibblePair(z, j), s2[j], j);
    reinterpret_cast<uint4*>(out)[i] = r;
  }
}

void dequantGemm(const Ctx& c, const __half* x, const AwqWeights& w, void* out, bool f16, int M, int K, int N) {
  const int W = N / 8;
  __half* deq = static_cast<__half*>(c.scratch3->get((size_t)K * N * 2, c.stream));
  const int64_t words = (int64_t)K * W;
  awqDequantKernel<<<(unsigned)std::min<int64_t>(ceilDiv(words, 256), 16 * c.numSMs), 256, 0, c.stream>>>(
      w.qweight.as<uint32_t>(), w.qzeros.as<uint32_t>(), w.scales.as<__half>(), deq, K, W);
  MC_LAUNCHED("awqDequant");
  blasGemm(*c.blas, x, deq, true, out, f16, M, K, N);
}

template <int BM>
void mma(const Ctx& c, const __half* x, const AwqWeights& w, void* out, bool f16, int M, int K, int N) {
  using Cfg = MmaCfg<BM>;
  static bool attrSet = false;  // per process; the attribute is per device function
  if (!attrSet) {
    MC_CUDA(cudaFuncSetAttribute(awqMma<BM>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)Cfg::smemBytes));
    attrSet = true;
  }
  int tilesM = (int)ceilDiv(M, BM), tilesN = (int)ceilDiv(N, BN), kTiles = K / BK;
  int64_t tiles = (int64_t)tilesM * tilesN;
  // Split K until the grid covers the GPU about four times (at least 4 k-tiles per split).
  int splits = (int)std::max<int64_t>(1, std::min<int64_t>(kTiles / 4, ceilDiv(4 * c.numSMs, tiles)));
  int tpb = (int)ceilDiv(kTiles, splits);
  splits = (int)ceilDiv(kTiles, tpb);
  float* ws = nullptr;
  if (splits > 1) {
    ws = static_cast<float*>(c.scratch->get((size_t)M * N * 4, c.stream));
    MC_CUDA(cudaMemsetAsync(ws, 0, (size_t)M * N * 4, c.stream));
  }
  dim3 grid(tilesN, tilesM, splits);
  awqMma<BM><<<grid, 256, Cfg::smemBytes, c.stream>>>(x, w.qweight.as<uint32_t>(), w.qzeros.as<uint32_t>(),
                                                      w.scales.as<__half>(), ws, out, f16, M, K, N, tpb);
  MC_LAUNCHED("awqMma");
  if (ws) {
    int64_t n = (int64_t)M * N;
    convertOut<<<(unsigned)std::min<int64_t>(ceilDiv(n, 256), 4 * c.numSMs), 256, 0, c.stream>>>(ws, out, f16, n);
    MC_LAUNCHED("convertOut");
  }
}

}  // namespace

// Path switch points (check.cu moves them to test every path):
//  M <= awqGemvMaxM: legacy CUDA-core GEMV (v1; off by default);
//  M <= awqSkinnyMaxM: the register-fragment tensor-core GEMV (awqSkinny, one launch);
//  above: the shared-memory tiled tensor-core kernel (awqMma).
int awqGemvMaxM = 0;
int awqSkinnyMaxM = 64;
int awqSkinnyPipeOn = 1;  // 0: register-fragment kernel without the shared-memory ring (v1 of this path)
int awqSkinnyMinBlocks = 1;  // blocks per SM the M <= 16 variant is compiled for (1: 181 regs, 2: 128 regs)

void launchAwqLinear(const Ctx& c, const View& x, const AwqWeights& w, const View& out) {
  const int K = (int)w.qweight.dim(0), N = (int)w.qweight.dim(1) * 8;
  const int M = (int)(x.numel() / K);
  if (M == 0) return;
  if (w.groupSize != kGroup)
    throw BackendError("awqLinear (CUDA): group size " + std::to_string(w.groupSize) +
                       " is not supported (compiled for 128); M=" + std::to_string(M) +
                       " N=" + std::to_string(N) + " K=" + std::to_string(K));
  const bool f16 = out.dtype == DType::F16;
  const __half* xp = x.as<__half>();
  char* op = static_cast<char*>(out.data);
  const size_t rowOut = (size_t)N * dtypeSize(out.dtype);
  // The tensor-core kernel loads 4 words (32 columns) at a time: N/8 must divide by 4.
  const bool mmaOk = (N / 8) % 4 == 0;
  const bool coreAligned = (reinterpret_cast<uintptr_t>(xp) & 15) == 0 && (reinterpret_cast<uintptr_t>(op) & 7) == 0;
  if (c.blas && awqDequantMinM > 0 && M >= awqDequantMinM) {
    dequantGemm(c, xp, w, op, f16, M, K, N);
    return;
  }
  if (M <= std::min(awqCoreMaxM, 4) && (N / 8) % 4 == 0 && coreAligned) {
    if (M == 1) coreM<1>(c, xp, w, op, f16, M, K, N);
    else if (M == 2) coreM<2>(c, xp, w, op, f16, M, K, N);
    else coreM<4>(c, xp, w, op, f16, M, K, N);
    return;
  }
  if (M > awqGemvMaxM && M <= awqSkinnyMaxM && awqSkinnyPipeOn && (N / 8) % 4 == 0) {
    if (M <= 16) skinnyPipe<1>(c, xp, w, op, f16, M, K, N);
    else if (M <= 32) skinnyPipe<2>(c, xp, w, op, f16, M, K, N);
    else if (M <= 48) skinnyPipe<3>(c, xp, w, op, f16, M, K, N);
    else skinnyPipe<4>(c, xp, w, op, f16, M, K, N);
    return;
  }
  if (M > awqGemvMaxM && M <= awqSkinnyMaxM) {
    if (M <= 16) { if (awqSkinnyMinBlocks == 2) skinny<1, 2>(c, xp, w, op, f16, M, K, N); else skinny<1, 1>(c, xp, w, op, f16, M, K, N); }
    else if (M <= 32) skinny<2>(c, xp, w, op, f16, M, K, N);
    else if (M <= 48) skinny<3>(c, xp, w, op, f16, M, K, N);
    else skinny<4>(c, xp, w, op, f16, M, K, N);
    return;
  }
  if (M <= awqGemvMaxM || !mmaOk) {
    for (int m0 = 0; m0 < M; m0 += 8)
      gemv(c, xp + (size_t)m0 * K, w, op + m0 * rowOut, f16, std::min(8, M - m0), K, N);
    return;
  }
  if (M <= 16) mma<16>(c, xp, w, op, f16, M, K, N);
  else if (M <= 32) mma<32>(c, xp, w, op, f16, M, K, N);
  else if (M <= 64) mma<64>(c, xp, w, op, f16, M, K, N);
  else mma<128>(c, xp, w, op, f16, M, K, N);
}

}  // namespace cuda
}  // namespace medcluster
