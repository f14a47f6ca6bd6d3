// Device collectives over the native addon (native/collective.h): the DeviceCollective and
// IpcCollectiveSetup of api.ts. Arguments are validated here, on the JS thread, with errors
// that name the op and the operand; the addon queues the work on the device's stream.

import type {
  DeviceCollective,
  DeviceCollectiveOptions,
  DeviceKind,
  DeviceTransport,
  DType,
  IpcCollectiveSetup,
  Tensor,
} from './api.js';
import { KernelError } from './api.js';
import type { NativeCollective, NativeDevice, NativeHandle } from './native.js';
import { describe, expect, fail, positiveInt } from './validate.js';

/** What a device lends its collectives: its tensors' native handles, and wrapping of new ones. */
export interface CollectiveOwner {
  readonly kind: DeviceKind;
  tensorHandle(op: string, name: string, t: Tensor): NativeHandle;
  wrapHandle(handle: NativeHandle, shape: readonly number[], dtype: DType): Tensor;
}

/** tp in {1, 2, 4, 8} (MODEL.md); the kernels size their tables for 8. */
const MAX_RANKS = 8;
const DEFAULT_BUFFER_BYTES = 8 << 20;
const DEFAULT_TIMEOUT_MS = 5000;

interface CheckedOptions {
  rank: number;
  size: number;
  bufferBytes: number;
  timeoutMs: number;
}

function checkOptions(op: string, options: DeviceCollectiveOptions): CheckedOptions {
  const { rank, size } = options;
  const bufferBytes = options.bufferBytes ?? DEFAULT_BUFFER_BYTES;
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!Number.isSafeInteger(size) || size < 1 || size > MAX_RANKS)
    fail(op, `size ${size} must be an integer in 1..${MAX_RANKS}`);
  if (!Number.isSafeInteger(rank) || rank < 0 || rank >= size)
    fail(op, `rank ${rank} must be an integer in 0..${size - 1}`);
  if (!Number.isSafeInteger(bufferBytes) || bufferBytes < 65536)
    fail(op, `bufferBytes ${bufferBytes} must be an integer of at least 65536`);
  positiveInt(op, 'timeoutMs', timeoutMs);
  return { rank, size, bufferBytes, timeoutMs };
}

/** Runs a native call, turning the addon's plain errors into KernelError naming the op. */
function call<T>(op: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof KernelError) throw err;
    const message = err instanceof Error ? err.message : String(err);
    throw new KernelError(message.startsWith(`${op}:`) ? message : `${op}: ${message}`, { cause: err });
  }
}

async function settle<T>(op: string, promise: Promise<T>): Promise<T> {
  try {
    return await promise;
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new KernelError(message.startsWith(`${op}:`) ? message : `${op}: ${message}`, { cause: err });
  }
}

class NativeDeviceCollective implements DeviceCollective {
  #group: NativeCollective | undefined;

  constructor(
    private readonly owner: CollectiveOwner,
    private readonly native: NativeDevice,
    readonly transport: DeviceTransport,
    readonly rank: number,
    readonly size: number,
    group: NativeCollective,
  ) {
    this.#group = group;
  }

  #handle(op: string): NativeCollective {
    if (!this.#group) fail(op, `the ${this.transport} collective was disposed`);
    return this.#group;
  }

  allReduceSum(x: Tensor): void {
    const op = 'allReduceSum';
    expect(op, 'x', x, 2, ['f32']);
    const group = this.#handle(op);
    const handle = this.owner.tensorHandle(op, 'x', x);
    call(op, () => this.native.collectiveAllReduce(group, handle));
  }

  allGatherCols(x: Tensor, widths: readonly number[]): Tensor {
    const op = 'allGatherCols';
    const [R, C] = expect(op, 'x', x, 2, ['f32']);
    if (!Array.isArray(widths) || widths.length !== this.size)
      fail(op, `widths [${widths}] must have one entry per rank (${this.size})`);
    for (const [i, w] of widths.entries()) positiveInt(op, `widths[${i}]`, w);
    if (widths[this.rank] !== C)
      fail(
        op,
        `x ${describe(x)} has ${C} columns, but widths[${this.rank}] (this rank's) is ${widths[this.rank]}`,
      );
    const total = widths.reduce((a, b) => a + b, 0);
    const group = this.#handle(op);
    const handle = this.owner.tensorHandle(op, 'x', x);
    const out = call(op, () => this.native.collectiveAllGatherCols(group, handle, [...widths]));
    return this.owner.wrapHandle(out, [R, total], 'f32');
  }

  dispose(): void {
    if (this.#group) this.native.releaseCollective(this.#group);
    this.#group = undefined;
  }
}

function checkDevice(op: string, owner: CollectiveOwner, native: NativeDevice): void {
  if (owner.kind !== 'cuda')
    fail(op, `the ${owner.kind} backend has no device collective (its workers use the host collective)`);
  if (typeof native.prepareIpcCollective !== 'function')
    fail(op, 'this build of the addon has no device collectives (a stale build): rebuild it');
}

export async function prepareIpcCollective(
  owner: CollectiveOwner,
  native: NativeDevice,
  options: DeviceCollectiveOptions,
): Promise<IpcCollectiveSetup> {
  const op = 'prepareIpcCollective';
  checkDevice(op, owner, native);
  const o = checkOptions(op, options);
  const [group, handle] = await settle(
    op,
    call(op, () => native.prepareIpcCollective(o.rank, o.size, o.bufferBytes, o.timeoutMs)),
  );
  let used = false;
  return {
    handle,
    async connect(handles: readonly Uint8Array[]): Promise<DeviceCollective> {
      const cop = 'connectIpcCollective';
      if (used) fail(cop, 'an ipc setup connects once');
      if (!Array.isArray(handles) || handles.length !== o.size)
        fail(cop, `${handles?.length} handles for ${o.size} ranks`);
      for (const [i, h] of handles.entries())
        if (!(h instanceof Uint8Array)) fail(cop, `handles[${i}] is not a Uint8Array`);
      used = true;
      await settle(
        cop,
        call(cop, () => native.connectIpcCollective(group, [...handles])),
      );
      return new NativeDeviceCollective(owner, native, 'ipc', o.rank, o.size, group);
    },
  };
}

export function ncclVersion(owner: CollectiveOwner, native: NativeDevice): Promise<number> {
  const op = 'ncclVersion';
  checkDevice(op, owner, native);
  return settle(
    op,
    call(op, () => native.ncclVersion()),
  );
}

export function ncclUniqueId(owner: CollectiveOwner, native: NativeDevice): Promise<Uint8Array> {
  const op = 'ncclUniqueId';
  checkDevice(op, owner, native);
  return settle(
    op,
    call(op, () => native.ncclUniqueId()),
  );
}

export async function openNcclCollective(
  owner: CollectiveOwner,
  native: NativeDevice,
  options: DeviceCollectiveOptions & { uniqueId: Uint8Array },
): Promise<DeviceCollective> {
  const op = 'openNcclCollective';
  checkDevice(op, owner, native);
  const o = checkOptions(op, options);
  if (!(options.uniqueId instanceof Uint8Array) || options.uniqueId.length !== 128)
    fail(op, `uniqueId must be the 128 bytes of an ncclUniqueId, got ${options.uniqueId?.length}`);
  const group = await settle(
    op,
    call(op, () => native.openNcclCollective(o.rank, o.size, o.bufferBytes, o.timeoutMs, options.uniqueId)),
  );
  return new NativeDeviceCollective(owner, native, 'nccl', o.rank, o.size, group);
}
