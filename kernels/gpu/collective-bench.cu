// medcluster-collective-bench: the CUDA IPC all-reduce kernel's own latency, both ranks in one
// process (two CUDA backends on one GPU, each with its own stream, so their kernels run at the
// same time), timed with CUDA events around graph replays of 100 all-reduces each, median of 7.
// For scale: the same group with one rank (no peer to wait for) and a graph of 100 trivial
// element-wise kernels. Rows x 8192 fp32 for 1, 16 and 64 rows.
//   ./medcluster-collective-bench      prints a table and one JSON line (RESULT ...)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../native/backend.h"
#include "../native/collective.h"
#include "../native/cuda/common.cuh"

using namespace medcluster;

namespace {

constexpr int kCalls = 100;  // all-reduces per graph
constexpr int kReps = 7;

struct Rank {
  std::unique_ptr<Backend> backend;
  std::shared_ptr<DeviceGroup> group;
  std::shared_ptr<Buffer> x;
  View v;
};

View viewOf(Buffer& b, int64_t rows, int64_t cols) {
  View v;
  v.data = b.data;
  v.dtype = DType::F32;
  v.shape = {rows, cols};
  return v;
}

void fill(Backend& b, Buffer& buf, size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> host(n);
  for (float& f : host) f = u(rng);
  b.upload(buf, host.data(), n * 4);
}

// Median per-call microseconds of `launch` (which queues one graph replay on every rank's
// stream) over kReps runs of `replays` replays, timed by events on each rank's stream (the
// slowest rank counts).
template <typename Launch>
double timeReplays(std::vector<Rank*> ranks, int replays, int callsPerReplay, Launch launch) {
  std::vector<double> per;
  std::vector<cudaEvent_t> start(ranks.size()), stop(ranks.size());
  for (size_t r = 0; r < ranks.size(); ++r) {
    MC_CUDA(cudaEventCreate(&start[r]));
    MC_CUDA(cudaEventCreate(&stop[r]));
  }
  for (int rep = 0; rep < kReps; ++rep) {
    for (size_t r = 0; r < ranks.size(); ++r) MC_CUDA(cudaEventRecord(start[r], cuda::backendStream(*ranks[r]->backend)));
    for (int k = 0; k < replays; ++k) launch();
    for (size_t r = 0; r < ranks.size(); ++r) MC_CUDA(cudaEventRecord(stop[r], cuda::backendStream(*ranks[r]->backend)));
    double worst = 0;
    for (size_t r = 0; r < ranks.size(); ++r) {
      MC_CUDA(cudaEventSynchronize(stop[r]));
      float ms = 0;
      MC_CUDA(cudaEventElapsedTime(&ms, start[r], stop[r]));
      worst = std::max(worst, (double)ms);
    }
    per.push_back(worst * 1000.0 / (replays * callsPerReplay));
  }
  for (auto& r : ranks) r->backend->runSyncChecks();
  std::sort(per.begin(), per.end());
  return per[per.size() / 2];
}

// A graph of kCalls all-reduces of r.v on r's stream.
int64_t captureAllReduces(Rank& r) {
  if (!r.backend->beginCapture()) throw BackendError("no graph capture");
  for (int i = 0; i < kCalls; ++i) r.group->allReduceSum(*r.backend, r.v);
  return r.backend->endCapture();
}

}  // namespace

int main() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device\n");
    return 77;
  }
  cudaDeviceProp prop;
  MC_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s; ranks: two backends of one process on cuda:0, one stream each\n", prop.name);
  try {
    Rank a, b, solo, plain;
    a.backend = createCudaBackend(0);
    b.backend = createCudaBackend(0);
    solo.backend = createCudaBackend(0);
    plain.backend = createCudaBackend(0);
    CollectiveOptions oa, ob, os;
    oa.rank = 0;
    oa.size = 2;
    ob.rank = 1;
    ob.size = 2;
    os.rank = 0;
    os.size = 1;
    auto ga = createIpcGroup(*a.backend, oa);
    auto gb = createIpcGroup(*b.backend, ob);
    auto gs = createIpcGroup(*solo.backend, os);
    std::vector<std::vector<uint8_t>> handles{ga->localHandle(), gb->localHandle()};
    ga->connect(handles);
    gb->connect(handles);
    gs->connect({gs->localHandle()});
    a.group = ga;
    b.group = gb;
    solo.group = gs;

    std::string json = "{";
    std::printf("%6s %14s %14s %14s %16s\n", "rows", "ipc2 graph us", "ipc2 eager us", "ipc1 graph us", "add graph us");
    for (int64_t rows : {1, 16, 64}) {
      const int64_t cols = 8192;
      const size_t n = (size_t)(rows * cols);
      for (Rank* r : {&a, &b, &solo, &plain}) {
        r->x = r->backend->alloc(n * 4);
        fill(*r->backend, *r->x, n, (unsigned)(rows + (r == &b)));
        r->v = viewOf(*r->x, rows, cols);
      }
      // Warm-up, eagerly (also sizes nothing: the collective allocates no workspace).
      for (int i = 0; i < 10; ++i) {
        a.group->allReduceSum(*a.backend, a.v);
        b.group->allReduceSum(*b.backend, b.v);
      }
      a.backend->synchronize();
      b.backend->synchronize();
      const int64_t graphA = captureAllReduces(a), graphB = captureAllReduces(b), graphS = captureAllReduces(solo);
      auto delta = plain.backend->alloc(n * 4);
      fill(*plain.backend, *delta, n, 99);
      View dv = viewOf(*delta, rows, cols);
      if (!plain.backend->beginCapture()) throw BackendError("no graph capture");
      for (int i = 0; i < kCalls; ++i) plain.backend->addInPlace(plain.v, dv);
      const int64_t graphP = plain.backend->endCapture();

      const double two = timeReplays({&a, &b}, 5, kCalls, [&] {
        a.backend->replayGraph(graphA);
        b.backend->replayGraph(graphB);
      });
      const double eager = timeReplays({&a, &b}, 1, kCalls * 2, [&] {
        for (int i = 0; i < kCalls * 2; ++i) {
          a.group->allReduceSum(*a.backend, a.v);
          b.group->allReduceSum(*b.backend, b.v);
        }
      });
      const double one = timeReplays({&solo}, 5, kCalls, [&] { solo.backend->replayGraph(graphS); });
      const double add = timeReplays({&plain}, 5, kCalls, [&] { plain.backend->replayGraph(graphP); });
      std::printf("%6lld %14.2f %14.2f %14.2f %16.2f\n", (long long)rows, two, eager, one, add);
      char buf[256];
      std::snprintf(buf, sizeof buf, "%s\"rows%lld\":{\"ipc2GraphUs\":%.2f,\"ipc2EagerUs\":%.2f,\"ipc1GraphUs\":%.2f,\"addGraphUs\":%.2f}",
                    rows == 1 ? "" : ",", (long long)rows, two, eager, one, add);
      json += buf;
      for (Rank* r : {&a, &b, &solo, &plain}) r->backend->synchronize();
      a.backend->releaseGraph(graphA);
      b.backend->releaseGraph(graphB);
      solo.backend->releaseGraph(graphS);
      plain.backend->releaseGraph(graphP);
    }
    std::printf("RESULT collective-bench-us %s}\n", json.c_str());
    a.group.reset();
    b.group.reset();
    solo.group.reset();
    for (Rank* r : {&a, &b, &solo, &plain}) r->x.reset();
  } catch (const std::exception& e) {
    std::printf("FAIL %s\n", e.what());
    return 1;
  }
  return 0;
}
