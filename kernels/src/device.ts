// The Device and Tensor implementations over the native addon (src/native.ts).
// Validation happens here, on the JS thread; the addon queues the work.

import { availableParallelism } from 'node:os';
import type {
  AttentionShape,
  AwqLinear,
  AwqWeights,
  Device,
  DeviceCollective,
  DeviceCollectiveOptions,
  DeviceKind,
  DeviceOptions,
  DType,
  FileRegion,
  Graph,
  GraphBuilder,
  HostArray,
  IpcCollectiveSetup,
  MemoryInfo,
  PackAwqOptions,
  PackedAwqLinear,
  SampledRows,
  SampleRow,
  SharedTensor,
  Tensor,
} from './api.js';
import { isPackedAwq, KernelError } from './api.js';
import { ncclUniqueId, ncclVersion, openNcclCollective, prepareIpcCollective } from './collective.js';
import { DTYPE_CODE, loadAddon, type NativeDevice, type NativeGraph, type NativeHandle } from './native.js';
import { packSampleRows } from './sample-rows.js';
import { checkDtype, checkShape, describe, expect, fail, numel, positiveInt, sameShape } from './validate.js';

class NativeTensor implements Tensor {
  #handle: NativeHandle | undefined;
  constructor(
    readonly device: KernelDevice,
    handle: NativeHandle,
    readonly shape: readonly number[],
    readonly dtype: DType,
  ) {
    this.#handle = handle;
    Object.freeze(this.shape);
  }

  /** The native handle; throws if the tensor was disposed. */
  handle(op: string): NativeHandle {
    if (!this.#handle) fail(op, `tensor ${describe(this)} was disposed`);
    return this.#handle;
  }

  read(): Promise<Float32Array | Int32Array> {
    return this.device.readTensor(this);
  }

  dispose(): void {
    if (this.#handle) this.device.release(this.#handle);
    this.#handle = undefined;
  }
}

class NativeGraphHandle<T> implements Graph<T> {
  #graph: NativeGraph | undefined;
  constructor(
    private readonly native: NativeDevice,
    graph: NativeGraph,
    readonly outputs: T,
  ) {
    this.#graph = graph;
  }

  replay(): void {
    this.native.replay(this.handle('replay'));
  }

  handle(op: string): NativeGraph {
    if (!this.#graph) fail(op, 'graph was disposed');
    return this.#graph;
  }

  dispose(): void {
    if (this.#graph) this.native.releaseGraph(this.#graph);
    this.#graph = undefined;
  }
}

/** Runs a native call, turning the addon's plain errors (which name the op) into KernelError. */
function nativeCall<T>(op: string, call: () => T): T {
  try {
    return call();
  } catch (err) {
    if (err instanceof KernelError) throw err;
    const message = err instanceof Error ? err.message : String(err);
    throw new KernelError(message.startsWith(`${op}:`) ? message : `${op}: ${message}`, { cause: err });
  }
}

class NativeGraphBuilder<T> implements GraphBuilder<T> {
  #graph: NativeGraph;
  #warmed = false;
  #captured = false;
  constructor(
    private readonly native: NativeDevice,
    private readonly issue: () => T,
    shareWith?: NativeGraph,
  ) {
    this.#graph = nativeCall('buildGraph', () => native.newGraph(shareWith));
  }

  warmup(): T {
    if (this.#warmed) fail('warmup', 'a graph is warmed up once');
    this.#warmed = true;
    nativeCall('warmup', () => this.native.warmup(this.#graph, true));
    try {
      return this.issue();
    } finally {
      this.native.warmup(this.#graph, false);
    }
  }

  capture(): Graph<T> {
    if (!this.#warmed) fail('capture', 'warm the graph up first (warmup())');
    if (this.#captured) fail('capture', 'a graph is captured once');
    this.#captured = true;
    nativeCall('capture', () => this.native.beginCapture(this.#graph));
    let outputs: T;
    try {
      outputs = this.issue();
    } catch (err) {
      this.native.endCapture(this.#graph);
      this.native.releaseGraph(this.#graph);
      throw err;
    }
    this.native.endCapture(this.#graph);
    return new NativeGraphHandle(this.native, this.#graph, outputs);
  }
}

/** Wraps a native rejection in KernelError; the native message already names the failing op. */
async function settle<T>(promise: Promise<T>): Promise<T> {
  try {
    return await promise;
  } catch (err) {
    throw new KernelError(err instanceof Error ? err.message : String(err), { cause: err });
  }
}

class KernelDevice implements Device {
  readonly name: string;
  readonly supportsGraphs: boolean;
  #native: NativeDevice;
  #closed = false;

  constructor(
    readonly kind: DeviceKind,
    native: NativeDevice,
  ) {
    this.#native = native;
    this.name = native.name();
    this.supportsGraphs = kind === 'cuda';
  }

  #open(op: string): NativeDevice {
    if (this.#closed) fail(op, 'device is closed');
    return this.#native;
  }

  #arg(op: string, name: string, t: Tensor): NativeHandle {
    if (!(t instanceof NativeTensor) || t.device !== this) fail(op, `${name} belongs to another device`);
    return t.handle(op);
  }

  #wrap(handle: NativeHandle, shape: readonly number[], dtype: DType): Tensor {
    return new NativeTensor(this, handle, [...shape], dtype);
  }

  readTensor(t: NativeTensor): Promise<Float32Array | Int32Array> {
    const native = this.#open('read');
    return settle(nativeCall('read', () => native.read(t.handle('read'))));
  }

  release(handle: NativeHandle): void {
    this.#native.release(handle);
  }

  zeros(shape: readonly number[], dtype: DType): Tensor {
    checkShape('zeros', shape);
    checkDtype('zeros', dtype);
    return this.#wrap(
      nativeCall('zeros', () => this.#open('zeros').zeros([...shape], DTYPE_CODE[dtype])),
      shape,
      dtype,
    );
  }

  fromArray(data: HostArray, shape: readonly number[], dtype: DType): Tensor {
    const op = 'fromArray';
    checkShape(op, shape);
    checkDtype(op, dtype);
    this.#checkHostData(op, data, shape, dtype);
    return this.#wrap(
      nativeCall(op, () => this.#open(op).fromArray(data, [...shape], DTYPE_CODE[dtype])),
      shape,
      dtype,
    );
  }

  write(t: Tensor, data: HostArray): void {
    const op = 'write';
    const handle = this.#arg(op, 't', t);
    this.#checkHostData(op, data, t.shape, t.dtype);
    nativeCall(op, () => this.#open(op).write(handle, data));
  }

  #checkHostData(op: string, data: HostArray, shape: readonly number[], dtype: DType): void {
    const ok =
      dtype === 'f16'
        ? data instanceof Float32Array || data instanceof Uint16Array
        : dtype === 'f32'
          ? data instanceof Float32Array
          : data instanceof Int32Array;
    if (!ok) fail(op, `${data?.constructor?.name} cannot fill a ${dtype} tensor`);
    if (data.length !== numel(shape))
      fail(op, `${data.length} values do not fill shape [${shape.join(', ')}]`);
  }

  readFile(region: FileRegion): Tensor {
    const op = 'readFile';
    const { path, offset, dtype, rows, cols } = region;
    const r0 = region.rowStart ?? 0;
    const r1 = region.rowEnd ?? rows;
    const c0 = region.colStart ?? 0;
    const c1 = region.colEnd ?? cols;
    checkDtype(op, dtype);
    if (typeof path !== 'string' || path.length === 0) fail(op, 'path must be a non-empty string');
    if (!Number.isSafeInteger(offset) || offset < 0)
      fail(op, `offset ${offset} must be a non-negative integer`);
    for (const [name, v] of Object.entries({ rows, cols, r0, r1, c0, c1 })) {
      if (!Number.isSafeInteger(v) || v < 0) fail(op, `${name} ${v} must be a non-negative integer`);
    }
    if (r0 > r1 || r1 > rows || c0 > c1 || c1 > cols) {
      fail(
        op,
        `region rows [${r0}, ${r1}) x cols [${c0}, ${c1}) is outside the [${rows}, ${cols}] matrix in ${path}`,
      );
    }
    const shape = region.shape ?? [r1 - r0, c1 - c0];
    checkShape(op, shape);
    if (numel(shape) !== (r1 - r0) * (c1 - c0)) {
      fail(op, `shape [${shape.join(', ')}] does not hold a ${r1 - r0} x ${c1 - c0} region`);
    }
    const handle = nativeCall(op, () =>
      this.#open(op).readFile(path, offset, cols, r0, r1, c0, c1, [...shape], DTYPE_CODE[dtype]),
    );
    return this.#wrap(handle, shape, dtype);
  }

  randomBits(shape: readonly number[], dtype: DType, seed: number): Tensor {
    checkShape('randomBits', shape);
    checkDtype('randomBits', dtype);
    if (!Number.isSafeInteger(seed) || seed < 0)
      fail('randomBits', `seed ${seed} must be a non-negative integer`);
    return this.#wrap(
      nativeCall('randomBits', () =>
        this.#open('randomBits').randomBits([...shape], DTYPE_CODE[dtype], seed),
      ),
      shape,
      dtype,
    );
  }

  embedding(table: Tensor, ids: Tensor): Tensor {
    const op = 'embedding';
    const [, H] = expect(op, 'table', table, 2, ['f16']);
    const [T] = expect(op, 'ids', ids, 1, ['i32']);
    const h = this.#open(op).embedding(this.#arg(op, 'table', table), this.#arg(op, 'ids', ids));
    return this.#wrap(h, [T, H], 'f32');
  }

  rmsNorm(x: Tensor, weight: Tensor, eps: number): Tensor {
    const op = 'rmsNorm';
    const [T, H] = expect(op, 'x', x, 2, ['f32']);
    this.#checkNormWeight(op, x, weight, H, eps);
    const h = this.#open(op).rmsNorm(this.#arg(op, 'x', x), this.#arg(op, 'weight', weight), eps);
    return this.#wrap(h, [T, H], 'f16');
  }

  addRmsNorm(residual: Tensor, delta: Tensor, weight: Tensor, eps: number): Tensor {
    const op = 'addRmsNorm';
    const [T, H] = expect(op, 'residual', residual, 2, ['f32']);
    expect(op, 'delta', delta, 2, ['f32']);
    sameShape(op, 'residual', residual, 'delta', delta);
    this.#checkNormWeight(op, residual, weight, H, eps);
    const native = this.#open(op);
    const h = native.addRmsNorm(
      this.#arg(op, 'residual', residual),
      this.#arg(op, 'delta', delta),
      this.#arg(op, 'weight', weight),
      eps,
    );
    return this.#wrap(h, [T, H], 'f16');
  }

  #checkNormWeight(op: string, x: Tensor, weight: Tensor, H: number, eps: number): void {
    const [wH] = expect(op, 'weight', weight, 1, ['f16']);
    if (wH !== H) fail(op, `weight ${describe(weight)} does not match x ${describe(x)} (H=${H})`);
    if (!(eps >= 0) || !Number.isFinite(eps)) fail(op, `eps ${eps} must be a finite non-negative number`);
  }

  addInPlace(residual: Tensor, delta: Tensor): void {
    const op = 'addInPlace';
    expect(op, 'residual', residual, 2, ['f32']);
    expect(op, 'delta', delta, 2, ['f32']);
    sameShape(op, 'residual', residual, 'delta', delta);
    this.#open(op).addInPlace(this.#arg(op, 'residual', residual), this.#arg(op, 'delta', delta));
  }

  packAwq(weights: AwqLinear, options: PackAwqOptions = {}): AwqWeights {
    const op = 'packAwq';
    const [K, N] = this.#checkAwq(op, weights);
    const gated = options.gated === true;
    if (gated && N % 16 !== 0)
      fail(op, `a gated layer pairs runs of 8 gate and 8 up columns: N=${N} is not a multiple of 16`);
    if (this.kind === 'cpu') return weights; // the CPU kernels read the AutoAWQ layout
    const { qweight, qzeros, scales, groupSize } = weights;
    if (groupSize !== 128)
      fail(op, `groupSize ${groupSize} is not supported on ${this.kind} (the packed layout is for 128)`);
    const native = this.#open(op);
    const h = nativeCall(op, () =>
      native.packAwq(
        this.#arg(op, 'qweight', qweight),
        this.#arg(op, 'qzeros', qzeros),
        this.#arg(op, 'scales', scales),
        groupSize,
        gated,
      ),
    );
    // The copy is queued; the sources are freed once it has run.
    qweight.dispose();
    qzeros.dispose();
    scales.dispose();
    const packed = this.#wrap(h, [loadAddon().awqPackedWords(K, N)], 'i32');
    return { packed, inFeatures: K, outFeatures: N, groupSize, gated };
  }

  /** Checks an AutoAWQ layer's tensors; returns [K, N]. */
  #checkAwq(op: string, weights: AwqLinear): [number, number] {
    const { qweight, qzeros, scales, groupSize: G } = weights;
    const [K, N8] = expect(op, 'qweight', qweight, 2, ['i32']);
    const [zG, zN8] = expect(op, 'qzeros', qzeros, 2, ['i32']);
    const [sG, N] = expect(op, 'scales', scales, 2, ['f16']);
    positiveInt(op, 'groupSize', G);
    if (K % G !== 0) fail(op, `K=${K} is not a multiple of groupSize ${G}`);
    if (N !== N8 * 8)
      fail(op, `scales ${describe(scales)} does not match qweight ${describe(qweight)} (N=${N8 * 8})`);
    if (zG !== K / G || zN8 !== N8) {
      fail(op, `qzeros ${describe(qzeros)} must be [${K / G}, ${N8}] for K=${K}, N=${N}, groupSize ${G}`);
    }
    if (sG !== K / G)
      fail(op, `scales ${describe(scales)} must be [${K / G}, ${N}] for K=${K}, groupSize ${G}`);
    return [K, N];
  }

  awqLinear(x: Tensor, weights: AwqWeights, outDtype: DType): Tensor {
    const op = 'awqLinear';
    const [T, K] = expect(op, 'x', x, 2, ['f16']);
    checkDtype(op, outDtype, ['f16', 'f32']);
    if (isPackedAwq(weights)) {
      if (weights.gated) fail(op, 'the weights are packed gated (their columns paired): use awqSiluGate');
      return this.#awqPacked(op, x, weights, outDtype);
    }
    if (this.kind !== 'cpu') {
      fail(op, `the ${this.kind} device reads AWQ weights packed at load: pass device.packAwq(weights)`);
    }
    const { qweight, qzeros, scales, groupSize: G } = weights;
    const [qK, N] = this.#checkAwq(op, weights);
    if (qK !== K) fail(op, `x ${describe(x)} does not match qweight ${describe(qweight)} (K=${qK})`);
    const h = this.#open(op).awqLinear(
      this.#arg(op, 'x', x),
      this.#arg(op, 'qweight', qweight),
      this.#arg(op, 'qzeros', qzeros),
      this.#arg(op, 'scales', scales),
      G,
      DTYPE_CODE[outDtype],
    );
    return this.#wrap(h, [T, N], outDtype);
  }

  awqSiluGate(x: Tensor, gateUp: AwqWeights): Tensor {
    const op = 'awqSiluGate';
    expect(op, 'x', x, 2, ['f16']);
    if (!isPackedAwq(gateUp)) {
      if (this.kind !== 'cpu')
        fail(op, `the ${this.kind} device reads gateUp packed: device.packAwq(gateUp, { gated: true })`);
      const sums = this.awqLinear(x, gateUp, 'f16');
      const out = this.siluMul(sums);
      sums.dispose();
      return out;
    }
    if (!gateUp.gated) fail(op, 'gateUp must be packed gated: device.packAwq(gateUp, { gated: true })');
    return this.#awqPacked(op, x, gateUp, 'f16');
  }

  /** awqLinear on packed weights (gated: the [T, N/2] of silu(gate) * up). */
  #awqPacked(op: string, x: Tensor, weights: PackedAwqLinear, outDtype: DType): Tensor {
    const [T, K] = x.shape;
    const { packed, inFeatures, outFeatures: N, groupSize: G, gated } = weights;
    if (this.kind === 'cpu') fail(op, 'the cpu device reads the AutoAWQ tensors, not packed weights');
    expect(op, 'packed', packed, 1, ['i32']);
    if (inFeatures !== K) fail(op, `x ${describe(x)} does not match the packed weights (K=${inFeatures})`);
    if (packed.shape[0] !== loadAddon().awqPackedWords(K, N))
      fail(op, `packed ${describe(packed)} does not hold a ${K} x ${N} matrix`);
    const h = this.#open(op).awqLinearPacked(
      this.#arg(op, 'x', x),
      this.#arg(op, 'packed', packed),
      K,
      N,
      G,
      DTYPE_CODE[outDtype],
      gated,
    );
    return this.#wrap(h, [T, gated ? N / 2 : N], outDtype);
  }

  linear(x: Tensor, weight: Tensor, outDtype: DType): Tensor {
    const op = 'linear';
    const [T, K] = expect(op, 'x', x, 2, ['f16']);
    const [N, wK] = expect(op, 'weight', weight, 2, ['f16']);
    checkDtype(op, outDtype, ['f16', 'f32']);
    if (wK !== K) fail(op, `x ${describe(x)} does not match weight ${describe(weight)} (K=${wK})`);
    const h = this.#open(op).linear(
      this.#arg(op, 'x', x),
      this.#arg(op, 'weight', weight),
      DTYPE_CODE[outDtype],
    );
    return this.#wrap(h, [T, N], outDtype);
  }

  ropeWriteKv(
    qkv: Tensor,
    kCache: Tensor,
    vCache: Tensor,
    positions: Tensor,
    slots: Tensor,
    theta: number,
  ): Tensor {
    const op = 'ropeWriteKv';
    const [, , nkv, hd] = this.#checkCaches(op, kCache, vCache);
    const [T, width] = expect(op, 'qkv', qkv, 2, ['f16']);
    const [pT] = expect(op, 'positions', positions, 1, ['i32']);
    const [sT] = expect(op, 'slots', slots, 1, ['i32']);
    if (hd % 2 !== 0) fail(op, `kCache ${describe(kCache)}'s headDim ${hd} must be even`);
    if (!(theta > 0) || !Number.isFinite(theta)) fail(op, `theta ${theta} must be a positive number`);
    const qWidth = width - 2 * nkv * hd;
    if (width % hd !== 0 || qWidth <= 0) {
      fail(
        op,
        `qkv ${describe(qkv)} is not q, k and v heads of ${hd} with ${nkv} KV heads (kCache ${describe(kCache)})`,
      );
    }
    if (pT !== T || sT !== T) {
      fail(
        op,
        `qkv ${describe(qkv)}, positions ${describe(positions)} and slots ${describe(slots)} must have the same T`,
      );
    }
    const h = nativeCall(op, () =>
      this.#open(op).ropeWriteKv(
        this.#arg(op, 'qkv', qkv),
        this.#arg(op, 'kCache', kCache),
        this.#arg(op, 'vCache', vCache),
        this.#arg(op, 'positions', positions),
        this.#arg(op, 'slots', slots),
        theta,
      ),
    );
    return this.#wrap(h, [T, qWidth], 'f16');
  }

  #checkCaches(op: string, kCache: Tensor, vCache: Tensor): number[] {
    const dims = expect(op, 'kCache', kCache, 4, ['f16']);
    expect(op, 'vCache', vCache, 4, ['f16']);
    sameShape(op, 'kCache', kCache, 'vCache', vCache);
    return dims;
  }

  writeKv(kCache: Tensor, vCache: Tensor, k: Tensor, v: Tensor, slots: Tensor): void {
    const op = 'writeKv';
    const [, , nkv, hd] = this.#checkCaches(op, kCache, vCache);
    const [T, width] = expect(op, 'k', k, 2, ['f16']);
    expect(op, 'v', v, 2, ['f16']);
    sameShape(op, 'k', k, 'v', v);
    const [sT] = expect(op, 'slots', slots, 1, ['i32']);
    if (width !== nkv * hd)
      fail(op, `k ${describe(k)} does not match kCache ${describe(kCache)} (${nkv}*${hd})`);
    if (sT !== T) fail(op, `slots ${describe(slots)} does not match k ${describe(k)} (T=${T})`);
    this.#open(op).writeKv(
      this.#arg(op, 'kCache', kCache),
      this.#arg(op, 'vCache', vCache),
      this.#arg(op, 'k', k),
      this.#arg(op, 'v', v),
      this.#arg(op, 'slots', slots),
    );
  }

  attention(
    q: Tensor,
    kCache: Tensor,
    vCache: Tensor,
    blockTables: Tensor,
    tokenSeq: Tensor,
    positions: Tensor,
    shape: AttentionShape,
  ): Tensor {
    const op = 'attention';
    const { numHeads: nh, numKvHeads: nkv, headDim: hd } = shape;
    const scale = shape.scale ?? 1 / Math.sqrt(hd);
    positiveInt(op, 'numHeads', nh);
    positiveInt(op, 'numKvHeads', nkv);
    positiveInt(op, 'headDim', hd);
    if (nh % nkv !== 0) fail(op, `numHeads ${nh} is not a multiple of numKvHeads ${nkv}`);
    if (!Number.isFinite(scale)) fail(op, `scale ${scale} must be finite`);
    const [, , cKv, cHd] = this.#checkCaches(op, kCache, vCache);
    const [T, width] = expect(op, 'q', q, 2, ['f16']);
    expect(op, 'blockTables', blockTables, 2, ['i32']);
    const [sT] = expect(op, 'tokenSeq', tokenSeq, 1, ['i32']);
    const [pT] = expect(op, 'positions', positions, 1, ['i32']);
    if (width !== nh * hd) fail(op, `q ${describe(q)} must be [T, ${nh}*${hd}]`);
    if (cKv !== nkv || cHd !== hd)
      fail(op, `kCache ${describe(kCache)} must be [blocks, blockSize, ${nkv}, ${hd}]`);
    if (sT !== T || pT !== T) {
      fail(
        op,
        `tokenSeq ${describe(tokenSeq)} and positions ${describe(positions)} must have T=${T} entries`,
      );
    }
    const h = this.#open(op).attention(
      this.#arg(op, 'q', q),
      this.#arg(op, 'kCache', kCache),
      this.#arg(op, 'vCache', vCache),
      this.#arg(op, 'blockTables', blockTables),
      this.#arg(op, 'tokenSeq', tokenSeq),
      this.#arg(op, 'positions', positions),
      nh,
      nkv,
      hd,
      scale,
    );
    return this.#wrap(h, [T, width], 'f16');
  }

  siluMul(gateUp: Tensor): Tensor {
    const op = 'siluMul';
    const [T, C] = expect(op, 'gateUp', gateUp, 2, ['f16']);
    if (C % 2) fail(op, `gateUp ${describe(gateUp)} must have an even column count (gate, then up)`);
    return this.#wrap(this.#open(op).siluMul(this.#arg(op, 'gateUp', gateUp)), [T, C / 2], 'f16');
  }

  gatherRows(x: Tensor, rows: Tensor): Tensor {
    const op = 'gatherRows';
    const [, C] = expect(op, 'x', x, 2, ['f16', 'f32', 'i32']);
    const [R] = expect(op, 'rows', rows, 1, ['i32']);
    const h = this.#open(op).gatherRows(this.#arg(op, 'x', x), this.#arg(op, 'rows', rows));
    return this.#wrap(h, [R, C], x.dtype);
  }

  concatCols(parts: readonly Tensor[]): Tensor {
    const op = 'concatCols';
    if (!Array.isArray(parts) || parts.length === 0) fail(op, 'parts must be a non-empty array of tensors');
    const first = parts[0];
    const [R] = expect(op, 'parts[0]', first, 2, ['f16', 'f32', 'i32']);
    let width = 0;
    parts.forEach((p, i) => {
      const [r, c] = expect(op, `parts[${i}]`, p, 2, ['f16', 'f32', 'i32']);
      if (p.dtype !== first.dtype)
        fail(
          op,
          `parts[${i}] ${describe(p)} does not match parts[0] ${describe(first)} (dtype ${first.dtype})`,
        );
      if (r !== R) fail(op, `parts[${i}] ${describe(p)} does not match parts[0] ${describe(first)} (R=${R})`);
      width += c;
    });
    const handles = parts.map((p, i) => this.#arg(op, `parts[${i}]`, p));
    return this.#wrap(
      nativeCall(op, () => this.#open(op).concatCols(handles)),
      [R, width],
      first.dtype,
    );
  }

  sample(logits: Tensor, rows: readonly SampleRow[]): SampledRows {
    const op = 'sample';
    const [R, V] = expect(op, 'logits', logits, 2, ['f32']);
    if (V === 0) fail(op, `logits ${describe(logits)} has no columns`);
    const p = packSampleRows(op, rows, R);
    const [ids, logprobs] = nativeCall(op, () =>
      this.#open(op).sample(
        this.#arg(op, 'logits', logits),
        p.doubles,
        p.ints,
        p.penaltyIds,
        p.penaltyCounts,
        p.maskedIds,
        p.topLogprobs,
      ),
    );
    const shape = [rows.length, 1 + p.topLogprobs];
    return { ids: this.#wrap(ids, shape, 'i32'), logprobs: this.#wrap(logprobs, shape, 'f32') };
  }

  copyRows(dst: Tensor, src: Tensor, rows: number): void {
    const op = 'copyRows';
    const [R, C] = expect(op, 'dst', dst, 2, ['f16', 'f32', 'i32']);
    const [S, SC] = expect(op, 'src', src, 2, [dst.dtype]);
    if (SC !== C) fail(op, `src ${describe(src)} and dst ${describe(dst)} must have the same columns`);
    if (!Number.isSafeInteger(rows) || rows < 0 || rows > R || rows > S)
      fail(op, `rows ${rows} must be an integer in 0..${Math.min(R, S)}`);
    const native = this.#open(op);
    nativeCall(op, () => native.copyRows(this.#arg(op, 'dst', dst), this.#arg(op, 'src', src), rows));
  }

  takeSampled(ids: Tensor, sampled: Tensor, from: Int32Array): void {
    const op = 'takeSampled';
    const [T] = expect(op, 'ids', ids, 1, ['i32']);
    const [S] = expect(op, 'sampled', sampled, 2, ['i32']);
    if (!(from instanceof Int32Array) || from.length !== T)
      fail(
        op,
        `from must be an Int32Array of ${T} indices (one per id), got ${from?.constructor?.name} of ${from?.length}`,
      );
    for (const f of from) if (f < -1 || f >= S) fail(op, `from index ${f} is outside -1..${S - 1}`);
    const native = this.#open(op);
    const index = this.fromArray(from, [T], 'i32');
    try {
      nativeCall(op, () =>
        native.takeSampled(
          this.#arg(op, 'ids', ids),
          this.#arg(op, 'sampled', sampled),
          this.#arg(op, 'from', index),
        ),
      );
    } finally {
      index.dispose();
    }
  }

  async allocShared(shape: readonly number[], dtype: DType): Promise<SharedTensor> {
    const op = 'allocShared';
    this.#sharedMemory(op, shape, dtype);
    const native = this.#open(op);
    const [handle, bytes] = await settle(
      nativeCall(op, () => native.allocShared([...shape], DTYPE_CODE[dtype])),
    );
    return { tensor: this.#wrap(handle, shape, dtype), handle: bytes };
  }

  async openShared(handle: Uint8Array, shape: readonly number[], dtype: DType): Promise<Tensor> {
    const op = 'openShared';
    this.#sharedMemory(op, shape, dtype);
    if (!(handle instanceof Uint8Array)) fail(op, 'handle must be a Uint8Array');
    const native = this.#open(op);
    const opened = await settle(
      nativeCall(op, () => native.openShared(handle, [...shape], DTYPE_CODE[dtype])),
    );
    return this.#wrap(opened, shape, dtype);
  }

  #sharedMemory(op: string, shape: readonly number[], dtype: DType): void {
    if (this.kind !== 'cuda') fail(op, `shared tensors need the cuda backend (this device is ${this.kind})`);
    checkShape(op, shape);
    checkDtype(op, dtype);
  }

  sync(): Promise<void> {
    return settle(nativeCall('sync', () => this.#open('sync').sync()));
  }

  memoryInfo(): Promise<MemoryInfo> {
    return settle(nativeCall('memoryInfo', () => this.#open('memoryInfo').memoryInfo()));
  }

  buildGraph<T>(issue: () => T, options?: { sharePoolWith?: Graph<unknown> }): GraphBuilder<T> {
    const op = 'buildGraph';
    const native = this.#open(op);
    if (!this.supportsGraphs) fail(op, `the ${this.kind} backend cannot capture graphs`);
    const other = options?.sharePoolWith;
    if (other !== undefined && !(other instanceof NativeGraphHandle))
      fail(op, 'sharePoolWith is not a graph');
    return new NativeGraphBuilder(native, issue, other?.handle(op));
  }

  close(): Promise<void> {
    const native = this.#open('close');
    this.#closed = true;
    return settle(native.close());
  }

  // Device collectives: collective.ts validates and calls the addon through these two hooks.
  tensorHandle(op: string, name: string, t: Tensor): NativeHandle {
    this.#open(op);
    return this.#arg(op, name, t);
  }
  wrapHandle(handle: NativeHandle, shape: readonly number[], dtype: DType): Tensor {
    return this.#wrap(handle, shape, dtype);
  }
  prepareIpcCollective(options: DeviceCollectiveOptions): Promise<IpcCollectiveSetup> {
    return prepareIpcCollective(this, this.#open('prepareIpcCollective'), options);
  }
  ncclVersion(): Promise<number> {
    return ncclVersion(this, this.#open('ncclVersion'));
  }
  ncclUniqueId(): Promise<Uint8Array> {
    return ncclUniqueId(this, this.#open('ncclUniqueId'));
  }
  openNcclCollective(options: DeviceCollectiveOptions & { uniqueId: Uint8Array }): Promise<DeviceCollective> {
    return openNcclCollective(this, this.#open('openNcclCollective'), options);
  }
}

/** Whether this build of the addon contains the CUDA backend. */
export function cudaCompiledIn(): boolean {
  return loadAddon().cudaCompiledIn();
}

/** CUDA devices visible to this process (0 without a GPU, a driver, or CUDA compiled in). */
export function cudaDeviceCount(): number {
  return loadAddon().cudaDeviceCount();
}

/** Starts a device thread with the requested backend. */
export function createDevice(options: DeviceOptions): Device {
  const { kind } = options;
  if (kind !== 'cpu' && kind !== 'cuda') throw new KernelError(`createDevice: unknown kind '${kind}'`);
  const threads = options.threads ?? availableParallelism();
  const ordinal = options.ordinal ?? 0;
  if (!Number.isSafeInteger(threads) || threads < 1 || threads > 1024) {
    throw new KernelError(`createDevice: threads ${threads} must be an integer in 1..1024`);
  }
  if (!Number.isSafeInteger(ordinal) || ordinal < 0) {
    throw new KernelError(`createDevice: ordinal ${ordinal} must be a non-negative integer`);
  }
  const addon = loadAddon();
  let native: NativeDevice;
  try {
    native = new addon.Device(kind, threads, ordinal);
  } catch (err) {
    throw new KernelError(`createDevice: ${(err as Error).message}`, { cause: err });
  }
  return new KernelDevice(kind, native);
}
