// cuBLAS loaded at run time (dlopen): the backend's large-M matmuls (fp16 GEMM after an
// AWQ dequantization, lm_head over many rows) and the benchmarks' fp16 baselines. The addon
// never links it: where it is missing, the backend's own kernels run instead.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <stdexcept>
#include <string>

namespace cublasdl {
typedef struct cublasContext* cublasHandle_t;
typedef int cublasStatus_t;  // 0 = success
enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum { CUDA_R_16F = 2, CUDA_R_32F = 0 };
enum { CUBLAS_COMPUTE_32F = 68 };
enum { CUBLAS_GEMM_DEFAULT = -1 };

struct Api {
  cublasStatus_t (*create)(cublasHandle_t*);
  cublasStatus_t (*setStream)(cublasHandle_t, cudaStream_t);
  cublasStatus_t (*gemmEx)(cublasHandle_t, int transa, int transb, int m, int n, int k, const void* alpha,
                           const void* A, int Atype, int lda, const void* B, int Btype, int ldb,
                           const void* beta, void* C, int Ctype, int ldc, int computeType, int algo);
  // Optional (older libraries lack it): a caller-owned workspace, so that calls captured
  // into a CUDA graph never allocate.
  cublasStatus_t (*setWorkspace)(cublasHandle_t, void*, size_t) = nullptr;
};

inline Api load() {
  const char* names[] = {"libcublas.so", "libcublas.so.13", "libcublas.so.12", "/usr/local/cuda/lib64/libcublas.so"};
  void* h = nullptr;
  for (const char* n : names) if ((h = dlopen(n, RTLD_NOW | RTLD_LOCAL))) break;
  if (!h) throw std::runtime_error("cuBLAS not available (dlopen libcublas.so failed)");
  Api a;
  a.create = reinterpret_cast<decltype(a.create)>(dlsym(h, "cublasCreate_v2"));
  a.setStream = reinterpret_cast<decltype(a.setStream)>(dlsym(h, "cublasSetStream_v2"));
  a.gemmEx = reinterpret_cast<decltype(a.gemmEx)>(dlsym(h, "cublasGemmEx"));
  a.setWorkspace = reinterpret_cast<decltype(a.setWorkspace)>(dlsym(h, "cublasSetWorkspace_v2"));
  if (!a.create || !a.setStream || !a.gemmEx) throw std::runtime_error("cuBLAS lacks a needed symbol");
  return a;
}
}  // namespace cublasdl
