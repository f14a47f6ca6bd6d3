// Device.sample on the CPU: worker/src/sampling/sampler.ts's sample(), step for step, so the CPU
// backend picks the very token the JS sampler picks for the same row, parameters and uniform.
//
// Why a line-by-line port rather than a "mathematically equal" one: the pick depends on where
// u * total falls among running sums of the weights, and on where a top-p prefix sum crosses
// top_p * total. Any change of summation order, of the kept set's order, or of a tie rule moves
// those sums by a rounding error and, near a boundary, changes the token. So everything here is
// double precision, every sum runs in the JS's order, comparisons are written the way the JS
// writes them (so -0/+0, -inf and even NaN compare as they do there), and no product is fused
// into an add (CMakeLists.txt builds with -ffp-contract=off; the two products that meet an add,
// frequency x count and uniform x total, also go through a volatile, which no compiler fuses,
// so that holds whatever the flags). The one thing that is not the JS's
// own is exp/log: glibc's std::exp and V8's Math.exp (fdlibm) may differ in the last bit, which
// moves a sum by about an ulp; a token can differ only when a boundary falls within that of it.
//
// Rows are independent, so they run in parallel on the pool; within a row everything is serial.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels.h"

namespace medcluster::cpu {
namespace {

constexpr double kLog2e = 1.4426950408889634;  // Math.LOG2E
constexpr double kInf = std::numeric_limits<double>::infinity();

// sampler.ts argmax: the first index of the largest value ('>' is strict, so ties keep the first;
// a NaN never wins a comparison, exactly as in JS).
template <typename T>
int32_t argmaxOf(const T* v, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; i++) {
    if (v[i] > v[best]) best = i;
  }
  return static_cast<int32_t>(best);
}

// The order of sampler.ts's sort comparator `values[b] - values[a] || a - b`: larger value first,
// lower id first when the values are equal. For non-NaN values the difference is 0 (or NaN, for
// two equal infinities) exactly when they compare equal, so this is the JS order, and it is a
// strict total order, so std::sort / nth_element give the one result any correct sort gives. JS
// has no consistent order once NaN is involved (its comparator then says "by id" against every
// value); here NaN goes after every number, by id, only so the sort stays well defined.
template <typename T>
struct LargerFirst {
  const T* v;
  bool operator()(int32_t a, int32_t b) const {
    const double x = v[a], y = v[b];
    if (x > y) return true;
    if (x < y) return false;
    if (x == y) return a < b;
    const bool xNan = std::isnan(x), yNan = std::isnan(y);
    if (xNan != yNan) return yNan;
    return a < b;
  }
};

// sampler.ts topIndices: ids of the k largest values, largest first, lower id first on ties.
template <typename T>
void topIndices(const T* values, int64_t n, int64_t k, std::vector<int32_t>& ids) {
  ids.clear();
  const int64_t m = std::min(k, n);
  if (m <= 0) return;
  if (m > 64) {
    // The JS sorts every id and keeps the first m; selecting then sorting the first m gives the
    // same ids in the same order because the order is total (see LargerFirst).
    ids.resize(static_cast<size_t>(n));
    std::iota(ids.begin(), ids.end(), 0);
    const LargerFirst<T> cmp{values};
    if (m < n) std::nth_element(ids.begin(), ids.begin() + m, ids.end(), cmp);
    std::sort(ids.begin(), ids.begin() + m, cmp);
    ids.resize(static_cast<size_t>(m));
    return;
  }
  // The JS's insertion into a short sorted list, literally (the same comparisons in the same
  // order), so its result holds for every input it accepts.
  ids.reserve(static_cast<size_t>(m));
  for (int64_t i = 0; i < n; i++) {
    const T v = values[i];
    const bool full = static_cast<int64_t>(ids.size()) == m;
    if (full && !(v > values[ids[m - 1]])) continue;
    int64_t at = full ? m - 1 : static_cast<int64_t>(ids.size());
    while (at > 0 && v > values[ids[at - 1]]) at--;
    if (full) ids.pop_back();
    ids.insert(ids.begin() + at, static_cast<int32_t>(i));
  }
}

// sampler.ts nucleus: the shortest prefix of ids (most likely first) whose weight reaches needed.
// Truncates ids to it and returns true; false (ids untouched) when no prefix does.
bool nucleus(std::vector<int32_t>& ids, const double* weights, double needed) {
  double mass = 0;
  for (size_t i = 0; i < ids.size(); i++) {
    mass += weights[ids[i]];
    if (mass >= needed) {
      ids.resize(i + 1);
      return true;
    }
  }
  return false;
}

struct Scratch {
  std::vector<double> scores, z, weights;
  std::vector<int32_t> ids, tops;
};

// sampler.ts nucleusOfAll: the top-p nucleus of the whole vocabulary without sorting all of it.
// Ids are bucketed by powers of two below the most likely one; only the buckets whose mass
// reaches needed, plus one, are sorted. Their ids are the ids with the largest values (the
// octave only grows as the value falls), so their sorted order is the start of the full sorted
// order and the prefix sums are the full sort's: the same nucleus when it lies among them, and
// the full sort otherwise, as in the JS.
//
// z holds (scores[i] - max) / temperature, the weights' exponents. The JS's octave is
// floor(((max - scores[i]) / temperature) * LOG2E); rounding is symmetric, so (max - s) / t is
// exactly -z and y = -z * LOG2E is the JS's value, bit for bit. floor itself is not needed:
// min(63, floor(y)) is 63 for y >= 63 and the truncation for 0 <= y < 63, and floor(y) <= n
// (n an integer) holds exactly when y < n + 1, NaN failing both as it does in JS.
bool nucleusOfAll(const double* scores, const double* z, const double* weights, int64_t n, double needed,
                  std::vector<int32_t>& ids) {
  double buckets[64] = {};
  for (int64_t i = 0; i < n; i++) {
    if (!(weights[i] > 0)) continue;
    const double y = -z[i] * kLog2e;
    // y >= 0 here (max is the largest score, and the weight is not NaN); a negative index is a
    // write a typed array ignores, so skipping one matches the JS whatever happens.
    if (!(y >= 0)) continue;
    buckets[y >= 63 ? 63 : static_cast<int>(y)] += weights[i];
  }
  int last = 0;
  for (double mass = buckets[0]; mass < needed && last < 63;) mass += buckets[++last];
  ids.clear();
  const double bound = last + 2;  // octave <= last + 1
  for (int64_t i = 0; i < n; i++) {
    if (-z[i] * kLog2e < bound) ids.push_back(static_cast<int32_t>(i));
  }
  const LargerFirst<double> cmp{scores};
  std::sort(ids.begin(), ids.end(), cmp);
  if (nucleus(ids, weights, needed)) return true;
  ids.resize(static_cast<size_t>(n));
  std::iota(ids.begin(), ids.end(), 0);
  std::sort(ids.begin(), ids.end(), cmp);
  return nucleus(ids, weights, needed);
}

// sampler.ts draw: one inverse-CDF draw (uniform u) from softmax(scores / temperature) after
// top-k and top-p.
int32_t draw(const double* scores, int64_t n, const SampleRow& r, Scratch& s) {
  double max = -kInf;
  for (int64_t i = 0; i < n; i++) {
    if (scores[i] > max) max = scores[i];
  }
  s.z.resize(static_cast<size_t>(n));
  s.weights.resize(static_cast<size_t>(n));
  double* z = s.z.data();
  double* weights = s.weights.data();
  for (int64_t i = 0; i < n; i++) {
    z[i] = (scores[i] - max) / r.temperature;
    weights[i] = std::exp(z[i]);
  }
  // As in the JS: `cut` says whether ids holds the candidates (most likely first); when it does
  // not, the draw walks every id in id order.
  std::vector<int32_t>& ids = s.ids;
  bool cut = r.topK > 0 && r.topK < n;
  if (cut) topIndices(scores, n, r.topK, ids);
  if (r.topP < 1) {
    double total = 0;
    if (cut) {
      for (int32_t id : ids) total += weights[id];
    } else {
      for (int64_t i = 0; i < n; i++) total += weights[i];
    }
    const double needed = r.topP * total;
    const bool found = cut ? nucleus(ids, weights, needed)
                           : nucleusOfAll(scores, z, weights, n, needed, ids);
    if (!found) ids.assign(1, argmaxOf(scores, n));  // `?? [argmax(scores)]`
    cut = true;
  }
  const int64_t count = cut ? static_cast<int64_t>(ids.size()) : n;
  double total = 0;
  for (int64_t j = 0; j < count; j++) total += weights[cut ? ids[j] : j];
  // u * total, rounded on its own before the first subtraction (volatile: never an fma).
  volatile double scaled = r.uniform * total;
  double target = scaled;
  for (int64_t j = 0; j < count; j++) {
    const int64_t id = cut ? ids[j] : j;
    target -= weights[id];
    if (target < 0) return static_cast<int32_t>(id);
  }
  // Rounding (or weights that are NaN) left target >= 0: the last candidate, as in the JS.
  return cut ? ids.back() : argmaxOf(scores, n);
}

void sampleRow(const float* logits, int64_t n, const SampleBatch& batch, const SampleRow& r, int32_t* outIds,
               float* outLogprobs, Scratch& s) {
  // sampler.ts adjustedScores: the penalties, then the mask, on float64 copies of the logits
  // (the JS reads the f32 row itself when neither applies: the same values).
  s.scores.resize(static_cast<size_t>(n));
  double* scores = s.scores.data();
  for (int64_t i = 0; i < n; i++) scores[i] = logits[i];
  for (int32_t j = 0; j < r.penaltyCount; j++) {
    const int64_t id = batch.penaltyIds[r.penaltyBegin + j];
    if (id >= n) continue;  // an id past this vocabulary: the JS skips it too
    const double count = batch.penaltyCounts[r.penaltyBegin + j];
    double v = scores[id];
    v = v > 0 ? v / r.repetitionPenalty : v * r.repetitionPenalty;
    // `s - frequency * count - presence`, rounded after every operation (volatile: never an fma).
    volatile double frequency = r.frequencyPenalty * count;
    v = v - frequency;
    v = v - r.presencePenalty;
    scores[id] = v;
  }
  for (int32_t j = 0; j < r.maskCount; j++) {
    const int64_t id = batch.maskedIds[r.maskBegin + j];
    if (id < n) scores[id] = -kInf;
  }

  const int32_t id = r.temperature == 0 ? argmaxOf(scores, n) : draw(scores, n, r, s);
  outIds[0] = id;
  if (r.logprobs < 0) return;

  // sampler.ts logPartition / logprobsOf, from the raw logits.
  const double max = logits[argmaxOf(logits, n)];
  double sum = 0;
  for (int64_t i = 0; i < n; i++) sum += std::exp(static_cast<double>(logits[i]) - max);
  const double logZ = max + std::log(sum);
  outLogprobs[0] = static_cast<float>(static_cast<double>(logits[id]) - logZ);
  topIndices(logits, n, r.logprobs, s.tops);
  for (size_t j = 0; j < s.tops.size(); j++) {
    outIds[1 + j] = s.tops[j];
    outLogprobs[1 + j] = static_cast<float>(static_cast<double>(logits[s.tops[j]]) - logZ);
  }
}

}  // namespace

void sample(ThreadPool& pool, const View& logits, const SampleBatch& batch, const View& ids,
            const View& logprobs) {
  const int64_t V = logits.dim(1);
  const int64_t S = static_cast<int64_t>(batch.rows.size());
  const int64_t width = 1 + batch.topLogprobs;
  const float* xs = logits.as<float>();
  int32_t* outIds = ids.as<int32_t>();
  float* outLogprobs = logprobs.as<float>();
  // Columns a row does not fill: id -1 and logprob 0 (past its own logprobs count, a vocabulary
  // smaller than that count, or no logprobs at all).
  std::fill(outIds, outIds + S * width, -1);
  std::fill(outLogprobs, outLogprobs + S * width, 0.f);
  pool.parallelFor(S, 1, [&](int64_t s0, int64_t s1) {
    Scratch scratch;
    for (int64_t i = s0; i < s1; i++) {
      const SampleRow& r = batch.rows[i];
      sampleRow(xs + static_cast<int64_t>(r.row) * V, V, batch, r, outIds + i * width, outLogprobs + i * width,
                scratch);
    }
  });
}

}  // namespace medcluster::cpu
