// Linked instead of the CUDA backend when the addon is built without nvcc, so a
// request for a CUDA device fails with a message that says how to get one.
#include "backend.h"
#include "collective.h"

namespace medcluster {

std::unique_ptr<Backend> createCudaBackend(int) {
  throw BackendError(
      "CUDA support was not compiled into this addon; rebuild on a machine with nvcc "
      "(npm run build -w @medcluster/kernels, with MEDCLUSTER_CUDA unset)");
}

bool cudaCompiledIn() { return false; }

// Device collectives live in the CUDA backend.
static BackendError noCudaCollective() {
  return BackendError("device collectives need the CUDA backend, which was not compiled into this addon");
}
std::shared_ptr<IpcGroup> createIpcGroup(Backend&, const CollectiveOptions&) { throw noCudaCollective(); }
int ncclVersionCode() { throw noCudaCollective(); }
std::vector<uint8_t> ncclUniqueIdBytes() { throw noCudaCollective(); }
std::shared_ptr<DeviceGroup> createNcclGroup(Backend&, const CollectiveOptions&, const std::vector<uint8_t>&) {
  throw noCudaCollective();
}
int cudaDeviceCount() { return 0; }

}  // namespace medcluster
