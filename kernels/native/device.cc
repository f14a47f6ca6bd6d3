#include "device.h"

#include <exception>
#include <future>

namespace medcluster {

Slot::Slot(DType t, std::vector<int64_t> s) : dtype(t), shape(std::move(s)) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  bytes = static_cast<size_t>(n) * dtypeSize(dtype);
}

namespace {
// The device thread's selected pool (each device has its own thread).
thread_local std::shared_ptr<GraphPool> tPool;
thread_local bool tCapturing = false;
}  // namespace

void GraphPool::select(std::shared_ptr<GraphPool> pool, bool capturing) {
  tPool = std::move(pool);
  tCapturing = tPool && capturing;
}
GraphPool* GraphPool::selected() { return tPool.get(); }

std::shared_ptr<Buffer> GraphPool::take(size_t bytes, Backend& backend) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(bytes);
    if (it != free_.end() && !it->second.empty()) {
      std::shared_ptr<Buffer> b = std::move(it->second.back());
      it->second.pop_back();
      return b;
    }
  }
  if (tCapturing) {
    throw BackendError("graph capture needs a " + std::to_string(bytes) +
                       "-byte buffer its warm-up did not use: capture exactly the sequence that was warmed up");
  }
  return backend.alloc(bytes);
}

void GraphPool::give(std::shared_ptr<Buffer> buffer) {
  std::lock_guard<std::mutex> lock(mu_);
  free_[buffer->bytes].push_back(std::move(buffer));
}

Slot::~Slot() {
  if (pool_ && buffer_) pool_->give(std::move(buffer_));
}

Buffer& Slot::buffer(const std::shared_ptr<Backend>& backend) {
  if (!buffer_) {
    owner_ = backend;
    if (tPool && bytes > 0) {
      pool_ = tPool;
      buffer_ = pool_->take(bytes, *backend);
    } else {
      buffer_ = backend->alloc(bytes);
    }
  }
  return *buffer_;
}

void Slot::adopt(const std::shared_ptr<Backend>& backend, std::shared_ptr<Buffer> buffer) {
  owner_ = backend;
  buffer_ = std::move(buffer);
}

View Slot::view(const std::shared_ptr<Backend>& backend) {
  View v;
  v.data = buffer(backend).data;
  v.dtype = dtype;
  v.shape = shape;
  return v;
}

Device::Device(const Factory& factory, Post post) : post_(std::move(post)) {
  std::promise<std::string> ready;
  std::future<std::string> started = ready.get_future();
  thread_ = std::thread([this, &factory, &ready] { loop(factory, &ready); });
  const std::string error = started.get();
  if (!error.empty()) {
    thread_.join();
    throw BackendError(error);
  }
  settler_ = std::thread([this] { settleLoop(); });
}

Device::~Device() { abandon(); }

void Device::loop(const Factory& factory, std::promise<std::string>* ready) {
  try {
    backend_ = std::shared_ptr<Backend>(factory());
    name_ = backend_->name();
  } catch (const std::exception& e) {
    ready->set_value(e.what()[0] ? e.what() : "backend creation failed");
    return;
  }
  ready->set_value("");

  for (;;) {
    Item item;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return abandoned_ || !queue_.empty(); });
      if (abandoned_) return;
      item = std::move(queue_.front());
      queue_.pop_front();
    }
    std::string failure;
    const bool skip = item.completion && !firstError_.empty();
    std::unique_ptr<PendingDownload> pending;
    if (!skip) {
      try {
        if (item.work) item.work(backend_);
        if (item.start) {
          pending = item.start(backend_);
        } else if (item.completion) {
          backend_->synchronize();
          backend_->runSyncChecks();
        }
      } catch (const std::exception& e) {
        failure = std::string(item.op) + ": " + e.what();
      } catch (...) {
        failure = std::string(item.op) + ": unknown native exception";
      }
    }
    if (!failure.empty()) {
      if (firstError_.empty()) {
        firstError_ = std::move(failure);
      } else {
        laterFailures_++;
      }
    }
    if (item.completion) {
      if (!firstError_.empty()) {
        item.completion->error = firstError_;
        if (laterFailures_ > 0) {
          item.completion->error += " (and " + std::to_string(laterFailures_) + " later failures)";
        }
        firstError_.clear();
        laterFailures_ = 0;
        pending.reset();  // a failed completion carries no bytes
      }
      settle(Settle{item.op, item.completion, std::move(pending), std::move(item.finish), item.stop});
    }
    // Destroy the work (and the slots it captured) here, on the device thread.
    item.work = nullptr;
    item.start = nullptr;
    if (item.stop) {
      std::lock_guard<std::mutex> lock(mu_);
      stopped_ = true;
      return;
    }
  }
}

void Device::settle(Settle s) {
  {
    std::lock_guard<std::mutex> lock(settleMu_);
    settling_.push_back(std::move(s));
  }
  settleCv_.notify_one();
}

// Posts completions in the order the device thread finished them, each after its download.
void Device::settleLoop() {
  for (;;) {
    Settle s;
    {
      std::unique_lock<std::mutex> lock(settleMu_);
      settleCv_.wait(lock, [&] { return settleAbandoned_ || !settling_.empty(); });
      if (settleAbandoned_) return;
      s = std::move(settling_.front());
      settling_.pop_front();
    }
    if (s.pending) {
      try {
        const void* bytes = s.pending->wait();
        backend_->runSyncChecks();
        s.finish(bytes);
      } catch (const std::exception& e) {
        s.completion->error = std::string(s.op) + ": " + e.what();
      }
      s.pending.reset();
    }
    post_(s.completion);
    if (s.stop) return;
  }
}

void Device::push(Item item) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopped_) {
      queue_.push_back(std::move(item));
      cv_.notify_one();
      return;
    }
  }
  // The thread is gone (closed or abandoned): nothing will run this, so drop it now.
  delete item.completion;
}

void Device::enqueue(const char* op, Work work) { push(Item{op, std::move(work), nullptr, false}); }

void Device::complete(const char* op, Work work, Completion* c, bool stop) {
  push(Item{op, std::move(work), c, stop});
}

void Device::completeDownload(const char* op, StartDownload start, FinishDownload finish, Completion* c) {
  push(Item{op, nullptr, c, false, std::move(start), std::move(finish)});
}

void Device::release(SlotPtr slot) {
  push(Item{"release", [s = std::move(slot)](const std::shared_ptr<Backend>&) {}, nullptr, false});
}

void Device::join() {
  if (thread_.joinable()) thread_.join();
  if (settler_.joinable()) settler_.join();
}

void Device::abandon() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    abandoned_ = true;
    stopped_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
  {
    std::lock_guard<std::mutex> lock(settleMu_);
    settleAbandoned_ = true;
  }
  settleCv_.notify_one();
  if (settler_.joinable()) settler_.join();
  for (Item& item : queue_) delete item.completion;
  queue_.clear();
  for (Settle& s : settling_) delete s.completion;
  settling_.clear();
}

}  // namespace medcluster
