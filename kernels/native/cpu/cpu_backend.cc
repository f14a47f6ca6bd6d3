// The portable CPU backend: host memory plus the kernels in this directory.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <thread>

#include "kernels.h"

namespace medcluster {
namespace {

struct HostBuffer : Buffer {
  explicit HostBuffer(size_t n) {
    bytes = n;
    // calloc: large blocks come zeroed from fresh pages, so zero-filling costs nothing up front.
    data = std::calloc(n == 0 ? 1 : n, 1);
    if (data == nullptr) throw BackendError("cpu: out of memory allocating " + std::to_string(n) + " bytes");
  }
  ~HostBuffer() override { std::free(data); }
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : pool_(threads) {}

  std::string name() const override { return "cpu (" + std::to_string(pool_.size()) + " threads)"; }

  std::shared_ptr<Buffer> alloc(size_t bytes) override { return std::make_shared<HostBuffer>(bytes); }
  void upload(Buffer& dst, const void* host, size_t bytes) override { std::memcpy(dst.data, host, bytes); }
  void download(const Buffer& src, void* host, size_t bytes) override { std::memcpy(host, src.data, bytes); }
  void readFileRegion(Buffer& dst, const std::string& path, uint64_t fileOffset, int64_t cols,
                      int64_t elemSize, int64_t r0, int64_t r1, int64_t c0, int64_t c1) override {
    cpu::readFileRegion(dst.data, path, fileOffset, cols, elemSize, r0, r1, c0, c1);
  }

  void embedding(const View& table, const View& ids, const View& out) override {
    cpu::embedding(pool_, table, ids, out);
  }
  void rmsNorm(const View& x, const View& w, float eps, const View& out) override {
    cpu::rmsNorm(pool_, x, nullptr, w, eps, out);
  }
  void addRmsNorm(const View& residual, const View& delta, const View& w, float eps,
                  const View& out) override {
    cpu::rmsNorm(pool_, residual, &delta, w, eps, out);
  }
  void addInPlace(const View& residual, const View& delta) override {
    cpu::addInPlace(pool_, residual, delta);
  }
  void awqLinear(const View& x, const AwqWeights& w, const View& out) override {
    cpu::awqLinear(pool_, x, w, out);
  }
  void linear(const View& x, const View& w, const View& out) override { cpu::linear(pool_, x, w, out); }
  // The unfused steps on copies: q, k and v out of qkv, RoPE on q and k, then writeKv.
  void ropeWriteKv(const View& qkv, const View& kCache, const View& vCache, const View& positions,
                   const View& slots, float theta, const View& qOut) override {
    const int64_t T = qkv.dim(0), hd = kCache.dim(3), kvWidth = kCache.dim(2) * hd, qWidth = qOut.dim(1);
    std::vector<uint16_t> kv(static_cast<size_t>(2 * T * kvWidth));
    View k{kv.data(), DType::F16, {T, kvWidth}}, v{kv.data() + T * kvWidth, DType::F16, {T, kvWidth}};
    cpu::copyCols(pool_, qkv, 0, qOut, 0, qWidth);
    cpu::copyCols(pool_, qkv, qWidth, k, 0, kvWidth);
    cpu::copyCols(pool_, qkv, qWidth + kvWidth, v, 0, kvWidth);
    cpu::rope(pool_, qOut, k, positions, hd, theta);
    cpu::writeKv(kCache, vCache, k, v, slots);
  }
  void writeKv(const View& kCache, const View& vCache, const View& k, const View& v,
               const View& slots) override {
    cpu::writeKv(kCache, vCache, k, v, slots);
  }
  void attention(const View& q, const View& kCache, const View& vCache, const View& blockTables,
                 const View& tokenSeq, const View& positions, const AttentionShape& shape,
                 const View& out) override {
    cpu::attention(pool_, q, kCache, vCache, blockTables, tokenSeq, positions, shape, out);
  }
  void siluMul(const View& gateUp, const View& out) override {
    cpu::siluMul(pool_, gateUp, out);
  }
  void gatherRows(const View& x, const View& rows, const View& out) override {
    cpu::gatherRows(x, rows, out);
  }
  void copyCols(const View& src, int64_t srcCol0, const View& dst, int64_t dstCol0, int64_t cols) override {
    cpu::copyCols(pool_, src, srcCol0, dst, dstCol0, cols);
  }
  void copyRows(const View& src, const View& dst, int64_t rows) override {
    std::memcpy(dst.data, src.data, static_cast<size_t>(rows) * src.dim(1) * dtypeSize(src.dtype));
  }
  void takeSampled(const View& ids, const View& sampled, const View& from) override {
    int32_t* out = ids.as<int32_t>();
    const int32_t* f = from.as<int32_t>();
    const int64_t W = sampled.dim(1);
    for (int64_t t = 0; t < ids.dim(0); t++)
      if (f[t] >= 0) out[t] = sampled.as<int32_t>()[f[t] * W];
  }
  void sample(const View& logits, const SampleBatch& batch, const View& ids, const View& logprobs) override {
    cpu::sample(pool_, logits, batch, ids, logprobs);
  }
  void randomBits(Buffer& buf, uint64_t seed) override { cpu::randomBits(pool_, buf.data, buf.bytes, seed); }
  void synchronize() override {}
  void memoryInfo(size_t* freeBytes, size_t* totalBytes) override { cpu::hostMemoryInfo(freeBytes, totalBytes); }

 private:
  ThreadPool pool_;
};

}  // namespace

std::unique_ptr<Backend> createCpuBackend(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::make_unique<CpuBackend>(threads);
}

}  // namespace medcluster
