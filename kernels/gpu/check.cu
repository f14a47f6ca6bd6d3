// medcluster-gpu-check: correctness of every CUDA backend op against float64 host
// references, then (with --bench) the AWQ linear benchmark at the 70B shapes.
//   ./medcluster-gpu-check            checks; exit 1 on any failure
//   ./medcluster-gpu-check --bench    checks, then benchmarks
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../native/backend.h"
#include "../native/cuda/common.cuh"
#include "../native/cuda/nccl_loader.h"
#include "../native/cuda/cublas_loader.h"

using namespace medcluster;
namespace medcluster { namespace cuda { extern int awqGemvMaxM, awqSkinnyMaxM, awqSkinnyMinBlocks, awqSkinnyPipeOn, awqSkinnyStages1, awqSkinnySplitCap, awqCoreMaxM, awqCoreVariant, awqCoreMaxSplits, awqDequantMinM, linearBlasMinM, attnPrefillMinTokensPerSeq; } }

int runE2E(Backend& b);      // e2e.cu
int runReadPat(Backend& b);  // e2e.cu
static std::mt19937_64 rng(12345);
static int g_fail = 0;

static float urand(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }
static uint16_t h(float f) { __half x = __float2half(f); uint16_t u; memcpy(&u, &x, 2); return u; }
static float f(uint16_t u) { __half x; memcpy(&x, &u, 2); return __half2float(x); }

struct Dev {
  Backend& b;
  std::shared_ptr<Buffer> buf;
  View v;
};
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
  return out;
}
static std::vector<double> toD(const View& v, Backend& b) {
  std::vector<double> r(v.numel());
  if (v.dtype == DType::F16) { auto x = down<uint16_t>(b, v); for (size_t i = 0; i < r.size(); ++i) r[i] = f(x[i]); }
  else { auto x = down<float>(b, v); for (size_t i = 0; i < r.size(); ++i) r[i] = x[i]; }
  return r;
}
static void report(const std::string& name, const std::vector<double>& out, const std::vector<double>& ref, double tol) {
  double num = 0, den = 0; bool nan = false;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(out[i])) nan = true;
    num += (out[i] - ref[i]) * (out[i] - ref[i]); den += ref[i] * ref[i];
  }
  double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  bool ok = !nan && rel <= tol;
  if (!ok) ++g_fail;
  printf("%-4s %-58s rel %.2e (tol %.0e)%s\n", ok ? "ok" : "FAIL", name.c_str(), rel, tol, nan ? " NON-FINITE" : "");
}

// ---- AWQ ----------------------------------------------------------------------------
static const int kOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};  // nibble i holds column 8c + kOrder[i]
static int nib(uint32_t w, int j) { int i = 0; while (kOrder[i] != j) ++i; return (w >> (4 * i)) & 15; }

static void checkAwq(Backend& b, int M, int K, int N, DType odt) {
  std::vector<uint32_t> qw((size_t)K * N / 8), qz((size_t)K / 128 * N / 8);
  for (auto& w : qw) w = (uint32_t)rng();
  for (auto& w : qz) w = (uint32_t)rng();
  std::vector<uint16_t> sc((size_t)K / 128 * N), x((size_t)M * K);
  for (auto& s : sc) s = h(urand(0.001f, 0.02f));
  for (auto& v : x) v = h(urand(-1, 1));
  AwqWeights w;
  w.qweight = up(b, qw, DType::I32, {K, N / 8});
  w.qzeros = up(b, qz, DType::I32, {K / 128, N / 8});
  w.scales = up(b, sc, DType::F16, {K / 128, N});
  View xv = up(b, x, DType::F16, {M, K});
  View out = poisoned(b, (size_t)M * N * dtypeSize(odt), odt, {M, N});
  b.awqLinear(xv, w, out);
  auto got = toD(out, b);
  // float64 reference
  std::vector<double> wd((size_t)K * N);
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < N; ++n) {
      int g = k / 128;
      int q = nib(qw[(size_t)k * N / 8 + n / 8], n % 8), z = nib(qz[(size_t)g * N / 8 + n / 8], n % 8);
      wd[(size_t)k * N + n] = (q - z) * (double)f(sc[(size_t)g * N + n]);
    }
  std::vector<double> ref((size_t)M * N, 0.0);
  for (int m = 0; m < M; ++m)
    for (int k = 0; k < K; ++k) {
      double xv_ = f(x[(size_t)m * K + k]);
      const double* wr = &wd[(size_t)k * N];
      double* o = &ref[(size_t)m * N];
      for (int n = 0; n < N; ++n) o[n] += xv_ * wr[n];
    }
  char name[128];
  snprintf(name, sizeof name, "awqLinear M=%d K=%d N=%d out=%s", M, K, N, dtypeName(odt));
  report(name, got, ref, odt == DType::F16 ? 3e-3 : 2e-3);
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

static void checkElementwise(Backend& b) {
  // RoPE
  int T = 5, nq = 8, nk = 2, hd = 128;
  std::vector<uint16_t> q((size_t)T * nq * hd), k((size_t)T * nk * hd);
  for (auto& v : q) v = h(urand(-1, 1));
  for (auto& v : k) v = h(urand(-1, 1));
  std::vector<int32_t> pos = {0, 1, 17, 1000, 4095};
  View qv = up(b, q, DType::F16, {T, nq * hd}), kv = up(b, k, DType::F16, {T, nk * hd}), pv = up(b, pos, DType::I32, {T});
  b.rope(qv, kv, pv, hd, 10000.f);
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
  report("rope q (positions up to 4095)", toD(qv, b), ropeRef(q, nq), 2e-3);
  report("rope k", toD(kv, b), ropeRef(k, nk), 2e-3);
  // SiLU-gate
  int n = 3 * 1000;
  std::vector<uint16_t> g(n), u(n);
  for (auto& v : g) v = h(urand(-6, 6));
  for (auto& v : u) v = h(urand(-2, 2));
  View gv = up(b, g, DType::F16, {3, 1000}), uv = up(b, u, DType::F16, {3, 1000});
  View o = poisoned(b, n * 2, DType::F16, {3, 1000});
  b.siluMul(gv, uv, o);
  std::vector<double> ref(n);
  for (int i = 0; i < n; ++i) { double a = f(g[i]); ref[i] = a / (1 + std::exp(-a)) * f(u[i]); }
  report("siluMul", toD(o, b), ref, 2e-3);
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
  if (!rok) ++g_fail;
  printf("%-4s %-58s\n", rok ? "ok" : "FAIL", "randomBits deterministic by seed, seeds differ");
  // alloc zero-fills
  auto zb = b.alloc(4096);
  std::vector<unsigned char> zh(4096, 1);
  b.download(*zb, zh.data(), 4096);
  bool zok = std::all_of(zh.begin(), zh.end(), [](unsigned char c) { return c == 0; });
  if (!zok) ++g_fail;
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
  if (!fok) ++g_fail;
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
  if (!ok) ++g_fail;
  printf("%-4s %-58s\n", ok ? "ok" : "FAIL", "writeKv (paged slots, exact)");
}

// ---- benchmark -------------------------------------------------------------------------
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

// Rows of the benchmark, also written as JSON with --json PATH (for `medcluster bench kernels --device cuda`).
struct BenchRow { std::string shape; int K, N, M; double awqMs, gbs, pctCopy, tflops, cublasMs; };
struct BlockRow { std::string tp; int M; double awqMs, targetMs, cublasMs; };

static void writeBenchJson(const char* path, const std::string& device, double copyBw,
                           const std::vector<BenchRow>& rows, const std::vector<BlockRow>& blocks) {
  FILE* f = fopen(path, "w");
  if (!f) { fprintf(stderr, "cannot write %s\n", path); return; }
  fprintf(f, "{\n  \"device\": \"%s\",\n  \"copyGBs\": %.1f,\n  \"shapes\": [\n", device.c_str(), copyBw);
  for (size_t i = 0; i < rows.size(); ++i) {
    const BenchRow& r = rows[i];
    fprintf(f, "    {\"shape\": \"%s\", \"K\": %d, \"N\": %d, \"M\": %d, \"awqMs\": %.5f, \"GBs\": %.1f, "
               "\"pctOfCopy\": %.1f, \"TFLOPs\": %.2f, \"cublasFp16Ms\": %s}%s\n",
            r.shape.c_str(), r.K, r.N, r.M, r.awqMs, r.gbs, r.pctCopy, r.tflops,
            r.cublasMs < 0 ? "null" : std::to_string(r.cublasMs).c_str(), i + 1 < rows.size() ? "," : "");
  }
  fprintf(f, "  ],\n  \"perBlock\": [\n");
  for (size_t i = 0; i < blocks.size(); ++i) {
    const BlockRow& r = blocks[i];
    fprintf(f, "    {\"tp\": \"%s\", \"M\": %d, \"awqMs\": %.5f, \"targetMs\": %s, \"cublasFp16Ms\": %s}%s\n",
            r.tp.c_str(), r.M, r.awqMs, r.targetMs < 0 ? "null" : std::to_string(r.targetMs).c_str(),
            r.cublasMs <= 0 ? "null" : std::to_string(r.cublasMs).c_str(), i + 1 < blocks.size() ? "," : "");
  }
  fprintf(f, "  ]\n}\n");
  fclose(f);
  printf("wrote %s\n", path);
}

static void bench(Backend& b, const char* jsonPath) {
  std::vector<BenchRow> rows;
  std::vector<BlockRow> blockRows;
  cudaStream_t s = cuda::backendStream(b);
  // Device-to-device copy bandwidth (bytes read + written).
  size_t cb = 1ull << 30;
  auto c1 = b.alloc(cb), c2 = b.alloc(cb);
  float cms = timeIt(s, 10, [&](int) { cudaMemcpyAsync(c2->data, c1->data, cb, cudaMemcpyDeviceToDevice, s); });
  double copyBw = 2.0 * cb / (cms * 1e-3) / 1e9;
  printf("\ncopy bandwidth (read+write): %.0f GB/s\n", copyBw);
  c1.reset(); c2.reset();
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
  std::vector<int> Ms = {1, 4, 16, 64, 256, 1024};
  if (getenv("MC_SKINNY_PIPE")) cuda::awqSkinnyPipeOn = atoi(getenv("MC_SKINNY_PIPE"));
  if (getenv("MC_SKINNY_MINB")) cuda::awqSkinnyMinBlocks = atoi(getenv("MC_SKINNY_MINB"));
  if (getenv("MC_STAGES1")) cuda::awqSkinnyStages1 = atoi(getenv("MC_STAGES1"));
  if (getenv("MC_SPLITCAP")) cuda::awqSkinnySplitCap = atoi(getenv("MC_SPLITCAP"));
  if (getenv("MC_CORE_MAXM")) cuda::awqCoreMaxM = atoi(getenv("MC_CORE_MAXM"));
  if (getenv("MC_CORE_VAR")) cuda::awqCoreVariant = atoi(getenv("MC_CORE_VAR"));
  if (getenv("MC_CORE_MAXSPLITS")) cuda::awqCoreMaxSplits = atoi(getenv("MC_CORE_MAXSPLITS"));
  if (getenv("MC_DEQUANT_MINM")) cuda::awqDequantMinM = atoi(getenv("MC_DEQUANT_MINM"));
  printf("skinny: stages(M<=16)=%d splitCap=%d; core GEMV: M<=%d variant %d maxSplits %d\n", cuda::awqSkinnyStages1,
         cuda::awqSkinnySplitCap, cuda::awqCoreMaxM, cuda::awqCoreVariant, cuda::awqCoreMaxSplits);
  bool quick = getenv("MC_BENCH_QUICK") != nullptr;  // tp=1 shapes only, M <= 64, no cuBLAS
  if (quick) {  // decode sizes (since 168c2e1), plus the worker's separate k/v and gate calls (not in the block sums)
    Ms = {1, 2, 4, 16, 64};
    sets[0].push_back({"k/v (extra)", 8192, 1024});
    sets[0].push_back({"gate (extra)", 8192, 28672});
  }
  auto target = [](int M) { return M == 1 ? 0.175 : M == 16 ? 0.185 : M == 64 ? 0.24 : M == 1024 ? 2.8 : -1.0; };
  printf("\n| shape | M | awq ms | GB/s | %% copy | TFLOP/s | cuBLAS fp16 ms | cuBLAS GB/s |\n|---|---|---|---|---|---|---|---|\n");
  std::vector<std::vector<double>> blockSum(2, std::vector<double>(Ms.size(), 0)), blockCublas(2, std::vector<double>(Ms.size(), 0));
  auto x = b.alloc((size_t)1024 * 28672 * 2);
  b.randomBits(*x, 99);
  {  // make x finite fp16: random bits → small values (clear exponent high bits)
    std::vector<uint16_t> hx((size_t)1024 * 28672);
    for (auto& v : hx) v = h(urand(-1, 1));
    b.upload(*x, hx.data(), hx.size() * 2);
  }
  auto outb = b.alloc((size_t)1024 * 57344 * 4);
  if (quick) haveCublas = false;
  for (int si = 0; si < (quick ? 1 : 2); ++si)
    for (auto& sh : sets[si]) {
      size_t qb = (size_t)sh.K * sh.N / 2, zb = (size_t)sh.K / 128 * sh.N / 2, sb = (size_t)sh.K / 128 * sh.N * 2;
      size_t per = qb + zb + sb;
      int R = (int)std::max<size_t>(2, (300ull << 20) / per + 1);
      std::vector<std::shared_ptr<Buffer>> bufs;
      std::vector<AwqWeights> ws(R);
      std::vector<uint16_t> hs((size_t)sh.K / 128 * sh.N);
      for (auto& v : hs) v = h(urand(0.001f, 0.01f));
      for (int r = 0; r < R; ++r) {
        auto q = b.alloc(qb), z = b.alloc(zb), sc = b.alloc(sb);
        b.randomBits(*q, 1000 + r); b.randomBits(*z, 2000 + r); b.upload(*sc, hs.data(), sb);
        bufs.push_back(q); bufs.push_back(z); bufs.push_back(sc);
        ws[r].qweight = View{q->data, DType::I32, {sh.K, sh.N / 8}};
        ws[r].qzeros = View{z->data, DType::I32, {sh.K / 128, sh.N / 8}};
        ws[r].scales = View{sc->data, DType::F16, {sh.K / 128, sh.N}};
      }
      // fp16 weights for cuBLAS: 2 copies (each >= 64 MB except o/2 etc.; rotate 4 when small)
      size_t wb16 = (size_t)sh.K * sh.N * 2;
      int R16 = (int)std::max<size_t>(2, (300ull << 20) / wb16 + 1);
      std::vector<std::shared_ptr<Buffer>> w16;
      if (haveCublas)
        for (int r = 0; r < R16; ++r) {
          auto w = b.alloc(wb16);
          cudaMemcpyAsync(w->data, x->data, std::min(wb16, x->bytes), cudaMemcpyDeviceToDevice, s);  // finite values
          w16.push_back(w);
        }
      for (size_t mi = 0; mi < Ms.size(); ++mi) {
        int M = Ms[mi];
        if (quick && M > 64) continue;
        View xv{x->data, DType::F16, {M, sh.K}}, ov{outb->data, DType::F16, {M, sh.N}};
        float ms = timeIt(s, 20, [&](int i) { b.awqLinear(xv, ws[i % R], ov); });
        double bytes = per + (double)M * sh.K * 2 + (double)M * sh.N * 2;
        double gbs = bytes / (ms * 1e-3) / 1e9, tf = 2.0 * M * sh.K * sh.N / (ms * 1e-3) / 1e12;
        float cms2 = -1;
        if (haveCublas) {
          float one = 1.f, zero = 0.f;
          cms2 = timeIt(s, 20, [&](int i) {
            cb_.gemmEx(hnd, cublasdl::CUBLAS_OP_N, cublasdl::CUBLAS_OP_N, sh.N, M, sh.K, &one, w16[i % R16]->data,
                       cublasdl::CUDA_R_16F, sh.N, x->data, cublasdl::CUDA_R_16F, sh.K, &zero, outb->data,
                       cublasdl::CUDA_R_16F, sh.N, cublasdl::CUBLAS_COMPUTE_32F, cublasdl::CUBLAS_GEMM_DEFAULT);
          });
          blockCublas[si][mi] += cms2;
        }
        if (!strstr(sh.name, "(extra)")) blockSum[si][mi] += ms;
        rows.push_back({sh.name, sh.K, sh.N, M, ms, gbs, 100 * gbs / copyBw, tf, cms2});
        printf("| %s %dx%d | %d | %.4f | %.0f | %.0f%% | %.1f | %.4f | %.0f |\n", sh.name, sh.K, sh.N, M, ms, gbs,
               100 * gbs / copyBw, tf, cms2, haveCublas ? (wb16 + (double)M * (sh.K + sh.N) * 2) / (cms2 * 1e-3) / 1e9 : 0.0);
        fflush(stdout);
      }
    }
  printf("\n| per block (4 matmuls) | M | awq ms | target ms | cuBLAS fp16 ms |\n|---|---|---|---|---|\n");
  for (int si = 0; si < 2; ++si)
    for (size_t mi = 0; mi < Ms.size(); ++mi) {
      char tgt[32] = "-";
      if (si == 0 && target(Ms[mi]) > 0 && blockSum[si][mi] > 0) snprintf(tgt, sizeof tgt, "%.3f %s", target(Ms[mi]), blockSum[si][mi] <= target(Ms[mi]) ? "met" : "MISSED");
      printf("| %s | %d | %.4f | %s | %.4f |\n", si ? "tp=2" : "tp=1", Ms[mi], blockSum[si][mi], tgt, blockCublas[si][mi]);
      if (blockSum[si][mi] > 0)
        blockRows.push_back({si ? "tp=2" : "tp=1", Ms[mi], blockSum[si][mi], si == 0 ? target(Ms[mi]) : -1.0,
                             blockCublas[si][mi]});
    }
  if (jsonPath) writeBenchJson(jsonPath, b.name(), copyBw, rows, blockRows);
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
  // Core-GEMV knobs apply to every mode (--e2e too), so a baseline runs from the same binary.
  if (getenv("MC_CORE_MAXM")) cuda::awqCoreMaxM = atoi(getenv("MC_CORE_MAXM"));
  if (getenv("MC_CORE_VAR")) cuda::awqCoreVariant = atoi(getenv("MC_CORE_VAR"));
  if (doE2E || doPat) {
    printf("core GEMV: M<=%d variant %d\n", cuda::awqCoreMaxM, cuda::awqCoreVariant);
    try {
      if (doPat) runReadPat(*b);
      if (doE2E) runE2E(*b);
    } catch (std::exception& e) {
      fprintf(stderr, "error: %s\n", e.what());
      return 1;
    }
    return 0;
  }
  try {
    if (!onlyBench) {
      // AWQ: GEMV path (M <= 8), tensor-core path (M > 8), odd N (GEMV fallback), both out dtypes.
      int shapes[][3] = {{1, 256, 296}, {1, 1024, 2048}, {3, 384, 1024}, {8, 512, 640}, {17, 512, 640},
                         {16, 1024, 1536}, {64, 1024, 2048}, {300, 768, 1536}, {33, 256, 296}, {1, 8192, 1024}, {130, 8192, 512}};
      for (auto& s : shapes) { checkAwq(*b, s[0], s[1], s[2], DType::F16); }
      checkAwq(*b, 1, 1024, 2048, DType::F32);
      checkAwq(*b, 64, 1024, 2048, DType::F32);
      // Large M (since 04550c5) through dequantization + cuBLAS (the default from M = 256 where cuBLAS
      // loads), and the same shapes on the tensor-core awqMma with that path off.
      printf("-- dequant + cuBLAS GEMM (M >= %d), and awqMma with it off\n", cuda::awqDequantMinM);
      for (int off = 0; off < 2; ++off) {
        const int keep = cuda::awqDequantMinM;
        if (off) cuda::awqDequantMinM = 0;
        checkAwq(*b, 256, 1024, 2048, DType::F16);
        checkAwq(*b, 300, 768, 1544, DType::F32);
        checkAwq(*b, 1024, 8192, 1024, DType::F16);
        cuda::awqDequantMinM = keep;
      }
      // Legacy CUDA-core GEMV (off by default): force it, M > 8 runs in passes of 8 rows.
      cuda::awqGemvMaxM = 64; checkAwq(*b, 17, 512, 1024, DType::F16); checkAwq(*b, 1, 1024, 2048, DType::F16); cuda::awqGemvMaxM = 0;
      // Skinny tensor-core GEMV (M <= 64): every m16-tile count and the switch points
      // (16/17, 32/33, 48/49, 64/65), K of 1..many groups (split-K tickets, a group count
      // that no split divides), N/8 not a multiple of the 32-word column tile; each shape
      // twice (the per-tile ticket counters must reset themselves).
      for (int variant = 0; variant < 3; ++variant) {
        cuda::awqSkinnyMinBlocks = variant == 1 ? 2 : 1;
        cuda::awqSkinnyPipeOn = variant == 2;
        printf("-- skinny variant: %s\n", variant == 2 ? "pipelined (default)" : variant == 1 ? "registers, 2 blocks/SM" : "registers, 1 block/SM");
        int sk[][3] = {{1, 128, 64}, {1, 384, 296}, {2, 8192, 1032}, {8, 1280, 2056}, {9, 640, 520}, {16, 1152, 776},
                       {17, 512, 264}, {32, 2048, 1024}, {33, 384, 296}, {48, 768, 520}, {49, 1152, 1024}, {64, 4096, 264},
                       {65, 1024, 2048}, {1, 28672, 512}, {4, 8192, 10240}, {1, 384, 288}, {9, 640, 544},
                       {16, 1152, 800}, {33, 384, 1056}, {48, 768, 544}, {64, 4096, 288}, {24, 256, 1056}};
        for (auto& s : sk) for (int rep = 0; rep < 2; ++rep) checkAwq(*b, s[0], s[1], s[2], DType::F16);
        checkAwq(*b, 7, 2048, 1536, DType::F32);
        checkAwq(*b, 40, 1024, 2056, DType::F32);
      }
      cuda::awqSkinnyMinBlocks = 1; cuda::awqSkinnyPipeOn = 1;
      // Since fb64f51: the split-K cap (splits x M <= 256) at the worker's k/v shape (N = 1024) and M = 16/64,
      // the vectorized last-block reduction (f16 and f32 out), and the 4- and 5-stage rings of M <= 16.
      printf("-- skinny (fb64f51): split cap, vector reduction, ring depth 4/5\n");
      for (int st = 4; st <= 5; ++st) {
        cuda::awqSkinnyStages1 = st;
        checkAwq(*b, 1, 8192, 1024, DType::F16);
        checkAwq(*b, 16, 8192, 1024, DType::F32);
        checkAwq(*b, 9, 1152, 800, DType::F16);
        checkAwq(*b, 3, 28672, 512, DType::F32);
      }
      checkAwq(*b, 64, 8192, 1024, DType::F16);
      checkAwq(*b, 64, 8192, 1024, DType::F32);
      checkAwq(*b, 40, 2048, 1056, DType::F16);
      checkAwq(*b, 64, 4096, 264, DType::F32);  // register (non-ring) kernel with the cap
      cuda::awqSkinnySplitCap = 0;
      checkAwq(*b, 64, 2048, 1024, DType::F16);  // uncapped (be64677 split rule)
      cuda::awqSkinnySplitCap = 256;
      // Since 168c2e1: CUDA-core GEMV (awqCore, M <= awqCoreMaxM <= 4, default 1): every compiled variant (column tile 16/32
      // chunks, 1/2 row chunks in flight, L2 hint), M at the switch points (2/3 with the default, 4/5 with
      // M <= 4), K from 1 group (16 row chunks) to 224 groups (split-K tickets; row-chunk counts no split
      // divides), N/8 not a multiple of the 64/128-word tile (36, 132, 260 words), both output dtypes,
      // each shape twice (self-resetting tickets), and the split cap.
      printf("-- core GEMV (since 168c2e1)\n");
      for (int var = 0; var < 8; ++var) {
        cuda::awqCoreMaxM = 4; cuda::awqCoreVariant = var;
        printf("-- core variant %d\n", var);
        int cs[][3] = {{1, 128, 256}, {1, 384, 288}, {2, 8192, 1024}, {3, 1152, 1056}, {4, 2048, 2080},
                       {5, 640, 544}, {1, 28672, 512}, {4, 1280, 288}, {2, 256, 10240}};
        for (auto& s : cs) for (int rep = 0; rep < 2; ++rep) checkAwq(*b, s[0], s[1], s[2], rep ? DType::F32 : DType::F16);
      }
      cuda::awqCoreVariant = 0;
      cuda::awqCoreMaxM = 1;  // default switch point (1/2)
      checkAwq(*b, 1, 8192, 1024, DType::F16);
      checkAwq(*b, 1, 8192, 1024, DType::F32);
      checkAwq(*b, 2, 8192, 1024, DType::F16);  // -> skinny tensor-core path
      cuda::awqCoreMaxM = 2;
      checkAwq(*b, 2, 8192, 1024, DType::F32);
      checkAwq(*b, 3, 8192, 1024, DType::F16);  // -> skinny tensor-core path
      cuda::awqCoreMaxM = 1;
      checkAwq(*b, 1, 1024, 296, DType::F16);   // N/8 % 4 != 0 -> skinny register kernel
      cuda::awqCoreMaxSplits = 3;
      checkAwq(*b, 1, 4096, 1024, DType::F32);
      cuda::awqCoreMaxSplits = 0;
      // M >= 9 runs through cuBLAS where it loads; the same shapes once more on the GEMV.
      for (int gemvOnly = 0; gemvOnly < 2; ++gemvOnly) {
        const int keep = cuda::linearBlasMinM;
        if (gemvOnly) cuda::linearBlasMinM = 1 << 30;
        checkLinear(*b, 64, 1024, 1000, DType::F32);
        checkLinear(*b, 13, 520, 776, DType::F16);
        cuda::linearBlasMinM = keep;
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
      checkElementwise(*b);
      // Since 04550c5: the tensor-core prefill kernel (>= 4 tokens per sequence): G = 8, 4, 2, 1,
      // head dims 128 and 64, several sequences per step (a 64-row tile spans two), contexts past
      // the new tokens, block tables out of order; and the same on the per-token kernel.
      for (int perToken = 0; perToken < 2; ++perToken) {
        const int keep = cuda::attnPrefillMinTokensPerSeq;
        if (perToken) cuda::attnPrefillMinTokensPerSeq = 0;
        printf("-- since 04550c5: prefill attention on the %s kernel\n", perToken ? "per-token" : "tensor-core");
        checkAttention(*b, 64, 8, 128, {700, 301}, 300, "prefill GQA 8, 2 seqs");
        checkAttention(*b, 32, 8, 128, {77, 130, 5}, 64, "prefill GQA 4, 3 seqs");
        checkAttention(*b, 8, 4, 64, {200, 45}, 45, "prefill GQA 2 hd 64");
        checkAttention(*b, 4, 4, 64, {129}, 129, "prefill MHA hd 64");
        checkAttention(*b, 8, 1, 128, {2048}, 2048, "prefill 2048 GQA 8");
        cuda::attnPrefillMinTokensPerSeq = keep;
      }
      checkAttention(*b, 8, 2, 128, {1, 37, 300}, 1, "decode");
      checkAttention(*b, 64, 8, 128, {5, 200}, 1, "decode GQA 8");
      checkAttention(*b, 6, 2, 64, {19, 70}, 19, "prefill+partial blocks");
      checkAttention(*b, 8, 8, 128, {3000}, 2, "long context (split)");
      checkAttention(*b, 64, 8, 128, {2500, 17}, 1, "long context GQA 8");
      checkAttention(*b, 16, 2, 128, {130}, 130, "prefill 130");
      b->synchronize();
      printf("\n%s: %d failure(s)\n", g_fail ? "FAILED" : "PASSED", g_fail);
    }
    if (doBench) bench(*b, jsonPath);
    b->synchronize();
  } catch (std::exception& e) {
    fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return g_fail ? 1 : 0;
}
