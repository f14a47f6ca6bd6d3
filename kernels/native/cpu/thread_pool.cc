#include "thread_pool.h"

#include <algorithm>
#include <atomic>

namespace medcluster {

struct ThreadPool::Job {
  const std::function<void(int64_t, int64_t)>* fn;
  int64_t n;
  int64_t chunk;
  std::atomic<int64_t> next{0};
  std::mutex errorMu;
  std::exception_ptr error;
};

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < std::max(1, threads); i++) workers_.emplace_back([this] { workerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::runChunks(Job& job) {
  for (;;) {
    const int64_t begin = job.next.fetch_add(job.chunk);
    if (begin >= job.n) return;
    try {
      (*job.fn)(begin, std::min(job.n, begin + job.chunk));
    } catch (...) {
      std::lock_guard<std::mutex> lock(job.errorMu);
      if (!job.error) job.error = std::current_exception();
    }
  }
}

void ThreadPool::workerLoop() {
  uint64_t seen = 0;
  for (;;) {
    Job* job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      job = job_;
      if (job == nullptr) continue;  // woke after the caller finished that job alone
      busy_++;
    }
    runChunks(*job);
    {
      std::lock_guard<std::mutex> lock(mu_);
      busy_--;
    }
    done_.notify_all();
  }
}

void ThreadPool::parallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (workers_.empty() || n <= grain) {
    fn(0, n);
    return;
  }
  // About four ranges per thread balances uneven ranges without much hand-out traffic.
  const int64_t chunk = std::max(grain, (n + 4 * size() - 1) / (4 * size()));
  Job job;
  job.fn = &fn;
  job.n = n;
  job.chunk = chunk;
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &job;
    generation_++;
  }
  wake_.notify_all();
  runChunks(job);
  {
    // Workers that woke for this generation hold `job`; wait until they let go.
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return busy_ == 0; });
    job_ = nullptr;
  }
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace medcluster
