// One Device = one native thread that owns a Backend and runs queued work in FIFO
// order. The JS thread only enqueues; everything that touches backend memory
// (allocation included) runs on the device thread, because a CUDA backend's context
// is selected per thread. A second thread, the settler, posts the completions, in the
// order they were queued; it also waits for asynchronous downloads, so that the device
// thread queues the next work (a next decode step) while a read's copy is still ahead
// on the stream. This file knows nothing about N-API: completions are handed to a
// `post` callback that the binding routes to the JS thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "backend.h"

namespace medcluster {

// The memory of one graph (CUDA graphs, see Backend::beginCapture). While a pool is
// selected on a device thread, every slot that thread allocates takes a buffer of its
// size from the pool and gives it back when the slot is freed. A graph is built by
// running its op sequence once eagerly with the pool selected (the pool grows to the
// sequence's peak, reusing buffers in stream order like any caching allocator), then
// capturing the same sequence, which replays the same sizes from the pool: capture
// never allocates (it could not), and a pool short of a size then fails loudly. The
// buffers stay with the pool, and the pool with the graph, until both are released.
class GraphPool {
 public:
  // Selects `pool` (null: plain allocation) for this thread's allocations; `capturing`
  // forbids growing it.
  static void select(std::shared_ptr<GraphPool> pool, bool capturing);
  static GraphPool* selected();

  std::shared_ptr<Buffer> take(size_t bytes, Backend& backend);
  void give(std::shared_ptr<Buffer> buffer);

 private:
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<std::shared_ptr<Buffer>>> free_;
};

// A tensor's storage. Shape and dtype are fixed at creation on the JS thread; the
// buffer is allocated lazily by the first queued work that touches it, on the device
// thread. Queued work holds shared_ptrs, so memory outlives the JS handle until
// that work has run.
struct Slot {
  Slot(DType t, std::vector<int64_t> s);
  ~Slot();
  DType dtype;
  std::vector<int64_t> shape;
  size_t bytes;

  // Device thread only.
  Buffer& buffer(const std::shared_ptr<Backend>& backend);
  // Holds `buffer` (a shared or opened one, allocated apart from the backend's alloc).
  void adopt(const std::shared_ptr<Backend>& backend, std::shared_ptr<Buffer> buffer);
  View view(const std::shared_ptr<Backend>& backend);

 private:
  std::shared_ptr<Backend> owner_;  // declared first: buffers are freed before their backend
  std::shared_ptr<GraphPool> pool_;  // where buffer_ returns, if it came from a pool
  std::shared_ptr<Buffer> buffer_;
};
using SlotPtr = std::shared_ptr<Slot>;

// Something the JS thread waits for (a sync, a read, a close). `error` is set on the
// device thread before the completion is posted.
struct Completion {
  virtual ~Completion() = default;
  std::string error;
};

using Work = std::function<void(const std::shared_ptr<Backend>&)>;

class Device {
 public:
  // Called on the device thread with a finished completion; takes ownership.
  using Post = std::function<void(Completion*)>;
  using Factory = std::function<std::unique_ptr<Backend>()>;

  // Starts the thread and builds the backend on it; throws BackendError with the
  // factory's message if that fails.
  Device(const Factory& factory, Post post);
  ~Device();  // abandons queued work
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  const std::string& name() const { return name_; }

  // Queues work. A failure is recorded (the first one wins) and reported by the
  // next completion; later work still runs, so an op whose inputs came from a
  // failed op computes on whatever those inputs hold.
  void enqueue(const char* op, Work work);
  // Queues `work` (may be empty) followed by a backend synchronize, then posts `c`,
  // carrying the first failure recorded since the last completion, if any (which
  // also skips `work`). With `stop`, the thread exits after posting.
  void complete(const char* op, Work work, Completion* c, bool stop = false);
  // Like complete(), without the synchronize: `start` queues a download and returns it; the
  // settler waits for it, runs the backend's sync checks, hands the bytes to `finish` and
  // posts `c`. The device thread goes on with the work queued after it meanwhile.
  using StartDownload = std::function<std::unique_ptr<PendingDownload>(const std::shared_ptr<Backend>&)>;
  using FinishDownload = std::function<void(const void*)>;
  void completeDownload(const char* op, StartDownload start, FinishDownload finish, Completion* c);
  // Drops a slot reference on the device thread, where its memory was allocated.
  void release(SlotPtr slot);
  // Joins the thread once a stopping completion was posted.
  void join();
  // Drops queued work (and its completions, unposted) and joins. For process exit.
  void abandon();

 private:
  struct Item {
    const char* op;
    Work work;
    Completion* completion;
    bool stop;
    StartDownload start = nullptr;
    FinishDownload finish = nullptr;
  };
  // A completion on its way to the settler: posted once `pending` (if any) is done.
  struct Settle {
    const char* op;
    Completion* completion;
    std::unique_ptr<PendingDownload> pending;
    FinishDownload finish;
    bool stop;
  };
  void loop(const Factory& factory, std::promise<std::string>* ready);
  void settleLoop();
  void push(Item item);
  void settle(Settle s);

  Post post_;
  std::shared_ptr<Backend> backend_;
  std::string name_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  bool abandoned_ = false;
  bool stopped_ = false;  // no more work will run: later pushes are dropped
  std::thread thread_;
  std::mutex settleMu_;
  std::condition_variable settleCv_;
  std::deque<Settle> settling_;
  bool settleAbandoned_ = false;
  std::thread settler_;

  // Device thread only.
  std::string firstError_;
  int laterFailures_ = 0;
};

}  // namespace medcluster
