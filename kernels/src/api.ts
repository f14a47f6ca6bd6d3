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
  /** The fused [gate | up] layer packed for awqSiluGate (its columns paired in the packed
   * order: awqLinear rejects it). */
  readonly gated: boolean;
}

/** How packAwq lays out a layer. */
export interface PackAwqOptions {
  /** The fused [gate | up] layer, for awqSiluGate (CUDA pairs its gate and up columns). */
  gated?: boolean;
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

/** Device collective transports: CUDA IPC (ranks of one host, also ranks sharing one GPU) and NCCL. */
export type DeviceTransport = 'ipc' | 'nccl';

/**
 * One rank's end of a device collective group (CUDA). Its ops queue on the device's stream like
 * any op, so a graph can capture them; every rank of the group must issue the same calls in the
 * same order with the same shapes. Every rank gets identical bits: sums are taken in rank order
 * 0..size-1, rounding to fp32 after each addition (the host collective's order). A peer that does
 * not arrive within the group's timeout, or whose call differs from this rank's, fails the
 * device's next sync/read with a KernelError naming that peer; the group then stays failed.
 */
export interface DeviceCollective {
  readonly transport: DeviceTransport;
  readonly rank: number;
  readonly size: number;
  /** In place: x f32 [R, C] becomes the sum over ranks of their x. */
  allReduceSum(x: Tensor): void;
  /** x f32 [R, widths[rank]] -> f32 [R, sum widths], rank q's columns after those of ranks < q.
   * `widths` has one entry per rank, the same on every rank; it may be uneven (a vocabulary split). */
  allGatherCols(x: Tensor, widths: readonly number[]): Tensor;
  /** Releases the group once queued work that uses it has run. */
  dispose(): void;
}

export interface DeviceCollectiveOptions {
  rank: number;
  size: number;
  /** Bytes of each exchange buffer (IPC: two per rank) or of the staging area (NCCL); larger
   * messages run in chunks. Default 8 MiB. */
  bufferBytes?: number;
  /** IPC: how long a rank waits for a peer inside a call before the call fails (default 5000 ms). */
  timeoutMs?: number;
}

/** Step one of an IPC group: this rank's exchange buffers exist; hand `handle` to every peer. */
export interface IpcCollectiveSetup {
  /** Bytes that describe this rank's exchange buffers (a CUDA IPC handle), for every peer. */
  readonly handle: Uint8Array;
  /** Maps every rank's handle (indexed by rank, this rank's own included) and opens the group. */
  connect(handles: readonly Uint8Array[]): Promise<DeviceCollective>;
}

/**
 * One row of Device.sample: the serving core's sampler (worker/src/sampling/sampler.ts) for one
 * sequence, its random draw made by the caller. In order: the penalties on the raw logits
 * (repetition: positive scores divided, negative multiplied; then minus frequency x count, minus
 * presence), in float64; the masked ids to -inf; temperature 0 is the argmax (first index on
 * ties); otherwise softmax(scores / temperature) kept to the top k (largest first, lower id first
 * on ties), then to the shortest most-likely-first prefix whose weight reaches top_p of what is
 * left, and `uniform` picks by inverse CDF over the kept ids (in id order when nothing is cut).
 */
export interface SampleRow {
  /** The logits row it samples. */
  row: number;
  /** 0 is greedy. */
  temperature: number;
  /** 0 keeps every id. */
  topK: number;
  /** In (0, 1]; 1 keeps every id. */
  topP: number;
  repetitionPenalty: number;
  presencePenalty: number;
  frequencyPenalty: number;
  /** The distinct ids the sequence generated, and how often each (empty where no penalty is on). */
  penalizedIds: readonly number[];
  penalizedCounts: readonly number[];
  /** Ids that cannot be picked (stop ids before min_tokens). */
  maskedIds: readonly number[];
  /** The draw, in [0, 1); unused at temperature 0. */
  uniform: number;
  /** Absent: no logprobs; N >= 0: the chosen id's logprob and the N most likely ids'. */
  logprobs?: number;
}

/** What Device.sample queues: S rows (one per SampleRow) of 1 + L columns, L the largest logprobs asked. */
export interface SampledRows {
  /** i32 [S, 1 + L]: the sampled id, then the row's most likely ids by raw logits, most likely
   * first, lower id first on ties (-1 past the row's own logprobs count). */
  ids: Tensor;
  /** f32 [S, 1 + L]: the log-softmax of the raw logits at those ids (0 where the row asked none). */
  logprobs: Tensor;
}

/** A tensor that another process of this host can map (Device.openShared): CUDA IPC memory. */
export interface SharedTensor {
  readonly tensor: Tensor;
  /** Bytes that name the memory to another process of this host (a CUDA IPC handle and the
   * buffer's size, process and GPU). */
  readonly handle: Uint8Array;
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
  packAwq(weights: AwqLinear, options?: PackAwqOptions): AwqWeights;
  /** x f16 [T, K] @ dequant(weights) [K, N] -> [T, N] in outDtype (f16 or f32), fp32 accumulation.
   * `weights` in the layout packAwq returned for this device (CUDA rejects the AutoAWQ tensors). */
  awqLinear(x: Tensor, weights: AwqWeights, outDtype: DType): Tensor;
  /** The MLP's gated matmul: x f16 [T, K] @ gateUp, the fused [gate | up] layer (N = 2I columns),
   * -> f16 [T, I] = silu(x @ gate) * (x @ up). On CUDA gateUp is packAwq'd with { gated: true }
   * and the gate is the matmul's epilogue (no [T, 2I] round trip, no second kernel); on CPU it is
   * awqLinear then siluMul. */
  awqSiluGate(x: Tensor, gateUp: AwqWeights): Tensor;
  /** x f16 [T, K] @ w f16 [N, K]^T -> [T, N] in outDtype. */
  linear(x: Tensor, weight: Tensor, outDtype: DType): Tensor;
  /** The fused q/k/v matmul's output qkv f16 [T, (nh + 2 nkv) hd] (q, k, v columns; nkv and hd
   * are the caches'): rotate-half RoPE on q and k at positions i32 [T], k and v written into the
   * caches at slots i32 [T] as writeKv writes them. Returns q f16 [T, nh hd]. One kernel on CUDA. */
  ropeWriteKv(
    qkv: Tensor,
    kCache: Tensor,
    vCache: Tensor,
    positions: Tensor,
    slots: Tensor,
    theta: number,
  ): Tensor;
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
  /** The fused gate/up matmul's output f16 [T, 2I] (gate columns, then up) -> f16 [T, I]
   * = silu(gate) * up, read in place (no split copies). */
  siluMul(gateUp: Tensor): Tensor;
  /** Selects rows of a 2-D tensor: out [R, C] = x[rows i32 [R]]. */
  gatherRows(x: Tensor, rows: Tensor): Tensor;
  /** Concatenates 2-D tensors of one dtype and row count R along columns: parts [R, C_i] ->
   * [R, sum C_i], part i's columns at its offset (any dtype; fuses q/k/v weights at load time). */
  concatCols(parts: readonly Tensor[]): Tensor;
  /** Samples each row of logits f32 [R, V] that `rows` names (see SampleRow). */
  sample(logits: Tensor, rows: readonly SampleRow[]): SampledRows;
  /** ids i32 [T]: ids[t] = sampled[from[t], 0] wherever from[t] >= 0, the others unchanged;
   * sampled i32 [S, W] (SampledRows.ids), from: T host indices in -1..S-1. Feeds a sequence the
   * token its previous step sampled without a trip to the host (SeqStep.sampledInput). */
  takeSampled(ids: Tensor, sampled: Tensor, from: Int32Array): void;
  /** dst [R, C] rows 0..rows-1 = src [S, C] rows 0..rows-1 (one dtype; rows <= R, S). Either may
   * be an opened shared tensor, also of another GPU of the host. Graph-capturable. */
  copyRows(dst: Tensor, src: Tensor, rows: number): void;

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

  /** CUDA: a zero-filled tensor that other processes of this host can map (openShared there):
   * a pipeline stage hands its hidden states to the next stage's process through it. */
  allocShared(shape: readonly number[], dtype: DType): Promise<SharedTensor>;
  /** CUDA: another process's shared tensor, named by its handle, as a tensor of this device;
   * `shape` may cover less than it holds (its leading rows). Rejects, saying why, where the
   * handle cannot be mapped (this process's own memory, another host's, a freed buffer). */
  openShared(handle: Uint8Array, shape: readonly number[], dtype: DType): Promise<Tensor>;
  /** CUDA: allocates this rank's IPC exchange buffers, step one of a same-host device group
   * (the caller hands every rank's `handle` to every rank, then each calls `connect`). */
  prepareIpcCollective(options: DeviceCollectiveOptions): Promise<IpcCollectiveSetup>;
  /** CUDA: the version code of the NCCL loaded at run time (e.g. 22803); rejects with a message
   * that says how to fix it where libnccl.so.2 cannot be loaded. */
  ncclVersion(): Promise<number>;
  /** CUDA: a fresh NCCL unique id (rank 0 makes one per group and hands it to every rank). */
  ncclUniqueId(): Promise<Uint8Array>;
  /** CUDA: joins an NCCL group (one rank per GPU); resolves once every rank has joined. */
  openNcclCollective(options: DeviceCollectiveOptions & { uniqueId: Uint8Array }): Promise<DeviceCollective>;
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

/**
 * Whether an error is the device's own: a CUDA runtime error, which the addon names
 * `CUDA error <cudaError name> (...)`. Bad arguments and a device collective's missing peer are
 * not. Whether the device is lost for good (an illegal address, a launch failure, an
 * uncorrectable ECC error leave the context unusable) is for a fresh call to tell: it fails with
 * a CUDA error too, where a failed allocation does not.
 */
export function isDeviceFault(err: unknown): boolean {
  return err instanceof Error && /\bCUDA error cuda\w+/.test(err.message);
}
