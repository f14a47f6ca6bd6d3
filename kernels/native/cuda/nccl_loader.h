// NCCL loaded at run time (dlopen "libnccl.so.2"), so the addon builds and loads on
// machines without NCCL. Only the few entry points the cluster calls are declared,
// with prototypes matching nccl.h (2.x); nccl.h itself is never included.
#pragma once


#include <string>

// Same typedef as the CUDA runtime's driver_types.h, so this header needs no CUDA include path.
typedef struct CUstream_st* cudaStream_t;

namespace medcluster {
namespace nccl {

typedef struct ncclComm* ncclComm_t;
#define MC_NCCL_UNIQUE_ID_BYTES 128
typedef struct { char internal[MC_NCCL_UNIQUE_ID_BYTES]; } ncclUniqueId;
// Values from nccl.h; others are errors too (see ncclGetErrorString).
typedef enum { ncclSuccess = 0, ncclInProgress = 7 } ncclResult_t;
typedef enum { ncclInt8 = 0, ncclInt32 = 2, ncclFloat16 = 6, ncclFloat32 = 7 } ncclDataType_t;
typedef enum { ncclSum = 0 } ncclRedOp_t;

struct Api {
  ncclResult_t (*getVersion)(int*);
  ncclResult_t (*getUniqueId)(ncclUniqueId*);
  ncclResult_t (*commInitRank)(ncclComm_t*, int nranks, ncclUniqueId, int rank);
  ncclResult_t (*allReduce)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
  // sendcount elements from every rank; rank r's land at recvbuff + r * sendcount.
  ncclResult_t (*allGather)(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t, ncclComm_t,
                            cudaStream_t);
  ncclResult_t (*commDestroy)(ncclComm_t);
  const char* (*getErrorString)(ncclResult_t);
  // Optional (NCCL >= 2.13 / 2.4): the last error's text, and a communicator's asynchronous error.
  const char* (*getLastError)(ncclComm_t) = nullptr;
  ncclResult_t (*commGetAsyncError)(ncclComm_t, ncclResult_t*) = nullptr;
};

// Loads NCCL once per process; throws BackendError ("NCCL not available: ...") when the
// library or one of its symbols is missing. MEDCLUSTER_NCCL_LIBRARY names the library file
// to load instead of searching for libnccl.so.2 (tests use it to point at a missing file).
const Api& api();
// Throws BackendError naming the call when r is not ncclSuccess.
void check(ncclResult_t r, const char* call);
// "<error string> (<code>)[: <last error text>]" for a failed call.
std::string describe(ncclResult_t r);

}  // namespace nccl
}  // namespace medcluster
