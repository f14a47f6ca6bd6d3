// Device collectives: one rank's end of a group of devices (the tensor-parallel ranks of a
// pipeline stage) whose all-reduce and all-gather are queued on the backend's stream like
// any op, so that a CUDA graph can capture them. Every rank gets identical bits: sums are
// taken in rank order 0..size-1, rounding to fp32 after each addition, exactly as the host
// (gRPC) collective sums (worker/src/collective/root-group.ts).
//
// Two transports, both in cuda/collective.cu:
//  - CUDA IPC, for ranks on one host (also several ranks sharing one GPU, which NCCL
//    refuses): each rank exports its exchange buffers as bytes, the caller hands every
//    rank's bytes to every rank out of band, and a one-shot kernel reduces through them.
//  - NCCL, loaded at run time (nccl_loader.h), for ranks on several hosts.
// The CPU backend has none: CPU workers keep the host collective.
//
// Every function here runs on the device thread of the backend it is given (device.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"

namespace medcluster {

struct CollectiveOptions {
  int rank = 0;
  int size = 1;
  // Bytes of each of the two exchange buffers (IPC), or of the staging area per rank
  // (NCCL); larger messages run as several chunks.
  size_t bufferBytes = 8u << 20;
  // How long a rank waits for a peer inside a collective before it records "rank N did
  // not arrive" and the call fails (IPC; NCCL has its own timeouts).
  int64_t timeoutMs = 5000;
};

class DeviceGroup {
 public:
  virtual ~DeviceGroup() = default;
  virtual const char* transport() const = 0;  // "ipc" or "nccl"
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // x f32 [R, C], summed in place across the group.
  virtual void allReduceSum(Backend& b, const View& x) = 0;
  // x f32 [R, widths[rank]] -> out f32 [R, sum widths]: rank q's columns at offset
  // widths[0] + ... + widths[q-1]. Every rank passes the same widths.
  virtual void allGatherCols(Backend& b, const View& x, const View& out, const std::vector<int64_t>& widths) = 0;
  // Throws BackendError for a failure that device code recorded (a peer that did not
  // arrive in time, ranks whose calls disagree). Registered with Backend::addSyncCheck, so
  // it runs after every sync and read; once failed, a group stays failed.
  virtual void check() = 0;
};

// ---- CUDA IPC: prepare (allocate, export), hand the bytes around, then connect.

class IpcGroup : public DeviceGroup {
 public:
  // This rank's exchange buffers as bytes for every peer (a CUDA IPC handle plus the facts
  // a peer checks: buffer size, process, GPU).
  virtual std::vector<uint8_t> localHandle() const = 0;
  // Maps every peer's buffers (handles indexed by rank; this rank's own entry is ignored).
  // Throws BackendError naming the rank whose handle cannot be used.
  virtual void connect(const std::vector<std::vector<uint8_t>>& handles) = 0;
};

// Allocates this rank's buffers on `b` (a CUDA backend). Throws BackendError when CUDA
// support is not compiled in.
std::shared_ptr<IpcGroup> createIpcGroup(Backend& b, const CollectiveOptions& options);

// ---- NCCL.

// ncclGetVersion (e.g. 22803); throws BackendError "NCCL not available: ..." where the library is missing.
int ncclVersionCode();
// A fresh ncclUniqueId as bytes (rank 0 makes it; every rank passes it to createNcclGroup).
std::vector<uint8_t> ncclUniqueIdBytes();
// ncclCommInitRank: blocks until every rank of the group has called it. A failure names the
// rank and NCCL's reason.
std::shared_ptr<DeviceGroup> createNcclGroup(Backend& b, const CollectiveOptions& options,
                                             const std::vector<uint8_t>& uniqueId);

}  // namespace medcluster
