#include "nccl_loader.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <vector>

#include "../backend.h"

namespace medcluster {
namespace nccl {

namespace {
Api g_api;
std::string g_error;
std::once_flag g_once;

void load() {
  std::vector<std::string> names;
  const char* override = std::getenv("MEDCLUSTER_NCCL_LIBRARY");
  if (override && *override) {
    names.push_back(override);
  } else {
    names = {"libnccl.so.2", "libnccl.so"};
  }
  void* h = nullptr;
  std::string tried;
  for (const std::string& n : names) {
    h = dlopen(n.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h) break;
    const char* e = dlerror();
    tried += std::string(tried.empty() ? "" : "; ") + (e ? e : n);
  }
  if (!h) {
    g_error = "NCCL not available: could not load " + names[0] + " (" + tried + "); install NCCL 2.x or add its " +
              "directory to LD_LIBRARY_PATH (or set MEDCLUSTER_NCCL_LIBRARY to the library file)";
    return;
  }
  auto sym = [&](const char* name) -> void* {
    void* p = dlsym(h, name);
    if (!p && g_error.empty()) g_error = "NCCL not available: " + names[0] + " lacks " + name;
    return p;
  };
  g_api.getVersion = reinterpret_cast<decltype(g_api.getVersion)>(sym("ncclGetVersion"));
  g_api.getUniqueId = reinterpret_cast<decltype(g_api.getUniqueId)>(sym("ncclGetUniqueId"));
  g_api.commInitRank = reinterpret_cast<decltype(g_api.commInitRank)>(sym("ncclCommInitRank"));
  g_api.allReduce = reinterpret_cast<decltype(g_api.allReduce)>(sym("ncclAllReduce"));
  g_api.allGather = reinterpret_cast<decltype(g_api.allGather)>(sym("ncclAllGather"));
  g_api.commDestroy = reinterpret_cast<decltype(g_api.commDestroy)>(sym("ncclCommDestroy"));
  g_api.getErrorString = reinterpret_cast<decltype(g_api.getErrorString)>(sym("ncclGetErrorString"));
  g_api.getLastError = reinterpret_cast<decltype(g_api.getLastError)>(dlsym(h, "ncclGetLastError"));
  g_api.commGetAsyncError = reinterpret_cast<decltype(g_api.commGetAsyncError)>(dlsym(h, "ncclCommGetAsyncError"));
}
}  // namespace

const Api& api() {
  std::call_once(g_once, load);
  if (!g_error.empty()) throw BackendError(g_error);
  return g_api;
}

std::string describe(ncclResult_t r) {
  const Api& a = api();
  std::string s = std::string(a.getErrorString(r)) + " (" + std::to_string((int)r) + ")";
  if (a.getLastError) {
    const char* last = a.getLastError(nullptr);
    if (last && *last) s += std::string(": ") + last;
  }
  return s;
}

void check(ncclResult_t r, const char* call) {
  if (r == ncclSuccess) return;
  throw BackendError(std::string("NCCL error in ") + call + ": " + describe(r));
}

}  // namespace nccl
}  // namespace medcluster
