// Hidden states from one pipeline stage to the next. Stages on CUDA devices of one host, in
// different processes, hand them over in device memory: the sender's runner copies the step's
// output into a shared buffer (Device.allocShared) and waits for it, the Stage stream carries
// only the buffer's handle, and the receiver maps the buffer once (kept by handle) and copies
// the rows into its own input. The sender lends each buffer to one step at a time, until that
// step's result comes back: by then the receiver has copied it. Anywhere else the bytes travel
// on the stream (activation.ts).

import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import type { Device, DeviceKind, Tensor } from '@medcluster/kernels';
import type { workerV1 } from '@medcluster/proto';

export type HandOff = 'shared' | 'bytes';

/** Which host and process this is: "<hostname>/<boot id>/<pid>". */
export function hostProcess(): string {
  let boot = '';
  try {
    boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    // Not Linux: the hostname alone names the host.
  }
  return `${hostname()}/${boot}/${process.pid}`;
}

export interface HandOffEnd {
  hostProcess: string;
  deviceKind: DeviceKind | string;
}

/**
 * How a sender hands hidden states to a receiver: on the device where both are CUDA on one host
 * (same hostname and boot) in different processes (CUDA IPC maps other processes' memory only);
 * `override` "bytes" (MEDCLUSTER_HAND_OFF) keeps them on the stream.
 */
export function chooseHandOff(sender: HandOffEnd, receiver: HandOffEnd, override?: string): HandOff {
  if (override !== undefined && override !== '' && override !== 'auto') {
    if (override !== 'bytes' && override !== 'shared')
      throw new RangeError(`MEDCLUSTER_HAND_OFF must be auto, shared or bytes, got ${override}`);
    if (override === 'bytes') return 'bytes';
  }
  const host = (p: string) => p.slice(0, p.lastIndexOf('/'));
  const sameHost = host(sender.hostProcess) === host(receiver.hostProcess) && host(sender.hostProcess) !== '';
  const otherProcess = sender.hostProcess !== receiver.hostProcess;
  return sender.deviceKind === 'cuda' && receiver.deviceKind === 'cuda' && sameHost && otherProcess
    ? 'shared'
    : 'bytes';
}

/** One shared buffer lent to one step: its first `rows` rows are the step's hidden states. */
export interface LentBuffer {
  readonly tensor: Tensor;
  /** The message that names it to the receiver. */
  describe(rows: number): workerV1.SharedActivation;
  /** Back to the pool, once the step's result came back (or the step failed). */
  release(): void;
}

interface PooledBuffer {
  tensor: Tensor;
  handle: Uint8Array;
  rows: number;
  lent: boolean;
}

/** The smallest buffer a step gets, in rows (decode batches share one size class). */
const MIN_ROWS = 64;
/** Idle buffers kept beyond this count are freed, smallest first. */
const MAX_IDLE = 4;

/** The sending side: shared buffers of [rows, hidden] f32, in power-of-two row classes. */
export class SharedOutbox {
  private readonly buffers: PooledBuffer[] = [];

  constructor(
    private readonly device: Device,
    private readonly hiddenSize: number,
  ) {}

  async lend(rows: number): Promise<LentBuffer> {
    let buffer = this.buffers.find((b) => !b.lent && b.rows >= rows);
    if (!buffer) {
      let size = MIN_ROWS;
      while (size < rows) size *= 2;
      const shared = await this.device.allocShared([size, this.hiddenSize], 'f32');
      buffer = { tensor: shared.tensor, handle: shared.handle, rows: size, lent: false };
      this.buffers.push(buffer);
      this.buffers.sort((a, b) => a.rows - b.rows);
      this.trim();
    }
    buffer.lent = true;
    const lent = buffer;
    let released = false;
    return {
      tensor: lent.tensor,
      describe: (stepRows) => ({
        handle: lent.handle,
        dtype: 'DTYPE_FLOAT32',
        shape: [lent.rows, this.hiddenSize],
        rows: stepRows,
      }),
      release: () => {
        if (released) return;
        released = true;
        lent.lent = false;
      },
    };
  }

  /** Buffers now held (lent or idle). */
  get size(): number {
    return this.buffers.length;
  }

  private trim(): void {
    let idle = this.buffers.filter((b) => !b.lent).length;
    for (let i = 0; i < this.buffers.length && idle > MAX_IDLE; ) {
      const b = this.buffers[i];
      if (b.lent) {
        i++;
        continue;
      }
      b.tensor.dispose();
      this.buffers.splice(i, 1);
      idle--;
    }
  }

  dispose(): void {
    for (const b of this.buffers) b.tensor.dispose();
    this.buffers.length = 0;
  }
}

/** Senders' buffers mapped by a receiver: the most recent ones stay mapped. */
const MAX_MAPPED = 16;

/** The receiving side: each sender buffer mapped once, by handle. */
export class SharedInbox {
  private readonly mapped = new Map<string, Promise<Tensor>>();

  constructor(private readonly device: Device) {}

  /** The sender's buffer (its leading `rows` rows are the step's hidden states), and those rows. */
  async open(shared: workerV1.SharedActivation__Output): Promise<{ tensor: Tensor; rows: number }> {
    if (shared.dtype !== 'DTYPE_FLOAT32')
      throw new RangeError(`shared activation dtype ${shared.dtype} is not supported`);
    const [capacity, cols] = shared.shape;
    if (shared.shape.length !== 2 || !(shared.rows >= 1 && shared.rows <= capacity))
      throw new RangeError(`shared activation of ${shared.rows} rows in a buffer of shape [${shared.shape}]`);
    const key = `${Buffer.from(shared.handle).toString('base64')}:${capacity}x${cols}`;
    let tensor = this.mapped.get(key);
    if (tensor)
      this.mapped.delete(key); // re-inserted below: most recent last
    else {
      const opening = this.device.openShared(shared.handle, [capacity, cols], 'f32');
      opening.catch(() => this.mapped.delete(key));
      tensor = opening;
    }
    this.mapped.set(key, tensor);
    this.evict();
    return { tensor: await tensor, rows: shared.rows };
  }

  private evict(): void {
    while (this.mapped.size > MAX_MAPPED) {
      const [oldest, tensor] = this.mapped.entries().next().value as [string, Promise<Tensor>];
      this.mapped.delete(oldest);
      tensor.then((t) => t.dispose()).catch(() => undefined);
    }
  }

  dispose(): void {
    for (const tensor of this.mapped.values()) tensor.then((t) => t.dispose()).catch(() => undefined);
    this.mapped.clear();
  }
}
