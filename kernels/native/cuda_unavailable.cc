// Linked instead of the CUDA backend when the addon is built without nvcc, so a
// request for a CUDA device fails with a message that says how to get one.
#include "backend.h"

namespace medcluster {

std::unique_ptr<Backend> createCudaBackend(int) {
  throw BackendError(
      "CUDA support was not compiled into this addon; rebuild on a machine with nvcc "
      "(npm run build -w @medcluster/kernels, with MEDCLUSTER_CUDA unset)");
}

bool cudaCompiledIn() { return false; }
int cudaDeviceCount() { return 0; }

}  // namespace medcluster
