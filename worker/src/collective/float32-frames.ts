// float32 payloads as chunked CollectiveFrames: every frame stays far below gRPC's default 4 MiB
// message limit whatever the payload size, so no server or channel option is needed.
import type { workerV1 } from '@medcluster/proto';
import { CollectiveError } from './collective-error.js';

type CollectiveFrame = workerV1.CollectiveFrame;
type CollectiveFrame__Output = workerV1.CollectiveFrame__Output;
export type CollectiveOpName = 'COLLECTIVE_OP_ALL_REDUCE_SUM' | 'COLLECTIVE_OP_ALL_GATHER';

/** Elements per frame: 1 MiB of float32. */
export const FRAME_ELEMENTS = 256 * 1024;

/** Frames carrying data (copied, so the caller may reuse its buffer at once). */
export function toFrames(
  op: CollectiveOpName,
  seq: number,
  rank: number,
  data: Float32Array,
  counts: number[] = [],
): CollectiveFrame[] {
  const frames: CollectiveFrame[] = [];
  const total = data.length;
  for (let offset = 0; offset === 0 || offset < total; offset += FRAME_ELEMENTS) {
    const n = Math.min(FRAME_ELEMENTS, total - offset);
    const bytes = Buffer.alloc(n * 4);
    bytes.set(new Uint8Array(data.buffer, data.byteOffset + offset * 4, n * 4));
    frames.push({ op, seq, rank, totalElements: total, offset, data: bytes, counts });
  }
  return frames;
}

/** Reassembles one payload from its frames, which arrive in order on one stream. */
export class FrameAssembler {
  readonly data: Float32Array;
  private filled = 0;
  readonly counts: number[];

  constructor(
    readonly op: string,
    first: CollectiveFrame__Output,
  ) {
    this.data = new Float32Array(first.totalElements);
    this.counts = first.counts;
  }

  /** Adds a frame; true once the payload is complete. */
  add(frame: CollectiveFrame__Output): boolean {
    if (frame.op !== this.op || frame.totalElements !== this.data.length) {
      throw new CollectiveError(
        `frame of seq ${frame.seq} from rank ${frame.rank} does not continue its payload (${frame.op}, ${frame.totalElements} elements)`,
      );
    }
    const bytes = frame.data;
    if (
      bytes.length % 4 !== 0 ||
      frame.offset !== this.filled ||
      frame.offset + bytes.length / 4 > this.data.length
    ) {
      throw new CollectiveError(
        `frame of seq ${frame.seq} from rank ${frame.rank}: ${bytes.length} bytes at element ${frame.offset} do not fit a payload of ${this.data.length} elements filled to ${this.filled}`,
      );
    }
    new Uint8Array(this.data.buffer, frame.offset * 4, bytes.length).set(bytes);
    this.filled += bytes.length / 4;
    return this.filled === this.data.length;
  }
}

/** Splits an all-gather result by its per-rank counts. */
export function splitByCounts(data: Float32Array, counts: number[], size: number): Float32Array[] {
  const total = counts.reduce((a, b) => a + b, 0);
  if (counts.length !== size || total !== data.length) {
    throw new CollectiveError(
      `all-gather result of ${data.length} elements does not match counts [${counts.join(', ')}] for ${size} ranks`,
    );
  }
  const parts: Float32Array[] = [];
  let offset = 0;
  for (const n of counts) {
    parts.push(data.slice(offset, offset + n));
    offset += n;
  }
  return parts;
}
