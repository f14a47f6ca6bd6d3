// Loads the compiled addon and declares its whole surface in one place.
//
// Candidates, in order: $MEDCLUSTER_KERNELS_ADDON (a GPU machine gets the .node
// carried to an arbitrary path), then the build output next to this package. If none
// loads, one error lists why each failed and how to build it.

import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** An opaque tensor handle owned by the addon. */
export type NativeHandle = { readonly __nativeTensor: unique symbol };
/** An opaque captured-graph handle owned by the addon. */
export type NativeGraph = { readonly __nativeGraph: unique symbol };

/** An opaque device collective group handle owned by the addon. */
export type NativeCollective = { readonly __nativeCollective: unique symbol };

/** dtype codes shared with backend.h's DType. */
export const DTYPE_CODE = { f16: 0, f32: 1, i32: 2 } as const;

export interface NativeDevice {
  name(): string;
  zeros(shape: number[], dtype: number): NativeHandle;
  fromArray(data: Float32Array | Int32Array | Uint16Array, shape: number[], dtype: number): NativeHandle;
  readFile(
    path: string,
    offset: number,
    cols: number,
    r0: number,
    r1: number,
    c0: number,
    c1: number,
    shape: number[],
    dtype: number,
  ): NativeHandle;
  randomBits(shape: number[], dtype: number, seed: number): NativeHandle;
  embedding(table: NativeHandle, ids: NativeHandle): NativeHandle;
  rmsNorm(x: NativeHandle, w: NativeHandle, eps: number): NativeHandle;
  addRmsNorm(residual: NativeHandle, delta: NativeHandle, w: NativeHandle, eps: number): NativeHandle;
  addInPlace(residual: NativeHandle, delta: NativeHandle): void;
  awqLinear(
    x: NativeHandle,
    qweight: NativeHandle,
    qzeros: NativeHandle,
    scales: NativeHandle,
    groupSize: number,
    outDtype: number,
  ): NativeHandle;
  packAwq(
    qweight: NativeHandle,
    qzeros: NativeHandle,
    scales: NativeHandle,
    groupSize: number,
    gated: boolean,
  ): NativeHandle;
  awqLinearPacked(
    x: NativeHandle,
    packed: NativeHandle,
    k: number,
    n: number,
    groupSize: number,
    outDtype: number,
    gated: boolean,
  ): NativeHandle;
  linear(x: NativeHandle, w: NativeHandle, outDtype: number): NativeHandle;
  ropeWriteKv(
    qkv: NativeHandle,
    kCache: NativeHandle,
    vCache: NativeHandle,
    positions: NativeHandle,
    slots: NativeHandle,
    theta: number,
  ): NativeHandle;
  writeKv(
    kCache: NativeHandle,
    vCache: NativeHandle,
    k: NativeHandle,
    v: NativeHandle,
    slots: NativeHandle,
  ): void;
  attention(
    q: NativeHandle,
    kCache: NativeHandle,
    vCache: NativeHandle,
    blockTables: NativeHandle,
    tokenSeq: NativeHandle,
    positions: NativeHandle,
    numHeads: number,
    numKvHeads: number,
    headDim: number,
    scale: number,
  ): NativeHandle;
  siluMul(gateUp: NativeHandle): NativeHandle;
  gatherRows(x: NativeHandle, rows: NativeHandle): NativeHandle;
  concatCols(parts: NativeHandle[]): NativeHandle;
  /** doubles: per row temperature, topP, repetition, presence, frequency, uniform; ints: per row
   * row, topK, logprobs (-1 none), penaltyBegin, penaltyCount, maskBegin, maskCount; lists: the
   * penalized ids, their counts, then the masked ids. Returns [ids, logprobs]. */
  sample(
    logits: NativeHandle,
    doubles: Float64Array,
    ints: Int32Array,
    penaltyIds: Int32Array,
    penaltyCounts: Int32Array,
    maskedIds: Int32Array,
    topLogprobs: number,
  ): [NativeHandle, NativeHandle];
  release(handle: NativeHandle): void;
  write(handle: NativeHandle, data: Float32Array | Int32Array | Uint16Array): void;
  memoryInfo(): Promise<{ freeBytes: number; totalBytes: number }>;
  newGraph(shareWith?: NativeGraph): NativeGraph;
  warmup(graph: NativeGraph, on: boolean): void;
  beginCapture(graph: NativeGraph): void;
  endCapture(graph: NativeGraph): void;
  replay(graph: NativeGraph): void;
  releaseGraph(graph: NativeGraph): void;
  sync(): Promise<void>;
  read(handle: NativeHandle): Promise<Float32Array | Int32Array>;
  close(): Promise<void>;
  copyRows(dst: NativeHandle, src: NativeHandle, rows: number): void;
  takeSampled(ids: NativeHandle, sampled: NativeHandle, from: NativeHandle): void;
  allocShared(shape: number[], dtype: number): Promise<[NativeHandle, Uint8Array]>;
  openShared(handle: Uint8Array, shape: number[], dtype: number): Promise<NativeHandle>;
  // Device collectives (collective.h): set-up settles promises, the ops queue.
  prepareIpcCollective(
    rank: number,
    size: number,
    bufferBytes: number,
    timeoutMs: number,
  ): Promise<[NativeCollective, Uint8Array]>;
  connectIpcCollective(group: NativeCollective, handles: Uint8Array[]): Promise<void>;
  ncclVersion(): Promise<number>;
  ncclUniqueId(): Promise<Uint8Array>;
  openNcclCollective(
    rank: number,
    size: number,
    bufferBytes: number,
    timeoutMs: number,
    uniqueId: Uint8Array,
  ): Promise<NativeCollective>;
  collectiveAllReduce(group: NativeCollective, x: NativeHandle): void;
  collectiveAllGatherCols(group: NativeCollective, x: NativeHandle, widths: number[]): NativeHandle;
  releaseCollective(group: NativeCollective): void;
}

export interface NativeAddon {
  Device: new (kind: string, threads: number, ordinal: number) => NativeDevice;
  cudaCompiledIn(): boolean;
  cudaDeviceCount(): number;
  /** i32 words of a packed K x N AWQ matrix (kernels/native/awq_layout.h). */
  awqPackedWords(k: number, n: number): number;
  abiVersion: number;
}

const ABI_VERSION = 5;
const BUILD_HINT = 'build it with `npm run build -w @medcluster/kernels` (needs cmake and a C++17 compiler)';

let cached: NativeAddon | undefined;

function candidates(): string[] {
  const here = dirname(fileURLToPath(import.meta.url));
  // src/ under vitest, dist/ (or dist/bench/) when compiled: the package root is above either.
  const roots = [resolve(here, '..'), resolve(here, '..', '..')];
  const list: string[] = [];
  const override = process.env.MEDCLUSTER_KERNELS_ADDON;
  if (override) list.push(resolve(override));
  for (const root of roots) {
    if (existsSync(join(root, 'package.json')))
      list.push(join(root, 'build', 'Release', 'medcluster_kernels.node'));
  }
  return [...new Set(list)];
}

/** Loads the addon once; throws an Error listing every candidate path and why it failed. */
export function loadAddon(): NativeAddon {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const failures: string[] = [];
  for (const path of candidates()) {
    if (!existsSync(path)) {
      failures.push(`${path}: not found`);
      continue;
    }
    try {
      const addon = require(path) as NativeAddon;
      if (addon.abiVersion !== ABI_VERSION) {
        failures.push(
          `${path}: built for binding version ${addon.abiVersion}, expected ${ABI_VERSION} (stale build)`,
        );
        continue;
      }
      cached = addon;
      return addon;
    } catch (err) {
      failures.push(`${path}: ${(err as Error).message.split('\n')[0]}`);
    }
  }
  throw new Error(
    `medcluster kernels addon could not be loaded:\n  ${failures.join('\n  ')}\n` +
      `Set MEDCLUSTER_KERNELS_ADDON to a built medcluster_kernels.node, or ${BUILD_HINT}.`,
  );
}
