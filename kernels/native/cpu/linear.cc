// Dense f16 linear in nn.Linear layout (w [N, K]): out[m][n] = dot(x[m], w[n]).
// Split over output columns; each output is one dotFixed, whose order depends on K
// only, so results are independent of the batch and of the thread count.
#include <vector>

#include "dot.h"
#include "half.h"
#include "kernels.h"

namespace medcluster::cpu {

void linear(ThreadPool& pool, const View& x, const View& w, const View& out) {
  const int64_t M = x.dim(0), K = x.dim(1), N = w.dim(0);
  std::vector<float> xf(static_cast<size_t>(M * K));
  halfToFloatRow(x.as<uint16_t>(), xf.data(), M * K);
  const uint16_t* wh = w.as<uint16_t>();
  pool.parallelFor(N, 16, [&](int64_t n0, int64_t n1) {
    std::vector<float> wrow(static_cast<size_t>(K));
    std::vector<float> col(static_cast<size_t>(M));
    for (int64_t n = n0; n < n1; n++) {
      halfToFloatRow(wh + n * K, wrow.data(), K);
      for (int64_t m = 0; m < M; m++) {
        const float v = dotFixed(xf.data() + m * K, wrow.data(), K);
        storeRow(&v, out, m * N + n, 1);
      }
    }
  });
}

}  // namespace medcluster::cpu
