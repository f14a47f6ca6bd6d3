// Every tuning knob of the CUDA backend, in one struct. Launchers read tuning() at each
// launch, so the check program (kernels/gpu/check.cu) can move a switch point to exercise
// every path, and a benchmark can compare variants in one process. The defaults are the
// measured choices (kernels/gpu/RESULTS.md says which run chose each).
#pragma once

namespace medcluster {
namespace cuda {

struct Tuning {
  // ---- AWQ matmul (awq_linear.cu) ----
  // From this M up, where cuBLAS loads, the packed weights are dequantized to an f16 scratch
  // and multiplied by cuBLAS; below it (and always without cuBLAS) the packed kernels run in
  // passes (awq_linear.cu). 0: never use cuBLAS. Measured on an H200, per 70B block chained,
  // wgmma passes against dequantization + cuBLAS: at f2d8578 (passes of 128 rows) M = 512
  // 1.75-1.77 / 2.01-2.07, M = 768 2.70-2.76 / 2.74-2.80; on 2026-12-04 (passes of 256 rows) M = 768
  // 2.29 / 2.71, M = 1024 3.08 / 3.37, M = 1536 4.58 / 4.48 (isolated 4.15 either way), M = 2048
  // 6.01-6.29 / 5.89-6.14.
  int awqDequantMinM = 1536;
  // Blocks of the persistent GEMV per multiprocessor (each 8 consumer warps + 1 producer warp),
  // 1..3, by row-tile count MT = 1, 2, 4, 8: as many as its registers let reside (the check fails
  // where fewer do). M <= 8 at 2: three were fastest at bd002a3, but the raw reading's kernel took
  // 80 registers and two resided; compiled for three (72 registers) it was slower, measured on an
  // H200 against 848c4be, per 70B block chained: 0.148 ms against 0.140 for two.
  int awqGemvBlocksPerSM[4] = {2, 2, 2, 1};
  // Deterministic mode: a row's output is bit-identical whatever else is in the batch. Every M
  // runs the AWQ GEMV with one block shape and one grid (2 blocks per SM), the fp16 linear never
  // through cuBLAS, decode attention in splits of a fixed 256 keys. Costs the large-M speed.
  bool deterministic = false;
  // Shared-memory ring depth of the GEMV per row-tile count MT = 1, 2, 4, 8 (M <= 8, 16, 32, 64).
  // Deeper rings lose at two blocks per SM: measured on an H200 at 43099db, per 70B block chained,
  // M = 1 with 3 / 4 / 5 (6 before) / 8 / 10 stages 0.139 / 0.137 / 0.137 / 0.139 / 0.141 / 0.144 ms,
  // M = 16 with 4 and 5 (before) 0.175 either way.
  int awqGemvStages[4] = {4, 4, 4, 4};
  // From this M (below awqDequantMinM; up to awqWgmmaPassRows a launch), the wgmma kernel
  // (awq_wgmma.cu) on a compute capability 9.0 device instead of the GEMV; 0: never. Measured on an
  // H200 on 2026-12-04 (the packed layout in the MMA's k order, no x copy before the wgmma kernel),
  // per 70B block chained, wgmma against the GEMV: M = 1 0.146 / 0.136 ms, M = 8 0.148 / 0.141,
  // M = 16 0.162 / 0.179-0.183. (At c99f91b, with the x copy, M = 16 took 0.203 against 0.183.)
  int awqWgmmaMinM = 9;
  // Blocks of the wgmma kernel per multiprocessor (each 8 consumer warps + 1 producer warp), 1..2
  // (always 1 above 64 rows).
  int awqWgmmaBlocksPerSM = 2;
  // Rows of one wgmma launch, 128 or 256 (m64n256 MMAs, one block per SM): a pass reads and
  // dequantizes the weights once for its rows. Measured on an H200 on 2026-12-04, per 70B block
  // chained, 256 against 128: M = 256 0.684 / 0.813 ms, 512 1.52 / 1.79, 1024 3.08 / 3.64; M = 128
  // takes the 128-row kernel either way.
  int awqWgmmaPassRows = 256;
  // The wgmma kernel's ring depth where two of its blocks share a multiprocessor (up to 64 rows);
  // 0: as deep as their shared memory allows. At one block a multiprocessor it takes as many as fit
  // (3 to 5). Measured on an H200 on 2026-12-04, per 70B block chained, 4 stages against as many as
  // fit (8 or 9): M = 9 0.1576 / 0.1573 against 0.1613 / 0.1617 ms, M = 16 0.1607 / 0.1603 against
  // 0.1647 / 0.1645, M = 32 0.1857 / 0.1852 against 0.1867 / 0.1872, M = 64 0.249 either way.
  int awqWgmmaStages = 4;
  // Programmatic dependent launch (sm_90) for every kernel launchKernel starts (common.cuh): its
  // blocks start while the kernel before finishes (the AWQ matmuls prefetch their first weight
  // stages meanwhile).
  bool pdl = true;

  // ---- fp16 linear (linear.cu) ----
  int linearBlasMinM = 9;  // from this M, cuBLAS where it loads (the GEMV re-reads the weights per 8 rows)

  // ---- attention (attention.cu) ----
  int attnPrefillMinTokensPerSeq = 4;  // tensor-core prefill kernel from this many query tokens per sequence
  // Decode attention splits each token's context so the grid has about this many blocks per
  // multiprocessor (at most one split per 64 keys); 4 reside, so 1 keeps the grid to one wave.
  // Measured on an H200 at fd6f20d (70B heads, 640-token contexts, 64 / 16 sequences, chained):
  // 1 47.8 / 21.6 us, 2 48.0 / 21.6, 3 47.9 / 21.8, 4 60.4 / 27.6 (1.94 waves at 64).
  int attnDecodeBlocksPerSM = 1;
  // Where the grid fits two blocks per multiprocessor, each decode attention warp keeps two 16-key
  // tiles of K and V in flight instead of one.
  bool attnDecodePrefetch = true;
};

// The process-wide settings (one per process: every CudaBackend reads the same).
Tuning& tuning();

// Applies the MEDCLUSTER_* environment overrides (MEDCLUSTER_PDL=0, MEDCLUSTER_AWQ_DEQUANT_MIN_M=N,
// MEDCLUSTER_AWQ_GEMV_BLOCKS=a,b,c,d, MEDCLUSTER_AWQ_GEMV_STAGES=a,b,c,d,
// MEDCLUSTER_AWQ_WGMMA_MIN_M=N, MEDCLUSTER_AWQ_WGMMA_BLOCKS=N, MEDCLUSTER_AWQ_WGMMA_PASS_ROWS=N,
// MEDCLUSTER_AWQ_WGMMA_STAGES=N,
// MEDCLUSTER_ATTN_DECODE_BLOCKS=N, MEDCLUSTER_ATTN_DECODE_PREFETCH=0, MEDCLUSTER_DETERMINISTIC=1);
// called when a backend is created.
void applyTuningEnv();

}  // namespace cuda
}  // namespace medcluster
