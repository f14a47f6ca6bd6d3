// NCCL loaded at run time (dlopen "libnccl.so.2"), so the addon builds and loads on
// machines without NCCL. Only the few entry points the cluster calls are declared,
// with prototypes matching nccl.h (2.x).
#pragma once


#include <string>

// Same typedef as the CUDA runtime's driver_types.h, so this header needs no CUDA include path.
typedef struct CUstream_st* cudaStream_t;

namespace medcluster {
namespace nccl {

typedef struct ncclComm* ncclComm_t;
#define MC_NCCL_UNIQUE_ID_BYTES 128
typedef struct { char internal[MC_NCCL_UNIQUE_ID_BYTES]; } ncclUniqueId;
typedef enum { ncclSuccess = 0 } ncclResult_t;  // other values are errors; see ncclGetErrorString
typedef enum { ncclInt8 = 0, ncclInt32 = 2, ncclFloat16 = 6, ncclFloat32 = 7 } ncclDataType_t;
typedef enum { ncclSum = 0 } ncclRedOp_t;

struct Api {
  ncclResult_t (*getVersion)(int*);
  ncclResult_t (*getUniqueId)(ncclUniqueId*);
  ncclResult_t (*commInitRank)(ncclComm_t*, int nranks, ncclUniqueId, int rank);
  ncclResult_t (*allReduce)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*commDestroy)(ncclComm_t);
  const char* (*getErrorString)(ncclResult_t);
};

// Loads NCCL once per process; throws BackendError ("NCCL not available: ...") when the
// library or one of its symbols is missing.
const Api& api();
// Throws BackendError naming the call when r is not ncclSuccess.
void check(ncclResult_t r, const char* call);

}  // namespace nccl
}  // namespace medcluster
