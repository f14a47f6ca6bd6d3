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
    if (!skip) {
      try {
        if (item.work) item.work(backend_);
        if (item.completion) {
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
      }
      post_(item.completion);
    }
    // Destroy the work (and the slots it captured) here, on the device thread.
    item.work = nullptr;
    if (item.stop) {
      std::lock_guard<std::mutex> lock(mu_);
      stopped_ = true;
      return;
    }
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

void Device::release(SlotPtr slot) {
  push(Item{"release", [s = std::move(slot)](const std::shared_ptr<Backend>&) {}, nullptr, false});
}

void Device::join() {
  if (thread_.joinable()) thread_.join();
}

void Device::abandon() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    abandoned_ = true;
    stopped_ = true;
  }
  cv_.notify_one();
  join();
  for (Item& item : queue_) delete item.completion;
  queue_.clear();
}

}  // namespace medcluster
