// Device.sample on CUDA: the serving core's sampler (worker/src/sampling/sampler.ts; the order of
// operations is on SampleRow in kernels/src/api.ts), one thread block per sampled row, in three
// launches:
//   1. scores: the row's logits widened to float64, penalized and masked (-0 made +0, so that
//      sorting and comparing agree with JavaScript's, where -0 == 0);
//   2. for the rows that cut (top-k or top-p at a temperature > 0): the scores sorted largest
//      first by a stable segmented radix sort, so ties keep ascending ids, as the sampler's
//      sort does;
//   3. the pick: argmax, or the inverse-CDF draw over the kept ids, and the logprobs.
// The sums run in a fixed order that is not JavaScript's sequential one, and CUDA's exp may
// differ from V8's in the last bit: a pick can differ from the JS sampler's only where the draw
// or a top-p cut falls within a few ulps of a cumulative weight.
#include <cub/device/device_segmented_radix_sort.cuh>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common.cuh"

namespace medcluster {
namespace cuda {
namespace {

constexpr int kThreads = 1024;

// SampleRow as the kernels read it, plus whether its scores were sorted.
struct RowSpec {
  double temperature, topP, repetitionPenalty, presencePenalty, frequencyPenalty, uniform;
  int32_t row, topK, logprobs, penaltyBegin, penaltyCount, maskBegin, maskCount, sorted;
};

__global__ void scoresKernel(const float* logits, int64_t V, const RowSpec* specs, const int32_t* penaltyIds,
                             const int32_t* penaltyCounts, const int32_t* maskedIds, double* scores,
                             int32_t* iota) {
  const RowSpec r = specs[blockIdx.x];
  const float* src = logits + (int64_t)r.row * V;
  double* dst = scores + (int64_t)blockIdx.x * V;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    dst[i] = (double)src[i] + 0.0;
    if (r.sorted) iota[(int64_t)blockIdx.x * V + i] = (int32_t)i;
  }
  __syncthreads();
  // One thread, in list order, with the rounding spelled out (no contraction into an FMA):
  // exactly the JavaScript arithmetic, and a repeated id is penalized twice there as here.
  if (threadIdx.x == 0) {
    for (int j = 0; j < r.penaltyCount; j++) {
      const int32_t id = penaltyIds[r.penaltyBegin + j];
      if (id >= V) continue;
      double s = dst[id];
      s = s > 0 ? __ddiv_rn(s, r.repetitionPenalty) : __dmul_rn(s, r.repetitionPenalty);
      s = __dsub_rn(__dsub_rn(s, __dmul_rn(r.frequencyPenalty, (double)penaltyCounts[r.penaltyBegin + j])),
                    r.presencePenalty);
      dst[id] = s;
    }
  }
  __syncthreads();
  for (int j = threadIdx.x; j < r.maskCount; j += blockDim.x) {
    const int32_t id = maskedIds[r.maskBegin + j];
    if (id < V) dst[id] = -INFINITY;
  }
}

// Block-wide reductions over kThreads threads; every thread gets the result.
struct BestIndex {
  double value;
  int64_t index;
};

// The larger value, the lower index on ties: JavaScript's "first index of the largest".
__device__ __forceinline__ BestIndex better(BestIndex a, BestIndex b) {
  if (b.value > a.value || (b.value == a.value && b.index < a.index)) return b;
  return a;
}

__device__ BestIndex blockBest(BestIndex v) {
  __shared__ double sv[32];
  __shared__ int64_t si[32];
  for (int o = 16; o > 0; o >>= 1) {
    BestIndex other{__shfl_xor_sync(0xffffffffu, v.value, o), __shfl_xor_sync(0xffffffffu, v.index, o)};
    v = better(v, other);
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) {
    sv[threadIdx.x >> 5] = v.value;
    si[threadIdx.x >> 5] = v.index;
  }
  __syncthreads();
  BestIndex best{sv[0], si[0]};
  for (int w = 1; w < (int)(blockDim.x >> 5); w++) best = better(best, BestIndex{sv[w], si[w]});
  return best;
}

__device__ double blockSum(double v) {
  __shared__ double sv[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) sv[threadIdx.x >> 5] = v;
  __syncthreads();
  double total = 0;
  for (int w = 0; w < (int)(blockDim.x >> 5); w++) total += sv[w];
  return total;
}

// Exclusive prefix of each thread's value over the block, in thread order.
__device__ double blockExclusiveScan(double v, double* total) {
  __shared__ double sw[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  double inclusive = v;
  for (int o = 1; o < 32; o <<= 1) {
    double up = __shfl_up_sync(0xffffffffu, inclusive, o);
    if (lane >= o) inclusive += up;
  }
  __syncthreads();
  if (lane == 31) sw[warp] = inclusive;
  __syncthreads();
  double before = 0, all = 0;
  for (int w = 0; w < (int)(blockDim.x >> 5); w++) {
    if (w < warp) before += sw[w];
    all += sw[w];
  }
  *total = all;
  return before + inclusive - v;
}

// The kept ids of one row, in the order the draw walks them: sorted (largest first) or by id.
struct Candidates {
  const double* scores;  // sorted scores, or the scores by id
  const int32_t* ids;    // sorted ids; null: position j is id j
  double max, temperature;
  __device__ double weight(int64_t j) const { return exp(__ddiv_rn(scores[j] - max, temperature)); }
  __device__ int32_t id(int64_t j) const { return ids ? ids[j] : (int32_t)j; }
};

// The first position j < n where the running weight sum passes `bound` (strictly when
// `strict`, else at or above it), or -1; `total` gets the sum of all n weights. Each thread
// sums a contiguous chunk, the chunks' prefixes come from a block scan.
__device__ int64_t firstCrossing(const Candidates& c, int64_t n, double bound, bool strict, bool useTotal,
                                 double fraction, double* total) {
  __shared__ unsigned long long found;
  const int64_t chunk = (n + blockDim.x - 1) / blockDim.x;
  const int64_t begin = min(n, (int64_t)threadIdx.x * chunk), end = min(n, begin + chunk);
  double local = 0;
  for (int64_t j = begin; j < end; j++) local += c.weight(j);
  double sum;
  const double before = blockExclusiveScan(local, &sum);
  *total = sum;
  if (useTotal) bound = fraction * sum;
  if (threadIdx.x == 0) found = ~0ull;
  __syncthreads();
  const bool mayCross = strict ? before + local > bound : before + local >= bound;
  if (mayCross) {
    double acc = before;
    for (int64_t j = begin; j < end; j++) {
      acc += c.weight(j);
      if (strict ? acc > bound : acc >= bound) {
        atomicMin(&found, (unsigned long long)j);
        break;
      }
    }
  }
  __syncthreads();
  return found == ~0ull ? -1 : (int64_t)found;
}

__global__ void pickKernel(const float* logits, int64_t V, const RowSpec* specs, const double* scores,
                           const double* sortedScores, const int32_t* sortedIds, int32_t* outIds,
                           float* outLogprobs, int32_t width) {
  const RowSpec r = specs[blockIdx.x];
  const double* row = scores + (int64_t)blockIdx.x * V;
  // The argmax of the scores: the greedy pick, and the sampler's fallbacks.
  BestIndex best{-INFINITY, V};
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) best = better(best, BestIndex{row[i], i});
  best = blockBest(best);
  const int32_t argmaxId = (int32_t)(best.index == V ? 0 : best.index);
  int32_t id = argmaxId;
  if (r.temperature > 0) {
    const bool cutK = r.topK > 0 && r.topK < V;
    Candidates c{row, nullptr, best.value, r.temperature};
    if (r.sorted) {
      c.scores = sortedScores + (int64_t)blockIdx.x * V;
      c.ids = sortedIds + (int64_t)blockIdx.x * V;
    }
    int64_t n = cutK ? r.topK : V;
    bool cut = cutK;
    bool single = false;
    double total;
    if (r.topP < 1) {
      // The weight top-p is a share of: the top k's, or every id's (the same sum in any order).
      int64_t m = firstCrossing(c, n, 0, false, true, r.topP, &total);
      if (m < 0) single = true;  // rounding left the prefix short: the sampler keeps the argmax
      n = m + 1;
      cut = true;
    }
    if (!single) {
      double kept = 0;
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x) kept += c.weight(j);
      total = blockSum(kept);
      const int64_t j = firstCrossing(c, n, r.uniform * total, true, false, 0, &total);
      id = j >= 0 ? c.id(j) : cut ? c.id(n - 1) : argmaxId;
    }
  }
  int32_t* ids = outIds + (int64_t)blockIdx.x * width;
  float* lps = outLogprobs + (int64_t)blockIdx.x * width;
  for (int j = threadIdx.x; j < width; j += blockDim.x) {
    ids[j] = j == 0 ? id : -1;
    lps[j] = 0.f;
  }
  if (r.logprobs < 0) return;
  // log-softmax of the raw logits: logprob(i) = l_i - (max + log sum exp(l - max)).
  const float* raw = logits + (int64_t)r.row * V;
  BestIndex top{-INFINITY, V};
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) top = better(top, BestIndex{(double)raw[i], i});
  top = blockBest(top);
  double sum = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) sum += exp((double)raw[i] - top.value);
  const double logZ = top.value + log(blockSum(sum));
  __syncthreads();
  if (threadIdx.x == 0) lps[0] = (float)((double)raw[id] - logZ);
  // The most likely ids, one pass each: the best (value, lower id) strictly below the last.
  BestIndex last = top;
  for (int t = 0; t < r.logprobs && t < V; t++) {
    if (t > 0) {
      BestIndex next{-INFINITY, V};
      for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
        const double v = raw[i];
        const bool below = v < last.value || (v == last.value && i > last.index);
        if (below) next = better(next, BestIndex{v, i});
      }
      last = blockBest(next);
      if (last.index == V) break;
    }
    if (threadIdx.x == 0) {
      ids[1 + t] = (int32_t)last.index;
      lps[1 + t] = (float)((double)raw[last.index] - logZ);
    }
  }
}

}  // namespace

void SampleStaging::reserve(size_t n) {
  if (!done) MC_CUDA(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  if (n <= bytes) return;
  if (host) MC_CUDA(cudaFreeHost(host));
  host = nullptr;
  bytes = 0;
  MC_CUDA(cudaHostAlloc(&host, n, cudaHostAllocDefault));
  bytes = n;
}

void SampleStaging::release() {
  if (done) cudaEventSynchronize(done);
  if (host) cudaFreeHost(host);
  if (done) cudaEventDestroy(done);
  host = nullptr;
  done = nullptr;
  bytes = 0;
}

void launchSample(cudaStream_t s, Scratch& scratch, SampleStaging& staging, const View& logits,
                  const SampleBatch& batch, const View& ids, const View& logprobs) {
  const int64_t V = logits.dim(1);
  const int S = (int)batch.rows.size();
  std::vector<RowSpec> specs(S);
  std::vector<int32_t> sortBegin(S), sortEnd(S);
  for (int i = 0; i < S; i++) {
    const SampleRow& r = batch.rows[i];
    const bool sorted = r.temperature > 0 && ((r.topK > 0 && r.topK < V) || r.topP < 1);
    specs[i] = RowSpec{r.temperature, r.topP, r.repetitionPenalty, r.presencePenalty, r.frequencyPenalty,
                       r.uniform, r.row, r.topK, r.logprobs, r.penaltyBegin, r.penaltyCount, r.maskBegin,
                       r.maskCount, sorted ? 1 : 0};
    sortBegin[i] = (int32_t)(i * V);
    sortEnd[i] = (int32_t)(sorted ? (i + 1) * V : i * V);  // an empty segment: left unsorted
  }
  const bool anySorted = std::any_of(specs.begin(), specs.end(), [](const RowSpec& r) { return r.sorted != 0; });
  const int64_t items = (int64_t)S * V;
  if (items > INT32_MAX) throw BackendError("sample: " + std::to_string(items) + " scores exceed the sort's index range");
  size_t sortBytes = 0;
  if (anySorted) {
    MC_CUDA(cub::DeviceSegmentedRadixSort::SortPairsDescending(
        nullptr, sortBytes, (const double*)nullptr, (double*)nullptr, (const int32_t*)nullptr, (int32_t*)nullptr,
        (int)items, S, (const int32_t*)nullptr, (const int32_t*)nullptr, 0, 64, s));
  }
  // One workspace: specs, lists, offsets, scores, and (when a row sorts) the sort's buffers.
  auto align = [](size_t n) { return (n + 255) & ~size_t(255); };
  const auto bytesOf = [](const std::vector<int32_t>& v) { return v.size() * sizeof(int32_t); };
  size_t at = 0;
  const size_t oSpecs = at;
  at += align(S * sizeof(RowSpec));
  const size_t oPenIds = at;
  at += align(bytesOf(batch.penaltyIds) + 4);
  const size_t oPenCounts = at;
  at += align(bytesOf(batch.penaltyCounts) + 4);
  const size_t oMasked = at;
  at += align(bytesOf(batch.maskedIds) + 4);
  const size_t oBegin = at;
  at += align(S * 4);
  const size_t oEnd = at;
  at += align(S * 4);
  const size_t oScores = at;
  at += align(items * 8);
  size_t oSorted = 0, oIota = 0, oSortedIds = 0, oTemp = 0;
  if (anySorted) {
    oSorted = at;
    at += align(items * 8);
    oIota = at;
    at += align(items * 4);
    oSortedIds = at;
    at += align(items * 4);
    oTemp = at;
    at += align(sortBytes);
  }
  char* base = static_cast<char*>(scratch.get(at, s));
  // The row specs and lists go through pinned memory in one asynchronous copy: a copy from
  // pageable memory makes the driver wait for the stream, and a device thread blocked in the
  // driver can stall the other devices of the process (a tensor-parallel peer this stream is
  // waiting for). The pinned memory is reserved when the backend starts, for the same reason
  // (cudaHostAlloc waits for the device); a batch whose penalty lists outgrow it grows it here.
  // The previous call's copy has long finished when the next one reuses it.
  const size_t hostBytes = oScores;
  if (staging.done) MC_CUDA(cudaEventSynchronize(staging.done));
  if (staging.bytes < hostBytes) staging.reserve(hostBytes * 2);
  char* host = static_cast<char*>(staging.host);
  auto put = [&](size_t offset, const void* src, size_t bytes) {
    if (bytes) std::memcpy(host + offset, src, bytes);
  };
  put(oSpecs, specs.data(), S * sizeof(RowSpec));
  put(oPenIds, batch.penaltyIds.data(), bytesOf(batch.penaltyIds));
  put(oPenCounts, batch.penaltyCounts.data(), bytesOf(batch.penaltyCounts));
  put(oMasked, batch.maskedIds.data(), bytesOf(batch.maskedIds));
  put(oBegin, sortBegin.data(), S * 4);
  put(oEnd, sortEnd.data(), S * 4);
  MC_CUDA(cudaMemcpyAsync(base, host, hostBytes, cudaMemcpyHostToDevice, s));
  MC_CUDA(cudaEventRecord(staging.done, s));
  auto* d_specs = reinterpret_cast<const RowSpec*>(base + oSpecs);
  auto* scores = reinterpret_cast<double*>(base + oScores);
  auto* sorted = anySorted ? reinterpret_cast<double*>(base + oSorted) : nullptr;
  auto* iota = anySorted ? reinterpret_cast<int32_t*>(base + oIota) : nullptr;
  auto* sortedIds = anySorted ? reinterpret_cast<int32_t*>(base + oSortedIds) : nullptr;
  scoresKernel<<<S, kThreads, 0, s>>>(logits.as<float>(), V, d_specs, reinterpret_cast<const int32_t*>(base + oPenIds),
                                      reinterpret_cast<const int32_t*>(base + oPenCounts),
                                      reinterpret_cast<const int32_t*>(base + oMasked), scores, iota);
  MC_LAUNCHED("sample scores");
  if (anySorted) {
    MC_CUDA(cub::DeviceSegmentedRadixSort::SortPairsDescending(
        base + oTemp, sortBytes, scores, sorted, iota, sortedIds, (int)items, S,
        reinterpret_cast<const int32_t*>(base + oBegin), reinterpret_cast<const int32_t*>(base + oEnd), 0, 64, s));
  }
  pickKernel<<<S, kThreads, 0, s>>>(logits.as<float>(), V, d_specs, scores, sorted, sortedIds, ids.as<int32_t>(),
                                    logprobs.as<float>(), (int32_t)ids.dim(1));
  MC_LAUNCHED("sample pick");
}

}  // namespace cuda
}  // namespace medcluster
