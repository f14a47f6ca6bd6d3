// Node-API binding: one JS class per native Device, tensors as External handles.
//
// Shapes are validated in TypeScript (src/validate.ts) before these functions are
// called; this layer builds output slots from its inputs' shapes and queues work.
// Index tensors that kernels dereference (embedding ids always; KV slots, block
// tables, positions and row ids on host-memory backends) are range-checked on the
// device thread before the kernel reads through them, so a bad id is an error,
// never an out-of-bounds read. Promises are settled on the JS thread through one
// ThreadSafeFunction per device, referenced only while a promise is pending so an
// idle device does not keep the process alive.
#define NAPI_VERSION 8
#include <napi.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "awq_layout.h"
#include "backend.h"
#include "collective.h"
#include "cpu/half.h"
#include "device.h"

namespace medcluster {
namespace {

// JS-thread state shared by a device and its in-flight completions.
struct JsState {
  Napi::ThreadSafeFunction tsfn;
  int pending = 0;
  bool released = false;

  void began(Napi::Env env) {
    if (pending++ == 0) tsfn.Ref(env);
  }
  void settled(Napi::Env env) {
    if (--pending == 0 && !released) tsfn.Unref(env);
  }
  void release() {
    if (!released) {
      released = true;
      tsfn.Release();
    }
  }
};

struct PromiseCompletion : Completion {
  PromiseCompletion(Napi::Env env, std::shared_ptr<JsState> s)
      : deferred(Napi::Promise::Deferred::New(env)), state(std::move(s)) {}
  virtual Napi::Value result(Napi::Env env) { return env.Undefined(); }
  Napi::Promise::Deferred deferred;
  std::shared_ptr<JsState> state;
};

struct ReadCompletion : PromiseCompletion {
  using PromiseCompletion::PromiseCompletion;
  DType dtype = DType::F32;
  std::vector<uint8_t> bytes;  // f32 (converted from f16 on the device thread) or i32
  Napi::Value result(Napi::Env env) override {
    const size_t n = bytes.size() / 4;
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, bytes.size());
    if (!bytes.empty()) std::memcpy(ab.Data(), bytes.data(), bytes.size());
    if (dtype == DType::I32) return Napi::Int32Array::New(env, n, ab, 0);
    return Napi::Float32Array::New(env, n, ab, 0);
  }
};

struct MemoryCompletion : PromiseCompletion {
  using PromiseCompletion::PromiseCompletion;
  size_t freeBytes = 0, totalBytes = 0;
  Napi::Value result(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("freeBytes", Napi::Number::New(env, static_cast<double>(freeBytes)));
    o.Set("totalBytes", Napi::Number::New(env, static_cast<double>(totalBytes)));
    return o;
  }
};

// A promise settled with a value that the device thread prepares (collective set-up).
struct ValueCompletion : PromiseCompletion {
  using PromiseCompletion::PromiseCompletion;
  std::function<Napi::Value(Napi::Env)> make;  // set on the device thread, run on the JS thread
  Napi::Value result(Napi::Env env) override { return make ? make(env) : env.Undefined(); }
};

struct CloseCompletion : PromiseCompletion {
  using PromiseCompletion::PromiseCompletion;
  std::shared_ptr<Device> device;
};

// Runs on the JS thread for every completion the device thread posts.
void settle(Napi::Env env, Napi::Function, Completion* raw) {
  std::unique_ptr<PromiseCompletion> c(static_cast<PromiseCompletion*>(raw));
  if (env == nullptr) return;  // the environment is shutting down
  if (auto* close = dynamic_cast<CloseCompletion*>(c.get())) {
    close->device->join();  // the thread exits right after posting this
    close->state->release();
  }
  c->state->settled(env);
  if (!c->error.empty()) {
    c->deferred.Reject(Napi::Error::New(env, c->error).Value());
  } else {
    c->deferred.Resolve(c->result(env));
  }
}

// A tensor handle owned by JS. Dropping it (dispose or GC) hands the slot back to
// the device thread, which frees the memory after any queued work that uses it.
struct TensorRef {
  SlotPtr slot;
  std::weak_ptr<Device> device;
  void drop() {
    if (!slot) return;
    if (auto d = device.lock()) {
      d->release(std::move(slot));
    }
    slot.reset();
  }
};

Napi::Value tensorHandle(Napi::Env env, SlotPtr slot, std::weak_ptr<Device> device) {
  auto* ref = new TensorRef{std::move(slot), std::move(device)};
  return Napi::External<TensorRef>::New(env, ref, [](Napi::Env, TensorRef* r) {
    r->drop();
    delete r;
  });
}

// A captured graph and the pool that holds its memory. `handle` is set on the device
// thread by endCapture (0 if capture failed).
struct GraphState {
  std::shared_ptr<GraphPool> pool = std::make_shared<GraphPool>();
  int64_t handle = 0;
  bool released = false;
};
struct GraphRef {
  std::shared_ptr<GraphState> graph;
  std::weak_ptr<Device> device;
  // Frees the graph (and, once no tensor holds its buffers, its pool) on the device thread.
  void drop() {
    if (!graph || graph->released) return;
    graph->released = true;
    if (auto d = device.lock()) {
      d->enqueue("releaseGraph", [g = graph](const std::shared_ptr<Backend>& b) {
        if (g->handle) b->releaseGraph(g->handle);
        g->handle = 0;
        g->pool.reset();
      });
    }
  }
};

// A device collective group owned by JS (collective.h). Dropping it releases the group on
// the device thread, after the queued work that uses it.
struct CollectiveRef {
  std::shared_ptr<DeviceGroup> group;
  std::weak_ptr<Device> device;
  void drop() {
    if (!group) return;
    std::shared_ptr<DeviceGroup> g = std::move(group);
    if (auto d = device.lock()) d->enqueue("releaseCollective", [g](const std::shared_ptr<Backend>&) {});
  }
};

Napi::Value collectiveHandle(Napi::Env env, std::shared_ptr<DeviceGroup> group, std::weak_ptr<Device> device) {
  auto* ref = new CollectiveRef{std::move(group), std::move(device)};
  return Napi::External<CollectiveRef>::New(env, ref, [](Napi::Env, CollectiveRef* r) {
    r->drop();
    delete r;
  });
}

std::shared_ptr<DeviceGroup> collectiveArg(const Napi::Value& v) {
  if (!v.IsExternal()) throw Napi::TypeError::New(v.Env(), "expected a collective handle");
  CollectiveRef* ref = v.As<Napi::External<CollectiveRef>>().Data();
  if (!ref->group) throw Napi::Error::New(v.Env(), "collective was disposed");
  return ref->group;
}

std::vector<uint8_t> bytesArg(const Napi::Value& v) {
  Napi::Uint8Array a = v.As<Napi::Uint8Array>();
  return std::vector<uint8_t>(a.Data(), a.Data() + a.ByteLength());
}

DType dtypeArg(const Napi::Value& v) {
  const int32_t t = v.As<Napi::Number>().Int32Value();
  if (t < 0 || t > 2) throw Napi::TypeError::New(v.Env(), "unknown dtype code " + std::to_string(t));
  return static_cast<DType>(t);
}

std::vector<int64_t> shapeArg(const Napi::Value& v) {
  Napi::Array a = v.As<Napi::Array>();
  std::vector<int64_t> shape(a.Length());
  for (uint32_t i = 0; i < a.Length(); i++) shape[i] = a.Get(i).As<Napi::Number>().Int64Value();
  return shape;
}

SlotPtr slotArg(const Napi::Value& v) {
  if (!v.IsExternal()) throw Napi::TypeError::New(v.Env(), "expected a tensor handle");
  TensorRef* ref = v.As<Napi::External<TensorRef>>().Data();
  if (!ref->slot) throw Napi::Error::New(v.Env(), "tensor was disposed");
  return ref->slot;
}

// Reads an index tensor to the host, for range checks before a kernel uses it.
std::vector<int32_t> hostInts(Slot& s, const std::shared_ptr<Backend>& b) {
  std::vector<int32_t> out(s.bytes / 4);
  if (!out.empty()) b->download(s.buffer(b), out.data(), s.bytes);
  return out;
}

void checkRange(const std::vector<int32_t>& v, int64_t limit, const char* what, const char* of) {
  for (size_t i = 0; i < v.size(); i++) {
    if (v[i] < 0 || v[i] >= limit) {
      throw BackendError(std::string(what) + " " + std::to_string(v[i]) + " at index " + std::to_string(i) +
                         " is out of range for " + of + " (" + std::to_string(limit) + ")");
    }
  }
}

class DeviceWrap : public Napi::ObjectWrap<DeviceWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(
        env, "Device",
        {
            InstanceMethod<&DeviceWrap::Name>("name"),
            InstanceMethod<&DeviceWrap::Zeros>("zeros"),
            InstanceMethod<&DeviceWrap::FromArray>("fromArray"),
            InstanceMethod<&DeviceWrap::Write>("write"),
            InstanceMethod<&DeviceWrap::ReadFile>("readFile"),
            InstanceMethod<&DeviceWrap::RandomBits>("randomBits"),
            InstanceMethod<&DeviceWrap::Embedding>("embedding"),
            InstanceMethod<&DeviceWrap::RmsNorm>("rmsNorm"),
            InstanceMethod<&DeviceWrap::AddRmsNorm>("addRmsNorm"),
            InstanceMethod<&DeviceWrap::AddInPlace>("addInPlace"),
            InstanceMethod<&DeviceWrap::AwqLinear>("awqLinear"),
            InstanceMethod<&DeviceWrap::PackAwq>("packAwq"),
            InstanceMethod<&DeviceWrap::AwqLinearPacked>("awqLinearPacked"),
            InstanceMethod<&DeviceWrap::Linear>("linear"),
            InstanceMethod<&DeviceWrap::RopeWriteKv>("ropeWriteKv"),
            InstanceMethod<&DeviceWrap::WriteKv>("writeKv"),
            InstanceMethod<&DeviceWrap::Attention>("attention"),
            InstanceMethod<&DeviceWrap::SiluMul>("siluMul"),
            InstanceMethod<&DeviceWrap::GatherRows>("gatherRows"),
            InstanceMethod<&DeviceWrap::ConcatCols>("concatCols"),
            InstanceMethod<&DeviceWrap::Sample>("sample"),
            InstanceMethod<&DeviceWrap::CopyRows>("copyRows"),
            InstanceMethod<&DeviceWrap::TakeSampled>("takeSampled"),
            InstanceMethod<&DeviceWrap::AllocShared>("allocShared"),
            InstanceMethod<&DeviceWrap::OpenShared>("openShared"),
            InstanceMethod<&DeviceWrap::Release>("release"),
            InstanceMethod<&DeviceWrap::Sync>("sync"),
            InstanceMethod<&DeviceWrap::MemoryInfo>("memoryInfo"),
            InstanceMethod<&DeviceWrap::NewGraph>("newGraph"),
            InstanceMethod<&DeviceWrap::Warmup>("warmup"),
            InstanceMethod<&DeviceWrap::BeginCapture>("beginCapture"),
            InstanceMethod<&DeviceWrap::EndCapture>("endCapture"),
            InstanceMethod<&DeviceWrap::Replay>("replay"),
            InstanceMethod<&DeviceWrap::ReleaseGraph>("releaseGraph"),
            InstanceMethod<&DeviceWrap::Read>("read"),
            InstanceMethod<&DeviceWrap::Close>("close"),
            InstanceMethod<&DeviceWrap::PrepareIpcCollective>("prepareIpcCollective"),
            InstanceMethod<&DeviceWrap::ConnectIpcCollective>("connectIpcCollective"),
            InstanceMethod<&DeviceWrap::NcclVersion>("ncclVersion"),
            InstanceMethod<&DeviceWrap::NcclUniqueId>("ncclUniqueId"),
            InstanceMethod<&DeviceWrap::OpenNcclCollective>("openNcclCollective"),
            InstanceMethod<&DeviceWrap::CollectiveAllReduce>("collectiveAllReduce"),
            InstanceMethod<&DeviceWrap::CollectiveAllGatherCols>("collectiveAllGatherCols"),
            InstanceMethod<&DeviceWrap::ReleaseCollective>("releaseCollective"),
        });
  }

  // new Device(kind: 'cpu' | 'cuda', threads: number, ordinal: number)
  explicit DeviceWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceWrap>(info) {
    Napi::Env env = info.Env();
    const std::string kind = info[0].As<Napi::String>();
    const int threads = info[1].As<Napi::Number>().Int32Value();
    const int ordinal = info[2].As<Napi::Number>().Int32Value();
    hostMemory_ = kind == "cpu";
    state_ = std::make_shared<JsState>();
    state_->tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function(), "medcluster-device", 0, 1);
    state_->tsfn.Unref(env);
    Napi::ThreadSafeFunction tsfn = state_->tsfn;
    Device::Factory factory = [kind, threads, ordinal]() -> std::unique_ptr<Backend> {
      if (kind == "cuda") return createCudaBackend(ordinal);
      if (kind == "cpu") return createCpuBackend(threads);
      throw BackendError("unknown device kind '" + kind + "'");
    };
    try {
      device_ = std::make_shared<Device>(factory, [tsfn](Completion* c) mutable {
        if (tsfn.NonBlockingCall(c, settle) != napi_ok) delete c;  // environment closing
      });
    } catch (const std::exception& e) {
      state_->release();
      throw Napi::Error::New(env, std::string("cannot create ") + kind + " device: " + e.what());
    }
    // Registered after the TSFN so that, at environment teardown, this hook runs
    // first (hooks run in reverse order) and stops the thread before the TSFN goes.
    napi_add_env_cleanup_hook(env, &DeviceWrap::OnEnvExit, this);
    hookEnv_ = env;
  }

  ~DeviceWrap() override {
    if (hookEnv_ != nullptr) napi_remove_env_cleanup_hook(hookEnv_, &DeviceWrap::OnEnvExit, this);
    Shutdown();
  }

 private:
  static void OnEnvExit(void* self) {
    auto* d = static_cast<DeviceWrap*>(self);
    d->hookEnv_ = nullptr;
    d->Shutdown();
  }

  void Shutdown() {
    if (device_) device_->abandon();
    state_->release();
  }

  void CheckOpen(Napi::Env env) {
    if (closed_) throw Napi::Error::New(env, "device is closed");
  }

  Napi::Value Handle(Napi::Env env, SlotPtr slot) { return tensorHandle(env, std::move(slot), device_); }

  Napi::Value NewTensor(const Napi::CallbackInfo& info, SlotPtr out, const char* op, Work work) {
    CheckOpen(info.Env());
    device_->enqueue(op, std::move(work));
    return Handle(info.Env(), std::move(out));
  }

  Napi::Value Name(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), device_->name()); }

  // zeros(shape, dtype): backend memory is zero-filled, so the lazy allocation is all it takes.
  Napi::Value Zeros(const Napi::CallbackInfo& info) {
    // A pool hands out reused, not zeroed, memory.
    if (poolSelected_) throw Napi::Error::New(info.Env(), "zeros: not allowed while a graph is being built");
    auto out = std::make_shared<Slot>(dtypeArg(info[1]), shapeArg(info[0]));
    return NewTensor(info, out, "zeros", [out](const std::shared_ptr<Backend>& b) { out->buffer(b); });
  }

  // Host bytes of `arr` in `slot`'s dtype (f32 values are rounded to f16 for f16 slots).
  static std::shared_ptr<std::vector<uint8_t>> HostBytes(Napi::Env env, const Napi::TypedArray& arr, const Slot& slot,
                                                         const char* op) {
    const uint8_t* src = static_cast<const uint8_t*>(arr.ArrayBuffer().Data()) + arr.ByteOffset();
    auto host = std::make_shared<std::vector<uint8_t>>(slot.bytes);
    if (slot.dtype == DType::F16 && arr.TypedArrayType() == napi_float32_array) {
      if (arr.ElementLength() * 2 != slot.bytes) throw Napi::RangeError::New(env, std::string(op) + ": length mismatch");
      auto* dst = reinterpret_cast<uint16_t*>(host->data());
      const float* f = reinterpret_cast<const float*>(src);
      for (size_t i = 0; i < arr.ElementLength(); i++) dst[i] = floatToHalf(f[i]);
    } else {
      if (arr.ByteLength() != slot.bytes) throw Napi::RangeError::New(env, std::string(op) + ": length mismatch");
      if (!host->empty()) std::memcpy(host->data(), src, slot.bytes);
    }
    return host;
  }

  // fromArray(data: Float32Array | Int32Array | Uint16Array, shape, dtype)
  Napi::Value FromArray(const Napi::CallbackInfo& info) {
    NotCapturing(info.Env(), "fromArray");
    auto out = std::make_shared<Slot>(dtypeArg(info[2]), shapeArg(info[1]));
    auto host = HostBytes(info.Env(), info[0].As<Napi::TypedArray>(), *out, "fromArray");
    return NewTensor(info, out, "fromArray", [out, host](const std::shared_ptr<Backend>& b) {
      b->upload(out->buffer(b), host->data(), out->bytes);
    });
  }

  // write(tensor, data): overwrites a tensor's contents in issue order (a graph's inputs).
  Napi::Value Write(const Napi::CallbackInfo& info) {
    NotCapturing(info.Env(), "write");
    CheckOpen(info.Env());
    SlotPtr dst = slotArg(info[0]);
    auto host = HostBytes(info.Env(), info[1].As<Napi::TypedArray>(), *dst, "write");
    device_->enqueue("write", [dst, host](const std::shared_ptr<Backend>& b) {
      b->upload(dst->buffer(b), host->data(), dst->bytes);
    });
    return info.Env().Undefined();
  }

  // readFile(path, offset, cols, r0, r1, c0, c1, shape, dtype)
  Napi::Value ReadFile(const Napi::CallbackInfo& info) {
    NotCapturing(info.Env(), "readFile");
    const std::string path = info[0].As<Napi::String>();
    const uint64_t offset = static_cast<uint64_t>(info[1].As<Napi::Number>().Int64Value());
    const int64_t cols = info[2].As<Napi::Number>().Int64Value();
    const int64_t r0 = info[3].As<Napi::Number>().Int64Value(), r1 = info[4].As<Napi::Number>().Int64Value();
    const int64_t c0 = info[5].As<Napi::Number>().Int64Value(), c1 = info[6].As<Napi::Number>().Int64Value();
    auto out = std::make_shared<Slot>(dtypeArg(info[8]), shapeArg(info[7]));
    return NewTensor(info, out, "readFile", [=](const std::shared_ptr<Backend>& b) {
      b->readFileRegion(out->buffer(b), path, offset, cols, static_cast<int64_t>(dtypeSize(out->dtype)), r0, r1,
                        c0, c1);
    });
  }

  // randomBits(shape, dtype, seed)
  Napi::Value RandomBits(const Napi::CallbackInfo& info) {
    NotCapturing(info.Env(), "randomBits");
    auto out = std::make_shared<Slot>(dtypeArg(info[1]), shapeArg(info[0]));
    const uint64_t seed = static_cast<uint64_t>(info[2].As<Napi::Number>().Int64Value());
    return NewTensor(info, out, "randomBits",
                     [out, seed](const std::shared_ptr<Backend>& b) { b->randomBits(out->buffer(b), seed); });
  }

  Napi::Value Embedding(const Napi::CallbackInfo& info) {
    SlotPtr table = slotArg(info[0]), ids = slotArg(info[1]);
    auto out = std::make_shared<Slot>(DType::F32, std::vector<int64_t>{ids->shape[0], table->shape[1]});
    // A captured graph cannot read ids back; whoever writes a graph's ids checks them.
    const bool check = !capturing_;
    return NewTensor(info, out, "embedding", [=](const std::shared_ptr<Backend>& b) {
      if (check) checkRange(hostInts(*ids, b), table->shape[0], "token id", "the embedding table's rows");
      b->embedding(table->view(b), ids->view(b), out->view(b));
    });
  }

  Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
    SlotPtr x = slotArg(info[0]), w = slotArg(info[1]);
    const float eps = info[2].As<Napi::Number>().FloatValue();
    auto out = std::make_shared<Slot>(DType::F16, x->shape);
    return NewTensor(info, out, "rmsNorm", [=](const std::shared_ptr<Backend>& b) {
      b->rmsNorm(x->view(b), w->view(b), eps, out->view(b));
    });
  }

  Napi::Value AddRmsNorm(const Napi::CallbackInfo& info) {
    SlotPtr r = slotArg(info[0]), d = slotArg(info[1]), w = slotArg(info[2]);
    const float eps = info[3].As<Napi::Number>().FloatValue();
    auto out = std::make_shared<Slot>(DType::F16, r->shape);
    return NewTensor(info, out, "addRmsNorm", [=](const std::shared_ptr<Backend>& b) {
      b->addRmsNorm(r->view(b), d->view(b), w->view(b), eps, out->view(b));
    });
  }

  Napi::Value AddInPlace(const Napi::CallbackInfo& info) {
    SlotPtr r = slotArg(info[0]), d = slotArg(info[1]);
    CheckOpen(info.Env());
    device_->enqueue("addInPlace", [=](const std::shared_ptr<Backend>& b) { b->addInPlace(r->view(b), d->view(b)); });
    return info.Env().Undefined();
  }

  // awqLinear(x, qweight, qzeros, scales, groupSize, outDtype)
  Napi::Value AwqLinear(const Napi::CallbackInfo& info) {
    SlotPtr x = slotArg(info[0]), qw = slotArg(info[1]), qz = slotArg(info[2]), sc = slotArg(info[3]);
    const int64_t group = info[4].As<Napi::Number>().Int64Value();
    auto out = std::make_shared<Slot>(dtypeArg(info[5]), std::vector<int64_t>{x->shape[0], sc->shape[1]});
    return NewTensor(info, out, "awqLinear", [=](const std::shared_ptr<Backend>& b) {
      AwqWeights w{qw->view(b), qz->view(b), sc->view(b), group};
      b->awqLinear(x->view(b), w, out->view(b));
    });
  }

  // packAwq(qweight, qzeros, scales, groupSize, gated): the weights in the packed layout
  // (awq_layout.h), as an i32 [words] tensor; gated: the fused [gate | up] matrix, its columns paired.
  Napi::Value PackAwq(const Napi::CallbackInfo& info) {
    SlotPtr qw = slotArg(info[0]), qz = slotArg(info[1]), sc = slotArg(info[2]);
    const int64_t group = info[3].As<Napi::Number>().Int64Value();
    const bool gated = info[4].As<Napi::Boolean>().Value();
    const int64_t K = qw->shape[0], N = sc->shape[1];
    const int64_t words = awqpack::packedBytes(K, N) / 4;
    auto out = std::make_shared<Slot>(DType::I32, std::vector<int64_t>{words});
    return NewTensor(info, out, "packAwq", [=](const std::shared_ptr<Backend>& b) {
      AwqWeights w{qw->view(b), qz->view(b), sc->view(b), group};
      b->awqPack(w, out->view(b), gated);
    });
  }

  // awqLinearPacked(x, packed, K, N, groupSize, outDtype, gated): gated, the [T, N/2] of silu(gate) * up
  Napi::Value AwqLinearPacked(const Napi::CallbackInfo& info) {
    SlotPtr x = slotArg(info[0]), packed = slotArg(info[1]);
    const int64_t K = info[2].As<Napi::Number>().Int64Value(), N = info[3].As<Napi::Number>().Int64Value();
    const int64_t group = info[4].As<Napi::Number>().Int64Value();
    const bool gated = info[6].As<Napi::Boolean>().Value();
    if (static_cast<int64_t>(packed->bytes) < awqpack::packedBytes(K, N))
      throw Napi::Error::New(info.Env(), "awqLinear: the packed tensor is smaller than a K x N matrix");
    auto out = std::make_shared<Slot>(dtypeArg(info[5]), std::vector<int64_t>{x->shape[0], gated ? N / 2 : N});
    return NewTensor(info, out, gated ? "awqSiluGate" : "awqLinear", [=](const std::shared_ptr<Backend>& b) {
      PackedAwqWeights w{packed->view(b), K, N, group, gated};
      b->awqLinearPacked(x->view(b), w, out->view(b));
    });
  }

  Napi::Value Linear(const Napi::CallbackInfo& info) {
    SlotPtr x = slotArg(info[0]), w = slotArg(info[1]);
    auto out = std::make_shared<Slot>(dtypeArg(info[2]), std::vector<int64_t>{x->shape[0], w->shape[0]});
    return NewTensor(info, out, "linear", [=](const std::shared_ptr<Backend>& b) {
      b->linear(x->view(b), w->view(b), out->view(b));
    });
  }

  // ropeWriteKv(qkv, kCache, vCache, positions, slots, theta) -> q [T, nq * hd]
  Napi::Value RopeWriteKv(const Napi::CallbackInfo& info) {
    SlotPtr qkv = slotArg(info[0]), kc = slotArg(info[1]), vc = slotArg(info[2]), pos = slotArg(info[3]),
            slots = slotArg(info[4]);
    const float theta = info[5].As<Napi::Number>().FloatValue();
    const int64_t kvWidth = kc->shape[2] * kc->shape[3];
    auto out = std::make_shared<Slot>(DType::F16, std::vector<int64_t>{qkv->shape[0], qkv->shape[1] - 2 * kvWidth});
    const bool check = hostMemory_;
    return NewTensor(info, out, "ropeWriteKv", [=](const std::shared_ptr<Backend>& b) {
      if (check) checkRange(hostInts(*slots, b), kc->shape[0] * kc->shape[1], "slot", "the cache's slots");
      b->ropeWriteKv(qkv->view(b), kc->view(b), vc->view(b), pos->view(b), slots->view(b), theta, out->view(b));
    });
  }

  Napi::Value WriteKv(const Napi::CallbackInfo& info) {
    SlotPtr kc = slotArg(info[0]), vc = slotArg(info[1]), k = slotArg(info[2]), v = slotArg(info[3]),
            slots = slotArg(info[4]);
    CheckOpen(info.Env());
    const bool check = hostMemory_;
    device_->enqueue("writeKv", [=](const std::shared_ptr<Backend>& b) {
      if (check) checkRange(hostInts(*slots, b), kc->shape[0] * kc->shape[1], "slot", "the cache's slots");
      b->writeKv(kc->view(b), vc->view(b), k->view(b), v->view(b), slots->view(b));
    });
    return info.Env().Undefined();
  }

  // attention(q, kCache, vCache, blockTables, tokenSeq, positions, numHeads, numKvHeads, headDim, scale)
  Napi::Value Attention(const Napi::CallbackInfo& info) {
    SlotPtr q = slotArg(info[0]), kc = slotArg(info[1]), vc = slotArg(info[2]), bt = slotArg(info[3]),
            seq = slotArg(info[4]), pos = slotArg(info[5]);
    AttentionShape shape;
    shape.numHeads = info[6].As<Napi::Number>().Int64Value();
    shape.numKvHeads = info[7].As<Napi::Number>().Int64Value();
    shape.headDim = info[8].As<Napi::Number>().Int64Value();
    shape.scale = info[9].As<Napi::Number>().FloatValue();
    auto out = std::make_shared<Slot>(DType::F16, q->shape);
    const bool check = hostMemory_;
    return NewTensor(info, out, "attention", [=](const std::shared_ptr<Backend>& b) {
      if (check) CheckAttentionIndices(b, *kc, *bt, *seq, *pos);
      b->attention(q->view(b), kc->view(b), vc->view(b), bt->view(b), seq->view(b), pos->view(b), shape,
                   out->view(b));
    });
  }

  static void CheckAttentionIndices(const std::shared_ptr<Backend>& b, Slot& kc, Slot& bt, Slot& seq,
                                    Slot& pos) {
    const int64_t numBlocks = kc.shape[0], blockSize = kc.shape[1];
    const int64_t seqs = bt.shape[0], maxBlocks = bt.shape[1];
    const std::vector<int32_t> tables = hostInts(bt, b), seqOf = hostInts(seq, b), at = hostInts(pos, b);
    checkRange(seqOf, seqs, "sequence", "the block table's rows");
    checkRange(at, maxBlocks * blockSize, "position", "the block table's capacity");
    for (size_t t = 0; t < at.size(); t++) {
      const int32_t* row = tables.data() + static_cast<int64_t>(seqOf[t]) * maxBlocks;
      for (int64_t j = 0; j <= at[t] / blockSize; j++) {
        if (row[j] < 0 || row[j] >= numBlocks) {
          throw BackendError("block " + std::to_string(row[j]) + " in block table row " + std::to_string(seqOf[t]) +
                             " is out of range for a cache of " + std::to_string(numBlocks) + " blocks");
        }
      }
    }
  }

  Napi::Value SiluMul(const Napi::CallbackInfo& info) {
    SlotPtr gu = slotArg(info[0]);
    auto out = std::make_shared<Slot>(DType::F16, std::vector<int64_t>{gu->shape[0], gu->shape[1] / 2});
    return NewTensor(info, out, "siluMul", [=](const std::shared_ptr<Backend>& b) {
      b->siluMul(gu->view(b), out->view(b));
    });
  }

  Napi::Value GatherRows(const Napi::CallbackInfo& info) {
    SlotPtr x = slotArg(info[0]), rows = slotArg(info[1]);
    auto out = std::make_shared<Slot>(x->dtype, std::vector<int64_t>{rows->shape[0], x->shape[1]});
    const bool check = hostMemory_;
    return NewTensor(info, out, "gatherRows", [=](const std::shared_ptr<Backend>& b) {
      if (check) checkRange(hostInts(*rows, b), x->shape[0], "row", "the input's rows");
      b->gatherRows(x->view(b), rows->view(b), out->view(b));
    });
  }

  // A 2-D operand of concatCols. TS validated the shapes; this re-checks the
  // few facts the strided copies rely on, so a bad direct call throws instead of overrunning.
  static void Check2D(Napi::Env env, const char* op, const Slot& s, const Slot& like) {
    if (s.shape.size() != 2 || s.dtype != like.dtype || s.shape[0] != like.shape[0]) {
      throw Napi::Error::New(env, std::string(op) + ": operands must be 2-D with the same dtype and row count");
    }
  }

  // concatCols(parts[]): [R, sum C_i], part i's columns at its offset; one copyCols per part.
  Napi::Value ConcatCols(const Napi::CallbackInfo& info) {
    Napi::Array arr = info[0].As<Napi::Array>();
    if (arr.Length() == 0) throw Napi::Error::New(info.Env(), "concatCols: no parts");
    std::vector<SlotPtr> parts;
    int64_t width = 0;
    for (uint32_t i = 0; i < arr.Length(); i++) {
      parts.push_back(slotArg(arr.Get(i)));
      Check2D(info.Env(), "concatCols", *parts.back(), *parts[0]);
      width += parts.back()->shape[1];
    }
    auto out = std::make_shared<Slot>(parts[0]->dtype, std::vector<int64_t>{parts[0]->shape[0], width});
    return NewTensor(info, out, "concatCols", [parts, out](const std::shared_ptr<Backend>& b) {
      const View o = out->view(b);
      int64_t col = 0;
      for (const SlotPtr& p : parts) {
        b->copyCols(p->view(b), 0, o, col, p->shape[1]);
        col += p->shape[1];
      }
    });
  }

  // sample(logits, doubles, ints, penaltyIds, penaltyCounts, maskedIds, topLogprobs): the flat
  // arrays kernels/src/sample-rows.ts packs (it checked every field); returns [ids, logprobs].
  Napi::Value Sample(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    NotCapturing(env, "sample");
    SlotPtr logits = slotArg(info[0]);
    auto doubles = info[1].As<Napi::Float64Array>();
    auto ints = info[2].As<Napi::Int32Array>();
    auto list = [](const Napi::Value& v) {
      auto a = v.As<Napi::Int32Array>();
      return std::vector<int32_t>(a.Data(), a.Data() + a.ElementLength());
    };
    auto batch = std::make_shared<SampleBatch>();
    batch->penaltyIds = list(info[3]);
    batch->penaltyCounts = list(info[4]);
    batch->maskedIds = list(info[5]);
    batch->topLogprobs = info[6].As<Napi::Number>().Int32Value();
    const size_t S = ints.ElementLength() / 7;
    if (S == 0 || ints.ElementLength() != S * 7 || doubles.ElementLength() != S * 6 ||
        batch->penaltyIds.size() != batch->penaltyCounts.size() || batch->topLogprobs < 0) {
      throw Napi::Error::New(env, "sample: malformed row arrays");
    }
    for (size_t i = 0; i < S; i++) {
      const double* d = doubles.Data() + i * 6;
      const int32_t* n = ints.Data() + i * 7;
      SampleRow r;
      r.temperature = d[0];
      r.topP = d[1];
      r.repetitionPenalty = d[2];
      r.presencePenalty = d[3];
      r.frequencyPenalty = d[4];
      r.uniform = d[5];
      r.row = n[0];
      r.topK = n[1];
      r.logprobs = n[2];
      r.penaltyBegin = n[3];
      r.penaltyCount = n[4];
      r.maskBegin = n[5];
      r.maskCount = n[6];
      const auto inRange = [](int64_t begin, int64_t count, size_t size) {
        return begin >= 0 && count >= 0 && begin + count <= static_cast<int64_t>(size);
      };
      if (r.row < 0 || r.row >= logits->shape[0] || r.logprobs > batch->topLogprobs ||
          !inRange(r.penaltyBegin, r.penaltyCount, batch->penaltyIds.size()) ||
          !inRange(r.maskBegin, r.maskCount, batch->maskedIds.size())) {
        throw Napi::Error::New(env, "sample: row " + std::to_string(i) + " is out of range");
      }
      batch->rows.push_back(r);
    }
    const std::vector<int64_t> shape{static_cast<int64_t>(S), 1 + batch->topLogprobs};
    auto ids = std::make_shared<Slot>(DType::I32, shape);
    auto logprobs = std::make_shared<Slot>(DType::F32, shape);
    CheckOpen(env);
    device_->enqueue("sample", [=](const std::shared_ptr<Backend>& b) {
      b->sample(logits->view(b), *batch, ids->view(b), logprobs->view(b));
    });
    Napi::Array result = Napi::Array::New(env, 2);
    result.Set(0u, Handle(env, ids));
    result.Set(1u, Handle(env, logprobs));
    return result;
  }

  Napi::Value Release(const Napi::CallbackInfo& info) {
    if (info[0].IsExternal()) info[0].As<Napi::External<TensorRef>>().Data()->drop();
    return info.Env().Undefined();
  }

  Napi::Value Sync(const Napi::CallbackInfo& info) {
    NotCapturing(info.Env(), "sync");
    CheckOpen(info.Env());
    auto* c = new PromiseCompletion(info.Env(), state_);
    Napi::Promise promise = c->deferred.Promise();
    state_->began(info.Env());
    device_->complete("sync", nullptr, c);
    return promise;
  }

  Napi::Value Read(const Napi::CallbackInfo& info) {
    NotCapturing(info.Env(), "read");
    CheckOpen(info.Env());
    SlotPtr s = slotArg(info[0]);
    auto* c = new ReadCompletion(info.Env(), state_);
    c->dtype = s->dtype == DType::I32 ? DType::I32 : DType::F32;
    Napi::Promise promise = c->deferred.Promise();
    state_->began(info.Env());
    // The device thread queues the copy and goes on; the settler waits for it.
    const size_t bytes = s->bytes;
    const bool f16 = s->dtype == DType::F16;
    device_->completeDownload(
        "read", [s](const std::shared_ptr<Backend>& b) { return b->downloadAsync(s->buffer(b), s->bytes); },
        [c, bytes, f16](const void* raw) {
          const auto* r = static_cast<const uint8_t*>(raw);
          if (!f16) {
            c->bytes.assign(r, r + bytes);
            return;
          }
          // Widen f16 here, off the JS thread.
          const size_t n = bytes / 2;
          c->bytes.resize(n * 4);
          const auto* h = reinterpret_cast<const uint16_t*>(r);
          auto* f = reinterpret_cast<float*>(c->bytes.data());
          for (size_t i = 0; i < n; i++) f[i] = halfToFloat(h[i]);
        },
        c);
    return promise;
  }

  Napi::Value MemoryInfo(const Napi::CallbackInfo& info) {
    NotCapturing(info.Env(), "memoryInfo");
    CheckOpen(info.Env());
    auto* c = new MemoryCompletion(info.Env(), state_);
    Napi::Promise promise = c->deferred.Promise();
    state_->began(info.Env());
    device_->complete("memoryInfo", [c](const std::shared_ptr<Backend>& b) {
      b->memoryInfo(&c->freeBytes, &c->totalBytes);
    }, c);
    return promise;
  }

  // ---- graphs: newGraph, then warmup(g, true) ... warmup(g, false), then
  // beginCapture(g) ... endCapture(g), then replay(g) any number of times.

  static GraphRef* GraphArg(const Napi::Value& v) {
    if (!v.IsExternal()) throw Napi::TypeError::New(v.Env(), "expected a graph handle");
    GraphRef* ref = v.As<Napi::External<GraphRef>>().Data();
    if (!ref->graph || ref->graph->released) throw Napi::Error::New(v.Env(), "graph was released");
    return ref;
  }

  void NotCapturing(Napi::Env env, const char* op) {
    if (capturing_) throw Napi::Error::New(env, std::string(op) + ": not allowed during graph capture");
  }

  // newGraph(shareWith?): a graph with its own pool, or sharing another graph's pool (graphs
  // that never run at the same time, as on one stream, may reuse each other's intermediates).
  Napi::Value NewGraph(const Napi::CallbackInfo& info) {
    CheckOpen(info.Env());
    auto state = std::make_shared<GraphState>();
    if (info.Length() > 0 && !info[0].IsUndefined()) state->pool = GraphArg(info[0])->graph->pool;
    auto* ref = new GraphRef{state, device_};
    return Napi::External<GraphRef>::New(info.Env(), ref, [](Napi::Env, GraphRef* r) {
      r->drop();
      delete r;
    });
  }

  // warmup(graph, on): selects (on) or deselects the graph's pool for the ops issued between.
  Napi::Value Warmup(const Napi::CallbackInfo& info) {
    CheckOpen(info.Env());
    NotCapturing(info.Env(), "warmup");
    GraphRef* ref = GraphArg(info[0]);
    const bool on = info[1].As<Napi::Boolean>().Value();
    if (on == poolSelected_) throw Napi::Error::New(info.Env(), on ? "warmup already began" : "no warmup to end");
    poolSelected_ = on;
    std::shared_ptr<GraphPool> pool = on ? ref->graph->pool : nullptr;
    device_->enqueue("warmup", [pool](const std::shared_ptr<Backend>&) { GraphPool::select(pool, false); });
    return info.Env().Undefined();
  }

  Napi::Value BeginCapture(const Napi::CallbackInfo& info) {
    CheckOpen(info.Env());
    if (poolSelected_) throw Napi::Error::New(info.Env(), "beginCapture: a warmup or capture is in progress");
    GraphRef* ref = GraphArg(info[0]);
    poolSelected_ = capturing_ = true;
    std::shared_ptr<GraphPool> pool = ref->graph->pool;
    device_->enqueue("beginCapture", [pool](const std::shared_ptr<Backend>& b) {
      GraphPool::select(pool, true);
      if (!b->beginCapture()) throw BackendError("this backend cannot capture graphs");
    });
    return info.Env().Undefined();
  }

  // Ends the capture begun on `graph`; runs even after a failed op so the stream never
  // stays in capture mode. A failure leaves the graph without a handle.
  Napi::Value EndCapture(const Napi::CallbackInfo& info) {
    CheckOpen(info.Env());
    if (!capturing_) throw Napi::Error::New(info.Env(), "endCapture: no capture in progress");
    GraphRef* ref = GraphArg(info[0]);
    poolSelected_ = capturing_ = false;
    std::shared_ptr<GraphState> g = ref->graph;
    device_->enqueue("endCapture", [g](const std::shared_ptr<Backend>& b) {
      GraphPool::select(nullptr, false);
      g->handle = b->endCapture();
    });
    return info.Env().Undefined();
  }

  Napi::Value Replay(const Napi::CallbackInfo& info) {
    CheckOpen(info.Env());
    NotCapturing(info.Env(), "replay");
    std::shared_ptr<GraphState> g = GraphArg(info[0])->graph;
    device_->enqueue("replay", [g](const std::shared_ptr<Backend>& b) {
      if (!g->handle) throw BackendError("replay: the graph's capture failed");
      b->replayGraph(g->handle);
    });
    return info.Env().Undefined();
  }

  Napi::Value ReleaseGraph(const Napi::CallbackInfo& info) {
    NotCapturing(info.Env(), "releaseGraph");
    if (info[0].IsExternal()) info[0].As<Napi::External<GraphRef>>().Data()->drop();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    CheckOpen(info.Env());
    closed_ = true;
    auto* c = new CloseCompletion(info.Env(), state_);
    c->device = device_;
    Napi::Promise promise = c->deferred.Promise();
    state_->began(info.Env());
    device_->complete("close", nullptr, c, true);
    return promise;
  }

  // ---- device collectives (collective.h): set-up calls settle promises; the ops queue
  // like any op (graph-capturable).

  void NoHostCollective(Napi::Env env, const char* op) {
    if (hostMemory_)
      throw Napi::Error::New(env, std::string(op) +
                                      ": the cpu backend has no device collective (CPU workers use the host collective)");
  }

  // Queues work that settles a promise with the value it prepares.
  Napi::Value Deferred(const Napi::CallbackInfo& info, const char* op,
                       std::function<void(const std::shared_ptr<Backend>&, ValueCompletion*)> work) {
    NotCapturing(info.Env(), op);
    CheckOpen(info.Env());
    NoHostCollective(info.Env(), op);
    auto* c = new ValueCompletion(info.Env(), state_);
    Napi::Promise promise = c->deferred.Promise();
    state_->began(info.Env());
    device_->complete(op, [c, work](const std::shared_ptr<Backend>& b) { work(b, c); }, c);
    return promise;
  }

  static CollectiveOptions CollectiveArgs(const Napi::CallbackInfo& info) {
    CollectiveOptions o;
    o.rank = info[0].As<Napi::Number>().Int32Value();
    o.size = info[1].As<Napi::Number>().Int32Value();
    o.bufferBytes = static_cast<size_t>(info[2].As<Napi::Number>().Int64Value());
    o.timeoutMs = info[3].As<Napi::Number>().Int64Value();
    return o;
  }

  // allocShared(shape, dtype) -> Promise<[tensor, handle bytes]>: memory other processes of the
  // host can map.
  Napi::Value AllocShared(const Napi::CallbackInfo& info) {
    auto slot = std::make_shared<Slot>(dtypeArg(info[1]), shapeArg(info[0]));
    std::weak_ptr<Device> wd = device_;
    return Deferred(info, "allocShared", [slot, wd](const std::shared_ptr<Backend>& b, ValueCompletion* c) {
      std::vector<uint8_t> handle;
      slot->adopt(b, b->allocShared(slot->bytes, &handle));
      c->make = [slot, handle, wd](Napi::Env env) -> Napi::Value {
        Napi::Array r = Napi::Array::New(env, 2);
        r.Set(0u, tensorHandle(env, slot, wd));
        r.Set(1u, Napi::Buffer<uint8_t>::Copy(env, handle.data(), handle.size()));
        return r;
      };
    });
  }

  // openShared(handle bytes, shape, dtype) -> Promise<tensor>: another process's shared memory.
  Napi::Value OpenShared(const Napi::CallbackInfo& info) {
    std::vector<uint8_t> handle = bytesArg(info[0]);
    auto slot = std::make_shared<Slot>(dtypeArg(info[2]), shapeArg(info[1]));
    std::weak_ptr<Device> wd = device_;
    return Deferred(info, "openShared", [slot, handle, wd](const std::shared_ptr<Backend>& b, ValueCompletion* c) {
      slot->adopt(b, b->openShared(handle, slot->bytes));
      c->make = [slot, wd](Napi::Env env) -> Napi::Value { return tensorHandle(env, slot, wd); };
    });
  }

  // copyRows(dst, src, rows): checked by device.ts.
  Napi::Value CopyRows(const Napi::CallbackInfo& info) {
    SlotPtr dst = slotArg(info[0]);
    SlotPtr src = slotArg(info[1]);
    const int64_t rows = info[2].As<Napi::Number>().Int64Value();
    if (dst->shape.size() != 2 || src->shape.size() != 2 || dst->dtype != src->dtype ||
        dst->shape[1] != src->shape[1] || rows < 0 || rows > dst->shape[0] || rows > src->shape[0])
      throw Napi::Error::New(info.Env(), "copyRows: mismatched tensors");
    CheckOpen(info.Env());
    device_->enqueue("copyRows",
                     [=](const std::shared_ptr<Backend>& b) { b->copyRows(src->view(b), dst->view(b), rows); });
    return info.Env().Undefined();
  }

  // takeSampled(ids, sampled, from): checked by device.ts (from's indices included, host data
  // there); this re-checks the shapes the kernel relies on.
  Napi::Value TakeSampled(const Napi::CallbackInfo& info) {
    SlotPtr ids = slotArg(info[0]);
    SlotPtr sampled = slotArg(info[1]);
    SlotPtr from = slotArg(info[2]);
    if (ids->shape.size() != 1 || sampled->shape.size() != 2 || from->shape.size() != 1 ||
        ids->dtype != DType::I32 || sampled->dtype != DType::I32 || from->dtype != DType::I32 ||
        from->shape[0] != ids->shape[0])
      throw Napi::Error::New(info.Env(), "takeSampled: mismatched tensors");
    CheckOpen(info.Env());
    device_->enqueue("takeSampled", [=](const std::shared_ptr<Backend>& b) {
      b->takeSampled(ids->view(b), sampled->view(b), from->view(b));
    });
    return info.Env().Undefined();
  }

  // prepareIpcCollective(rank, size, bufferBytes, timeoutMs) -> Promise<[group, handle bytes]>
  Napi::Value PrepareIpcCollective(const Napi::CallbackInfo& info) {
    const CollectiveOptions o = CollectiveArgs(info);
    std::weak_ptr<Device> wd = device_;
    return Deferred(info, "prepareIpcCollective", [o, wd](const std::shared_ptr<Backend>& b, ValueCompletion* c) {
      std::shared_ptr<IpcGroup> g = createIpcGroup(*b, o);
      std::vector<uint8_t> bytes = g->localHandle();
      c->make = [g, bytes, wd](Napi::Env env) -> Napi::Value {
        Napi::Array r = Napi::Array::New(env, 2);
        r.Set(0u, collectiveHandle(env, g, wd));
        r.Set(1u, Napi::Buffer<uint8_t>::Copy(env, bytes.data(), bytes.size()));
        return r;
      };
    });
  }

  // connectIpcCollective(group, handles: Uint8Array[] by rank) -> Promise<void>
  Napi::Value ConnectIpcCollective(const Napi::CallbackInfo& info) {
    auto g = std::dynamic_pointer_cast<IpcGroup>(collectiveArg(info[0]));
    if (!g) throw Napi::Error::New(info.Env(), "connectIpcCollective: not an ipc group");
    Napi::Array arr = info[1].As<Napi::Array>();
    std::vector<std::vector<uint8_t>> handles;
    for (uint32_t i = 0; i < arr.Length(); i++) handles.push_back(bytesArg(arr.Get(i)));
    return Deferred(info, "connectIpcCollective",
                    [g, handles](const std::shared_ptr<Backend>&, ValueCompletion*) { g->connect(handles); });
  }

  // ncclVersion() -> Promise<number>: loads NCCL (a clear error where it is missing).
  Napi::Value NcclVersion(const Napi::CallbackInfo& info) {
    return Deferred(info, "ncclVersion", [](const std::shared_ptr<Backend>&, ValueCompletion* c) {
      const int v = ncclVersionCode();
      c->make = [v](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, v); };
    });
  }

  // ncclUniqueId() -> Promise<Uint8Array> (rank 0 makes it for its group).
  Napi::Value NcclUniqueId(const Napi::CallbackInfo& info) {
    return Deferred(info, "ncclUniqueId", [](const std::shared_ptr<Backend>&, ValueCompletion* c) {
      std::vector<uint8_t> bytes = ncclUniqueIdBytes();
      c->make = [bytes](Napi::Env env) -> Napi::Value {
        return Napi::Buffer<uint8_t>::Copy(env, bytes.data(), bytes.size());
      };
    });
  }

  // openNcclCollective(rank, size, bufferBytes, timeoutMs, uniqueId) -> Promise<group>; resolves
  // once every rank of the group has joined.
  Napi::Value OpenNcclCollective(const Napi::CallbackInfo& info) {
    const CollectiveOptions o = CollectiveArgs(info);
    std::vector<uint8_t> id = bytesArg(info[4]);
    std::weak_ptr<Device> wd = device_;
    return Deferred(info, "openNcclCollective", [o, id, wd](const std::shared_ptr<Backend>& b, ValueCompletion* c) {
      std::shared_ptr<DeviceGroup> g = createNcclGroup(*b, o, id);
      c->make = [g, wd](Napi::Env env) -> Napi::Value { return collectiveHandle(env, g, wd); };
    });
  }

  // collectiveAllReduce(group, x): x f32 [R, C] summed in place across the group.
  Napi::Value CollectiveAllReduce(const Napi::CallbackInfo& info) {
    std::shared_ptr<DeviceGroup> g = collectiveArg(info[0]);
    SlotPtr x = slotArg(info[1]);
    CheckOpen(info.Env());
    device_->enqueue("allReduceSum", [g, x](const std::shared_ptr<Backend>& b) { g->allReduceSum(*b, x->view(b)); });
    return info.Env().Undefined();
  }

  // collectiveAllGatherCols(group, x, widths[]): x f32 [R, widths[rank]] -> f32 [R, sum widths].
  Napi::Value CollectiveAllGatherCols(const Napi::CallbackInfo& info) {
    std::shared_ptr<DeviceGroup> g = collectiveArg(info[0]);
    SlotPtr x = slotArg(info[1]);
    std::vector<int64_t> widths = shapeArg(info[2]);
    int64_t total = 0;
    for (int64_t w : widths) total += w;
    if (x->shape.size() != 2 || static_cast<int>(widths.size()) != g->size() || widths[g->rank()] != x->shape[1])
      throw Napi::Error::New(info.Env(), "allGatherCols: x does not match this rank's width");
    auto out = std::make_shared<Slot>(DType::F32, std::vector<int64_t>{x->shape[0], total});
    return NewTensor(info, out, "allGatherCols", [g, x, out, widths](const std::shared_ptr<Backend>& b) {
      g->allGatherCols(*b, x->view(b), out->view(b), widths);
    });
  }

  Napi::Value ReleaseCollective(const Napi::CallbackInfo& info) {
    if (info[0].IsExternal()) info[0].As<Napi::External<CollectiveRef>>().Data()->drop();
    return info.Env().Undefined();
  }

  std::shared_ptr<Device> device_;
  std::shared_ptr<JsState> state_;
  napi_env hookEnv_ = nullptr;
  bool hostMemory_ = false;
  bool closed_ = false;
  bool poolSelected_ = false;  // a graph's warmup or capture is being issued
  bool capturing_ = false;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Device", DeviceWrap::Define(env));
  exports.Set("cudaCompiledIn", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                return Napi::Boolean::New(info.Env(), cudaCompiledIn());
              }));
  exports.Set("cudaDeviceCount", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                return Napi::Number::New(info.Env(), cudaDeviceCount());
              }));
  // i32 words of a packed K x N AWQ matrix (awq_layout.h), for the tensor's shape.
  exports.Set("awqPackedWords", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                const int64_t K = info[0].As<Napi::Number>().Int64Value(), N = info[1].As<Napi::Number>().Int64Value();
                return Napi::Number::New(info.Env(), static_cast<double>(awqpack::packedBytes(K, N) / 4));
              }));
  // 3: packAwq, awqLinearPacked, awqPackedWords. 4: gated packs (packAwq's and awqLinearPacked's `gated`).
  exports.Set("abiVersion", Napi::Number::New(env, 5));
  return exports;
}

}  // namespace
}  // namespace medcluster

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return medcluster::Init(env, exports); }

NODE_API_MODULE(medcluster_kernels, InitModule)
