// The seam between the addon's device thread and a compute backend (CPU or CUDA).
//
// Every method here runs on the device's own thread (see device.h), never on the
// JS thread, so an implementation may block (a CPU kernel, a CUDA synchronize).
// Methods validate nothing about shapes: the binding checks every shape before it
// enqueues an op, so a backend only sees well-formed views. A backend reports
// runtime failures (an I/O error, a CUDA error) by throwing BackendError.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace medcluster {

enum class DType : int32_t { F16 = 0, F32 = 1, I32 = 2 };

inline size_t dtypeSize(DType t) { return t == DType::F16 ? 2 : 4; }
inline const char* dtypeName(DType t) {
  return t == DType::F16 ? "f16" : t == DType::F32 ? "f32" : "i32";
}

struct BackendError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Memory owned by a backend (host memory for CPU, device memory for CUDA).
// Freed by the backend when the last reference (a JS tensor or a queued op) drops.
struct Buffer {
  virtual ~Buffer() = default;
  void* data = nullptr;
  size_t bytes = 0;
};

// A typed, row-major, contiguous view of a buffer. Shapes are at most 4-D.
struct View {
  void* data = nullptr;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
  template <typename T> T* as() const { return static_cast<T*>(data); }
};

// One AWQ GEMM linear layer (AutoAWQ packing, see MODEL.md), K inputs, N outputs.
struct AwqWeights {
  View qweight;  // i32 [K, N/8]
  View qzeros;   // i32 [K/G, N/8]
  View scales;   // f16 [K/G, N]
  int64_t groupSize = 128;
};

// The same layer repacked once at load (Backend::awqPack) into the layout of awq_layout.h,
// which the CUDA kernels read. A copy: the AutoAWQ tensors are never rewritten.
struct PackedAwqWeights {
  View packed;  // awqpack::packedBytes(K, N) bytes
  int64_t K = 0, N = 0;
  int64_t groupSize = 128;
  // The fused gate / up matrix packed with its columns paired (awq_layout.h): awqLinearPacked
  // writes silu(gate) * up, f16 [T, N/2], not the N columns.
  bool gated = false;
};

// Attention geometry for one op call.
struct AttentionShape {
  int64_t numHeads = 0;    // query heads held by this rank
  int64_t numKvHeads = 0;  // KV heads held by this rank
  int64_t headDim = 0;
  float scale = 0.f;       // usually 1/sqrt(headDim)
};

// One row of a sample call (Device.sample in kernels/src/api.ts says what each field does).
struct SampleRow {
  int32_t row = 0;  // the logits row it samples
  double temperature = 0, topP = 1;
  int32_t topK = 0;
  double repetitionPenalty = 1, presencePenalty = 0, frequencyPenalty = 0;
  double uniform = 0;
  int32_t logprobs = -1;  // -1: none
  // Ranges of SampleBatch's lists: the penalized ids (with their counts) and the masked ids.
  int32_t penaltyBegin = 0, penaltyCount = 0, maskBegin = 0, maskCount = 0;
};

struct SampleBatch {
  std::vector<SampleRow> rows;
  std::vector<int32_t> penaltyIds, penaltyCounts, maskedIds;
  // L: the most logprobs alternatives any row asked for (the outputs have 1 + L columns).
  int32_t topLogprobs = 0;
};

// A download queued without waiting for it (Backend::downloadAsync).
struct PendingDownload {
  virtual ~PendingDownload() = default;
  // Blocks until the bytes are in host memory and returns them; may be called from a thread
  // other than the device thread. Throws BackendError on a device fault.
  virtual const void* wait() = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // Memory. alloc returns zero-filled memory. upload may return before the copy has run (the
  // host data is staged first).
  virtual std::shared_ptr<Buffer> alloc(size_t bytes) = 0;
  virtual void upload(Buffer& dst, const void* host, size_t bytes) = 0;
  virtual void download(const Buffer& src, void* host, size_t bytes) = 0;
  // Queues the copy of src's first `bytes` to host memory that the handle owns, after the work
  // queued so far, without waiting for it. This default downloads at once.
  virtual std::unique_ptr<PendingDownload> downloadAsync(const Buffer& src, size_t bytes) {
    struct Done final : PendingDownload {
      std::vector<uint8_t> bytes;
      const void* wait() override { return bytes.data(); }
    };
    auto done = std::make_unique<Done>();
    done->bytes.resize(bytes);
    if (bytes) download(src, done->bytes.data(), bytes);
    return done;
  }
  // Reads rows [r0, r1) x cols [c0, c1) of a row-major [rows, cols] matrix of
  // elemSize-byte elements stored at fileOffset of path, into dst (contiguous).
  virtual void readFileRegion(Buffer& dst, const std::string& path, uint64_t fileOffset,
                              int64_t cols, int64_t elemSize, int64_t r0, int64_t r1,
                              int64_t c0, int64_t c1) = 0;

  // out f32 [T, H] = table f16 [V, H] rows at ids i32 [T] (ids checked < V by the binding).
  virtual void embedding(const View& table, const View& ids, const View& out) = 0;
  // out f16 [T, H] = rmsnorm(x f32 [T, H]) * w f16 [H]
  virtual void rmsNorm(const View& x, const View& w, float eps, const View& out) = 0;
  // residual f32 [T, H] += delta f32 [T, H]; out f16 [T, H] = rmsnorm(residual) * w
  virtual void addRmsNorm(const View& residual, const View& delta, const View& w, float eps,
                          const View& out) = 0;
  // residual f32 [T, H] += delta f32 [T, H]
  virtual void addInPlace(const View& residual, const View& delta) = 0;
  // out [T, N] (f16 or f32) = x f16 [T, K] @ dequant(w) [K, N], fp32 accumulation, on weights
  // in the AutoAWQ layout (the CPU backend's) ...
  virtual void awqLinear(const View& x, const AwqWeights& w, const View& out) = 0;
  // ... or packed at load (the CUDA backend's), gated (w.gated: out f16 [T, N/2] = silu(x @ gate) *
  // (x @ up), the epilogue of one matmul). A backend implements the layout it reads.
  virtual void awqLinearPacked(const View& x, const PackedAwqWeights& w, const View& out) {
    (void)x; (void)w; (void)out;
    throw BackendError("awqLinear: the " + name() + " backend reads the AutoAWQ layout, not packed weights");
  }
  // Writes src, repacked, into dst (awqpack::packedBytes(K, N) bytes); gated: src is the fused
  // [gate | up] matrix, its columns paired for the gated matmul. Only backends whose kernels read
  // the packed layout implement it.
  virtual void awqPack(const AwqWeights& src, const View& dst, bool gated) {
    (void)src; (void)dst; (void)gated;
    throw BackendError("packAwq: the " + name() + " backend reads the AutoAWQ layout; nothing to pack");
  }
  // out [T, N] (f16 or f32) = x f16 [T, K] @ w f16 [N, K]^T (nn.Linear layout), fp32 accumulation.
  virtual void linear(const View& x, const View& w, const View& out) = 0;
  // The fused q/k/v matmul's output qkv f16 [T, (nq + 2 nkv) hd] (q, k, v columns; nkv and hd
  // from the caches below): HF rotate-half RoPE on q and k at positions i32 [T]; q goes to
  // qOut f16 [T, nq hd], k and v into the caches at slots i32 [T], as writeKv writes them.
  virtual void ropeWriteKv(const View& qkv, const View& kCache, const View& vCache, const View& positions,
                           const View& slots, float theta, const View& qOut) = 0;
  // Paged KV cache: cache f16 [numBlocks, blockSize, numKvHeads, headDim].
  // Writes k, v f16 [T, numKvHeads*headDim] into flat slots i32 [T] (block*blockSize + offset).
  virtual void writeKv(const View& kCache, const View& vCache, const View& k, const View& v,
                       const View& slots) = 0;
  // Causal attention over the paged cache. Token t belongs to sequence tokenSeq[t]
  // (a row of blockTables i32 [S, maxBlocks]) and sits at positions[t]; it attends to
  // that sequence's cached positions 0..positions[t]. q f16 [T, nh*hd] -> out f16 [T, nh*hd].
  virtual void attention(const View& q, const View& kCache, const View& vCache,
                         const View& blockTables, const View& tokenSeq, const View& positions,
                         const AttentionShape& shape, const View& out) = 0;
  // out f16 [T, I] = silu(gate) * up, with gateUp f16 [T, 2I] = [gate | up] (the fused matmul's output)
  virtual void siluMul(const View& gateUp, const View& out) = 0;
  // out [R, C] = x [T, C] rows at rows i32 [R] (any dtype)
  virtual void gatherRows(const View& x, const View& rows, const View& out) = 0;
  // Copies columns [srcCol0, srcCol0+cols) of every row of src [R, Cs] into columns
  // [dstCol0, dstCol0+cols) of dst [R, Cd] (both row-major 2-D, same dtype and R).
  // Builds concatCols (fused q/k/v and gate/up weights at load).
  virtual void copyCols(const View& src, int64_t srcCol0, const View& dst, int64_t dstCol0,
                        int64_t cols) = 0;
  // Samples batch.rows[i] from its row of logits f32 [R, V]: ids i32 [S, 1+L] gets the token,
  // then the L most likely by raw logits (-1 past the row's own logprobs count); logprobs f32
  // [S, 1+L] their log-softmax of the raw logits (0 where the row asked none). Row and list
  // ranges were checked by the binding.
  virtual void sample(const View& logits, const SampleBatch& batch, const View& ids,
                      const View& logprobs) = 0;
  // dst's first `rows` rows = src's (2-D views of one dtype and column count; either may be an
  // opened shared buffer of another GPU of the host).
  virtual void copyRows(const View& src, const View& dst, int64_t rows) = 0;
  // ids i32 [T]: ids[t] = sampled[from[t], 0] where from[t] >= 0 (sampled i32 [S, W]; the
  // binding's caller checked from's indices against S).
  virtual void takeSampled(const View& ids, const View& sampled, const View& from) = 0;
  // Memory that another process of this host can map, zero-filled (CUDA IPC): *handle gets the
  // bytes that process passes to openShared. Backends without it (CPU) throw.
  virtual std::shared_ptr<Buffer> allocShared(size_t bytes, std::vector<uint8_t>* handle) {
    (void)bytes;
    (void)handle;
    throw BackendError("shared device memory needs the CUDA backend");
  }
  // Maps the first `bytes` of a buffer that allocShared made in another process (its handle).
  virtual std::shared_ptr<Buffer> openShared(const std::vector<uint8_t>& handle, size_t bytes) {
    (void)handle;
    (void)bytes;
    throw BackendError("shared device memory needs the CUDA backend");
  }
  // Fills buf with deterministic pseudo-random bits from seed (synthetic weights).
  virtual void randomBits(Buffer& buf, uint64_t seed) = 0;
  // Blocks until all work issued so far has finished (no-op for synchronous backends).
  virtual void synchronize() = 0;
  // Memory the backend can still allocate, and its total (device memory for CUDA;
  // available and total RAM for the CPU backend). Sizes the KV cache.
  virtual void memoryInfo(size_t* freeBytes, size_t* totalBytes) = 0;

  // Optional graph capture (CUDA graphs; the defaults say "unsupported"). Between
  // beginCapture() and endCapture() the ops issued are recorded, not run; replayGraph(handle)
  // then reruns them on the same buffers (update inputs in place with upload() between
  // replays). While capturing, issue only compute ops: no alloc/upload/download/
  // readFileRegion/synchronize, and free no buffer (the addon's graph pools, device.h, hand
  // out memory allocated beforehand). Run the same sequence once uncaptured first (it sizes
  // the backend's internal workspaces). endCapture() must follow every beginCapture() that
  // returned true, also on error paths.
  virtual bool beginCapture() { return false; }
  virtual int64_t endCapture() { return 0; }  // > 0: a graph handle
  virtual void replayGraph(int64_t handle) { (void)handle; }
  virtual void releaseGraph(int64_t handle) { (void)handle; }

  // Checks that run on the device thread after the synchronize() of every sync, read and
  // memoryInfo (device.cc), and may throw BackendError: failures that device code can only
  // record in memory, such as a device collective whose peer never arrived (collective.h),
  // surface there like an asynchronous CUDA fault.
  // Thread-safe: the checks of an asynchronous download run on the thread that waited for it.
  void addSyncCheck(std::function<void()> check) {
    std::lock_guard<std::mutex> lock(syncChecksMu_);
    syncChecks_.push_back(std::move(check));
  }
  void runSyncChecks() {
    std::vector<std::function<void()>> checks;
    {
      std::lock_guard<std::mutex> lock(syncChecksMu_);
      checks = syncChecks_;
    }
    for (auto& check : checks) check();
  }

 private:
  std::mutex syncChecksMu_;
  std::vector<std::function<void()>> syncChecks_;
};

std::unique_ptr<Backend> createCpuBackend(int threads);
// Defined by the CUDA backend when the addon is built with nvcc; otherwise by a
// fallback that throws BackendError explaining that CUDA support was not compiled in.
std::unique_ptr<Backend> createCudaBackend(int ordinal);
bool cudaCompiledIn();
// CUDA devices visible to this process (0 without a driver, a GPU, or CUDA compiled in).
int cudaDeviceCount();

}  // namespace medcluster
