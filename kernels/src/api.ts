// The kernels package's whole public surface, declared once.
//
// A Device owns one native thread. Every op call validates shapes on the JS thread
// (throwing KernelError naming the op and the shapes), allocates its output, and
// enqueues the work; it returns at once. Work runs in issue order on the device's
// thread. `read()` and `sync()` return promises that settle when the queued work up
// to that point is done. The event loop never waits for native work.

export type DType = 'f16' | 'f32' | 'i32';
export type DeviceKind = 'cpu' | 'cuda';

export type HostArray = Float32Array | Int32Array | Uint16Array;

export interface Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly device: Device;
  /** Copies the tensor to the host once all queued work before this call is done.
   * f16 tensors come back as Float32Array (converted), f32 as Float32Array, i32 as Int32Array. */
  read(): Promise<Float32Array | Int32Array>;
  /** Drops this handle's reference; memory is freed once queued ops using it have run. */
  dispose(): void;
}

/** One AWQ GEMM linear layer as stored by AutoAWQ (see shared MODEL.md). */
export interface AwqLinear {
  qweight: Tensor; // i32 [K, N/8]
  qzeros: Tensor; // i32 [K/G, N/8]
  scales: Tensor; // f16 [K/G, N]
  groupSize: number;
}

/**
 * An AWQ linear layer repacked once at load (Device.packAwq) into the layout a device's matmul
 * kernels read (kernels/native/awq_layout.h: fragment-ordered int4, 128-column x 128-row units
 * that a kernel streams with contiguous bulk copies). A copy in device memory of the same size;
 * the checkpoint is never rewritten.
 */
export interface PackedAwqLinear {
  /** The packed bytes, i32 [words]; only the device's kernels interpret them. */
  readonly packed: Tensor;
  /** K */
  readonly inFeatures: number;
  /** N */
  readonly outFeatures: number;
  readonly groupSize: number;
}

/** What awqLinear multiplies by: the AutoAWQ tensors (CPU) or their packed copy (CUDA). */
export type AwqWeights = AwqLinear | PackedAwqLinear;

/** Whether w is the packed form (else it is the AutoAWQ tensors). */
export function isPackedAwq(w: AwqWeights): w is PackedAwqLinear {
  return 'packed' in w;
}

/** Frees an AWQ layer's tensors, in either layout. */
export function disposeAwq(w: AwqWeights): void {
  if (isPackedAwq(w)) {
    w.packed.dispose();
  } else {
    w.qweight.dispose();
    w.qzeros.dispose();
    w.scales.dispose();
  }
}

export interface AttentionShape {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  /** Defaults to 1/sqrt(headDim). */
  scale?: number;
}

/** A 2-D region of a row-major matrix stored in a file (a safetensors tensor). */
export interface FileRegion {
  path: string;
  /** Absolute byte offset of element [0, 0] in the file. */
  offset: number;
  dtype: DType;
  /** Full matrix shape as stored ([n] for 1-D tensors is [1, n]). */
  rows: number;
  cols: number;
  /** Region to read; defaults to the whole matrix. */
  rowStart?: number;
  rowEnd?: number;
  colStart?: number;
  colEnd?: number;
  /** Shape of the resulting tensor; defaults to [rowEnd-rowStart, colEnd-colStart]. */
  shape?: readonly number[];
}

/** Memory the backend can still allocate, and its total, in bytes. */
export interface MemoryInfo {
  /** CUDA: free device memory (plus what the allocator's pool holds free). CPU: MemAvailable. */
  freeBytes: number;
  totalBytes: number;
}

/** A recorded op sequence that replays on the same buffers (a CUDA graph). */
export interface Graph<T> {
  /** What the captured issue function returned: tensors that every replay overwrites. */
  readonly outputs: T;
  /** Queues one replay; write the inputs (Device.write) before it, read the outputs after. */
  replay(): void;
  /** Frees the graph and its private memory once queued replays have run. */
  dispose(): void;
}

/**
 * Builds a Graph from an issue function that queues the same compute ops on the same
 * input tensors every time it is called (no zeros/fromArray/write/read/sync inside).
 * First `warmup()` runs it eagerly: a real run whose results are returned, and which
 * sizes the graph's private memory and the backend's workspaces. Read and dispose what
 * it returned, then `capture()` records the sequence (nothing runs) into a Graph.
 */
export interface GraphBuilder<T> {
  warmup(): T;
  capture(): Graph<T>;
}

export interface Device {
  readonly kind: DeviceKind;
  /** Human-readable device name, e.g. "cpu (8 threads)" or "NVIDIA H100 80GB HBM3". */
  readonly name: string;
  /** Whether buildGraph is available (CUDA). */
  readonly supportsGraphs: boolean;

  /** A zero-filled tensor. */
  zeros(shape: readonly number[], dtype: DType): Tensor;
  /** Copies host data into a new tensor. f16 accepts Float32Array (rounded to nearest even)
   * or Uint16Array (raw half bits). */
  fromArray(data: HostArray, shape: readonly number[], dtype: DType): Tensor;
  /** Overwrites a tensor with host data, in issue order (a graph's inputs). Same data rules as fromArray. */
  write(t: Tensor, data: HostArray): void;
  /** Reads a region of a file straight into device memory on the device's thread
   * (the bytes never pass through the JS heap). Rejects on the next sync/read if I/O fails. */
  readFile(region: FileRegion): Tensor;
  /** A tensor of deterministic pseudo-random bits (synthetic weights, benchmarks). */
  randomBits(shape: readonly number[], dtype: DType, seed: number): Tensor;

  /** f32 [T, H] = table f16 [V, H] [ids i32 [T]]. Ids must be < V (checked when given as host data). */
  embedding(table: Tensor, ids: Tensor): Tensor;
  /** f16 [T, H] = rmsnorm(x f32 [T, H]) * w f16 [H] */
  rmsNorm(x: Tensor, weight: Tensor, eps: number): Tensor;
  /** residual f32 += delta f32, then f16 rmsnorm(residual) * w. Fused residual add. */
  addRmsNorm(residual: Tensor, delta: Tensor, weight: Tensor, eps: number): Tensor;
  /** residual f32 [T, H] += delta f32 [T, H] */
  addInPlace(residual: Tensor, delta: Tensor): void;
  /**
   * The AWQ layer in the layout this device's awqLinear reads, made once at load. Takes
   * ownership of `weights`: where the kernels read the AutoAWQ layout (CPU) it returns
   * `weights` itself; elsewhere (CUDA) a packed copy, and `weights`' tensors are disposed
   * (freed once the copy has been made). qweight i32 [K, N/8], qzeros i32 [K/G, N/8],
   * scales f16 [K/G, N] -> packed (K, N, G).
   */
  packAwq(weights: AwqLinear): AwqWeights;
  /** x f16 [T, K] @ dequant(weights) [K, N] -> [T, N] in outDtype (f16 or f32), fp32 accumulation.
   * `weights` in the layout packAwq returned for this device (CUDA rejects the AutoAWQ tensors). */
  awqLinear(x: Tensor, weights: AwqWeights, outDtype: DType): Tensor;
  /** x f16 [T, K] @ w f16 [N, K]^T -> [T, N] in outDtype. */
  linear(x: Tensor, weight: Tensor, outDtype: DType): Tensor;
  /** In place rotate-half RoPE on q f16 [T, nq*hd] and k f16 [T, nk*hd]. */
  rope(q: Tensor, k: Tensor, positions: Tensor, headDim: number, theta: number): void;
  /** Writes k, v f16 [T, nkv*hd] into paged caches f16 [blocks, blockSize, nkv, hd] at slots i32 [T]. */
  writeKv(kCache: Tensor, vCache: Tensor, k: Tensor, v: Tensor, slots: Tensor): void;
  /** Causal paged attention: q f16 [T, nh*hd] -> f16 [T, nh*hd]. */
  attention(
    q: Tensor,
    kCache: Tensor,
    vCache: Tensor,
    blockTables: Tensor,
    tokenSeq: Tensor,
    positions: Tensor,
    shape: AttentionShape,
  ): Tensor;
  /** f16 silu(gate) * up */
  siluMul(gate: Tensor, up: Tensor): Tensor;
  /** Selects rows of a 2-D tensor: out [R, C] = x[rows i32 [R]]. */
  gatherRows(x: Tensor, rows: Tensor): Tensor;
  /** Concatenates 2-D tensors of one dtype and row count R along columns: parts [R, C_i] ->
   * [R, sum C_i], part i's columns at its offset (any dtype; fuses q/k/v weights at load time). */
  concatCols(parts: readonly Tensor[]): Tensor;
  /** The inverse of concatCols: x [R, C] -> tensors [R, widths[i]] of consecutive column
   * ranges (any dtype). Widths are positive integers summing to C. */
  splitCols(x: Tensor, widths: readonly number[]): Tensor[];
  /** i32 [T] argmax over the last dim of f32 [T, V]; first index on ties. */
  argmax(x: Tensor): Tensor;

  /** Resolves when all work queued so far has run; rejects with the first error it raised. */
  sync(): Promise<void>;
  /** Free and total memory once the work queued so far has run. */
  memoryInfo(): Promise<MemoryInfo>;
  /** See GraphBuilder. Throws KernelError where supportsGraphs is false. `sharePoolWith`:
   * draw intermediates from another graph's memory (graphs that never run concurrently,
   * as graphs of one device never do, need only the largest one's). */
  buildGraph<T>(issue: () => T, options?: { sharePoolWith?: Graph<unknown> }): GraphBuilder<T>;
  /** Stops the device thread after queued work; the device is unusable afterwards. */
  close(): Promise<void>;
}

export interface DeviceOptions {
  kind: DeviceKind;
  /** CPU: worker threads for kernels (default: available parallelism). */
  threads?: number;
  /** CUDA: device ordinal (default 0). */
  ordinal?: number;
}

/** Raised for bad arguments (shapes, dtypes) and for failures of native work. */
export class KernelError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KernelError';
  }
}
