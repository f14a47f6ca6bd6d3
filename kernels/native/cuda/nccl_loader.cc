#include "nccl_loader.h"

#include <dlfcn.h>

#include <mutex>

#include "../backend.h"

namespace medcluster {
namespace nccl {

namespace {
Api g_api;
std::string g_error;
std::once_flag g_once;

void load() {
  const char* names[] = {"libnccl.so.2", "libnccl.so"};
  void* h = nullptr;
  std::string tried;
  for (const char* n : names) {
    h = dlopen(n, RTLD_NOW | RTLD_LOCAL);
    if (h) break;
    const char* e = dlerror();
    tried += std::string(tried.empty() ? "" : "; ") + (e ? e : n);
  }
  if (!h) {
    g_error = "NCCL not available: could not load libnccl.so.2 (" + tried +
              "); install NCCL 2.x or add its directory to LD_LIBRARY_PATH";
    return;
  }
  auto sym = [&](const char* name) -> void* {
    void* p = dlsym(h, name);
    if (!p && g_error.empty()) g_error = std::string("NCCL not available: libnccl.so.2 lacks ") + name;
    return p;
  };
  g_api.getVersion = reinterpret_cast<decltype(g_api.getVersion)>(sym("ncclGetVersion"));
  g_api.getUniqueId = reinterpret_cast<decltype(g_api.getUniqueId)>(sym("ncclGetUniqueId"));
  g_api.commInitRank = reinterpret_cast<decltype(g_api.commInitRank)>(sym("ncclCommInitRank"));
  g_api.allReduce = reinterpret_cast<decltype(g_api.allReduce)>(sym("ncclAllReduce"));
  g_api.commDestroy = reinterpret_cast<decltype(g_api.commDestroy)>(sym("ncclCommDestroy"));
  g_api.getErrorString = reinterpret_cast<decltype(g_api.getErrorString)>(sym("ncclGetErrorString"));
}
}  // namespace

const Api& api() {
  std::call_once(g_once, load);
  if (!g_error.empty()) throw BackendError(g_error);
  return g_api;
}

void check(ncclResult_t r, const char* call) {
  if (r == ncclSuccess) return;
  throw BackendError(std::string("NCCL error in ") + call + ": " + api().getErrorString(r) + " (" +
                     std::to_string((int)r) + ")");
}

}  // namespace nccl
}  // namespace medcluster
