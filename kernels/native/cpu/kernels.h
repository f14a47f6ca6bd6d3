// CPU kernels behind CpuBackend, one file per family. Each takes the pool it may
// parallelize on; shapes were checked by the binding before the op was queued.
#pragma once

#include "../backend.h"
#include "thread_pool.h"

namespace medcluster::cpu {

void awqLinear(ThreadPool& pool, const View& x, const AwqWeights& w, const View& out);
void linear(ThreadPool& pool, const View& x, const View& w, const View& out);
void attention(ThreadPool& pool, const View& q, const View& kCache, const View& vCache,
               const View& blockTables, const View& tokenSeq, const View& positions,
               const AttentionShape& shape, const View& out);
void rope(ThreadPool& pool, const View& q, const View& k, const View& positions, int64_t headDim,
          float theta);
void rmsNorm(ThreadPool& pool, const View& x, const View* delta, const View& w, float eps,
             const View& out);
void addInPlace(ThreadPool& pool, const View& residual, const View& delta);
void siluMul(ThreadPool& pool, const View& gateUp, const View& out);
void embedding(ThreadPool& pool, const View& table, const View& ids, const View& out);
void gatherRows(const View& x, const View& rows, const View& out);
void copyCols(ThreadPool& pool, const View& src, int64_t srcCol0, const View& dst, int64_t dstCol0,
              int64_t cols);
// Backend::sample: sampler.ts's sample() for each batch row, rows in parallel (sample.cc).
void sample(ThreadPool& pool, const View& logits, const SampleBatch& batch, const View& ids,
            const View& logprobs);
void writeKv(const View& kCache, const View& vCache, const View& k, const View& v, const View& slots);
void randomBits(ThreadPool& pool, void* data, size_t bytes, uint64_t seed);
// Available (MemAvailable: free plus reclaimable cache) and total RAM.
void hostMemoryInfo(size_t* freeBytes, size_t* totalBytes);
void readFileRegion(void* dst, const std::string& path, uint64_t fileOffset, int64_t cols,
                    int64_t elemSize, int64_t r0, int64_t r1, int64_t c0, int64_t c1);

// Stores f32 values into an f16 or f32 output row.
void storeRow(const float* src, const View& out, int64_t offset, int64_t n);

}  // namespace medcluster::cpu
