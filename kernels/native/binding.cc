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

#include "backend.h"
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
            InstanceMethod<&DeviceWrap::ReadFile>("readFile"),
            InstanceMethod<&DeviceWrap::RandomBits>("randomBits"),
            InstanceMethod<&DeviceWrap::Embedding>("embedding"),
            InstanceMethod<&DeviceWrap::RmsNorm>("rmsNorm"),
            InstanceMethod<&DeviceWrap::AddRmsNorm>("addRmsNorm"),
            InstanceMethod<&DeviceWrap::AddInPlace>("addInPlace"),
            InstanceMethod<&DeviceWrap::AwqLinear>("awqLinear"),
            InstanceMethod<&DeviceWrap::Linear>("linear"),
            InstanceMethod<&DeviceWrap::Rope>("rope"),
            InstanceMethod<&DeviceWrap::WriteKv>("writeKv"),
            InstanceMethod<&DeviceWrap::Attention>("attention"),
            InstanceMethod<&DeviceWrap::SiluMul>("siluMul"),
            InstanceMethod<&DeviceWrap::GatherRows>("gatherRows"),
            InstanceMethod<&DeviceWrap::Argmax>("argmax"),
            InstanceMethod<&DeviceWrap::Release>("release"),
            InstanceMethod<&DeviceWrap::Sync>("sync"),
            InstanceMethod<&DeviceWrap::Read>("read"),
            InstanceMethod<&DeviceWrap::Close>("close"),
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

  Napi::Value Handle(Napi::Env env, SlotPtr slot) {
    auto* ref = new TensorRef{std::move(slot), device_};
    return Napi::External<TensorRef>::New(env, ref, [](Napi::Env, TensorRef* r) {
      r->drop();
      delete r;
    });
  }

  Napi::Value NewTensor(const Napi::CallbackInfo& info, SlotPtr out, const char* op, Work work) {
    CheckOpen(info.Env());
    device_->enqueue(op, std::move(work));
    return Handle(info.Env(), std::move(out));
  }

  Napi::Value Name(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), device_->name()); }

  // zeros(shape, dtype): backend memory is zero-filled, so the lazy allocation is all it takes.
  Napi::Value Zeros(const Napi::CallbackInfo& info) {
    auto out = std::make_shared<Slot>(dtypeArg(info[1]), shapeArg(info[0]));
    return NewTensor(info, out, "zeros", [out](const std::shared_ptr<Backend>& b) { out->buffer(b); });
  }

  // fromArray(data: Float32Array | Int32Array | Uint16Array, shape, dtype)
  Napi::Value FromArray(const Napi::CallbackInfo& info) {
    auto out = std::make_shared<Slot>(dtypeArg(info[2]), shapeArg(info[1]));
    Napi::TypedArray arr = info[0].As<Napi::TypedArray>();
    const uint8_t* src = static_cast<const uint8_t*>(arr.ArrayBuffer().Data()) + arr.ByteOffset();
    auto host = std::make_shared<std::vector<uint8_t>>(out->bytes);
    if (out->dtype == DType::F16 && arr.TypedArrayType() == napi_float32_array) {
      if (arr.ElementLength() * 2 != out->bytes) throw Napi::RangeError::New(info.Env(), "fromArray: length mismatch");
      auto* dst = reinterpret_cast<uint16_t*>(host->data());
      const float* f = reinterpret_cast<const float*>(src);
      for (size_t i = 0; i < arr.ElementLength(); i++) dst[i] = floatToHalf(f[i]);
    } else {
      if (arr.ByteLength() != out->bytes) throw Napi::RangeError::New(info.Env(), "fromArray: length mismatch");
      if (!host->empty()) std::memcpy(host->data(), src, out->bytes);
    }
    return NewTensor(info, out, "fromArray", [out, host](const std::shared_ptr<Backend>& b) {
      b->upload(out->buffer(b), host->data(), out->bytes);
    });
  }

  // readFile(path, offset, cols, r0, r1, c0, c1, shape, dtype)
  Napi::Value ReadFile(const Napi::CallbackInfo& info) {
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
    auto out = std::make_shared<Slot>(dtypeArg(info[1]), shapeArg(info[0]));
    const uint64_t seed = static_cast<uint64_t>(info[2].As<Napi::Number>().Int64Value());
    return NewTensor(info, out, "randomBits",
                     [out, seed](const std::shared_ptr<Backend>& b) { b->randomBits(out->buffer(b), seed); });
  }

  Napi::Value Embedding(const Napi::CallbackInfo& info) {
    SlotPtr table = slotArg(info[0]), ids = slotArg(info[1]);
    auto out = std::make_shared<Slot>(DType::F32, std::vector<int64_t>{ids->shape[0], table->shape[1]});
    return NewTensor(info, out, "embedding", [=](const std::shared_ptr<Backend>& b) {
      checkRange(hostInts(*ids, b), table->shape[0], "token id", "the embedding table's rows");
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

  Napi::Value Linear(const Napi::CallbackInfo& info) {
    SlotPtr x = slotArg(info[0]), w = slotArg(info[1]);
    auto out = std::make_shared<Slot>(dtypeArg(info[2]), std::vector<int64_t>{x->shape[0], w->shape[0]});
    return NewTensor(info, out, "linear", [=](const std::shared_ptr<Backend>& b) {
      b->linear(x->view(b), w->view(b), out->view(b));
    });
  }

  // rope(q, k, positions, headDim, theta)
  Napi::Value Rope(const Napi::CallbackInfo& info) {
    SlotPtr q = slotArg(info[0]), k = slotArg(info[1]), pos = slotArg(info[2]);
    const int64_t hd = info[3].As<Napi::Number>().Int64Value();
    const float theta = info[4].As<Napi::Number>().FloatValue();
    CheckOpen(info.Env());
    device_->enqueue("rope", [=](const std::shared_ptr<Backend>& b) {
      b->rope(q->view(b), k->view(b), pos->view(b), hd, theta);
    });
    return info.Env().Undefined();
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
    SlotPtr g = slotArg(info[0]), u = slotArg(info[1]);
    auto out = std::make_shared<Slot>(DType::F16, g->shape);
    return NewTensor(info, out, "siluMul", [=](const std::shared_ptr<Backend>& b) {
      b->siluMul(g->view(b), u->view(b), out->view(b));
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

  Napi::Value Argmax(const Napi::CallbackInfo& info) {
    SlotPtr x = slotArg(info[0]);
    auto out = std::make_shared<Slot>(DType::I32, std::vector<int64_t>{x->shape[0]});
    return NewTensor(info, out, "argmax",
                     [=](const std::shared_ptr<Backend>& b) { b->argmax(x->view(b), out->view(b)); });
  }

  Napi::Value Release(const Napi::CallbackInfo& info) {
    if (info[0].IsExternal()) info[0].As<Napi::External<TensorRef>>().Data()->drop();
    return info.Env().Undefined();
  }

  Napi::Value Sync(const Napi::CallbackInfo& info) {
    CheckOpen(info.Env());
    auto* c = new PromiseCompletion(info.Env(), state_);
    Napi::Promise promise = c->deferred.Promise();
    state_->began(info.Env());
    device_->complete("sync", nullptr, c);
    return promise;
  }

  Napi::Value Read(const Napi::CallbackInfo& info) {
    CheckOpen(info.Env());
    SlotPtr s = slotArg(info[0]);
    auto* c = new ReadCompletion(info.Env(), state_);
    c->dtype = s->dtype == DType::I32 ? DType::I32 : DType::F32;
    Napi::Promise promise = c->deferred.Promise();
    state_->began(info.Env());
    device_->complete("read", [s, c](const std::shared_ptr<Backend>& b) {
      std::vector<uint8_t> raw(s->bytes);
      if (!raw.empty()) b->download(s->buffer(b), raw.data(), s->bytes);
      if (s->dtype != DType::F16) {
        c->bytes = std::move(raw);
        return;
      }
      // Widen f16 here, off the JS thread.
      const size_t n = raw.size() / 2;
      c->bytes.resize(n * 4);
      const auto* h = reinterpret_cast<const uint16_t*>(raw.data());
      auto* f = reinterpret_cast<float*>(c->bytes.data());
      for (size_t i = 0; i < n; i++) f[i] = halfToFloat(h[i]);
    }, c);
    return promise;
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

  std::shared_ptr<Device> device_;
  std::shared_ptr<JsState> state_;
  napi_env hookEnv_ = nullptr;
  bool hostMemory_ = false;
  bool closed_ = false;
};

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Device", DeviceWrap::Define(env));
  exports.Set("cudaCompiledIn", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
                return Napi::Boolean::New(info.Env(), cudaCompiledIn());
              }));
  exports.Set("abiVersion", Napi::Number::New(env, 1));
  return exports;
}

}  // namespace
}  // namespace medcluster

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return medcluster::Init(env, exports); }

NODE_API_MODULE(medcluster_kernels, InitModule)
