// Causal attention over the paged KV cache, one (token, head) pair per work item.
// Scores for positions 0..pos are computed in order through the block table, then
// a two-pass fp32 softmax and an in-order weighted sum of V. Nothing depends on the
// other tokens in the call, so a position decoded alone matches the same position
// computed inside a prefill bit for bit.
#include <cmath>
#include <vector>

#include "dot.h"
#include "half.h"
#include "kernels.h"

namespace medcluster::cpu {

void attention(ThreadPool& pool, const View& q, const View& kCache, const View& vCache,
               const View& blockTables, const View& tokenSeq, const View& positions,
               const AttentionShape& shape, const View& out) {
  const int64_t T = q.dim(0);
  const int64_t nh = shape.numHeads, nkv = shape.numKvHeads, hd = shape.headDim;
  const int64_t group = nh / nkv;  // query heads per KV head (GQA)
  const int64_t bs = kCache.dim(1);
  const int64_t maxBlocks = blockTables.dim(1);
  const uint16_t* qh = q.as<uint16_t>();
  const uint16_t* kc = kCache.as<uint16_t>();
  const uint16_t* vc = vCache.as<uint16_t>();
  const int32_t* tables = blockTables.as<int32_t>();
  const int32_t* seqOf = tokenSeq.as<int32_t>();
  const int32_t* pos = positions.as<int32_t>();
  uint16_t* oh = out.as<uint16_t>();

  pool.parallelFor(T * nh, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> qf(hd), kf(hd), vf(hd), acc(hd), scores;
    for (int64_t item = i0; item < i1; item++) {
      const int64_t t = item / nh, h = item % nh, kvh = h / group;
      const int32_t* table = tables + static_cast<int64_t>(seqOf[t]) * maxBlocks;
      const int64_t n = static_cast<int64_t>(pos[t]) + 1;
      halfToFloatRow(qh + t * nh * hd + h * hd, qf.data(), hd);
      auto slot = [&](int64_t j) {
        return ((static_cast<int64_t>(table[j / bs]) * bs + j % bs) * nkv + kvh) * hd;
      };
      scores.resize(static_cast<size_t>(n));
      float maxScore = -INFINITY;
      for (int64_t j = 0; j < n; j++) {
        halfToFloatRow(kc + slot(j), kf.data(), hd);
        scores[j] = dotFixed(qf.data(), kf.data(), hd) * shape.scale;
        maxScore = std::max(maxScore, scores[j]);
      }
      float sum = 0.0f;
      for (int64_t j = 0; j < n; j++) {
        scores[j] = std::exp(scores[j] - maxScore);
        sum += scores[j];
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t j = 0; j < n; j++) {
        halfToFloatRow(vc + slot(j), vf.data(), hd);
        const float p = scores[j];
        for (int64_t d = 0; d < hd; d++) acc[d] += p * vf[d];
      }
      const float inv = 1.0f / sum;
      uint16_t* o = oh + t * nh * hd + h * hd;
      for (int64_t d = 0; d < hd; d++) o[d] = floatToHalf(acc[d] * inv);
    }
  });
}

}  // namespace medcluster::cpu
