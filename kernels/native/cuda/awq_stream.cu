// The tensor map of x that the AWQ matmuls' producers copy from (awq_stream.cuh).
#include <cudaTypedefs.h>

#include "awq_stream.cuh"

namespace medcluster {
namespace cuda {

// cuTensorMapEncodeTiled, found once through the runtime (the driver's entry point).
static PFN_cuTensorMapEncodeTiled_v12000 tensorMapEncoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q;
    MC_CUDA(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q));
    if (q != cudaDriverEntryPointSuccess || !p)
      throw BackendError("awqLinear (CUDA): the driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

CUtensorMap awqXTensorMap(const __half* x, int M, int K, int boxRows, const char* who) {
  CUtensorMap m;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(K), static_cast<cuuint64_t>(M)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(K) * 2};
  const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(boxRows)}, steps[2] = {1, 1};
  const CUresult r = tensorMapEncoder()(&m, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, const_cast<__half*>(x), dims, strides,
                                        box, steps, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                        CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw BackendError(std::string(who) + ": cuTensorMapEncodeTiled failed (" + std::to_string(static_cast<int>(r)) +
                       ") for x [" + std::to_string(M) + ", " + std::to_string(K) + "]");
  return m;
}

}  // namespace cuda
}  // namespace medcluster
