// A dot product with one fixed summation order: 16 interleaved partial sums, a fixed
// pairwise fold, then the tail in order. The order depends only on n, so a row gives
// the same bits whatever else is computed with it. Built with -ffp-contract=off, so
// every variant the compiler vectorizes rounds exactly like the scalar loop.
#pragma once

#include <cstdint>

namespace medcluster {

inline float dotFixed(const float* a, const float* b, int64_t n) {
  float acc[16] = {};
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    for (int j = 0; j < 16; j++) acc[j] += a[k + j] * b[k + j];
  }
  for (int width = 8; width >= 1; width /= 2) {
    for (int j = 0; j < width; j++) acc[j] += acc[j + width];
  }
  float sum = acc[0];
  for (; k < n; k++) sum += a[k] * b[k];
  return sum;
}

}  // namespace medcluster
