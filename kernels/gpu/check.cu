// medcluster-gpu-check: correctness of every CUDA backend op against float64 host references,
// then (with --bench) the AWQ matmul benchmark at the 70B shapes beside fp16 cuBLAS.
//   ./medcluster-gpu-check                 checks; exit 1 on any failure, 77 without a CUDA device
//   ./medcluster-gpu-check --bench         checks, then the benchmark (--bench-only: the benchmark)
//   ./medcluster-gpu-check --json PATH     also write the benchmark as JSON (bench kernels --device cuda)
//   ./medcluster-gpu-check --e2e           the 80-layer C++ decode/prefill loop (e2e.cu)
// Benchmark environment: MC_BENCH_QUICK=1 (tp=1 shapes, M <= 64, no cuBLAS), MC_BENCH_MS=1,4,16
// (the M values), MC_BENCH_TP1=1 (tp=1 shapes only), MC_BENCH_ATTENTION_ONLY=1 (the decode attention rows only),
// MC_BENCH_GATED=1 (gate_up packed gated: its silu(gate) * up epilogue, as the worker runs it).
//
// Every check bounds each element, |got - ref| <= atol + rtol |ref| with atol a multiple of the
// reference's RMS (a check of an fp16 kernel cannot bound elements near zero relatively), and the
// relative L2 error ||got - ref|| / ||ref||; outputs start poisoned (NaN) so an unwritten
// element fails; inputs are fresh random values (never zeros).
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../native/awq_layout.h"
#include "../native/backend.h"
#include "../native/cuda/awq.cuh"
#include "../native/cuda/common.cuh"
#include "../native/cuda/cublas_loader.h"
#include "../native/cuda/nccl_loader.h"
#include "../native/cuda/tuning.h"

using namespace medcluster;
namespace ap = medcluster::awqpack;

int runE2E(Backend& b);      // e2e.cu
int runReadPat(Backend& b);  // e2e.cu
static std::mt19937_64 rng(12345);
static int g_fail = 0, g_ok = 0;

static float urand(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }
static uint16_t h(float f) { __half x = __float2half(f); uint16_t u; memcpy(&u, &x, 2); return u; }
static float f(uint16_t u) { __half x; memcpy(&x, &u, 2); return __half2float(x); }

// Runs fn(i) for i in [0, n) on the host's cores (float64 references of large shapes).
static void parallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  const int T = std::max(1u, std::min(32u, std::thread::hardware_concurrency()));
  std::vector<std::thread> ts;
  for (int t = 0; t < T; ++t) {
    const int64_t a = n * t / T, z = n * (t + 1) / T;
    if (a < z) ts.emplace_back(fn, a, z);
  }
  for (auto& t : ts) t.join();
}

static std::vector<std::shared_ptr<Buffer>> keep;

template <typename T>
static View up(Backend& b, const std::vector<T>& host, DType dt, std::vector<int64_t> shape) {
  auto buf = b.alloc(host.size() * sizeof(T));
  b.upload(*buf, host.data(), host.size() * sizeof(T));
  keep.push_back(buf);
  View v; v.data = buf->data; v.dtype = dt; v.shape = shape;
  return v;
}
// Output buffer filled with 0xFF bytes (NaN for f16/f32): unwritten elements show up.
static View poisoned(Backend& b, size_t bytes, DType dt, std::vector<int64_t> shape) {
  auto buf = b.alloc(bytes);
  std::vector<unsigned char> ff(bytes, 0xFF);
  b.upload(*buf, ff.data(), bytes);
  keep.push_back(buf);
  View v; v.data = buf->data; v.dtype = dt; v.shape = shape;
  return v;
}
template <typename T>
static std::vector<T> down(Backend& b, const View& v) {
  std::vector<T> out(v.numel());
  Buffer tmp; tmp.data = v.data; tmp.bytes = out.size() * sizeof(T);
  b.download(tmp, out.data(), tmp.bytes);
  tmp.data = nullptr;
  return out;
}
static std::vector<double> toD(const View& v, Backend& b) {
  std::vector<double> r(v.numel());
  if (v.dtype == DType::F16) { auto x = down<uint16_t>(b, v); for (size_t i = 0; i < r.size(); ++i) r[i] = f(x[i]); }
  else { auto x = down<float>(b, v); for (size_t i = 0; i < r.size(); ++i) r[i] = x[i]; }
  return r;
}

static void verdict(bool ok) { ok ? ++g_ok : ++g_fail; }

// Tolerances: relative L2 error l2; per element |got - ref| <= atolRms * rms(ref) + rtol * |ref|.
struct Tol { double l2, rtol, atolRms; };
static Tol tolOf(double l2) { return {l2, l2, 2 * l2}; }  // the default per-element bound for an L2 tolerance

// bounds: each element's own bound instead of atolRms * rms(ref) + rtol * |ref| (a gated matmul's,
// carried from its sums' through the gate).
static void report(const std::string& name, const std::vector<double>& out, const std::vector<double>& ref, Tol t,
                   const std::vector<double>* bounds = nullptr) {
  double num = 0, den = 0;
  bool nan = false;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(out[i])) nan = true;
    num += (out[i] - ref[i]) * (out[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  const double rms = ref.empty() ? 0 : std::sqrt(den / ref.size());
  const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  // Worst element: its error over its bound (> 1 fails).
  double worst = 0;
  size_t worstAt = 0, over = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::fabs(out[i] - ref[i]);
    const double bound = bounds ? (*bounds)[i] : t.atolRms * rms + t.rtol * std::fabs(ref[i]);
    const double ratio = bound > 0 ? err / bound : (err > 0 ? INFINITY : 0);
    if (!(ratio <= 1)) ++over;
    if (!(ratio <= worst)) { worst = ratio; worstAt = i; }
  }
  const bool ok = !nan && rel <= t.l2 && over == 0;
  verdict(ok);
  printf("%-4s %-58s rel %.2e (tol %.0e), worst element %.2f of its bound", ok ? "ok" : "FAIL", name.c_str(), rel, t.l2,
         worst);
  if (over) printf(" (%zu over; [%zu] got %.6g ref %.6g)", over, worstAt, out[worstAt], ref[worstAt]);
  printf("%s\n", nan ? " NON-FINITE" : "");
}
static void report(const std::string& name, const std::vector<double>& out, const std::vector<double>& ref, double tol) {
  report(name, out, ref, tolOf(tol));
}

// ---- AWQ ----------------------------------------------------------------------------
static int nib(uint32_t w, int n) { return (w >> ap::autoAwqShift(n)) & 15; }

// A column's (multiplier, addend) pair as the pack computes it (awqColumnPair), on the host.
static uint32_t hostPair(uint16_t s, int z, int e) {
  const float sf = f(s);
  const uint16_t mul = h(sf * std::ldexp(1.f, 18 - e));
  const uint16_t add = h(-(float)z * sf * std::ldexp(1.f, -e));
  return (uint32_t)mul | (uint32_t)add << 16;
}

// The packed bytes against the AutoAWQ tensors they came from: every nibble, every column's
// pair (its scale and zero folded), the zero padding past N, and the header (largest |scale|,
// shift); gated: each packed column against the AutoAWQ column it pairs (ap::sourceColumn).
// Returns the mismatches.
static int64_t verifyPacked(const std::vector<uint32_t>& qw, const std::vector<uint32_t>& qz,
                            const std::vector<uint16_t>& sc, const std::vector<uint8_t>& pk, int K, int N,
                            bool gated = false) {
  const int W = N / 8, G = K / ap::kGroup;
  const int64_t U = ap::units(K, N);
  uint32_t maxBits = 0, hdr[2];
  for (uint16_t s : sc) maxBits = std::max<uint32_t>(maxBits, s & 0x7fffu);
  const int e = ap::scaleShiftFor(f((uint16_t)maxBits));
  memcpy(hdr, pk.data(), 8);
  std::atomic<int64_t> bad{0};
  parallelFor(U, [&](int64_t a, int64_t z) {
    int64_t mine = 0;
    for (int64_t u = a; u < z; ++u) {
      const int t = (int)(u / G), g = (int)(u % G);
      const uint8_t* unit = pk.data() + ap::kHeaderBytes + u * ap::kUnitBytes;
      for (int word = 0; word < 2048; ++word) {
        uint32_t v;
        memcpy(&v, unit + word * 4, 4);
        for (int bit = 0; bit < 32; bit += 4) {
          int kr, c;
          ap::weightAt(word, bit, kr, c);
          const int n = t * ap::kTileN + c, sn = n < N ? ap::sourceColumn(n, N, gated) : 0;
          const int want = n < N ? nib(qw[(size_t)(g * ap::kGroup + kr) * W + sn / 8], sn) : 0;
          mine += ((v >> bit) & 15) != (uint32_t)want;
        }
      }
      for (int c = 0; c < ap::kTileN; ++c) {
        const int n = t * ap::kTileN + c, sn = n < N ? ap::sourceColumn(n, N, gated) : 0;
        uint32_t pair;
        memcpy(&pair, unit + ap::kPairOffset + 4 * c, 4);
        mine += pair != (n < N ? hostPair(sc[(size_t)g * N + sn], nib(qz[(size_t)g * W + sn / 8], sn), e) : 0u);
      }
    }
    bad += mine;
  });
  return bad + (hdr[0] != maxBits) + (hdr[1] != (uint32_t)e);
}

struct Packed {
  PackedAwqWeights w;
  std::vector<uint8_t> host;  // the packed bytes, when read back
};
static Packed packOnDevice(Backend& b, const AwqWeights& src, int K, int N, bool readBack, bool gated = false) {
  auto buf = b.alloc(ap::packedBytes(K, N));
  keep.push_back(buf);
  Packed p;
  p.w.packed = View{buf->data, DType::I32, {ap::packedBytes(K, N) / 4}};
  p.w.K = K;
  p.w.N = N;
  p.w.groupSize = 128;
  p.w.gated = gated;
  b.awqPack(src, p.w.packed, gated);
  if (readBack) {
    p.host.resize(ap::packedBytes(K, N));
    b.download(*buf, p.host.data(), p.host.size());
  }
  return p;
}

// One AWQ matmul against float64: fresh random int4 weights and zeros, scales in [lo, hi),
// x in [-1, 1); the packed copy is checked against the AutoAWQ tensors first. Gated: the matrix
// is [gate | up], packed gated, and the output f16 [M, N/2] = silu(gate) * up.
static void checkAwq(Backend& b, int M, int K, int N, DType odt, const char* note = "", int reps = 2,
                     float sLo = 0.001f, float sHi = 0.02f, bool gated = false) {
  std::vector<uint32_t> qw((size_t)K * N / 8), qz((size_t)K / 128 * N / 8);
  for (auto& w : qw) w = (uint32_t)rng();
  for (auto& w : qz) w = (uint32_t)rng();
  std::vector<uint16_t> sc((size_t)K / 128 * N), x((size_t)M * K);
  for (auto& s : sc) s = h(urand(sLo, sHi));
  for (auto& v : x) v = h(urand(-1, 1));
  AwqWeights w;
  w.qweight = up(b, qw, DType::I32, {K, N / 8});
  w.qzeros = up(b, qz, DType::I32, {K / 128, N / 8});
  w.scales = up(b, sc, DType::F16, {K / 128, N});
  Packed p = packOnDevice(b, w, K, N, true, gated);
  const int64_t bad = verifyPacked(qw, qz, sc, p.host, K, N, gated);
  View xv = up(b, x, DType::F16, {M, K});
  // float64 reference, columns split across the host's cores
  std::vector<double> ref((size_t)M * N, 0.0);
  parallelFor(N, [&](int64_t n0, int64_t n1) {
    std::vector<double> wcol(n1 - n0);
    for (int k = 0; k < K; ++k) {
      const int g = k / 128;
      for (int64_t n = n0; n < n1; ++n)
        wcol[n - n0] = (nib(qw[(size_t)k * N / 8 + n / 8], (int)n) - nib(qz[(size_t)g * N / 8 + n / 8], (int)n)) *
                       (double)f(sc[(size_t)g * N + n]);
      for (int m = 0; m < M; ++m) {
        const double xm = f(x[(size_t)m * K + k]);
        double* o = &ref[(size_t)m * N];
        for (int64_t n = n0; n < n1; ++n) o[n] += xm * wcol[n - n0];
      }
    }
  });
  const int No = gated ? N / 2 : N;  // output columns
  const Tol tol = odt == DType::F16 ? Tol{3e-3, 6e-3, 6e-3} : Tol{2e-3, 6e-3, 6e-3};
  // Gated: each output's bound is its gate's and its up's (the sums' bound, as ungated) carried
  // through silu(g) u: |d/dg| e_g + |silu(g)| e_u, plus the output's own rounding. A large up sum
  // amplifies the gate's rounding (f16 weights on every path), which a bound on the output's
  // magnitude alone does not allow for.
  std::vector<double> gatedBounds;
  if (gated) {
    double ss = 0;
    for (double v : ref) ss += v * v;
    const double sumsRms = std::sqrt(ss / ref.size());
    std::vector<double> g((size_t)M * No);
    gatedBounds.resize(g.size());
    for (int m = 0; m < M; ++m)
      for (int o = 0; o < No; ++o) {
        const double gate = ref[(size_t)m * N + o], up = ref[(size_t)m * N + No + o];
        const double sig = 1.0 / (1.0 + std::exp(-gate)), silu = gate * sig, dsilu = sig * (1.0 + gate * (1.0 - sig));
        const double eg = tol.atolRms * sumsRms + tol.rtol * std::fabs(gate);
        const double eu = tol.atolRms * sumsRms + tol.rtol * std::fabs(up);
        g[(size_t)m * No + o] = silu * up;
        // The output's own rounding: relative, but at least one f16 subnormal step (2^-24).
        gatedBounds[(size_t)m * No + o] = std::fabs(dsilu * up) * eg + std::fabs(silu) * eu +
                                          std::max(tol.rtol * std::fabs(silu * up), std::ldexp(1.0, -24));
      }
    ref.swap(g);
  }
  for (int rep = 0; rep < reps; ++rep) {  // twice: the stream-K tickets must reset themselves
    View out = poisoned(b, (size_t)M * No * dtypeSize(odt), odt, {M, No});
    b.awqLinearPacked(xv, p.w, out);
    char name[160];
    snprintf(name, sizeof name, "awq%s M=%d K=%d N=%d out=%s%s%s", gated ? "SiluGate" : "Linear", M, K, N,
             dtypeName(odt), note, rep ? " (again)" : "");
    if (rep == 0 && bad) {
      verdict(false);
      printf("FAIL packAwq K=%d N=%d: %lld mismatches against the AutoAWQ tensors\n", K, N, (long long)bad);
    }
    report(name, toD(out, b), ref, tol, gated ? &gatedBounds : nullptr);
  }
  keep.clear();
}

// packAwq on every matrix a 70B rank holds, tp = 1, 2, 4, 8 (fused q/k/v and gate/up as the
// worker loads them, k/v alone, o and down split by rows): every byte against the AutoAWQ tensors.
static void checkPackShapes(Backend& b) {
  for (int tp : {1, 2, 4, 8}) {
    struct S { const char* name; int K, N; } shapes[] = {{"qkv", 8192, 10240 / tp}, {"k/v", 8192, 1024 / tp},
                                                      {"o", 8192 / tp, 8192}, {"gate_up", 8192, 57344 / tp},
                                                      {"down", 28672 / tp, 8192}};
    for (const S& s : shapes) {
      const int K = s.K, N = s.N;
      auto q = b.alloc((size_t)K * N / 2), z = b.alloc((size_t)K / 128 * N / 2);
      b.randomBits(*q, 500 + K + N);
      b.randomBits(*z, 900 + K + N);
      std::vector<uint16_t> sc((size_t)K / 128 * N);
      for (auto& v : sc) v = h(urand(0.0005f, 0.05f));
      AwqWeights w;
      w.qweight = View{q->data, DType::I32, {K, N / 8}};
      w.qzeros = View{z->data, DType::I32, {K / 128, N / 8}};
      w.scales = up(b, sc, DType::F16, {K / 128, N});
      Packed p = packOnDevice(b, w, K, N, true);
      const int64_t bad = verifyPacked(down<uint32_t>(b, w.qweight), down<uint32_t>(b, w.qzeros), sc, p.host, K, N);
      verdict(bad == 0);
      printf("%-4s packAwq tp=%d %-8s %5dx%-5d every nibble, scale and zero: %lld mismatches\n", bad ? "FAIL" : "ok", tp,
             s.name, K, N, (long long)bad);
      keep.clear();
    }
  }
}

// Deterministic mode: rows of the GEMV's output do not depend on the batch: row 0 of an M-row
// call equals row 0 of every larger call bit for bit (one kernel, one schedule, fixed summation
// order), across the GEMV's row-tile switch points and its 64-row passes (no cuBLAS path).
static void checkRowInvariance(Backend& b, int K, int N) {
  const int Mmax = 200;
  std::vector<uint32_t> qw((size_t)K * N / 8), qz((size_t)K / 128 * N / 8);
  for (auto& w : qw) w = (uint32_t)rng();
  for (auto& w : qz) w = (uint32_t)rng();
  std::vector<uint16_t> sc((size_t)K / 128 * N), x((size_t)Mmax * K);
  for (auto& s : sc) s = h(urand(0.001f, 0.02f));
  for (auto& v : x) v = h(urand(-1, 1));
  AwqWeights w;
  w.qweight = up(b, qw, DType::I32, {K, N / 8});
  w.qzeros = up(b, qz, DType::I32, {K / 128, N / 8});
  w.scales = up(b, sc, DType::F16, {K / 128, N});
  Packed p = packOnDevice(b, w, K, N, false);
  View xv = up(b, x, DType::F16, {Mmax, K});
  const bool keepDet = cuda::tuning().deterministic;
  cuda::tuning().deterministic = true;
  std::vector<float> first;
  bool same = true;
  std::string list;
  for (int M : {1, 2, 8, 9, 16, 17, 33, 64, 65, 130, 200}) {
    View xm = xv;
    xm.shape = {M, K};
    View out = poisoned(b, (size_t)M * N * 4, DType::F32, {M, N});
    b.awqLinearPacked(xm, p.w, out);
    auto got = down<float>(b, out);
    std::vector<float> row0(got.begin(), got.begin() + N);
    if (first.empty()) first = row0;
    else same = same && memcmp(first.data(), row0.data(), N * 4) == 0;
    list += (list.empty() ? "" : ",") + std::to_string(M);
  }
  cuda::tuning().deterministic = keepDet;
  verdict(same);
  printf("%-4s awqLinear K=%d N=%d, deterministic mode: row 0 bit-identical at M = %s\n", same ? "ok" : "FAIL", K, N,
         list.c_str());
  keep.clear();
}

static void checkAwqAll(Backend& b) {
  cuda::Tuning& tu = cuda::tuning();
  const cuda::Tuning defaults = tu;
  printf("-- packAwq: the packed layout against the AutoAWQ tensors, every 70B rank's shapes\n");
  if (getenv("MC_CHECK_SKIP_PACK_SHAPES")) printf("   (skipped: MC_CHECK_SKIP_PACK_SHAPES)\n");
  else checkPackShapes(b);
  printf("-- exactly the GEMV's tuned blocks per SM reside (registers and shared memory; a launch caps the grid at\n"
         "   what does, and its shared memory leaves no place for one more)\n");
  for (bool gated : {false, true})
    for (int M : {1, 8, 16, 32, 64}) {
      const cuda::GemvOccupancy o = cuda::awqGemvOccupancy(M, gated);
      verdict(o.resident == o.tuned);
      printf("%-4s GEMV M=%d%s: %d blocks/SM resident, %d tuned\n", o.resident == o.tuned ? "ok" : "FAIL", M,
             gated ? " (gated)" : "", o.resident, o.tuned);
    }
  printf("-- awqLinear, GEMV (M <= 64 per launch): every row-tile count and switch point (8/9, 16/17, 32/33, 64/65),\n"
         "   K of 1..224 groups, N not a multiple of the 128-column tile, fewer units than blocks and many more,\n"
         "   passes of 64 rows (cuBLAS off), f16 and f32 out, each call twice (self-resetting tickets)\n");
  tu.awqDequantMinM = 0;
  tu.awqWgmmaMinM = 0;  // the GEMV alone here, at every M; the wgmma kernel has its own pass below
  const int shapes[][3] = {{1, 128, 128},   {1, 256, 296},    {1, 1024, 2048},  {2, 8192, 1032}, {3, 384, 1024},
                           {7, 2048, 1536}, {8, 512, 640},    {9, 640, 520},    {16, 1152, 776}, {17, 512, 264},
                           {31, 768, 520},  {32, 2048, 1024}, {33, 384, 1056},  {48, 768, 544},  {63, 1024, 1024},
                           {64, 4096, 288}, {65, 1024, 2048}, {100, 512, 640},  {130, 8192, 512}, {1, 28672, 512},
                           {4, 8192, 10240}, {1, 8192, 1024}, {64, 8192, 1024}, {5, 640, 8}};
  for (auto& s : shapes) checkAwq(b, s[0], s[1], s[2], DType::F16);
  for (auto& s : {std::array<int, 3>{1, 1024, 2048}, {8, 2048, 1032}, {40, 1024, 2056}, {64, 1024, 2048}})
    checkAwq(b, s[0], s[1], s[2], DType::F32);
  // The wgmma kernel (compute capability 9.0 only): every M from 1 on the same shapes, then its
  // variants. It reads x as the tensor copy lays it out, in the packed layout's k order, so a wrong
  // order fails every shape.
  int dev = 0, major = 0, minor = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  if (major * 10 + minor == 90) {
    printf("-- the wgmma kernel for every M (awqWgmmaMinM = 1), the same shapes\n");
    tu.awqWgmmaMinM = 1;
    for (auto& s : shapes) checkAwq(b, s[0], s[1], s[2], DType::F16, " wgmma");
    for (auto& s : {std::array<int, 3>{1, 1024, 2048}, {8, 2048, 1032}, {40, 1024, 2056}, {64, 1024, 2048}})
      checkAwq(b, s[0], s[1], s[2], DType::F32, " wgmma");
    checkAwq(b, 16, 512, 640, DType::F32, " wgmma, scales to 300", 1, 1.f, 300.f);
    checkAwq(b, 128, 2048, 1032, DType::F16, " wgmma");  // one launch of 128 rows
    checkAwq(b, 96, 1024, 2056, DType::F32, " wgmma");
    checkAwq(b, 256, 2048, 1032, DType::F16, " wgmma");  // one launch of 256 rows (m64n256, a producer warpgroup)
    checkAwq(b, 160, 1024, 2056, DType::F32, " wgmma");
    tu.awqWgmmaMinM = 100;  // 300 rows: 256 on the wgmma kernel, then 44 on the GEMV
    checkAwq(b, 300, 1024, 776, DType::F16, " wgmma from 100 rows");
    tu.awqWgmmaPassRows = 128;  // 200 rows: 128 on the wgmma kernel, then 72 in two GEMV passes
    checkAwq(b, 200, 1024, 776, DType::F16, " wgmma from 100 rows, passes of 128");
    checkAwq(b, 256, 1024, 1032, DType::F16, " wgmma, passes of 128");
    tu.awqWgmmaPassRows = defaults.awqWgmmaPassRows;
    tu.awqWgmmaMinM = 1;
    for (int v = 0; v < 2; ++v) {
      const char* note = v == 0 ? " wgmma no-pdl" : " wgmma 1 block/SM";
      if (v == 0) tu.pdl = false;
      if (v == 1) tu.awqWgmmaBlocksPerSM = 1;
      checkAwq(b, 1, 8192, 1024, DType::F16, note);
      checkAwq(b, 24, 2048, 1160, DType::F16, note);
      checkAwq(b, 64, 1024, 520, DType::F16, note);
      checkAwq(b, 70, 2048, 1024, DType::F32, note);
      checkAwq(b, 128, 1024, 1024, DType::F16, note);
      checkAwq(b, 256, 1024, 1024, DType::F16, note);
      tu.pdl = defaults.pdl;
      tu.awqWgmmaBlocksPerSM = defaults.awqWgmmaBlocksPerSM;
    }
    tu.awqWgmmaMinM = defaults.awqWgmmaMinM;
  } else {
    printf("   (the wgmma kernel: not on compute capability %d.%d)\n", major, minor);
  }
  {
    printf("-- the gated matmul: [gate | up] packed gated, out = silu(gate) * up from the epilogue (GEMV, wgmma,\n"
           "   deterministic; whole tiles and the fix-up's pairs), or from cuBLAS's sums and a paired siluMul\n");
    auto gated = [&](int M, int K, int N, const char* note) {
      checkAwq(b, M, K, N, DType::F16, note, 2, 0.001f, 0.02f, true);
    };
    const int gshapes[][3] = {{1, 8192, 2048}, {1, 1024, 1040}, {3, 640, 4096}, {8, 2048, 1168}, {16, 1152, 784},
                              {24, 2048, 1040}, {33, 384, 1056}, {64, 4096, 288}, {5, 640, 16}, {4, 8192, 28672}};
    tu.awqDequantMinM = 0;
    tu.awqWgmmaMinM = 0;
    for (auto& s : gshapes) gated(s[0], s[1], s[2], " GEMV");
    if (major * 10 + minor == 90) {
      tu.awqWgmmaMinM = 1;
      for (auto& s : gshapes) gated(s[0], s[1], s[2], " wgmma");
      gated(128, 2048, 1040, " wgmma");
      gated(200, 1024, 784, " wgmma");
      gated(256, 2048, 1040, " wgmma");
      tu.awqWgmmaMinM = defaults.awqWgmmaMinM;
    }
    tu.deterministic = true;
    gated(1, 8192, 1024, " deterministic");
    gated(24, 2048, 1168, " deterministic");
    gated(64, 1024, 528, " deterministic");
    tu.deterministic = false;
    tu.awqDequantMinM = 256;
    gated(256, 1024, 2048, " dequant+cuBLAS");
    gated(300, 768, 1552, " dequant+cuBLAS");
    tu = defaults;
    tu.awqDequantMinM = 0;
    tu.awqWgmmaMinM = 0;
  }
  printf("-- scales >= 0.25 (s * 2^18 past f16: the power-of-two shift)\n");
  checkAwq(b, 1, 1024, 1024, DType::F32, " scales to 4", 1, 0.01f, 4.f);
  checkAwq(b, 16, 512, 640, DType::F32, " scales to 300", 1, 1.f, 300.f);  // f32: the sums pass 65504
  printf("-- variants: no PDL, 1 and 3 blocks per SM, a 2-stage ring, the deterministic mode (2 blocks per SM\n"
         "   whatever M: from 33 rows, where one resides, two waves; a tile shared by ~130 blocks)\n");
  for (int v = 0; v < 5; ++v) {
    tu = defaults;
    tu.awqDequantMinM = 0;
    tu.awqWgmmaMinM = 0;
    if (v == 0) tu.pdl = false;
    if (v == 1) for (int& x : tu.awqGemvBlocksPerSM) x = 1;
    if (v == 2) for (int& x : tu.awqGemvBlocksPerSM) x = 3;
    if (v == 3) for (int& s : tu.awqGemvStages) s = 2;
    if (v == 4) tu.deterministic = true;
    const char* note = v == 0   ? " no-pdl"
                       : v == 1 ? " 1 block/SM"
                       : v == 2 ? " 3 blocks/SM"
                       : v == 3 ? " 2 stages"
                                : " deterministic";
    checkAwq(b, 1, 8192, 1024, DType::F16, note);
    checkAwq(b, 8, 1152, 776, DType::F32, note);
    checkAwq(b, 16, 2048, 1536, DType::F16, note);
    checkAwq(b, 24, 2048, 1160, DType::F16, note);
    checkAwq(b, 64, 1024, 520, DType::F16, note);
    checkAwq(b, 70, 2048, 1024, DType::F32, note);
    if (v == 4) checkAwq(b, 64, 28672, 256, DType::F32, note);
  }
  tu = defaults;
  printf("-- large M, the default path (dequantization + cuBLAS GEMM where cuBLAS loads from M = %d)\n",
         tu.awqDequantMinM);
  checkAwq(b, 256, 1024, 2048, DType::F16, " default path", 1);
  checkAwq(b, 300, 768, 1544, DType::F32, " default path", 1);
  checkAwq(b, 1024, 8192, 1024, DType::F16, " default path", 1);
  checkAwq(b, 256, 1024, 2048, DType::F16, " scales to 4, default path", 1, 0.01f, 4.f);
  printf("-- dequantization + cuBLAS from M = 256\n");
  tu.awqDequantMinM = 256;
  checkAwq(b, 256, 1024, 2048, DType::F16, " dequant+cuBLAS", 1);
  checkAwq(b, 300, 768, 1544, DType::F32, " dequant+cuBLAS", 1);
  checkAwq(b, 256, 1024, 2048, DType::F16, " scales to 4, dequant+cuBLAS", 1, 0.01f, 4.f);
  printf("-- batch invariance of the GEMV\n");
  checkRowInvariance(b, 4096, 1536);
  checkRowInvariance(b, 8192, 1024);
  tu = defaults;
}
static void checkLinear(Backend& b, int M, int K, int N, DType odt) {
  std::vector<uint16_t> x((size_t)M * K), w((size_t)N * K);
  for (auto& v : x) v = h(urand(-1, 1));
  for (auto& v : w) v = h(urand(-0.05f, 0.05f));
  View xv = up(b, x, DType::F16, {M, K}), wv = up(b, w, DType::F16, {N, K});
  View out = poisoned(b, (size_t)M * N * dtypeSize(odt), odt, {M, N});
  b.linear(xv, wv, out);
  auto got = toD(out, b);
  std::vector<double> ref((size_t)M * N);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double s = 0;
      for (int k = 0; k < K; ++k) s += (double)f(x[(size_t)m * K + k]) * f(w[(size_t)n * K + k]);
      ref[(size_t)m * N + n] = s;
    }
  char name[128];
  snprintf(name, sizeof name, "linear M=%d K=%d N=%d out=%s", M, K, N, dtypeName(odt));
  report(name, got, ref, odt == DType::F16 ? 2e-3 : 1e-4);
}

static void checkNorms(Backend& b, int T, int H) {
  std::vector<float> x((size_t)T * H), d((size_t)T * H);
  std::vector<uint16_t> w(H);
  for (auto& v : x) v = urand(-2, 2);
  for (auto& v : d) v = urand(-1, 1);
  for (auto& v : w) v = h(urand(0.5f, 1.5f));
  View xv = up(b, x, DType::F32, {T, H}), dv = up(b, d, DType::F32, {T, H}), wv = up(b, w, DType::F16, {H});
  View out = poisoned(b, (size_t)T * H * 2, DType::F16, {T, H});
  auto norm = [&](const std::vector<double>& r) {
    std::vector<double> o(r.size());
    for (int t = 0; t < T; ++t) {
      double ss = 0;
      for (int i = 0; i < H; ++i) ss += r[(size_t)t * H + i] * r[(size_t)t * H + i];
      double inv = 1.0 / std::sqrt(ss / H + 1e-5);
      for (int i = 0; i < H; ++i) o[(size_t)t * H + i] = r[(size_t)t * H + i] * inv * f(w[i]);
    }
    return o;
  };
  b.rmsNorm(xv, wv, 1e-5f, out);
  std::vector<double> xd(x.begin(), x.end());
  report("rmsNorm T=" + std::to_string(T) + " H=" + std::to_string(H), toD(out, b), norm(xd), 2e-3);
  b.addRmsNorm(xv, dv, wv, 1e-5f, out);
  for (size_t i = 0; i < xd.size(); ++i) xd[i] += d[i];
  report("addRmsNorm (residual)", toD(xv, b), xd, 1e-7);
  report("addRmsNorm (normed)", toD(out, b), norm(xd), 2e-3);
  b.addInPlace(xv, dv);
  for (size_t i = 0; i < xd.size(); ++i) xd[i] += d[i];
  report("addInPlace", toD(xv, b), xd, 1e-7);
}

// RoPE on the fused q/k/v rows, k and v into the cache (slot -1: a padding token, not cached).
static void checkRope(Backend& b, int T, int nq, int nk, int hd) {
  const int W = (nq + 2 * nk) * hd, numSlots = T + 3;
  std::vector<uint16_t> qkv((size_t)T * W), q((size_t)T * nq * hd), k((size_t)T * nk * hd), v((size_t)T * nk * hd);
  for (auto& x : qkv) x = h(urand(-1, 1));
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < W; ++c) {
      const uint16_t x = qkv[(size_t)t * W + c];
      if (c < nq * hd) q[(size_t)t * nq * hd + c] = x;
      else if (c < (nq + nk) * hd) k[(size_t)t * nk * hd + c - nq * hd] = x;
      else v[(size_t)t * nk * hd + c - (nq + nk) * hd] = x;
    }
  // Positions up to 4095; token 2 a padding token; the slots a permutation with gaps.
  std::vector<int32_t> pos(T), slots(T);
  const int32_t somePos[] = {0, 1, 17, 1000, 4095, 77, 2048};
  for (int t = 0; t < T; ++t) {
    pos[t] = somePos[t % 7];
    slots[t] = t == 2 ? -1 : (t * 5 + 3) % numSlots;
  }
  View pv = up(b, pos, DType::I32, {T});
  View qv = poisoned(b, (size_t)T * nq * hd * 2, DType::F16, {T, nq * hd});
  View kc = poisoned(b, (size_t)numSlots * nk * hd * 2, DType::F16, {numSlots, 1, nk, hd});
  View vc = poisoned(b, (size_t)numSlots * nk * hd * 2, DType::F16, {numSlots, 1, nk, hd});
  b.ropeWriteKv(up(b, qkv, DType::F16, {T, W}), kc, vc, pv, up(b, slots, DType::I32, {T}), 10000.f, qv);
  auto ropeRef = [&](const std::vector<uint16_t>& src, int nh) {
    std::vector<double> o(src.size());
    for (int t = 0; t < T; ++t)
      for (int hh = 0; hh < nh; ++hh)
        for (int i = 0; i < hd / 2; ++i) {
          double invf = 1.0 / std::pow(10000.0, 2.0 * i / hd), a = pos[t] * invf;
          size_t base = ((size_t)t * nh + hh) * hd;
          double x1 = f(src[base + i]), x2 = f(src[base + i + hd / 2]);
          o[base + i] = x1 * std::cos(a) - x2 * std::sin(a);
          o[base + i + hd / 2] = x2 * std::cos(a) + x1 * std::sin(a);
        }
    return o;
  };
  const std::string shape = " T=" + std::to_string(T) + " heads " + std::to_string(nq) + "/" + std::to_string(nk) +
                            " hd=" + std::to_string(hd);
  report("ropeWriteKv q" + shape, toD(qv, b), ropeRef(q, nq), 2e-3);
  // The cached rows of the tokens with a slot: k rotated, v exact; the other slots untouched.
  const std::vector<double> kRef = ropeRef(k, nk), kGot = toD(kc, b), vGot = toD(vc, b);
  std::vector<double> kr, kg;
  std::vector<bool> written(numSlots, false);
  bool vOk = true;
  const int rowE = nk * hd;
  for (int t = 0; t < T; ++t) {
    if (slots[t] < 0) continue;
    written[slots[t]] = true;
    for (int i = 0; i < rowE; ++i) {
      kr.push_back(kRef[(size_t)t * rowE + i]);
      kg.push_back(kGot[(size_t)slots[t] * rowE + i]);
      vOk = vOk && vGot[(size_t)slots[t] * rowE + i] == f(v[(size_t)t * rowE + i]);
    }
  }
  for (int s = 0; s < numSlots; ++s)
    if (!written[s])
      for (int i = 0; i < rowE; ++i) vOk = vOk && std::isnan(vGot[(size_t)s * rowE + i]) && std::isnan(kGot[(size_t)s * rowE + i]);
  report("ropeWriteKv k in the cache" + shape, kg, kr, 2e-3);
  verdict(vOk);
  printf("%-4s %-58s\n", vOk ? "ok" : "FAIL", ("ropeWriteKv v in the cache (exact; others untouched)" + shape).c_str());
}

// SiLU-gate, gate and up read from the fused [T, 2I] output.
static void checkSiluMul(Backend& b, int T, int I) {
  const int n = T * I;
  std::vector<uint16_t> gu((size_t)2 * n);
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < 2 * I; ++c) gu[(size_t)t * 2 * I + c] = c < I ? h(urand(-6, 6)) : h(urand(-2, 2));
  View guv = up(b, gu, DType::F16, {T, 2 * I});
  View o = poisoned(b, (size_t)n * 2, DType::F16, {T, I});
  b.siluMul(guv, o);
  std::vector<double> ref(n);
  for (int i = 0; i < n; ++i) {
    const int t = i / I, c = i % I;
    double a = f(gu[(size_t)t * 2 * I + c]);
    ref[i] = a / (1 + std::exp(-a)) * f(gu[(size_t)t * 2 * I + I + c]);
  }
  report("siluMul T=" + std::to_string(T) + " I=" + std::to_string(I), toD(o, b), ref, 2e-3);
}

static void checkElementwise(Backend& b) {
  checkRope(b, 5, 8, 2, 128);   // 12 heads: one full block of 8 and one of 4
  checkRope(b, 3, 64, 8, 128);  // a 70B rank at tp = 1
  checkRope(b, 4, 3, 1, 40);    // hd / 2 not a multiple of 8: the scalar path
  checkSiluMul(b, 3, 1000);     // 500 pairs a row: 16-byte loads
  checkSiluMul(b, 2, 1002);     // 501 pairs: one pair a thread
  checkSiluMul(b, 64, 3584);    // a 70B rank's decode rows at tp = 8
  // embedding
  int V = 300, H = 520;
  std::vector<uint16_t> tab((size_t)V * H);
  for (auto& v : tab) v = h(urand(-1, 1));
  std::vector<int32_t> ids = {5, 0, 299, 5, 123};
  View tv = up(b, tab, DType::F16, {V, H}), iv = up(b, ids, DType::I32, {5});
  View eo = poisoned(b, 5 * H * 4, DType::F32, {5, H});
  b.embedding(tv, iv, eo);
  std::vector<double> eref(5 * H);
  for (int t = 0; t < 5; ++t) for (int i = 0; i < H; ++i) eref[t * H + i] = f(tab[(size_t)ids[t] * H + i]);
  report("embedding", toD(eo, b), eref, 0);
  // gatherRows f16 and f32
  std::vector<int32_t> rows = {4, 0, 2};
  View rv = up(b, rows, DType::I32, {3});
  View go = poisoned(b, 3 * H * 4, DType::F32, {3, H});
  b.gatherRows(eo, rv, go);
  std::vector<double> gref(3 * H);
  for (int r = 0; r < 3; ++r) for (int i = 0; i < H; ++i) gref[r * H + i] = eref[rows[r] * H + i];
  report("gatherRows f32", toD(go, b), gref, 0);
  View go16 = poisoned(b, 3 * 7 * 2, DType::F16, {3, 7});
  View src16 = up(b, std::vector<uint16_t>(tab.begin(), tab.begin() + 5 * 7), DType::F16, {5, 7});
  b.gatherRows(src16, rv, go16);
  std::vector<double> g16(21);
  for (int r = 0; r < 3; ++r) for (int i = 0; i < 7; ++i) g16[r * 7 + i] = f(tab[rows[r] * 7 + i]);
  report("gatherRows f16 (odd row size)", toD(go16, b), g16, 0);
  // randomBits
  auto rb1 = b.alloc(1003), rb2 = b.alloc(1003), rb3 = b.alloc(1003);
  b.randomBits(*rb1, 7); b.randomBits(*rb2, 7); b.randomBits(*rb3, 8);
  std::vector<unsigned char> h1(1003), h2(1003), h3(1003);
  b.download(*rb1, h1.data(), 1003); b.download(*rb2, h2.data(), 1003); b.download(*rb3, h3.data(), 1003);
  int zeros = std::count(h1.begin(), h1.end(), 0);
  bool rok = h1 == h2 && h1 != h3 && zeros < 20;
  verdict(rok);
  printf("%-4s %-58s\n", rok ? "ok" : "FAIL", "randomBits deterministic by seed, seeds differ");
  // alloc zero-fills
  auto zb = b.alloc(4096);
  std::vector<unsigned char> zh(4096, 1);
  b.download(*zb, zh.data(), 4096);
  bool zok = std::all_of(zh.begin(), zh.end(), [](unsigned char c) { return c == 0; });
  verdict(zok);
  printf("%-4s %-58s\n", zok ? "ok" : "FAIL", "alloc returns zero-filled memory");
  // readFileRegion: a [rows, cols] i32 matrix at an offset; a column window and the whole
  char path[] = "/tmp/mc-check-XXXXXX";
  int fd = mkstemp(path);
  int R = 700, C = 3000;  // 8.4 MB: crosses a staging buffer
  std::vector<int32_t> mat((size_t)R * C);
  for (size_t i = 0; i < mat.size(); ++i) mat[i] = (int32_t)(i * 2654435761u);
  std::vector<char> pad(77, 'x');
  (void)!write(fd, pad.data(), pad.size());
  (void)!write(fd, mat.data(), mat.size() * 4);
  close(fd);
  bool fok = true;
  for (int pass = 0; pass < 2; ++pass) {
    int r0 = pass ? 0 : 10, r1 = pass ? R : 690, c0 = pass ? 0 : 1000, c1 = pass ? C : 2500;
    auto fb = b.alloc((size_t)(r1 - r0) * (c1 - c0) * 4);
    b.readFileRegion(*fb, path, 77, C, 4, r0, r1, c0, c1);
    std::vector<int32_t> got((size_t)(r1 - r0) * (c1 - c0));
    b.download(*fb, got.data(), got.size() * 4);
    for (int r = r0; r < r1 && fok; ++r)
      for (int c = c0; c < c1; ++c)
        if (got[(size_t)(r - r0) * (c1 - c0) + (c - c0)] != mat[(size_t)r * C + c]) { fok = false; break; }
  }
  unlink(path);
  verdict(fok);
  printf("%-4s %-58s\n", fok ? "ok" : "FAIL", "readFileRegion (column window, whole matrix, 2 chunks)");
}

// ---- KV cache and attention -----------------------------------------------------------
static void checkAttention(Backend& b, int nh, int nkv, int hd, std::vector<int> seqLens, int queriesPerSeq,
                           const char* label) {
  const int bs = 16, S = (int)seqLens.size();
  int maxLen = *std::max_element(seqLens.begin(), seqLens.end());
  int maxBlocks = (maxLen + bs - 1) / bs;
  int numBlocks = S * maxBlocks + 3;
  std::vector<int> perm(numBlocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int32_t> table((size_t)S * maxBlocks, 0);
  for (int s = 0; s < S; ++s) for (int j = 0; j < maxBlocks; ++j) table[s * maxBlocks + j] = perm[s * maxBlocks + j];
  // Write the whole context of each sequence through writeKv.
  int rowE = nkv * hd;
  std::vector<int32_t> slots;
  std::vector<uint16_t> kk, vv;
  std::vector<std::vector<double>> Kd(S), Vd(S);
  for (int s = 0; s < S; ++s)
    for (int p = 0; p < seqLens[s]; ++p) {
      slots.push_back(table[s * maxBlocks + p / bs] * bs + p % bs);
      for (int i = 0; i < rowE; ++i) {
        uint16_t a = h(urand(-1, 1)), c = h(urand(-1, 1));
        kk.push_back(a); vv.push_back(c);
        Kd[s].push_back(f(a)); Vd[s].push_back(f(c));
      }
    }
  int TW = (int)slots.size();
  View kc = poisoned(b, (size_t)numBlocks * bs * rowE * 2, DType::F16, {numBlocks, bs, nkv, hd});
  View vc = poisoned(b, (size_t)numBlocks * bs * rowE * 2, DType::F16, {numBlocks, bs, nkv, hd});
  b.writeKv(kc, vc, up(b, kk, DType::F16, {TW, rowE}), up(b, vv, DType::F16, {TW, rowE}), up(b, slots, DType::I32, {TW}));
  // Queries: the last queriesPerSeq positions of each sequence (decode = 1, prefill = many).
  std::vector<int32_t> tokSeq, pos;
  for (int s = 0; s < S; ++s)
    for (int p = std::max(0, seqLens[s] - queriesPerSeq); p < seqLens[s]; ++p) { tokSeq.push_back(s); pos.push_back(p); }
  int T = (int)pos.size();
  std::vector<uint16_t> q((size_t)T * nh * hd);
  for (auto& v : q) v = h(urand(-1, 1));
  View out = poisoned(b, (size_t)T * nh * hd * 2, DType::F16, {T, nh * hd});
  AttentionShape sh{nh, nkv, hd, 1.f / std::sqrt((float)hd)};
  b.attention(up(b, q, DType::F16, {T, nh * hd}), kc, vc, up(b, table, DType::I32, {S, maxBlocks}),
              up(b, tokSeq, DType::I32, {T}), up(b, pos, DType::I32, {T}), sh, out);
  std::vector<double> ref((size_t)T * nh * hd);
  int G = nh / nkv;
  for (int t = 0; t < T; ++t)
    for (int hh = 0; hh < nh; ++hh) {
      int s = tokSeq[t], kvh = hh / G, L = pos[t] + 1;
      std::vector<double> sc(L);
      double mx = -1e300;
      for (int j = 0; j < L; ++j) {
        double d = 0;
        for (int e = 0; e < hd; ++e) d += f(q[((size_t)t * nh + hh) * hd + e]) * Kd[s][(size_t)j * rowE + kvh * hd + e];
        sc[j] = d * sh.scale; mx = std::max(mx, sc[j]);
      }
      double sum = 0;
      for (int j = 0; j < L; ++j) { sc[j] = std::exp(sc[j] - mx); sum += sc[j]; }
      for (int e = 0; e < hd; ++e) {
        double o = 0;
        for (int j = 0; j < L; ++j) o += sc[j] * Vd[s][(size_t)j * rowE + kvh * hd + e];
        ref[((size_t)t * nh + hh) * hd + e] = o / sum;
      }
    }
  std::string name = std::string("attention ") + label + " nh=" + std::to_string(nh) + " nkv=" + std::to_string(nkv) +
                     " hd=" + std::to_string(hd) + " T=" + std::to_string(T);
  report(name, toD(out, b), ref, 3e-3);
  // writeKv exactness: read back the cache rows of sequence 0.
  auto kh = down<uint16_t>(b, kc);
  bool ok = true;
  for (int p = 0; p < seqLens[0] && ok; ++p)
    for (int i = 0; i < rowE; ++i)
      if (f(kh[((size_t)table[p / bs] * bs + p % bs) * rowE + i]) != Kd[0][(size_t)p * rowE + i]) { ok = false; break; }
  verdict(ok);
  printf("%-4s %-58s\n", ok ? "ok" : "FAIL", "writeKv (paged slots, exact)");
}


// ---- benchmark -------------------------------------------------------------------------
// Median of `iters` timings of fn(i) with CUDA events around each call, after 3 warm-up calls.
static float timeIt(cudaStream_t s, int iters, const std::function<void(int)>& fn) {
  cudaEvent_t a, z;
  cudaEventCreate(&a); cudaEventCreate(&z);
  for (int i = 0; i < 3; ++i) fn(i);
  std::vector<float> ts;
  for (int i = 0; i < iters; ++i) {
    cudaEventRecord(a, s); fn(i); cudaEventRecord(z, s); cudaEventSynchronize(z);
    float ms; cudaEventElapsedTime(&ms, a, z); ts.push_back(ms);
  }
  std::sort(ts.begin(), ts.end());
  cudaEventDestroy(a); cudaEventDestroy(z);
  return ts[ts.size() / 2];
}
// Per call, `calls` calls issued back to back between one pair of events (each call may start
// while the one before finishes, as a decode step's kernels do); the median of 5 such chains.
static float timeChain(cudaStream_t s, int calls, const std::function<void(int)>& fn) {
  cudaEvent_t a, z;
  cudaEventCreate(&a); cudaEventCreate(&z);
  for (int i = 0; i < 3; ++i) fn(i);
  std::vector<float> ts;
  for (int r = 0; r < 5; ++r) {
    cudaEventRecord(a, s);
    for (int i = 0; i < calls; ++i) fn(r * calls + i);
    cudaEventRecord(z, s); cudaEventSynchronize(z);
    float ms; cudaEventElapsedTime(&ms, a, z); ts.push_back(ms / calls);
  }
  std::sort(ts.begin(), ts.end());
  cudaEventDestroy(a); cudaEventDestroy(z);
  return ts[ts.size() / 2];
}

// A plain streaming read: 16-byte loads, 8 in flight per thread, a grid of 8 blocks per SM.
__global__ void readKernel(const uint4* __restrict__ p, int64_t n, unsigned* sink) {
  unsigned acc = 0;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += 8 * stride) {
    uint4 v[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) v[u] = i + u * stride < n ? __ldcs(p + i + u * stride) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < 8; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  if (acc == 0x9E3779B9u) sink[0] = acc;
}
// Finite random f16 in [-scale, scale) from a hash of the index (cuBLAS's weights: never zeros).
__global__ void fillHalfKernel(__half* p, int64_t n, uint64_t seed, float scale) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    uint64_t z = (uint64_t)i * 0x9E3779B97F4A7C15ull ^ seed;
    z = (z ^ (z >> 31)) * 0xBF58476D1CE4E5B9ull;
    z ^= z >> 29;
    p[i] = __float2half(scale * ((float)(z & 0xFFFFFF) * (2.f / 16777216.f) - 1.f));
  }
}

// Rows of the benchmark, also written as JSON with --json PATH (for `medcluster bench kernels --device cuda`).
struct BenchRow { std::string shape; int K, N, M; double awqMs, chainMs, gbs, chainGbs, pctCopy, chainPctCopy, tflops, cublasMs; };
struct BlockRow { std::string tp; int M; double awqMs, chainMs, targetMs, cublasMs; };
struct AttnRow { std::string tp; int T, ctx; double us, chainUs, gbs, chainGbs, pctRead, chainPctRead; };

static void writeBenchJson(const char* path, const std::string& device, double copyBw, double readBw,
                           const std::vector<BenchRow>& rows, const std::vector<BlockRow>& blocks,
                           const std::vector<AttnRow>& attn) {
  FILE* fp = fopen(path, "w");
  if (!fp) { fprintf(stderr, "cannot write %s\n", path); return; }
  auto num = [](double v) { return v < 0 ? std::string("null") : std::to_string(v); };
  fprintf(fp, "{\n  \"device\": \"%s\",\n  \"copyGBs\": %.1f,\n  \"readGBs\": %.1f,\n  \"shapes\": [\n", device.c_str(),
          copyBw, readBw);
  for (size_t i = 0; i < rows.size(); ++i) {
    const BenchRow& r = rows[i];
    fprintf(fp, "    {\"shape\": \"%s\", \"K\": %d, \"N\": %d, \"M\": %d, \"awqMs\": %.5f, \"awqChainedMs\": %.5f, "
                "\"GBs\": %.1f, \"chainedGBs\": %.1f, \"pctOfCopy\": %.1f, \"chainedPctOfCopy\": %.1f, \"TFLOPs\": %.2f, "
                "\"cublasFp16Ms\": %s}%s\n",
            r.shape.c_str(), r.K, r.N, r.M, r.awqMs, r.chainMs, r.gbs, r.chainGbs, r.pctCopy, r.chainPctCopy, r.tflops,
            num(r.cublasMs).c_str(), i + 1 < rows.size() ? "," : "");
  }
  fprintf(fp, "  ],\n  \"perBlock\": [\n");
  for (size_t i = 0; i < blocks.size(); ++i) {
    const BlockRow& r = blocks[i];
    fprintf(fp, "    {\"tp\": \"%s\", \"M\": %d, \"awqMs\": %.5f, \"awqChainedMs\": %.5f, \"targetMs\": %s, \"cublasFp16Ms\": %s}%s\n",
            r.tp.c_str(), r.M, r.awqMs, r.chainMs, num(r.targetMs).c_str(), num(r.cublasMs > 0 ? r.cublasMs : -1).c_str(),
            i + 1 < blocks.size() ? "," : "");
  }
  fprintf(fp, "  ],\n  \"decodeAttention\": [\n");
  for (size_t i = 0; i < attn.size(); ++i) {
    const AttnRow& r = attn[i];
    fprintf(fp, "    {\"tp\": \"%s\", \"sequences\": %d, \"context\": %d, \"us\": %.2f, \"chainedUs\": %.2f, "
                "\"GBs\": %.1f, \"chainedGBs\": %.1f, \"pctOfRead\": %.1f, \"chainedPctOfRead\": %.1f}%s\n",
            r.tp.c_str(), r.T, r.ctx, r.us, r.chainUs, r.gbs, r.chainGbs, r.pctRead, r.chainPctRead,
            i + 1 < attn.size() ? "," : "");
  }
  fprintf(fp, "  ]\n}\n");
  fclose(fp);
  printf("wrote %s\n", path);
}

// Decode attention at the 70B's head shapes: T sequences of `ctx` tokens, one query token each (a
// decode step), K and V read once per KV head. Each call reads its own blocks (tables over
// disjoint block ranges of a ~512 MB cache), so the KV bytes come from memory, as in a decode
// step where a layer's weights stream through the L2 between two attention calls.
static std::vector<AttnRow> benchDecodeAttention(Backend& b, int nSets, double readBw) {
  std::vector<AttnRow> out;
  cudaStream_t s = cuda::backendStream(b);
  struct HeadShape { const char* tp; int nh, nkv; };
  // MC_BENCH_ATTENTION_LAYOUT_PROBE=1 adds 8 heads of one KV head at 8x the sequences: tp = 1's
  // bytes, but each block's K (and V) rows of a head are one contiguous 4 KB run instead of
  // 256-byte rows 2 KB apart (the cache's [block][slot][kv head][dim] order).
  const HeadShape shapes[3] = {{"tp=1", 64, 8}, {"tp=2", 32, 4}, {"1 KV head, 8x sequences", 8, 1}};
  if (getenv("MC_BENCH_ATTENTION_LAYOUT_PROBE")) nSets = 3;
  const int hd = 128, bs = 16, ctx = 640, blocksPerSeq = ctx / bs;
  printf("\ndecode attention, %d-token contexts (isolated: median of 20; chained: 20 calls back to back); GB/s: K and V "
         "bytes read; %% of the %.0f GB/s plain read\n", ctx, readBw);
  printf("| heads | sequences | us | GB/s | %% read | chained us | chained GB/s | chained %% read |\n"
         "|---|---|---|---|---|---|---|---|\n");
  for (int si = 0; si < nSets; ++si) {
    const HeadShape& sh = shapes[si];
    const size_t blockBytes = (size_t)bs * sh.nkv * hd * 2;
    const int numBlocks = (int)((256ull << 20) / blockBytes);
    View kc{nullptr, DType::F16, {numBlocks, bs, sh.nkv, hd}}, vc = kc;
    auto kb = b.alloc(numBlocks * blockBytes), vb = b.alloc(numBlocks * blockBytes);
    kc.data = kb->data;
    vc.data = vb->data;
    int dev = 0;
    cudaGetDevice(&dev);
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    fillHalfKernel<<<16 * sms, 256, 0, s>>>(static_cast<__half*>(kb->data), (int64_t)numBlocks * blockBytes / 2, 11, 1.f);
    fillHalfKernel<<<16 * sms, 256, 0, s>>>(static_cast<__half*>(vb->data), (int64_t)numBlocks * blockBytes / 2, 12, 1.f);
    for (int T0 : {1, 16, 64}) {
      const int T = si == 2 ? 8 * T0 : T0;
      const int R = numBlocks / (T * blocksPerSeq);  // tables over disjoint blocks
      std::vector<int> perm(numBlocks);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      std::vector<View> tables;
      for (int r = 0; r < R; ++r) {
        std::vector<int32_t> t((size_t)T * blocksPerSeq);
        for (size_t i = 0; i < t.size(); ++i) t[i] = perm[(size_t)r * t.size() + i];
        tables.push_back(up(b, t, DType::I32, {T, blocksPerSeq}));
      }
      std::vector<int32_t> seq(T), pos(T, ctx - 1);
      std::iota(seq.begin(), seq.end(), 0);
      std::vector<uint16_t> q((size_t)T * sh.nh * hd);
      for (auto& v : q) v = h(urand(-1, 1));
      View qv = up(b, q, DType::F16, {T, sh.nh * hd}), sv = up(b, seq, DType::I32, {T}), pv = up(b, pos, DType::I32, {T});
      View ov = poisoned(b, (size_t)T * sh.nh * hd * 2, DType::F16, {T, sh.nh * hd});
      AttentionShape ash{sh.nh, sh.nkv, hd, 1.f / std::sqrt((float)hd)};
      auto call = [&](int i) { b.attention(qv, kc, vc, tables[i % R], sv, pv, ash, ov); };
      const float ms = timeIt(s, 20, call), chain = timeChain(s, 20, call);
      const double bytes = 2.0 * T * ctx * sh.nkv * hd * 2;
      const double gbs = bytes / (ms * 1e-3) / 1e9, cgbs = bytes / (chain * 1e-3) / 1e9;
      out.push_back({sh.tp, T, ctx, ms * 1e3, chain * 1e3, gbs, cgbs, 100 * gbs / readBw, 100 * cgbs / readBw});
      printf("| %s (%d/%d) | %d | %.1f | %.0f | %.0f%% | %.1f | %.0f | %.0f%% |\n", sh.tp, sh.nh, sh.nkv, T, ms * 1e3, gbs,
             100 * gbs / readBw, chain * 1e3, cgbs, 100 * cgbs / readBw);
      fflush(stdout);
    }
    MC_CUDA(cudaGetLastError());
  }
  return out;
}

static void bench(Backend& b, const char* jsonPath) {
  std::vector<BenchRow> rows;
  std::vector<BlockRow> blockRows;
  cudaStream_t s = cuda::backendStream(b);
  int dev = 0;
  cudaGetDevice(&dev);
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, dev);
  // The two ceilings: device-to-device copy (bytes read + written) and a plain read.
  double copyBw, readBw;
  {
    size_t cb = 1ull << 30;
    auto c1 = b.alloc(cb), c2 = b.alloc(cb);
    b.randomBits(*c1, 5);
    float cms = timeIt(s, 10, [&](int) { cudaMemcpyAsync(c2->data, c1->data, cb, cudaMemcpyDeviceToDevice, s); });
    copyBw = 2.0 * cb / (cms * 1e-3) / 1e9;
    c1.reset(); c2.reset();
    size_t rb = 4ull << 30;
    auto r1 = b.alloc(rb), sink = b.alloc(64);
    b.randomBits(*r1, 6);
    float rms = timeIt(s, 10, [&](int) {
      readKernel<<<8 * prop.multiProcessorCount, 256, 0, s>>>(static_cast<const uint4*>(r1->data), (int64_t)(rb / 16),
                                                              static_cast<unsigned*>(sink->data));
    });
    readBw = rb / (rms * 1e-3) / 1e9;
  }
  MC_CUDA(cudaGetLastError());
  printf("\ncopy bandwidth (read + written): %.0f GB/s; plain read: %.0f GB/s\n", copyBw, readBw);
  if (getenv("MC_BENCH_ATTENTION_ONLY")) {  // the decode attention rows alone
    benchDecodeAttention(b, getenv("MC_BENCH_TP1") ? 1 : 2, readBw);
    return;
  }
  cublasdl::Api cb_{};
  cublasdl::cublasHandle_t hnd = nullptr;
  bool haveCublas = true;
  try { cb_ = cublasdl::load(); cb_.create(&hnd); cb_.setStream(hnd, s); } catch (std::exception& e) {
    printf("cuBLAS baseline skipped: %s\n", e.what()); haveCublas = false;
  }
  struct Shape { const char* name; int K, N; };
  std::vector<std::vector<Shape>> sets = {
      {{"qkv", 8192, 10240}, {"o", 8192, 8192}, {"gate_up", 8192, 57344}, {"down", 28672, 8192}},
      {{"qkv/2", 8192, 5120}, {"o/2", 4096, 8192}, {"gate_up/2", 8192, 28672}, {"down/2", 14336, 8192}}};
  std::vector<int> Ms = {1, 4, 8, 16, 64, 256, 1024};
  const bool quick = getenv("MC_BENCH_QUICK") != nullptr;  // tp=1 shapes only, M <= 64, no cuBLAS
  if (quick) { Ms = {1, 2, 4, 8, 16, 64}; haveCublas = false; }
  if (const char* e = getenv("MC_BENCH_MS")) {
    Ms.clear();
    for (const char* p = e; *p;) { Ms.push_back(atoi(p)); while (*p && *p != ',') ++p; if (*p) ++p; }
  }
  const int nSets = quick || getenv("MC_BENCH_TP1") ? 1 : 2;
  // MC_BENCH_GATED=1: gate_up packed gated, as the worker runs it (out [M, N/2] = silu(gate) * up).
  const bool gatedGateUp = getenv("MC_BENCH_GATED") != nullptr;
  cuda::Tuning& tu = cuda::tuning();
  printf("AWQ tuning: dequant+cuBLAS from M=%d, GEMV blocks/SM %d/%d/%d/%d, stages %d/%d/%d/%d, "
         "wgmma from M=%d (%d blocks/SM, %d stages at two), PDL %s%s\n",
         tu.awqDequantMinM, tu.awqGemvBlocksPerSM[0], tu.awqGemvBlocksPerSM[1], tu.awqGemvBlocksPerSM[2],
         tu.awqGemvBlocksPerSM[3], tu.awqGemvStages[0], tu.awqGemvStages[1], tu.awqGemvStages[2], tu.awqGemvStages[3],
         tu.awqWgmmaMinM, tu.awqWgmmaBlocksPerSM, tu.awqWgmmaStages, tu.pdl ? "on" : "off",
         tu.deterministic ? ", deterministic" : "");
  // Issue's targets per tp=1 block (kernels/gpu/RESULTS.md): M = 1, 16, 64, 1024.
  auto target = [](int M) { return M == 1 ? 0.13 : M == 16 ? 0.15 : M == 64 ? 0.22 : M == 1024 ? 2.5 : -1.0; };
  printf("\nisolated: one call between two events (median of 20); chained: 20 calls back to back / 20 (median of 5)\n"
         "GB/s: packed weights + x + out per call; %% of copy: of the %.0f GB/s above\n", copyBw);
  printf("| shape | M | AWQ ms | GB/s | %% copy | chained ms | chained GB/s | chained %% copy | TFLOP/s | cuBLAS fp16 ms |\n"
         "|---|---|---|---|---|---|---|---|---|---|\n");
  std::vector<std::vector<double>> blockSum(2, std::vector<double>(Ms.size(), 0)),
      blockChain(2, std::vector<double>(Ms.size(), 0)), blockCublas(2, std::vector<double>(Ms.size(), 0));
  const int maxM = *std::max_element(Ms.begin(), Ms.end());
  auto x = b.alloc((size_t)maxM * 28672 * 2);
  {
    std::vector<uint16_t> hx((size_t)maxM * 28672);
    for (auto& v : hx) v = h(urand(-1, 1));
    b.upload(*x, hx.data(), hx.size() * 2);
  }
  auto outb = b.alloc((size_t)maxM * 57344 * 4);
  for (int si = 0; si < nSets; ++si)
    for (auto& sh : sets[si]) {
      const size_t qb = (size_t)sh.K * sh.N / 2, zb = (size_t)sh.K / 128 * sh.N / 2, sb = (size_t)sh.K / 128 * sh.N * 2;
      const size_t pb = ap::packedBytes(sh.K, sh.N);
      // Enough distinct copies that one pass over them is well past the 60 MB L2.
      const int R = (int)std::max<size_t>(3, (400ull << 20) / pb + 1);
      std::vector<std::shared_ptr<Buffer>> bufs;
      std::vector<PackedAwqWeights> ws(R);
      std::vector<uint16_t> hs((size_t)sh.K / 128 * sh.N);
      for (auto& v : hs) v = h(urand(0.001f, 0.01f));
      {
        auto q = b.alloc(qb), z = b.alloc(zb), sc = b.alloc(sb);
        b.upload(*sc, hs.data(), sb);
        for (int r = 0; r < R; ++r) {
          b.randomBits(*q, 1000 + r);
          b.randomBits(*z, 2000 + r);
          auto p = b.alloc(pb);
          AwqWeights src;
          src.qweight = View{q->data, DType::I32, {sh.K, sh.N / 8}};
          src.qzeros = View{z->data, DType::I32, {sh.K / 128, sh.N / 8}};
          src.scales = View{sc->data, DType::F16, {sh.K / 128, sh.N}};
          ws[r].packed = View{p->data, DType::I32, {(int64_t)pb / 4}};
          ws[r].K = sh.K;
          ws[r].N = sh.N;
          ws[r].gated = gatedGateUp && std::string(sh.name).rfind("gate_up", 0) == 0;
          b.awqPack(src, ws[r].packed, ws[r].gated);
          bufs.push_back(p);
        }
        b.synchronize();
      }
      // fp16 weights for cuBLAS: random finite values, enough copies to be past the L2.
      const size_t wb16 = (size_t)sh.K * sh.N * 2;
      const int R16 = (int)std::max<size_t>(2, (300ull << 20) / wb16 + 1);
      std::vector<std::shared_ptr<Buffer>> w16;
      if (haveCublas)
        for (int r = 0; r < R16; ++r) {
          auto w = b.alloc(wb16);
          fillHalfKernel<<<16 * prop.multiProcessorCount, 256, 0, s>>>(static_cast<__half*>(w->data), (int64_t)sh.K * sh.N,
                                                                       77 + r, 0.05f);
          w16.push_back(w);
        }
      MC_CUDA(cudaGetLastError());
      for (size_t mi = 0; mi < Ms.size(); ++mi) {
        const int M = Ms[mi];
        View xv{x->data, DType::F16, {M, sh.K}}, ov{outb->data, DType::F16, {M, ws[0].gated ? sh.N / 2 : sh.N}};
        auto call = [&](int i) { b.awqLinearPacked(xv, ws[i % R], ov); };
        const float ms = timeIt(s, 20, call);
        const float chain = timeChain(s, 20, call);
        const double bytes = pb + (double)M * sh.K * 2 + (double)M * sh.N * 2;
        const double gbs = bytes / (ms * 1e-3) / 1e9, cgbs = bytes / (chain * 1e-3) / 1e9;
        const double tf = 2.0 * M * sh.K * sh.N / (ms * 1e-3) / 1e12;
        float cms = -1;
        if (haveCublas) {
          const float one = 1.f, zero = 0.f;
          cms = timeIt(s, 20, [&](int i) {
            cb_.gemmEx(hnd, cublasdl::CUBLAS_OP_N, cublasdl::CUBLAS_OP_N, sh.N, M, sh.K, &one, w16[i % R16]->data,
                       cublasdl::CUDA_R_16F, sh.N, x->data, cublasdl::CUDA_R_16F, sh.K, &zero, outb->data,
                       cublasdl::CUDA_R_16F, sh.N, cublasdl::CUBLAS_COMPUTE_32F, cublasdl::CUBLAS_GEMM_DEFAULT);
          });
          blockCublas[si][mi] += cms;
        }
        blockSum[si][mi] += ms;
        blockChain[si][mi] += chain;
        rows.push_back({sh.name, sh.K, sh.N, M, ms, chain, gbs, cgbs, 100 * gbs / copyBw, 100 * cgbs / copyBw, tf, cms});
        printf("| %s %dx%d | %d | %.4f | %.0f | %.0f%% | %.4f | %.0f | %.0f%% | %.1f | %.4f |\n", sh.name, sh.K, sh.N, M, ms,
               gbs, 100 * gbs / copyBw, chain, cgbs, 100 * cgbs / copyBw, tf, cms);
        fflush(stdout);
      }
      MC_CUDA(cudaGetLastError());
    }
  printf("\n| per block (4 matmuls) | M | AWQ ms | chained ms | target ms | cuBLAS fp16 ms |\n|---|---|---|---|---|---|\n");
  for (int si = 0; si < nSets; ++si)
    for (size_t mi = 0; mi < Ms.size(); ++mi) {
      char tgt[40] = "-";
      const double best = std::min(blockSum[si][mi], blockChain[si][mi]);
      if (si == 0 && target(Ms[mi]) > 0)
        snprintf(tgt, sizeof tgt, "%.3f %s", target(Ms[mi]), best <= target(Ms[mi]) ? "met" : "MISSED");
      printf("| %s | %d | %.4f | %.4f | %s | %.4f |\n", si ? "tp=2" : "tp=1", Ms[mi], blockSum[si][mi], blockChain[si][mi],
             tgt, blockCublas[si][mi]);
      blockRows.push_back({si ? "tp=2" : "tp=1", Ms[mi], blockSum[si][mi], blockChain[si][mi],
                           si == 0 ? target(Ms[mi]) : -1.0, blockCublas[si][mi]});
    }
  std::vector<AttnRow> attnRows = benchDecodeAttention(b, nSets, readBw);
  if (jsonPath) writeBenchJson(jsonPath, b.name(), copyBw, readBw, rows, blockRows, attnRows);
}

int main(int argc, char** argv) {
  bool doBench = false, onlyBench = false, doE2E = false, doPat = false;
  const char* jsonPath = nullptr;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--json") && i + 1 < argc) jsonPath = argv[++i];
    if (!strcmp(argv[i], "--bench")) doBench = true;
    if (!strcmp(argv[i], "--bench-only")) doBench = onlyBench = true;
    if (!strcmp(argv[i], "--e2e")) doE2E = true;
    if (!strcmp(argv[i], "--readpat")) doPat = true;
  }
  std::unique_ptr<Backend> b;
  try { b = createCudaBackend(0); } catch (std::exception& e) {
    fprintf(stderr, "%s\n", e.what());
    return strstr(e.what(), "no CUDA device") ? 77 : 1;
  }
  printf("backend: %s\n", b->name().c_str());
  try {
    int v = 0;
    nccl::check(nccl::api().getVersion(&v), "ncclGetVersion");
    printf("NCCL version: %d\n", v);
  } catch (std::exception& e) { printf("NCCL: %s\n", e.what()); }
  try {
    if (doE2E || doPat) {
      if (doPat) runReadPat(*b);
      if (doE2E) runE2E(*b);
      return 0;
    }
    if (!onlyBench) {
      checkAwqAll(*b);
      // M >= 9 runs through cuBLAS where it loads; the same shapes once more on the GEMV.
      for (int gemvOnly = 0; gemvOnly < 2; ++gemvOnly) {
        const int keepMin = cuda::tuning().linearBlasMinM;
        if (gemvOnly) cuda::tuning().linearBlasMinM = 1 << 30;
        checkLinear(*b, 64, 1024, 1000, DType::F32);
        checkLinear(*b, 13, 520, 776, DType::F16);
        cuda::tuning().linearBlasMinM = keepMin;
      }
      checkLinear(*b, 64, 1024, 1000, DType::F32);
      checkLinear(*b, 13, 520, 777, DType::F16);
      checkLinear(*b, 70, 2048, 300, DType::F32);
      checkLinear(*b, 8, 3000, 64, DType::F32);
      checkLinear(*b, 1, 512, 1000, DType::F32);
      checkLinear(*b, 5, 520, 777, DType::F16);
      checkLinear(*b, 17, 512, 1000, DType::F32);
      checkNorms(*b, 3, 8192);
      checkNorms(*b, 2, 1000);
      checkNorms(*b, 2, 12288);  // the 16-vector block, its last vectors past the row
      checkElementwise(*b);
      // The tensor-core prefill kernel (>= 4 tokens per sequence): G = 8, 4, 2, 1, head dims 128
      // and 64, several sequences per step (a 64-row tile spans two), contexts past the new
      // tokens, block tables out of order; and the same on the per-token kernel.
      for (int perToken = 0; perToken < 2; ++perToken) {
        const int keepMin = cuda::tuning().attnPrefillMinTokensPerSeq;
        if (perToken) cuda::tuning().attnPrefillMinTokensPerSeq = 0;
        printf("-- prefill attention on the %s kernel\n", perToken ? "per-token" : "tensor-core");
        checkAttention(*b, 64, 8, 128, {700, 301}, 300, "prefill GQA 8, 2 seqs");
        checkAttention(*b, 32, 8, 128, {77, 130, 5}, 64, "prefill GQA 4, 3 seqs");
        checkAttention(*b, 8, 4, 64, {200, 45}, 45, "prefill GQA 2 hd 64");
        checkAttention(*b, 4, 4, 64, {129}, 129, "prefill MHA hd 64");
        checkAttention(*b, 8, 1, 128, {2048}, 2048, "prefill 2048 GQA 8");
        cuda::tuning().attnPrefillMinTokensPerSeq = keepMin;
      }
      // Decode attention on each of its paths: the default (a warp keeps two tiles in flight where
      // the grid is small), 16 blocks per SM as the split target (many splits, one tile in flight),
      // one tile in flight at every grid, and the deterministic mode (fixed 256-key splits).
      for (int v = 0; v < 4; ++v) {
        cuda::Tuning& tu = cuda::tuning();
        const cuda::Tuning keep = tu;
        if (v == 1) tu.attnDecodeBlocksPerSM = 16;
        if (v == 2) tu.attnDecodePrefetch = false;
        if (v == 3) tu.deterministic = true;
        printf("-- decode attention, %s\n", v == 0   ? "default"
                                          : v == 1 ? "16 blocks per SM as the split target"
                                          : v == 2 ? "one tile in flight a warp"
                                                   : "deterministic (256-key splits)");
        checkAttention(*b, 8, 2, 128, {1, 37, 300}, 1, "decode");
        checkAttention(*b, 64, 8, 128, {5, 200}, 1, "decode GQA 8");
        // Contexts around the 16-key tiles, the 64-key rounds and the splits, in one step.
        checkAttention(*b, 64, 8, 128,
                       {1, 15, 16, 17, 63, 64, 65, 100, 128, 129, 255, 256, 257, 511, 640, 700, 1023, 1025, 3, 31}, 1,
                       "decode GQA 8, 20 contexts");
        checkAttention(*b, 4, 4, 64, {1, 17, 64, 65, 333}, 1, "decode MHA hd 64, 5 contexts");
        checkAttention(*b, 8, 8, 128, {3000}, 2, "long context (split)");
        checkAttention(*b, 64, 8, 128, {2500, 17}, 1, "long context GQA 8");
        tu = keep;
      }
      checkAttention(*b, 6, 2, 64, {19, 70}, 19, "prefill+partial blocks");
      checkAttention(*b, 16, 2, 128, {130}, 130, "prefill 130");
      b->synchronize();
      printf("\n%s: %d ok, %d failure(s)\n", g_fail ? "FAILED" : "PASSED", g_ok, g_fail);
      fflush(stdout);
    }
    if (doBench) bench(*b, jsonPath);
    b->synchronize();
  } catch (std::exception& e) {
    fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return g_fail ? 1 : 0;
}
