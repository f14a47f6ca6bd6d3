// The host transport of the Collective contract (engine/types.ts): each call reads the tensor to
// the host, exchanges it over the stage's gRPC group, and writes the result back to the device.
// CPU workers use it (their tensors are host memory anyway), and so do CUDA ranks when asked to.
import type { Tensor } from '@medcluster/kernels';
import type { Collective } from '../engine/types.js';
import { CollectiveError } from './collective-error.js';
import type { HostGroup } from './grpc-collective.js';

/** Checks x of a collective call: 2-D f32. Returns [R, C]. */
export function collectiveOperand(op: string, x: Tensor): [number, number] {
  if (x.shape.length !== 2 || x.dtype !== 'f32')
    throw new CollectiveError(`${op}: x [${x.shape.join(', ')}] ${x.dtype} must be 2-D f32`);
  return [x.shape[0], x.shape[1]];
}

/** Checks an all-gather's widths against this rank's x. */
export function gatherWidths(
  op: string,
  widths: readonly number[],
  size: number,
  rank: number,
  cols: number,
): number {
  if (!Array.isArray(widths) || widths.length !== size)
    throw new CollectiveError(`${op}: widths [${widths}] must have one entry per rank (${size})`);
  for (const [i, w] of widths.entries())
    if (!Number.isSafeInteger(w) || w <= 0)
      throw new CollectiveError(`${op}: widths[${i}] ${w} must be a positive integer`);
  if (widths[rank] !== cols)
    throw new CollectiveError(
      `${op}: x has ${cols} columns, but widths[${rank}] (this rank's) is ${widths[rank]}`,
    );
  return widths.reduce((a, b) => a + b, 0);
}

export class HostCollective implements Collective {
  readonly transport = 'grpc' as const;

  /** `setupBytes`: what the group carried before it was handed over (not step traffic). */
  constructor(
    private readonly group: HostGroup,
    private readonly setupBytes = group.payloadBytes,
  ) {}

  get rank(): number {
    return this.group.rank;
  }
  get size(): number {
    return this.group.size;
  }
  get grpcBytes(): number {
    return this.group.payloadBytes - this.setupBytes;
  }

  async allReduceSum(x: Tensor): Promise<void> {
    collectiveOperand('allReduceSum', x);
    const sum = await this.group.allReduceSum((await x.read()) as Float32Array);
    x.device.write(x, sum);
  }

  async allGatherCols(x: Tensor, widths: readonly number[]): Promise<Tensor> {
    const op = 'allGatherCols';
    const [R, C] = collectiveOperand(op, x);
    const total = gatherWidths(op, widths, this.size, this.rank, C);
    const parts = await this.group.allGather((await x.read()) as Float32Array);
    const out = new Float32Array(R * total);
    let col = 0;
    for (const [q, part] of parts.entries()) {
      const w = widths[q];
      if (part.length !== R * w)
        throw new CollectiveError(
          `${op}: rank ${q} sent ${part.length} elements, not ${R} rows x ${w} columns`,
        );
      for (let r = 0; r < R; r++) out.set(part.subarray(r * w, (r + 1) * w), r * total + col);
      col += w;
    }
    return x.device.fromArray(out, [R, total], 'f32');
  }

  close(): Promise<void> {
    return this.group.close();
  }
}
