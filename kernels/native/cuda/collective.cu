// Device collectives (collective.h) on the CUDA backend: CUDA IPC for ranks of one host,
// NCCL (loaded at run time) for ranks of several.
//
// The IPC all-reduce is one-shot: every rank's block b copies its slice of the input into
// its own exchange buffer, publishes a flag, waits for block b of every peer, then sums the
// peers' slices in rank order. Reading top to bottom: the shared layout (Flags, ErrorRecord,
// IpcArgs), one wrapper per PTX instruction, the barrier (publish, wait, check), the two
// kernels, then the host classes.
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "../collective.h"
#include "common.cuh"
#include "nccl_loader.h"

namespace medcluster {
namespace cuda {
namespace {

constexpr int kMaxRanks = 8;  // tp in {1, 2, 4, 8} (MODEL.md)
// A fixed grid: every block takes part in every call, even with nothing to copy, so the
// per-block epoch counters of all ranks advance in step. 32 blocks keep two ranks' kernels
// co-resident on one GPU (each spins until the other arrives) with most SMs left over.
constexpr int kBlocks = 32;
constexpr int kThreads = 512;
constexpr size_t kFlagBytes = 4096;  // exported allocation: Flags, then two exchange buffers

// The head of each rank's exported allocation. Block b of the owning rank writes only its
// own entries (b); peers only read them. Index p is the call epoch's parity.
struct Flags {
  unsigned long long epoch[2][kBlocks];  // last epoch of parity p whose slice block b wrote
  unsigned long long count[2][kBlocks];  // elements the owner contributes to that call
  unsigned long long shape[2][kBlocks];  // (op << 32) | rows of that call
  unsigned int failed;                   // nonzero once the owner's group failed
};
static_assert(sizeof(Flags) <= kFlagBytes, "Flags must fit its page");

enum Failure : unsigned { kOk = 0, kTimeout = 1, kPeerFailed = 2, kMismatch = 3 };
enum Op : unsigned { kAllReduce = 1, kAllGather = 2 };

// The first failure of a rank's group: written once (the block that wins the CAS on
// code) to device memory and mirrored to mapped host memory, which the host reads after
// each sync without a copy.
struct ErrorRecord {
  unsigned int code;  // Failure; written last in the host mirror
  unsigned int peer;
  unsigned int block;
  unsigned int pad;
  unsigned long long epoch;
  unsigned long long count, shape;          // this rank's call
  unsigned long long peerCount, peerShape;  // the peer's call (kMismatch)
};

// Kernel arguments shared by both kernels (passed by value: a graph keeps a copy).
struct IpcArgs {
  Flags* flags[kMaxRanks];      // every rank's flags, this rank's own included
  float* data[kMaxRanks][2];    // every rank's two exchange buffers
  unsigned long long* counters;  // this rank's epoch counter per block [kBlocks], device memory
  ErrorRecord* err;             // this rank's failure record, device memory
  ErrorRecord* hostErr;         // its mirror in mapped host memory
  int rank, size;
  unsigned long long capFloats;  // floats per exchange buffer, a multiple of 4
  unsigned long long timeoutNs;
};

// ---- PTX wrappers -----------------------------------------------------------------

// Release store at system scope: every write this thread has seen (the block's slice, via
// the barrier before it) is visible to a peer in another process or on another GPU that
// acquires the flag.
__device__ __forceinline__ void storeRelease(unsigned long long* p, unsigned long long v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
// Acquire load at system scope, the other half of storeRelease.
__device__ __forceinline__ unsigned long long loadAcquire(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
// Nanoseconds of a GPU-wide clock: the deadline of a spin, whatever the SM clock does
// while the context is switched out.
__device__ __forceinline__ unsigned long long globalTimer() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ unsigned loadVolatile(const unsigned* p) { return *(volatile const unsigned*)p; }

// Peer data is read through L2 only (ld.global.cg): an L1 line left from two calls ago on
// this SM would be stale.
__device__ __forceinline__ float4 ldPeer4(const float* p) { return __ldcg(reinterpret_cast<const float4*>(p)); }
__device__ __forceinline__ float ldPeer(const float* p) { return __ldcg(p); }

// ---- the barrier ------------------------------------------------------------------

// Block b's part [lo, hi) of m elements, in whole float4s: every part but the last starts
// 16-byte aligned and has a length divisible by 4.
__device__ __forceinline__ void sliceOf(unsigned long long m, int b, unsigned long long* lo, unsigned long long* hi) {
  const unsigned long long quads = (m + 3) / 4, per = (quads + kBlocks - 1) / kBlocks;
  *lo = min(m, (unsigned long long)b * per * 4);
  *hi = min(m, (unsigned long long)(b + 1) * per * 4);
}

__device__ void recordFailure(const IpcArgs& a, unsigned code, int peer, unsigned long long epoch,
                              unsigned long long count, unsigned long long shape, unsigned long long peerCount,
                              unsigned long long peerShape) {
  if (atomicCAS(&a.err->code, 0u, code) == 0u) {
    ErrorRecord r{code, (unsigned)peer, (unsigned)blockIdx.x, 0u, epoch, count, shape, peerCount, peerShape};
    a.err->peer = r.peer;
    volatile ErrorRecord* h = a.hostErr;
    h->peer = r.peer;
    h->block = r.block;
    h->epoch = r.epoch;
    h->count = r.count;
    h->shape = r.shape;
    h->peerCount = r.peerCount;
    h->peerShape = r.peerShape;
    __threadfence_system();
    h->code = code;  // last: the host reads the fields only once it sees a code
  }
  // Peers waiting for this rank stop at once instead of at their deadline.
  *(volatile unsigned*)&a.flags[a.rank]->failed = 1u;
  __threadfence_system();
}

// One call epoch's barrier for this block: publish what this rank wrote (its slice of the
// exchange buffer of parity e & 1), then wait until block b of every peer has published the
// same epoch, and check that the peer's call is this rank's call. `expect(q)` is the element
// count rank q contributes. Returns false once the group failed (the failure is recorded).
//
// Why one barrier per call is enough with two buffers: a rank reaches epoch e + 2, and so
// overwrites the buffer of epoch e, only after it saw every peer publish e + 1; a peer
// publishes e + 1 only after it finished reading epoch e's buffers (the block's threads meet
// at the barrier before the publish). A single buffer would need a second barrier ("every
// peer has read") before each overwrite; the parity gives that one for free. For the same
// reason a peer's flag of parity p holds e - 2 or e while this rank waits for e, never
// e + 2, so the wait tests for equality.
template <typename Expect>
__device__ bool barrier(const IpcArgs& a, unsigned long long e, unsigned op, unsigned long long rows,
                        Expect expect) {
  __shared__ int failed;
  const int b = blockIdx.x, p = (int)(e & 1);
  const unsigned long long shape = ((unsigned long long)op << 32) | rows;
  __syncthreads();  // the block's slice is written
  if (threadIdx.x == 0) {
    failed = 0;
    Flags* f = a.flags[a.rank];
    f->count[p][b] = expect(a.rank);
    f->shape[p][b] = shape;
    __threadfence_system();
    storeRelease(&f->epoch[p][b], e);
  }
  __syncthreads();
  // Lane q of warp 0 waits for peer q.
  if (threadIdx.x < a.size && (int)threadIdx.x != a.rank) {
    const int q = threadIdx.x;
    const Flags* f = a.flags[q];
    const unsigned long long start = globalTimer();
    unsigned code = kOk;
    while (loadAcquire(&f->epoch[p][b]) != e) {
      if (loadVolatile(&f->failed)) {
        code = kPeerFailed;
        break;
      }
      if (globalTimer() - start > a.timeoutNs) {
        code = kTimeout;
        break;
      }
    }
    unsigned long long peerCount = 0, peerShape = 0;
    if (code == kOk) {
      peerCount = *(volatile const unsigned long long*)&f->count[p][b];
      peerShape = *(volatile const unsigned long long*)&f->shape[p][b];
      if (peerCount != expect(q) || peerShape != shape) code = kMismatch;
    }
    if (code != kOk) {
      recordFailure(a, code, q, e, expect(a.rank), shape, peerCount, peerShape);
      failed = 1;
    }
  }
  __syncthreads();
  return !failed;
}

// Thread 0 reads the block's epoch counter; a group that failed before does nothing.
__device__ bool enter(const IpcArgs& a, unsigned long long* epoch) {
  __shared__ unsigned long long e0;
  __shared__ int dead;
  if (threadIdx.x == 0) {
    dead = loadVolatile(&a.err->code) != 0u;
    e0 = a.counters[blockIdx.x];
  }
  __syncthreads();
  *epoch = e0;
  return !dead;
}

// ---- kernels ----------------------------------------------------------------------

// In place: x f32 [n] (rows x C) = sum over ranks 0..size-1, in that order. kVec: x is
// 16-byte aligned, so whole float4s move.
template <bool kVec>
__global__ void __launch_bounds__(kThreads) ipcAllReduceKernel(IpcArgs a, float* x, unsigned long long n,
                                                                unsigned long long rows) {
  unsigned long long e;
  if (!enter(a, &e)) return;
  const int b = blockIdx.x;
  auto expect = [n](int) { return n; };
  for (unsigned long long off = 0; off < n; off += a.capFloats) {
    const unsigned long long m = min(a.capFloats, n - off);
    const int p = (int)(++e & 1);
    unsigned long long lo, hi;
    sliceOf(m, b, &lo, &hi);
    float* mine = a.data[a.rank][p];
    const unsigned long long vecEnd = kVec ? lo + (hi - lo) / 4 * 4 : lo;
    // 1. this rank's slice into its exchange buffer
    for (unsigned long long i = lo + 4ull * threadIdx.x; i < vecEnd; i += 4ull * kThreads)
      __stcg(reinterpret_cast<float4*>(mine + i), *reinterpret_cast<const float4*>(x + off + i));
    for (unsigned long long i = vecEnd + threadIdx.x; i < hi; i += kThreads) __stcg(mine + i, x[off + i]);
    // 2. publish, wait for the peers
    if (!barrier(a, e, kAllReduce, rows, expect)) return;
    // 3. the sum in rank order, every addition rounded to fp32
    for (unsigned long long i = lo + 4ull * threadIdx.x; i < vecEnd; i += 4ull * kThreads) {
      float4 acc = ldPeer4(a.data[0][p] + i);
      for (int q = 1; q < a.size; ++q) {
        const float4 v = ldPeer4(a.data[q][p] + i);
        acc.x = __fadd_rn(acc.x, v.x);
        acc.y = __fadd_rn(acc.y, v.y);
        acc.z = __fadd_rn(acc.z, v.z);
        acc.w = __fadd_rn(acc.w, v.w);
      }
      *reinterpret_cast<float4*>(x + off + i) = acc;
    }
    for (unsigned long long i = vecEnd + threadIdx.x; i < hi; i += kThreads) {
      float acc = ldPeer(a.data[0][p] + i);
      for (int q = 1; q < a.size; ++q) acc = __fadd_rn(acc, ldPeer(a.data[q][p] + i));
      x[off + i] = acc;
    }
  }
  if (threadIdx.x == 0) a.counters[b] = e;
}

// Column layout of an all-gather: rank q holds widths[q] columns, placed at offsets[q] of
// the output's `total`.
struct GatherShape {
  unsigned long long widths[kMaxRanks];
  unsigned long long offsets[kMaxRanks];
  unsigned long long total;
  unsigned long long rows;          // R
  unsigned long long rowsPerChunk;  // rows of every rank that fit one exchange buffer
};

// x f32 [R, widths[rank]] -> out f32 [R, total], chunked by rows. In each chunk rank q's
// rows x widths[q] block sits contiguously at the start of its exchange buffer; block b
// copies (and later reads) the same slice of it on every rank.
__global__ void __launch_bounds__(kThreads) ipcAllGatherKernel(IpcArgs a, GatherShape g, const float* x, float* out) {
  unsigned long long e;
  if (!enter(a, &e)) return;
  const int b = blockIdx.x;
  auto expect = [&g](int q) { return g.rows * g.widths[q]; };
  const unsigned long long mineW = g.widths[a.rank];
  for (unsigned long long r0 = 0; r0 < g.rows; r0 += g.rowsPerChunk) {
    const unsigned long long rows = min(g.rowsPerChunk, g.rows - r0);
    const int p = (int)(++e & 1);
    unsigned long long lo, hi;
    sliceOf(rows * mineW, b, &lo, &hi);
    float* mine = a.data[a.rank][p];
    for (unsigned long long i = lo + threadIdx.x; i < hi; i += kThreads) __stcg(mine + i, x[r0 * mineW + i]);
    if (!barrier(a, e, kAllGather, g.rows, expect)) return;
    for (int q = 0; q < a.size; ++q) {
      const unsigned long long w = g.widths[q];
      sliceOf(rows * w, b, &lo, &hi);
      const float* src = a.data[q][p];
      for (unsigned long long i = lo + threadIdx.x; i < hi; i += kThreads) {
        const unsigned long long row = i / w, col = i - row * w;
        out[(r0 + row) * g.total + g.offsets[q] + col] = ldPeer(src + i);
      }
    }
  }
  if (threadIdx.x == 0) a.counters[b] = e;
}

// NCCL path: staging holds [size][m] (every rank's chunk, an ncclAllGather); out[i] is the
// sum in rank order, as on the IPC path, so both transports give the same bits.
__global__ void rankOrderSumKernel(const float* staging, int size, unsigned long long m, float* out) {
  for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < m;
       i += (unsigned long long)gridDim.x * blockDim.x) {
    float acc = staging[i];
    for (int q = 1; q < size; ++q) acc = __fadd_rn(acc, staging[q * m + i]);
    out[i] = acc;
  }
}

// ---- host side --------------------------------------------------------------------

const char* opName(unsigned op) {
  return op == kAllReduce ? "allReduceSum" : op == kAllGather ? "allGatherCols" : "an unknown op";
}

void checkGroupOptions(const char* transport, const CollectiveOptions& o) {
  if (o.size < 1 || o.size > kMaxRanks)
    throw BackendError(std::string(transport) + " collective: size " + std::to_string(o.size) + " is not in 1.." +
                       std::to_string(kMaxRanks));
  if (o.rank < 0 || o.rank >= o.size)
    throw BackendError(std::string(transport) + " collective: rank " + std::to_string(o.rank) + " is not in 0.." +
                       std::to_string(o.size - 1));
  if (o.bufferBytes < 65536)
    throw BackendError(std::string(transport) + " collective: buffer of " + std::to_string(o.bufferBytes) +
                       " bytes is below the 64 KiB minimum");
}

GatherShape gatherShape(const View& x, const std::vector<int64_t>& widths, int size, unsigned long long capFloats,
                        const char* transport) {
  GatherShape g{};
  unsigned long long maxW = 0;
  for (int q = 0; q < size; ++q) {
    g.widths[q] = (unsigned long long)widths[q];
    g.offsets[q] = g.total;
    g.total += g.widths[q];
    maxW = std::max(maxW, g.widths[q]);
  }
  g.rows = (unsigned long long)x.dim(0);
  if (maxW > capFloats)
    throw BackendError(std::string("allGatherCols (") + transport + "): a row of " + std::to_string(maxW) +
                       " floats does not fit the " + std::to_string(capFloats) + "-float exchange buffer");
  g.rowsPerChunk = capFloats / std::max(1ull, maxW);
  return g;
}

// The bytes one rank hands its peers (same build on every rank, so a plain struct).
struct IpcWire {
  char magic[8];  // "MCIPC01"
  uint32_t pid;
  uint32_t localId;  // this process's registry key (peers in the same process map directly)
  int32_t rank, size, ordinal;
  uint32_t blocks;
  unsigned char uuid[16];  // the GPU
  uint64_t capBytes;
  cudaIpcMemHandle_t handle;
};
constexpr char kMagic[8] = "MCIPC01";

class CudaIpcGroup;
std::mutex gRegistryMu;
std::unordered_map<uint32_t, CudaIpcGroup*> gRegistry;  // this process's groups, by localId
std::atomic<uint32_t> gNextId{1};

class CudaIpcGroup final : public IpcGroup {
 public:
  CudaIpcGroup(Backend& b, const CollectiveOptions& o) : opts_(o) {
    checkGroupOptions("ipc", o);
    stream_ = backendStream(b);
    MC_CUDA(cudaGetDevice(&ordinal_));
    cudaDeviceProp prop;
    MC_CUDA(cudaGetDeviceProperties(&prop, ordinal_));
    std::memcpy(uuid_, &prop.uuid, sizeof(uuid_));
    capBytes_ = o.bufferBytes / 16 * 16;
    // cudaMalloc, not the stream-ordered pool: only cudaMalloc memory has an IPC handle.
    MC_CUDA(cudaMalloc(&base_, kFlagBytes + 2 * capBytes_));
    MC_CUDA(cudaMemset(base_, 0, kFlagBytes));
    MC_CUDA(cudaIpcGetMemHandle(&handle_, base_));
    MC_CUDA(cudaMalloc(&counters_, kBlocks * sizeof(unsigned long long)));
    MC_CUDA(cudaMemset(counters_, 0, kBlocks * sizeof(unsigned long long)));
    MC_CUDA(cudaMalloc(&err_, sizeof(ErrorRecord)));
    MC_CUDA(cudaMemset(err_, 0, sizeof(ErrorRecord)));
    MC_CUDA(cudaHostAlloc(&hostErr_, sizeof(ErrorRecord), cudaHostAllocMapped));
    std::memset(hostErr_, 0, sizeof(ErrorRecord));
    MC_CUDA(cudaHostGetDevicePointer(reinterpret_cast<void**>(&hostErrDev_), hostErr_, 0));
    MC_CUDA(cudaDeviceSynchronize());  // the memsets are done before any peer maps this
    id_ = gNextId++;
    std::lock_guard<std::mutex> lock(gRegistryMu);
    gRegistry[id_] = this;
  }

  ~CudaIpcGroup() override {
    {
      std::lock_guard<std::mutex> lock(gRegistryMu);
      gRegistry.erase(id_);
    }
    int prev = -1;
    cudaGetDevice(&prev);
    if (prev != ordinal_) cudaSetDevice(ordinal_);
    cudaStreamSynchronize(stream_);  // no queued kernel still uses the buffers
    for (void* p : opened_) cudaIpcCloseMemHandle(p);
    cudaFree(base_);
    cudaFree(counters_);
    cudaFree(err_);
    cudaFreeHost(hostErr_);
    if (prev != ordinal_ && prev >= 0) cudaSetDevice(prev);
  }

  const char* transport() const override { return "ipc"; }
  int rank() const override { return opts_.rank; }
  int size() const override { return opts_.size; }
  char* base() const { return static_cast<char*>(base_); }
  int ordinal() const { return ordinal_; }

  std::vector<uint8_t> localHandle() const override {
    IpcWire w{};
    std::memcpy(w.magic, kMagic, sizeof(kMagic));
    w.pid = (uint32_t)getpid();
    w.localId = id_;
    w.rank = opts_.rank;
    w.size = opts_.size;
    w.ordinal = ordinal_;
    w.blocks = kBlocks;
    std::memcpy(w.uuid, uuid_, sizeof(uuid_));
    w.capBytes = capBytes_;
    w.handle = handle_;
    std::vector<uint8_t> bytes(sizeof(w));
    std::memcpy(bytes.data(), &w, sizeof(w));
    return bytes;
  }

  void connect(const std::vector<std::vector<uint8_t>>& handles) override {
    if (connected_) throw BackendError(where() + ": already connected");
    if ((int)handles.size() != opts_.size)
      throw BackendError(where() + ": " + std::to_string(handles.size()) + " handles for " +
                         std::to_string(opts_.size) + " ranks");
    IpcArgs a{};
    for (int q = 0; q < opts_.size; ++q) {
      char* peer = q == opts_.rank ? base() : map(q, handles[q]);
      a.flags[q] = reinterpret_cast<Flags*>(peer);
      a.data[q][0] = reinterpret_cast<float*>(peer + kFlagBytes);
      a.data[q][1] = reinterpret_cast<float*>(peer + kFlagBytes + capBytes_);
    }
    a.counters = counters_;
    a.err = err_;
    a.hostErr = hostErrDev_;
    a.rank = opts_.rank;
    a.size = opts_.size;
    a.capFloats = capBytes_ / 4;
    a.timeoutNs = (unsigned long long)opts_.timeoutMs * 1000000ull;
    args_ = a;
    connected_ = true;
  }

  void allReduceSum(Backend& b, const View& x) override {
    requireConnected("allReduceSum");
    const unsigned long long n = (unsigned long long)x.numel();
    if (!n) return;  // every rank skips alike: the counters stay in step
    const bool vec = ((uintptr_t)x.data & 15) == 0;
    const unsigned long long rows = (unsigned long long)x.dim(0);
    if (vec)
      ipcAllReduceKernel<true><<<kBlocks, kThreads, 0, backendStream(b)>>>(args_, x.as<float>(), n, rows);
    else
      ipcAllReduceKernel<false><<<kBlocks, kThreads, 0, backendStream(b)>>>(args_, x.as<float>(), n, rows);
    MC_LAUNCHED("ipcAllReduce");
  }

  void allGatherCols(Backend& b, const View& x, const View& out, const std::vector<int64_t>& widths) override {
    requireConnected("allGatherCols");
    if (!x.dim(0)) return;
    const GatherShape g = gatherShape(x, widths, opts_.size, args_.capFloats, "ipc");
    ipcAllGatherKernel<<<kBlocks, kThreads, 0, backendStream(b)>>>(args_, g, x.as<float>(), out.as<float>());
    MC_LAUNCHED("ipcAllGather");
  }

  void check() override {
    volatile ErrorRecord* h = hostErr_;
    const unsigned code = h->code;
    if (code == kOk) return;
    const std::string peer = "rank " + std::to_string(h->peer);
    const std::string epoch = " (call " + std::to_string(h->epoch) + ", block " + std::to_string(h->block) + ")";
    if (code == kTimeout)
      throw BackendError(where() + ": " + peer + " did not arrive within " + std::to_string(opts_.timeoutMs) +
                         " ms" + epoch);
    if (code == kPeerFailed)
      throw BackendError(where() + ": " + peer + " failed" + epoch + "; its own error says why");
    const unsigned long long shape = h->shape, peerShape = h->peerShape;
    throw BackendError(where() + ": ranks disagree" + epoch + ": this rank called " + opName((unsigned)(shape >> 32)) +
                       " of " + std::to_string(shape & 0xffffffffull) + " rows contributing " +
                       std::to_string(h->count) + " elements, " + peer + " called " +
                       opName((unsigned)(peerShape >> 32)) + " of " + std::to_string(peerShape & 0xffffffffull) +
                       " rows contributing " + std::to_string(h->peerCount));
  }

 private:
  std::string where() const {
    return "device collective (ipc, rank " + std::to_string(opts_.rank) + " of " + std::to_string(opts_.size) + ")";
  }

  void requireConnected(const char* op) const {
    if (!connected_) throw BackendError(std::string(op) + ": the ipc group is not connected yet");
  }

  // Rank q's exported allocation, mapped into this process.
  char* map(int q, const std::vector<uint8_t>& bytes) {
    const std::string who = "rank " + std::to_string(q);
    IpcWire w;
    if (bytes.size() != sizeof(w) || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0)
      throw BackendError(where() + ": " + who + "'s handle is not an ipc handle of this build (" +
                         std::to_string(bytes.size()) + " bytes)");
    std::memcpy(&w, bytes.data(), sizeof(w));
    if (w.rank != q || w.size != opts_.size || w.capBytes != capBytes_ || w.blocks != (uint32_t)kBlocks)
      throw BackendError(where() + ": " + who + "'s handle says rank " + std::to_string(w.rank) + " of " +
                         std::to_string(w.size) + " with " + std::to_string(w.capBytes) +
                         "-byte buffers; expected rank " + std::to_string(q) + " of " +
                         std::to_string(opts_.size) + " with " + std::to_string(capBytes_));
    if (w.pid == (uint32_t)getpid()) {
      // The same process (two devices of one process): cudaIpcOpenMemHandle refuses a
      // handle of its own process, and the pointer is valid here anyway.
      char* peer = nullptr;
      int peerOrdinal = -1;
      {
        std::lock_guard<std::mutex> lock(gRegistryMu);
        auto it = gRegistry.find(w.localId);
        if (it != gRegistry.end()) {
          peer = it->second->base();
          peerOrdinal = it->second->ordinal();
        }
      }
      if (!peer) throw BackendError(where() + ": " + who + "'s group (this process) no longer exists");
      if (peerOrdinal != ordinal_) {
        int can = 0;
        MC_CUDA(cudaDeviceCanAccessPeer(&can, ordinal_, peerOrdinal));
        if (!can)
          throw BackendError(where() + ": cuda:" + std::to_string(ordinal_) + " cannot access " + who +
                             "'s cuda:" + std::to_string(peerOrdinal) + " (no peer access)");
        cudaError_t e = cudaDeviceEnablePeerAccess(peerOrdinal, 0);
        if (e == cudaErrorPeerAccessAlreadyEnabled) cudaGetLastError();
        else MC_CUDA(e);
      }
      return peer;
    }
    void* p = nullptr;
    cudaError_t e = cudaIpcOpenMemHandle(&p, w.handle, cudaIpcMemLazyEnablePeerAccess);
    if (e != cudaSuccess) {
      cudaGetLastError();
      throw BackendError(where() + ": cannot map " + who + "'s exchange buffer (process " + std::to_string(w.pid) +
                         ", cuda:" + std::to_string(w.ordinal) + "): " + cudaGetErrorName(e) + " (" +
                         cudaGetErrorString(e) + ")");
    }
    opened_.push_back(p);
    return static_cast<char*>(p);
  }

  CollectiveOptions opts_;
  cudaStream_t stream_ = nullptr;
  int ordinal_ = 0;
  unsigned char uuid_[16] = {};
  uint32_t id_ = 0;
  size_t capBytes_ = 0;
  void* base_ = nullptr;
  cudaIpcMemHandle_t handle_{};
  unsigned long long* counters_ = nullptr;
  ErrorRecord* err_ = nullptr;
  ErrorRecord* hostErr_ = nullptr;
  ErrorRecord* hostErrDev_ = nullptr;
  std::vector<void*> opened_;
  IpcArgs args_{};
  bool connected_ = false;
};

class NcclGroup final : public DeviceGroup {
 public:
  NcclGroup(Backend& b, const CollectiveOptions& o, const std::vector<uint8_t>& uniqueId) : opts_(o) {
    checkGroupOptions("nccl", o);
    const nccl::Api& api = nccl::api();
    if (uniqueId.size() != sizeof(nccl::ncclUniqueId))
      throw BackendError(where() + ": the unique id has " + std::to_string(uniqueId.size()) + " bytes, not " +
                         std::to_string(sizeof(nccl::ncclUniqueId)));
    stream_ = backendStream(b);
    MC_CUDA(cudaGetDevice(&ordinal_));
    capFloats_ = o.bufferBytes / 16 * 4;
    MC_CUDA(cudaMalloc(&staging_, (size_t)o.size * capFloats_ * 4));
    MC_CUDA(cudaMalloc(&send_, capFloats_ * 4));
    nccl::ncclUniqueId id;
    std::memcpy(&id, uniqueId.data(), sizeof(id));
    nccl::ncclResult_t r = api.commInitRank(&comm_, o.size, id, o.rank);
    if (r != nccl::ncclSuccess) {
      cudaFree(staging_);
      cudaFree(send_);
      throw BackendError(where() + ": ncclCommInitRank failed: " + nccl::describe(r));
    }
  }

  ~NcclGroup() override {
    int prev = -1;
    cudaGetDevice(&prev);
    if (prev != ordinal_) cudaSetDevice(ordinal_);
    cudaStreamSynchronize(stream_);
    if (comm_) nccl::api().commDestroy(comm_);
    cudaFree(staging_);
    cudaFree(send_);
    if (prev != ordinal_ && prev >= 0) cudaSetDevice(prev);
  }

  const char* transport() const override { return "nccl"; }
  int rank() const override { return opts_.rank; }
  int size() const override { return opts_.size; }

  void allReduceSum(Backend& b, const View& x) override {
    const nccl::Api& api = nccl::api();
    cudaStream_t s = backendStream(b);
    float* data = x.as<float>();
    const unsigned long long n = (unsigned long long)x.numel();
    for (unsigned long long off = 0; off < n; off += capFloats_) {
      const unsigned long long m = std::min(capFloats_, n - off);
      nccl::check(api.allGather(data + off, staging_, m, nccl::ncclFloat32, comm_, s), "ncclAllGather");
      const int grid = (int)std::min<unsigned long long>(ceilDiv((int64_t)m, 256), 1024);
      rankOrderSumKernel<<<grid, 256, 0, s>>>(staging_, opts_.size, m, data + off);
      MC_LAUNCHED("rankOrderSum");
    }
  }

  // NCCL gathers equal counts: each rank's rows go out padded to the widest rank's width.
  void allGatherCols(Backend& b, const View& x, const View& out, const std::vector<int64_t>& widths) override {
    const nccl::Api& api = nccl::api();
    cudaStream_t s = backendStream(b);
    if (!x.dim(0)) return;
    const GatherShape g = gatherShape(x, widths, opts_.size, capFloats_, "nccl");
    unsigned long long maxW = 0;
    for (int q = 0; q < opts_.size; ++q) maxW = std::max(maxW, g.widths[q]);
    const unsigned long long w = g.widths[opts_.rank];
    for (unsigned long long r0 = 0; r0 < g.rows; r0 += g.rowsPerChunk) {
      const unsigned long long rows = std::min(g.rowsPerChunk, g.rows - r0);
      MC_CUDA(cudaMemcpy2DAsync(send_, maxW * 4, x.as<float>() + r0 * w, w * 4, w * 4, rows,
                                cudaMemcpyDeviceToDevice, s));
      nccl::check(api.allGather(send_, staging_, rows * maxW, nccl::ncclFloat32, comm_, s), "ncclAllGather");
      for (int q = 0; q < opts_.size; ++q) {
        MC_CUDA(cudaMemcpy2DAsync(out.as<float>() + r0 * g.total + g.offsets[q], g.total * 4,
                                  staging_ + (unsigned long long)q * rows * maxW, maxW * 4, g.widths[q] * 4, rows,
                                  cudaMemcpyDeviceToDevice, s));
      }
    }
  }

  void check() override {
    const nccl::Api& api = nccl::api();
    if (!api.commGetAsyncError || !comm_) return;
    nccl::ncclResult_t r = nccl::ncclSuccess;
    if (api.commGetAsyncError(comm_, &r) == nccl::ncclSuccess && r != nccl::ncclSuccess &&
        r != nccl::ncclInProgress)
      throw BackendError(where() + ": NCCL reports " + nccl::describe(r));
  }

 private:
  std::string where() const {
    return "device collective (nccl, rank " + std::to_string(opts_.rank) + " of " + std::to_string(opts_.size) + ")";
  }

  CollectiveOptions opts_;
  cudaStream_t stream_ = nullptr;
  int ordinal_ = 0;
  unsigned long long capFloats_ = 0;
  float* staging_ = nullptr;  // [size][capFloats]
  float* send_ = nullptr;     // [capFloats]: a padded all-gather contribution
  nccl::ncclComm_t comm_ = nullptr;
};

// The group's failures surface at the backend's next sync (see Backend::addSyncCheck).
template <typename G>
void watch(Backend& b, const std::shared_ptr<G>& g) {
  std::weak_ptr<G> w = g;
  b.addSyncCheck([w] {
    if (auto group = w.lock()) group->check();
  });
}

}  // namespace
}  // namespace cuda

std::shared_ptr<IpcGroup> createIpcGroup(Backend& b, const CollectiveOptions& options) {
  auto g = std::make_shared<cuda::CudaIpcGroup>(b, options);
  cuda::watch(b, g);
  return g;
}

int ncclVersionCode() {
  int v = 0;
  nccl::check(nccl::api().getVersion(&v), "ncclGetVersion");
  return v;
}

std::vector<uint8_t> ncclUniqueIdBytes() {
  nccl::ncclUniqueId id;
  nccl::check(nccl::api().getUniqueId(&id), "ncclGetUniqueId");
  std::vector<uint8_t> bytes(sizeof(id));
  std::memcpy(bytes.data(), &id, sizeof(id));
  return bytes;
}

std::shared_ptr<DeviceGroup> createNcclGroup(Backend& b, const CollectiveOptions& options,
                                             const std::vector<uint8_t>& uniqueId) {
  auto g = std::make_shared<cuda::NcclGroup>(b, options, uniqueId);
  cuda::watch(b, g);
  return g;
}

}  // namespace medcluster
