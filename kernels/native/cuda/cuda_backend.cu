// CudaBackend: the Backend contract (backend.h) on one CUDA device.
//
// Threading: the addon calls every method from one device thread. The constructor
// selects the device (cudaSetDevice) on that thread, and every later call assumes it
// runs there. Work goes onto one non-blocking stream per backend; synchronize() and
// download() wait for it. Buffers return their memory to the stream-ordered pool
// (cudaFreeAsync) from whichever thread drops the last reference.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <type_traits>

#include "common.cuh"
#include "ptx.cuh"
#include "tuning.h"

namespace medcluster {
namespace cuda {

[[noreturn]] void throwCudaError(cudaError_t err, const char* call, const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  throw BackendError(std::string("CUDA error ") + cudaGetErrorName(err) + " (" +
                     cudaGetErrorString(err) + ") in " + call + " at " + (base ? base + 1 : file) +
                     ":" + std::to_string(line));
}

void* Scratch::get(size_t bytes, cudaStream_t s) {
  if (bytes <= bytes_) return ptr_;
  cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(s, &cs) == cudaSuccess && cs != cudaStreamCaptureStatusNone)
    throw BackendError("CUDA workspace must grow (" + std::to_string(bytes) +
                       " bytes) during graph capture: run the captured sequence once uncaptured first");
  if (ptr_ && pinned_) retired_.push_back(ptr_);
  else if (ptr_) MC_CUDA(cudaFreeAsync(ptr_, s));
  pinned_ = false;
  size_t grown = bytes < 2 * bytes_ ? 2 * bytes_ : bytes;
  MC_CUDA(cudaMallocAsync(&ptr_, grown, s));
  bytes_ = grown;
  return ptr_;
}
void* Scratch::getZeroed(size_t bytes, cudaStream_t s) {
  const bool grows = bytes > bytes_;
  void* p = get(bytes, s);
  if (grows) MC_CUDA(cudaMemsetAsync(p, 0, bytes_, s));
  return p;
}
void Scratch::release(cudaStream_t s) {
  if (ptr_) cudaFreeAsync(ptr_, s);
  for (void* p : retired_) cudaFreeAsync(p, s);
  retired_.clear();
  ptr_ = nullptr;
  bytes_ = 0;
  pinned_ = false;
}

Tuning& tuning() {
  static Tuning t;
  return t;
}

void applyTuningEnv() {
  auto env = [](const char* name) -> const char* {
    const char* v = std::getenv(name);
    return v && *v ? v : nullptr;
  };
  Tuning& t = tuning();
  if (const char* v = env("MEDCLUSTER_PDL")) t.pdl = std::strcmp(v, "0") != 0;
  if (const char* v = env("MEDCLUSTER_AWQ_DEQUANT_MIN_M")) t.awqDequantMinM = std::atoi(v);
  if (const char* v = env("MEDCLUSTER_DETERMINISTIC")) t.deterministic = std::strcmp(v, "0") != 0;
  // Up to four comma-separated values, by MT 1, 2, 4, 8 (one value: all four).
  auto list = [](const char* v, int (&out)[4]) {
    int n = 0;
    for (; n < 4 && *v; ++n) {
      out[n] = std::atoi(v);
      while (*v && *v != ',') ++v;
      if (*v) ++v;
    }
    for (int i = n; i < 4 && n == 1; ++i) out[i] = out[0];
  };
  if (const char* v = env("MEDCLUSTER_AWQ_GEMV_BLOCKS")) list(v, t.awqGemvBlocksPerSM);
  if (const char* v = env("MEDCLUSTER_AWQ_GEMV_STAGES")) list(v, t.awqGemvStages);
  if (const char* v = env("MEDCLUSTER_AWQ_WGMMA_MIN_M")) t.awqWgmmaMinM = std::atoi(v);
  if (const char* v = env("MEDCLUSTER_AWQ_WGMMA_BLOCKS")) t.awqWgmmaBlocksPerSM = std::max(1, std::atoi(v));
  if (const char* v = env("MEDCLUSTER_AWQ_WGMMA_PASS_ROWS")) t.awqWgmmaPassRows = std::atoi(v);
  if (const char* v = env("MEDCLUSTER_AWQ_WGMMA_STAGES")) t.awqWgmmaStages = std::atoi(v);
  if (const char* v = env("MEDCLUSTER_ATTN_DECODE_BLOCKS")) t.attnDecodeBlocksPerSM = std::max(1, std::atoi(v));
  if (const char* v = env("MEDCLUSTER_ATTN_DECODE_PREFETCH")) t.attnDecodePrefetch = std::strcmp(v, "0") != 0;
}

namespace {

// ---- element-wise and row kernels ----------------------------------------------

__global__ void embeddingKernel(const __half* table, const int32_t* ids, float* out, int64_t H) {
  pdlWait();
  int64_t t = blockIdx.x;
  const __half* row = table + (int64_t)ids[t] * H;
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) out[t * H + h] = __half2float(row[h]);
}

// Sum of a value over the block (blockDim.x a multiple of 32, at most 1024).
__device__ float blockSum(float v) {
  __shared__ float part[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  int nw = blockDim.x >> 5;
  v = threadIdx.x < nw ? part[threadIdx.x] : 0.f;
  if (threadIdx.x < 32)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x == 0) part[0] = v;
  __syncthreads();
  v = part[0];
  __syncthreads();
  return v;
}

// One block of 256 threads per row, for rows of float4s (H % 4 == 0, H <= 256 * 4 * V): every
// load is issued before any is used and the row stays in registers between the two passes (a
// loop of dependent loads and stores took ~10 us per row). With delta != nullptr the residual is
// updated first (fused addRmsNorm).
template <int V>
__global__ void __launch_bounds__(256) rmsNormKernel(float* __restrict__ x, const float* __restrict__ delta,
                                                     const __half* __restrict__ w, float eps,
                                                     __half* __restrict__ out, int64_t H) {
  pdlLaunchDependents();  // the matmul after a norm may start prefetching its weights
  pdlWait();
  const int64_t t = blockIdx.x;
  const int n4 = (int)(H / 4);
  float4* row = reinterpret_cast<float4*>(x + t * H);
  float4 v[V];
  uint2 wv[V];
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int i = threadIdx.x + j * 256;
    v[j] = make_float4(0.f, 0.f, 0.f, 0.f);
    if (i < n4) {
      v[j] = row[i];
      wv[j] = reinterpret_cast<const uint2*>(w)[i];
    }
  }
  if (delta) {
    const float4* d = reinterpret_cast<const float4*>(delta + t * H);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int i = threadIdx.x + j * 256;
      if (i < n4) {
        const float4 dv = d[i];
        v[j].x += dv.x; v[j].y += dv.y; v[j].z += dv.z; v[j].w += dv.w;
        row[i] = v[j];
      }
    }
  }
#pragma unroll
  for (int j = 0; j < V; ++j) ss += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
  const float inv = rsqrtf(blockSum(ss) / (float)H + eps);
  uint2* o = reinterpret_cast<uint2*>(out + t * H);
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const int i = threadIdx.x + j * 256;
    if (i < n4) {
      const float2 w01 = __half22float2(*reinterpret_cast<const __half2*>(&wv[j].x));
      const float2 w23 = __half22float2(*reinterpret_cast<const __half2*>(&wv[j].y));
      const __half2 a = __floats2half2_rn(v[j].x * inv * w01.x, v[j].y * inv * w01.y);
      const __half2 b = __floats2half2_rn(v[j].z * inv * w23.x, v[j].w * inv * w23.y);
      o[i] = make_uint2(*reinterpret_cast<const uint32_t*>(&a), *reinterpret_cast<const uint32_t*>(&b));
    }
  }
}

__global__ void addKernel(float* r, const float* d, int64_t n) {
  pdlWait();
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    r[i] += d[i];
}

// gateUp [T, 2 I] -> out [T, I]. grid (column blocks, rows): row t = blockIdx.y (and every
// gridDim.y-th after it), V pairs of halves a thread (V = 4: 16-byte loads and stores, I2 a
// multiple of 4), so no thread divides a flat index by the row width. Paired: the columns in
// runs of 8 gate then 8 up (a gated pack's order), else [gate | up].
template <int V, bool Paired>
__global__ void siluMulKernel(const __half2* gateUp, __half2* out, int I2, int T) {
  pdlLaunchDependents();  // the down matmul may start prefetching its weights
  pdlWait();
  using Vec = typename std::conditional<V == 4, uint4, __half2>::type;
  const int cols = I2 / V;
  for (int t = blockIdx.y; t < T; t += gridDim.y) {
    const Vec* row = reinterpret_cast<const Vec*>(gateUp + static_cast<int64_t>(t) * 2 * I2);
    Vec* o = reinterpret_cast<Vec*>(out + static_cast<int64_t>(t) * I2);
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
      // Vector c's gate and up: in runs of 8 halves (one uint4, or 4 half2), gate run r at 2r.
      const int gc = !Paired ? c : V == 4 ? 2 * c : (c >> 2) * 8 + (c & 3);
      const int uc = !Paired ? c + cols : V == 4 ? gc + 1 : gc + 4;
      Vec gv = row[gc], uv = row[uc], ov;
      const __half2* g2 = reinterpret_cast<const __half2*>(&gv);
      const __half2* u2 = reinterpret_cast<const __half2*>(&uv);
      __half2* o2 = reinterpret_cast<__half2*>(&ov);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float2 a = __half22float2(g2[j]), b = __half22float2(u2[j]);
        o2[j] = __floats2half2_rn(a.x / (1.f + expf(-a.x)) * b.x, a.y / (1.f + expf(-a.y)) * b.y);
      }
      o[c] = ov;
    }
  }
}

}  // namespace

void launchSiluMul(const Ctx& c, const __half* gateUp, __half* out, int64_t T, int64_t I, bool pairedBy8) {
  if (!T || !I) return;
  if (I % 2) throw BackendError("siluMul: an odd column count " + std::to_string(I) + " is not supported on CUDA");
  if (pairedBy8 && I % 8)
    throw BackendError("siluMul (CUDA): columns paired by runs of 8 need a multiple of 8; got " + std::to_string(I));
  const int64_t I2 = I / 2;
  const bool wide = I2 % 4 == 0 && (reinterpret_cast<uintptr_t>(gateUp) | reinterpret_cast<uintptr_t>(out)) % 16 == 0;
  const dim3 grid(static_cast<unsigned>(ceilDiv(wide ? I2 / 4 : I2, 256)), static_cast<unsigned>(std::min<int64_t>(T, 65535)));
  const auto* g = reinterpret_cast<const __half2*>(gateUp);
  auto* o = reinterpret_cast<__half2*>(out);
  const auto kernel = wide ? (pairedBy8 ? siluMulKernel<4, true> : siluMulKernel<4, false>)
                           : (pairedBy8 ? siluMulKernel<1, true> : siluMulKernel<1, false>);
  launchKernel(c, kernel, grid, dim3(256), 0, g, o, (int)I2, (int)T);
  MC_LAUNCHED("siluMul");
}

namespace {

// Heads of one token's fused q/k/v row a block of ropeWriteKvKernel.
constexpr int kRopeHeads = 8;
// grid (T, ceil((nq + 2 nkv) / kRopeHeads)), 64 threads: kRopeHeads heads of token t's fused
// q/k/v row. The token's hd/2 angles are computed once a block, into shared memory (every head
// rotates by the same ones), then each thread takes V consecutive pairs (i, i + hd/2) of a head
// (V = 8: 16-byte loads and stores, hd a multiple of 16). q heads are rotated into qOut, k heads
// rotated into the cache slot, v heads copied there (a negative slot: not cached). HF rotate-half,
// fp32 math.
template <int V>
__global__ void ropeWriteKvKernel(const __half* qkv, __half* qOut, __half* kc, __half* vc, const int32_t* pos,
                                  const int32_t* slots, int nq, int nkv, int hd, float theta) {
  extern __shared__ float2 angles[];  // [hd / 2]: (cos, sin)
  pdlLaunchDependents();  // attention may start
  pdlWait();
  const int t = blockIdx.x, half = hd / 2;
  const float p = static_cast<float>(pos[t]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float invFreq = 1.f / powf(theta, static_cast<float>(2 * i) / static_cast<float>(hd));
    float s, c;
    sincosf(p * invFreq, &s, &c);
    angles[i] = make_float2(c, s);
  }
  __syncthreads();
  const int64_t kvWidth = static_cast<int64_t>(nkv) * hd, slot = slots[t];
  const int h0 = blockIdx.y * kRopeHeads, nh = min(kRopeHeads, nq + 2 * nkv - h0), perHead = half / V;
  using Vec = typename std::conditional<V == 8, uint4, __half>::type;
  for (int idx = threadIdx.x; idx < nh * perHead; idx += blockDim.x) {
    const int h = h0 + idx / perHead, i0 = idx % perHead * V;
    const __half* src = qkv + static_cast<int64_t>(t) * (nq * hd + 2 * kvWidth) + static_cast<int64_t>(h) * hd;
    __half* dst;
    if (h < nq) dst = qOut + (static_cast<int64_t>(t) * nq + h) * hd;
    else if (slot < 0) continue;
    else if (h < nq + nkv) dst = kc + slot * kvWidth + static_cast<int64_t>(h - nq) * hd;
    else dst = vc + slot * kvWidth + static_cast<int64_t>(h - nq - nkv) * hd;
    const Vec a = *reinterpret_cast<const Vec*>(src + i0), b = *reinterpret_cast<const Vec*>(src + i0 + half);
    if (h >= nq + nkv) {
      *reinterpret_cast<Vec*>(dst + i0) = a;
      *reinterpret_cast<Vec*>(dst + i0 + half) = b;
      continue;
    }
    const __half* x1 = reinterpret_cast<const __half*>(&a);
    const __half* x2 = reinterpret_cast<const __half*>(&b);
    Vec ra, rb;
    __half* r1 = reinterpret_cast<__half*>(&ra);
    __half* r2 = reinterpret_cast<__half*>(&rb);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const float2 cs = angles[i0 + e];
      const float u = __half2float(x1[e]), w = __half2float(x2[e]);
      r1[e] = __float2half(u * cs.x - w * cs.y);
      r2[e] = __float2half(w * cs.x + u * cs.y);
    }
    *reinterpret_cast<Vec*>(dst + i0) = ra;
    *reinterpret_cast<Vec*>(dst + i0 + half) = rb;
  }
}

// grid T; copies one token's K and V rows (rowElems halves each) into its slot.
__global__ void writeKvKernel(__half* kc, __half* vc, const __half* k, const __half* v,
                              const int32_t* slots, int64_t rowElems) {
  pdlWait();
  int64_t t = blockIdx.x;
  int64_t s = slots[t];
  if (s < 0) return;  // padding token: nothing to cache
  const uint4* ks = reinterpret_cast<const uint4*>(k + t * rowElems);
  const uint4* vs = reinterpret_cast<const uint4*>(v + t * rowElems);
  uint4* kd = reinterpret_cast<uint4*>(kc + s * rowElems);
  uint4* vd = reinterpret_cast<uint4*>(vc + s * rowElems);
  for (int64_t i = threadIdx.x; i < rowElems / 8; i += blockDim.x) {
    kd[i] = ks[i];
    vd[i] = vs[i];
  }
}
__global__ void writeKvKernelScalar(__half* kc, __half* vc, const __half* k, const __half* v,
                                    const int32_t* slots, int64_t rowElems) {
  pdlWait();
  int64_t t = blockIdx.x;
  int64_t s = slots[t];
  if (s < 0) return;
  for (int64_t i = threadIdx.x; i < rowElems; i += blockDim.x) {
    kc[s * rowElems + i] = k[t * rowElems + i];
    vc[s * rowElems + i] = v[t * rowElems + i];
  }
}

__global__ void gatherRowsKernel(const char* x, const int32_t* rows, char* out, int64_t rowBytes) {
  pdlWait();
  int64_t r = blockIdx.x;
  const char* src = x + (int64_t)rows[r] * rowBytes;
  char* dst = out + r * rowBytes;
  if ((rowBytes & 15) == 0 && (((uintptr_t)x | (uintptr_t)out) & 15) == 0) {
    for (int64_t i = threadIdx.x; i < rowBytes / 16; i += blockDim.x)
      reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
  } else {
    for (int64_t i = threadIdx.x; i < rowBytes; i += blockDim.x) dst[i] = src[i];
  }
}

__global__ void takeSampledKernel(int32_t* ids, const int32_t* sampled, const int32_t* from, int64_t T, int64_t W) {
  pdlWait();
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x)
    if (from[t] >= 0) ids[t] = sampled[(int64_t)from[t] * W];
}

__device__ __forceinline__ uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
// Word i of the buffer is splitmix64(seed ^ i): deterministic by seed and index.
__global__ void randomBitsKernel(uint64_t* w, int64_t nWords, unsigned char* tail, int tailBytes, uint64_t seed) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < nWords; i += (int64_t)gridDim.x * blockDim.x)
    w[i] = splitmix64(seed ^ (uint64_t)i);
  if (blockIdx.x == 0 && threadIdx.x == 0 && tailBytes) {
    uint64_t r = splitmix64(seed ^ (uint64_t)nWords);
    for (int b = 0; b < tailBytes; ++b) tail[b] = (unsigned char)(r >> (8 * b));
  }
}

int gridFor(int64_t n, int threads, int numSMs) {
  int64_t g = ceilDiv(n, threads);
  int64_t cap = (int64_t)numSMs * 16;
  return (int)(g < 1 ? 1 : g > cap ? cap : g);
}

// ---- memory ----------------------------------------------------------------------

struct StreamHandle {  // shared by the backend and its live buffers
  int ordinal;
  cudaStream_t stream;
  // While the stream captures a graph, a free would be recorded into the graph (and
  // invalidate it, as the memory was not allocated there): frees wait until endCapture.
  std::mutex mu;
  bool capturing = false;
  std::vector<std::function<void()>> deferredFrees;

  // Runs free now, on this stream's device, or after the capture under way ends.
  void release(std::function<void()> free) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (capturing) {
        deferredFrees.push_back(std::move(free));
        return;
      }
    }
    int prev = -1;
    cudaGetDevice(&prev);
    if (prev != ordinal) cudaSetDevice(ordinal);
    free();  // errors here cannot be reported (destructors)
    if (prev != ordinal && prev >= 0) cudaSetDevice(prev);
  }
};

struct CudaBuffer : Buffer {
  std::shared_ptr<StreamHandle> sh;
  ~CudaBuffer() override {
    if (!data) return;
    void* p = data;
    cudaStream_t stream = sh->stream;
    sh->release([p, stream] { cudaFreeAsync(p, stream); });
  }
};

// Device memory that other processes of the host can map: cudaMalloc'd, since memory from the
// stream-ordered pool has no IPC handle. A peer maps it with openShared.
struct SharedBuffer : Buffer {
  std::shared_ptr<StreamHandle> sh;
  ~SharedBuffer() override {
    if (!data) return;
    void* p = data;
    cudaStream_t stream = sh->stream;
    // Queued work may still use it: the stream drains first.
    sh->release([p, stream] {
      cudaStreamSynchronize(stream);
      cudaFree(p);
    });
  }
};

// Another process's SharedBuffer, mapped into this one.
struct OpenedBuffer : Buffer {
  std::shared_ptr<StreamHandle> sh;
  ~OpenedBuffer() override {
    if (!data) return;
    void* p = data;
    cudaStream_t stream = sh->stream;
    sh->release([p, stream] {
      cudaStreamSynchronize(stream);
      cudaIpcCloseMemHandle(p);
    });
  }
};

// What a shared buffer's handle carries: the CUDA IPC handle and the facts a peer checks.
struct SharedHandle {
  char magic[8];
  uint32_t pid;
  int32_t ordinal;
  uint64_t bytes;
  cudaIpcMemHandle_t ipc;
};
constexpr char kSharedMagic[8] = {'m', 'c', 's', 'h', 'a', 'r', 'e', '1'};

constexpr size_t kStagingBytes = 8u << 20;  // per pinned staging buffer of readFileRegion
constexpr size_t kTransferBytes = 8u << 20;  // the pinned buffer of large uploads and downloads
// Small uploads (a step's inputs) are staged in a ring of pinned slots and not waited for; a
// slot is reused once its copy has run.
constexpr int kUploadSlots = 16;
constexpr size_t kUploadSlotBytes = 256u << 10;
// Downloads up to this size (a step's sampled ids) go to pinned blocks and are waited for by the
// thread that settles them, so the device thread moves on to the next step's work.
constexpr size_t kReadBlockBytes = 1u << 20;

// Pinned blocks of kReadBlockBytes with an event each: taken on the device thread, given back by
// whichever thread finished with the download.
class ReadBlocks {
 public:
  struct Block {
    void* host = nullptr;
    cudaEvent_t done = nullptr;
  };
  Block take() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!free_.empty()) {
        Block b = free_.back();
        free_.pop_back();
        return b;
      }
    }
    Block b;
    MC_CUDA(cudaHostAlloc(&b.host, kReadBlockBytes, cudaHostAllocDefault));
    MC_CUDA(cudaEventCreateWithFlags(&b.done, cudaEventDisableTiming));
    return b;
  }
  void give(Block b) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(b);
  }
  ~ReadBlocks() {
    for (Block& b : free_) {
      cudaFreeHost(b.host);
      cudaEventDestroy(b.done);
    }
  }

 private:
  std::mutex mu_;
  std::vector<Block> free_;
};

class PendingRead final : public PendingDownload {
 public:
  PendingRead(std::shared_ptr<ReadBlocks> blocks, ReadBlocks::Block block, int ordinal)
      : blocks_(std::move(blocks)), block_(block), ordinal_(ordinal) {}
  ~PendingRead() override { blocks_->give(block_); }
  const void* wait() override {
    // The waiting thread may be new to CUDA: select the device, or the runtime would make a
    // context on device 0 for it.
    thread_local int current = -1;
    if (current != ordinal_) {
      MC_CUDA(cudaSetDevice(ordinal_));
      current = ordinal_;
    }
    MC_CUDA(cudaEventSynchronize(block_.done));
    return block_.host;
  }

 private:
  std::shared_ptr<ReadBlocks> blocks_;
  ReadBlocks::Block block_;
  int ordinal_;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int ordinal) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice || (e == cudaSuccess && count == 0)) {
      cudaGetLastError();
      throw BackendError(std::string("no CUDA device: ") +
                         (e == cudaSuccess ? "the driver reports 0 devices" : cudaGetErrorString(e)));
    }
    MC_CUDA(e);
    if (ordinal < 0 || ordinal >= count)
      throw BackendError("no CUDA device: ordinal " + std::to_string(ordinal) + " requested, " +
                         std::to_string(count) + " present");
    MC_CUDA(cudaSetDevice(ordinal));
    cudaDeviceProp prop;
    MC_CUDA(cudaGetDeviceProperties(&prop, ordinal));
    name_ = std::string("cuda:") + std::to_string(ordinal) + " (" + prop.name + ")";
    numSMs_ = prop.multiProcessorCount;
    cc_ = prop.major * 10 + prop.minor;
    applyTuningEnv();
    sh_ = std::make_shared<StreamHandle>();
    sh_->ordinal = ordinal;
    MC_CUDA(cudaStreamCreateWithFlags(&sh_->stream, cudaStreamNonBlocking));
    // Keep freed memory in the pool instead of returning it to the driver at each sync.
    cudaMemPool_t pool;
    MC_CUDA(cudaDeviceGetDefaultMemPool(&pool, ordinal));
    uint64_t threshold = UINT64_MAX;
    MC_CUDA(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
    sampleStaging_.reserve(1u << 20);  // Device.sample's row specs: 64 rows of ~2,000 generated ids
    MC_CUDA(cudaHostAlloc(&transfer_, kTransferBytes, cudaHostAllocDefault));
    for (UploadSlot& u : uploadSlots_) {
      MC_CUDA(cudaHostAlloc(&u.host, kUploadSlotBytes, cudaHostAllocDefault));
      MC_CUDA(cudaEventCreateWithFlags(&u.done, cudaEventDisableTiming));
    }
    // Pinned memory is allocated here, not on a step's path (cudaHostAlloc waits for the device).
    readBlocks_ = std::make_shared<ReadBlocks>();
    for (int i = 0; i < 4; i++) readBlocks_->give(readBlocks_->take());
    loadBlas();
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(sh_->stream);
    for (auto g : graphs_) if (g) cudaGraphExecDestroy(g);
    for (Scratch* sc : {&splitK_, &tickets_, &attnScratch_, &dequant_, &gatedGemm_, &sampleScratch_})
      sc->release(sh_->stream);
    sampleStaging_.release();
    if (blasWorkspace_) cudaFreeAsync(blasWorkspace_, sh_->stream);
    cudaStreamSynchronize(sh_->stream);
    if (transfer_) cudaFreeHost(transfer_);
    for (UploadSlot& u : uploadSlots_) {
      if (u.host) cudaFreeHost(u.host);
      if (u.done) cudaEventDestroy(u.done);
    }
    for (int i = 0; i < 2; ++i) {
      if (staging_[i]) cudaFreeHost(staging_[i]);
      if (stagingDone_[i]) cudaEventDestroy(stagingDone_[i]);
    }
    // The stream stays alive while buffers still reference it (StreamHandle); it is
    // deliberately not destroyed here, since a buffer may be freed after the backend.
  }

  std::string name() const override { return name_; }

  std::shared_ptr<Buffer> alloc(size_t bytes) override {
    auto b = std::make_shared<CudaBuffer>();
    b->sh = sh_;
    b->bytes = bytes;
    if (bytes) {
      MC_CUDA(cudaMallocAsync(&b->data, bytes, s()));
      MC_CUDA(cudaMemsetAsync(b->data, 0, bytes, s()));
    }
    return b;
  }
  // Host copies go through a pinned buffer and a plain stream wait. A copy from or to pageable
  // memory waits for the stream inside the driver, and a device thread blocked there can hold
  // up the other devices of the process, such as a tensor-parallel peer this stream's
  // all-reduce is waiting for.
  void upload(Buffer& dst, const void* host, size_t bytes) override {
    if (bytes <= kUploadSlotBytes) {
      UploadSlot& u = uploadSlots_[nextUploadSlot_++ % kUploadSlots];
      MC_CUDA(cudaEventSynchronize(u.done));  // that slot's copy, kUploadSlots uploads ago
      std::memcpy(u.host, host, bytes);
      MC_CUDA(cudaMemcpyAsync(dst.data, u.host, bytes, cudaMemcpyHostToDevice, s()));
      MC_CUDA(cudaEventRecord(u.done, s()));
      return;
    }
    for (size_t at = 0; at < bytes; at += kTransferBytes) {
      const size_t n = std::min(kTransferBytes, bytes - at);
      std::memcpy(transfer_, static_cast<const char*>(host) + at, n);
      MC_CUDA(cudaMemcpyAsync(static_cast<char*>(dst.data) + at, transfer_, n, cudaMemcpyHostToDevice, s()));
      MC_CUDA(cudaStreamSynchronize(s()));  // before the pinned buffer is reused
    }
  }
  void download(const Buffer& src, void* host, size_t bytes) override {
    for (size_t at = 0; at < bytes; at += kTransferBytes) {
      const size_t n = std::min(kTransferBytes, bytes - at);
      MC_CUDA(cudaMemcpyAsync(transfer_, static_cast<const char*>(src.data) + at, n, cudaMemcpyDeviceToHost, s()));
      MC_CUDA(cudaStreamSynchronize(s()));
      std::memcpy(static_cast<char*>(host) + at, transfer_, n);
    }
  }

  std::unique_ptr<PendingDownload> downloadAsync(const Buffer& src, size_t bytes) override {
    if (bytes > kReadBlockBytes) return Backend::downloadAsync(src, bytes);
    ReadBlocks::Block block = readBlocks_->take();
    auto pending = std::make_unique<PendingRead>(readBlocks_, block, sh_->ordinal);
    if (bytes) MC_CUDA(cudaMemcpyAsync(block.host, src.data, bytes, cudaMemcpyDeviceToHost, s()));
    MC_CUDA(cudaEventRecord(block.done, s()));
    return pending;
  }

  // pread into two pinned staging buffers in turn; each chunk goes to the device with
  // cudaMemcpyAsync while the next one is read from the file.
  void readFileRegion(Buffer& dst, const std::string& path, uint64_t fileOffset, int64_t cols,
                      int64_t elemSize, int64_t r0, int64_t r1, int64_t c0, int64_t c1) override {
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) throw BackendError("readFileRegion: cannot open " + path + ": " + std::strerror(errno));
    struct Closer { int fd; ~Closer() { ::close(fd); } } closer{fd};
    for (int i = 0; i < 2; ++i) {
      if (!staging_[i]) {
        MC_CUDA(cudaHostAlloc(&staging_[i], kStagingBytes, cudaHostAllocDefault));
        MC_CUDA(cudaEventCreateWithFlags(&stagingDone_[i], cudaEventDisableTiming));
      }
    }
    const uint64_t rowBytes = (uint64_t)(c1 - c0) * elemSize;
    const bool contiguous = c0 == 0 && c1 == cols;
    // Segments: one for a contiguous region, else one per row.
    const int64_t nSeg = contiguous ? 1 : (r1 - r0);
    const uint64_t segBytes = contiguous ? rowBytes * (r1 - r0) : rowBytes;
    char* dev = static_cast<char*>(dst.data);
    int buf = 0;
    size_t fill = 0;
    uint64_t devOff = 0;
    auto flush = [&]() {
      if (!fill) return;
      MC_CUDA(cudaMemcpyAsync(dev + devOff, staging_[buf], fill, cudaMemcpyHostToDevice, s()));
      MC_CUDA(cudaEventRecord(stagingDone_[buf], s()));
      devOff += fill;
      fill = 0;
      buf ^= 1;
      MC_CUDA(cudaEventSynchronize(stagingDone_[buf]));  // the other buffer is free again
    };
    MC_CUDA(cudaEventSynchronize(stagingDone_[buf]));
    for (int64_t sgi = 0; sgi < nSeg; ++sgi) {
      uint64_t off = fileOffset + (contiguous ? (uint64_t)r0 * cols * elemSize
                                              : ((uint64_t)(r0 + sgi) * cols + c0) * elemSize);
      uint64_t left = segBytes;
      while (left) {
        size_t room = kStagingBytes - fill;
        size_t n = left < room ? left : room;
        ssize_t got = ::pread(fd, static_cast<char*>(staging_[buf]) + fill, n, (off_t)off);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0)
          throw BackendError("readFileRegion: read of " + path + " at offset " + std::to_string(off) +
                             (got == 0 ? " hit the end of the file" : std::string(": ") + std::strerror(errno)));
        fill += got;
        off += got;
        left -= got;
        if (fill == kStagingBytes) flush();
      }
    }
    flush();
    MC_CUDA(cudaStreamSynchronize(s()));
  }

  void embedding(const View& table, const View& ids, const View& out) override {
    int64_t T = ids.numel(), H = table.dim(1);
    if (!T) return;
    launchKernel(ctx(), embeddingKernel, dim3((unsigned)T), dim3(256), 0, table.as<__half>(), ids.as<int32_t>(),
                 out.as<float>(), H);
    MC_LAUNCHED("embedding");
  }
  void rmsNorm(const View& x, const View& w, float eps, const View& out) override {
    launchRmsNorm("rmsNorm", x, nullptr, w, eps, out);
  }
  void addRmsNorm(const View& residual, const View& delta, const View& w, float eps,
                  const View& out) override {
    launchRmsNorm("addRmsNorm", residual, delta.as<float>(), w, eps, out);
  }
  void launchRmsNorm(const char* op, const View& x, const float* delta, const View& w, float eps, const View& out) {
    const int64_t H = x.dim(-1), T = x.numel() / H;
    if (!T) return;
    if (H % 4 || H > 16 * 1024)
      throw BackendError(std::string(op) + " (CUDA): rows of a multiple of 4 and at most 16384 elements; got " +
                         std::to_string(H));
    const int v = (int)ceilDiv(H, 4 * 256);
    float* xp = x.as<float>();
    const __half* wp = w.as<__half>();
    __half* op16 = out.as<__half>();
    const auto kernel = v <= 1   ? rmsNormKernel<1>
                        : v <= 2 ? rmsNormKernel<2>
                        : v <= 4 ? rmsNormKernel<4>
                        : v <= 8 ? rmsNormKernel<8>
                                 : rmsNormKernel<16>;
    launchKernel(ctx(), kernel, dim3((unsigned)T), dim3(256), 0, xp, delta, wp, eps, op16, H);
    MC_LAUNCHED(op);
  }
  void addInPlace(const View& residual, const View& delta) override {
    int64_t n = residual.numel();
    if (!n) return;
    launchKernel(ctx(), addKernel, dim3(gridFor(n, 256, numSMs_)), dim3(256), 0, residual.as<float>(),
                 delta.as<float>(), n);
    MC_LAUNCHED("addInPlace");
  }
  void awqLinear(const View& x, const AwqWeights& w, const View& out) override {
    (void)x; (void)w; (void)out;
    throw BackendError("awqLinear (CUDA): the CUDA kernels read AWQ weights packed at load (Device.packAwq), "
                       "not the AutoAWQ tensors");
  }
  void awqLinearPacked(const View& x, const PackedAwqWeights& w, const View& out) override {
    launchAwqLinear(ctx(), x, w, out);
  }
  void awqPack(const AwqWeights& src, const View& dst, bool gated) override { launchAwqPack(ctx(), src, dst, gated); }
  void linear(const View& x, const View& w, const View& out) override { launchLinear(ctx(), x, w, out); }
  void ropeWriteKv(const View& qkv, const View& kCache, const View& vCache, const View& positions,
                   const View& slots, float theta, const View& qOut) override {
    const int64_t T = qkv.dim(0), hd = kCache.dim(3), nkv = kCache.dim(2), nq = qOut.dim(1) / hd;
    if (!T) return;
    const dim3 grid((unsigned)T, (unsigned)ceilDiv(nq + 2 * nkv, kRopeHeads));
    const size_t smem = (size_t)hd / 2 * sizeof(float2);
    const bool wide = hd % 16 == 0 && (reinterpret_cast<uintptr_t>(qkv.data) | reinterpret_cast<uintptr_t>(qOut.data) |
                                       reinterpret_cast<uintptr_t>(kCache.data) | reinterpret_cast<uintptr_t>(vCache.data)) % 16 == 0;
    const auto kernel = wide ? ropeWriteKvKernel<8> : ropeWriteKvKernel<1>;
    launchKernel(ctx(), kernel, grid, dim3(64), smem, qkv.as<__half>(), qOut.as<__half>(), kCache.as<__half>(),
                 vCache.as<__half>(), positions.as<int32_t>(), slots.as<int32_t>(), (int)nq, (int)nkv, (int)hd, theta);
    MC_LAUNCHED("ropeWriteKv");
  }
  void writeKv(const View& kCache, const View& vCache, const View& k, const View& v,
               const View& slots) override {
    int64_t T = slots.numel();
    if (!T) return;
    int64_t rowElems = k.numel() / T;
    launchKernel(ctx(), rowElems % 8 == 0 ? writeKvKernel : writeKvKernelScalar, dim3((unsigned)T), dim3(128), 0,
                 kCache.as<__half>(), vCache.as<__half>(), k.as<__half>(), v.as<__half>(), slots.as<int32_t>(),
                 rowElems);
    MC_LAUNCHED("writeKv");
  }
  void attention(const View& q, const View& kCache, const View& vCache, const View& blockTables,
                 const View& tokenSeq, const View& positions, const AttentionShape& shape,
                 const View& out) override {
    launchAttention(ctx(), q, kCache, vCache, blockTables, tokenSeq, positions, shape, out);
  }
  void siluMul(const View& gateUp, const View& out) override {
    launchSiluMul(ctx(), gateUp.as<__half>(), out.as<__half>(), out.dim(0), out.dim(1), false);
  }
  void gatherRows(const View& x, const View& rows, const View& out) override {
    int64_t R = rows.numel();
    if (!R) return;
    int64_t rowBytes = (x.numel() / x.dim(0)) * (int64_t)dtypeSize(x.dtype);
    launchKernel(ctx(), gatherRowsKernel, dim3((unsigned)R), dim3(128), 0, static_cast<const char*>(x.data),
                 rows.as<int32_t>(), static_cast<char*>(out.data), rowBytes);
    MC_LAUNCHED("gatherRows");
  }
  // One strided 2-D copy: device-to-device, on the stream, so it is graph-capturable.
  void copyCols(const View& src, int64_t srcCol0, const View& dst, int64_t dstCol0, int64_t cols) override {
    const size_t es = dtypeSize(src.dtype);
    const int64_t R = src.dim(0);
    if (!R || !cols) return;
    MC_CUDA(cudaMemcpy2DAsync(static_cast<char*>(dst.data) + dstCol0 * es, dst.dim(1) * es,
                              static_cast<const char*>(src.data) + srcCol0 * es, src.dim(1) * es, cols * es, R,
                              cudaMemcpyDeviceToDevice, s()));
  }
  std::shared_ptr<Buffer> allocShared(size_t bytes, std::vector<uint8_t>* handle) override {
    auto b = std::make_shared<SharedBuffer>();
    b->sh = sh_;
    b->bytes = bytes;
    MC_CUDA(cudaMalloc(&b->data, bytes ? bytes : 1));
    MC_CUDA(cudaMemsetAsync(b->data, 0, bytes, s()));
    SharedHandle h{};
    std::memcpy(h.magic, kSharedMagic, sizeof(kSharedMagic));
    h.pid = (uint32_t)getpid();
    h.ordinal = sh_->ordinal;
    h.bytes = bytes;
    MC_CUDA(cudaIpcGetMemHandle(&h.ipc, b->data));
    handle->resize(sizeof(h));
    std::memcpy(handle->data(), &h, sizeof(h));
    return b;
  }
  std::shared_ptr<Buffer> openShared(const std::vector<uint8_t>& handle, size_t bytes) override {
    SharedHandle h{};
    if (handle.size() != sizeof(h) || std::memcmp(handle.data(), kSharedMagic, sizeof(kSharedMagic)) != 0)
      throw BackendError("openShared: the handle is not a shared tensor's (" + std::to_string(handle.size()) +
                         " bytes)");
    std::memcpy(&h, handle.data(), sizeof(h));
    if (h.bytes < bytes)
      throw BackendError("openShared: the shared buffer holds " + std::to_string(h.bytes) + " bytes, " +
                         std::to_string(bytes) + " asked for");
    if (h.pid == (uint32_t)getpid())
      throw BackendError("openShared: the buffer belongs to this process (CUDA IPC maps other processes' memory)");
    auto b = std::make_shared<OpenedBuffer>();
    b->sh = sh_;
    b->bytes = bytes;
    cudaError_t e = cudaIpcOpenMemHandle(&b->data, h.ipc, cudaIpcMemLazyEnablePeerAccess);
    if (e != cudaSuccess) {
      cudaGetLastError();
      b->data = nullptr;
      throw BackendError("openShared: cannot map the buffer of process " + std::to_string(h.pid) + " on cuda:" +
                         std::to_string(h.ordinal) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
                         ")");
    }
    return b;
  }
  // cudaMemcpyDefault: either side may be another GPU's memory, mapped (unified addressing).
  void copyRows(const View& src, const View& dst, int64_t rows) override {
    const size_t bytes = (size_t)rows * src.dim(1) * dtypeSize(src.dtype);
    if (bytes) MC_CUDA(cudaMemcpyAsync(dst.data, src.data, bytes, cudaMemcpyDefault, s()));
  }
  void takeSampled(const View& ids, const View& sampled, const View& from) override {
    if (!ids.dim(0)) return;
    launchKernel(ctx(), takeSampledKernel, dim3(1), dim3(256), 0, ids.as<int32_t>(), sampled.as<int32_t>(),
                 from.as<int32_t>(), ids.dim(0), sampled.dim(1));
    MC_LAUNCHED("takeSampled");
  }
  void sample(const View& logits, const SampleBatch& batch, const View& ids, const View& logprobs) override {
    launchSample(s(), sampleScratch_, sampleStaging_, logits, batch, ids, logprobs);
  }
  void randomBits(Buffer& buf, uint64_t seed) override {
    int64_t nWords = buf.bytes / 8;
    int tail = (int)(buf.bytes % 8);
    if (!buf.bytes) return;
    randomBitsKernel<<<gridFor(nWords ? nWords : 1, 256, numSMs_), 256, 0, s()>>>(
        static_cast<uint64_t*>(buf.data), nWords, static_cast<unsigned char*>(buf.data) + nWords * 8, tail, seed);
    MC_LAUNCHED("randomBits");
  }
  void synchronize() override { MC_CUDA(cudaStreamSynchronize(s())); }
  void memoryInfo(size_t* freeBytes, size_t* totalBytes) override {
    MC_CUDA(cudaStreamSynchronize(s()));  // memory freed by queued work counts as free
    MC_CUDA(cudaMemGetInfo(freeBytes, totalBytes));
    // Memory the stream-ordered pool keeps after frees (release threshold: never) is
    // free for this process even though the driver counts it as used.
    cudaMemPool_t pool;
    MC_CUDA(cudaDeviceGetDefaultMemPool(&pool, sh_->ordinal));
    uint64_t reserved = 0, used = 0;
    MC_CUDA(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved));
    MC_CUDA(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used));
    if (reserved > used) *freeBytes += reserved - used;
  }

  bool beginCapture() override {
    for (Scratch* sc : {&splitK_, &tickets_, &attnScratch_, &dequant_, &gatedGemm_}) sc->pin();
    MC_CUDA(cudaStreamBeginCapture(s(), cudaStreamCaptureModeThreadLocal));
    std::lock_guard<std::mutex> lock(sh_->mu);
    sh_->capturing = true;
    return true;
  }
  int64_t endCapture() override {
    cudaGraph_t g = nullptr;
    cudaError_t e = cudaStreamEndCapture(s(), &g);
    std::vector<std::function<void()>> deferred;
    {
      std::lock_guard<std::mutex> lock(sh_->mu);
      sh_->capturing = false;
      deferred.swap(sh_->deferredFrees);
    }
    for (auto& free : deferred) free();
    if (e != cudaSuccess) {
      if (g) cudaGraphDestroy(g);
      cudaGetLastError();
      throwCudaError(e, "cudaStreamEndCapture", __FILE__, __LINE__);
    }
    cudaGraphExec_t ex = nullptr;
    e = cudaGraphInstantiate(&ex, g, 0);
    cudaGraphDestroy(g);
    MC_CUDA(e);
    graphs_.push_back(ex);
    return (int64_t)graphs_.size();
  }
  void replayGraph(int64_t handle) override {
    if (handle < 1 || handle > (int64_t)graphs_.size() || !graphs_[handle - 1])
      throw BackendError("replayGraph: unknown graph handle " + std::to_string(handle));
    MC_CUDA(cudaGraphLaunch(graphs_[handle - 1], s()));
  }
  void releaseGraph(int64_t handle) override {
    if (handle < 1 || handle > (int64_t)graphs_.size() || !graphs_[handle - 1]) return;
    cudaStreamSynchronize(s());
    cudaGraphExecDestroy(graphs_[handle - 1]);
    graphs_[handle - 1] = nullptr;
  }

  cudaStream_t s() const { return sh_->stream; }

 private:
  Ctx ctx() {
    return Ctx{s(), numSMs_, cc_, &splitK_, &tickets_, &attnScratch_, &dequant_, &gatedGemm_,
               blas_.handle ? &blas_ : nullptr};
  }

  // cuBLAS runs the large-M matmuls where the library is present (MEDCLUSTER_CUBLAS=0 turns
  // it off, for baselines); without it every matmul uses the backend's own kernels.
  void loadBlas() {
    const char* env = std::getenv("MEDCLUSTER_CUBLAS");
    if (env && std::strcmp(env, "0") == 0) return;
    try {
      blas_.api = cublasdl::load();
    } catch (const std::exception&) {
      return;  // not installed: the own kernels cover every shape
    }
    if (blas_.api.create(&blas_.handle) != 0 || blas_.api.setStream(blas_.handle, s()) != 0) {
      blas_.handle = nullptr;
      return;
    }
    // A fixed workspace, so that cuBLAS calls captured into a graph never allocate.
    constexpr size_t kBlasWorkspace = 32u << 20;
    if (blas_.api.setWorkspace && cudaMallocAsync(&blasWorkspace_, kBlasWorkspace, s()) == cudaSuccess &&
        cudaStreamSynchronize(s()) == cudaSuccess)
      blas_.api.setWorkspace(blas_.handle, blasWorkspace_, kBlasWorkspace);
  }

  std::string name_;
  int numSMs_ = 0;
  std::shared_ptr<StreamHandle> sh_;
  int cc_ = 0;
  Scratch splitK_, tickets_, attnScratch_, dequant_, gatedGemm_;
  Scratch sampleScratch_;        // Device.sample's scores, sort buffers and row specs
  SampleStaging sampleStaging_;  // and the pinned memory the specs are copied from
  Blas blas_;
  void* blasWorkspace_ = nullptr;
  std::vector<cudaGraphExec_t> graphs_;  // handle h is graphs_[h - 1]
  void* transfer_ = nullptr;  // pinned, kTransferBytes: large uploads and downloads
  struct UploadSlot {
    void* host = nullptr;
    cudaEvent_t done = nullptr;
  };
  UploadSlot uploadSlots_[kUploadSlots];
  unsigned nextUploadSlot_ = 0;
  std::shared_ptr<ReadBlocks> readBlocks_;
  void* staging_[2] = {nullptr, nullptr};
  cudaEvent_t stagingDone_[2] = {nullptr, nullptr};
};

}  // namespace

// The stream a CUDA backend issues its work on (for benchmarks and CUDA graph capture).
cudaStream_t backendStream(Backend& b) { return static_cast<CudaBackend&>(b).s(); }

}  // namespace cuda

std::unique_ptr<Backend> createCudaBackend(int ordinal) {
  return std::make_unique<cuda::CudaBackend>(ordinal);
}
bool cudaCompiledIn() { return true; }
int cudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

}  // namespace medcluster
