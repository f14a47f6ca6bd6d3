// The Collective contract (engine/types.ts) on the host transport, with CPU devices and real gRPC
// servers on port 0: in-place all-reduce and column all-gather of device tensors, the errors that
// name the op and the operand, the bytes that travel, and how a stage chooses its transport.
import * as grpc from '@grpc/grpc-js';
import { createDevice, type Device, type Tensor } from '@medcluster/kernels';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { Collective } from '../engine/types.js';
import { CollectiveError } from './collective-error.js';
import { addCollectiveService, type CollectiveHost } from './collective-host.js';
import { gatherBytes } from './gather-bytes.js';
import { GrpcCollective } from './grpc-collective.js';
import { HostCollective } from './host-collective.js';
import { openStageCollective, type TransportChoice } from './stage-collective.js';

const servers: grpc.Server[] = [];
const open: { close(): Promise<void> }[] = [];
const devices: Device[] = [];

afterEach(async () => {
  await Promise.all(open.splice(0).map((c) => c.close()));
  for (const s of servers.splice(0)) s.forceShutdown();
});
afterAll(async () => {
  await Promise.all(devices.map((d) => d.close()));
});

async function startServer(): Promise<{ host: CollectiveHost; address: string }> {
  const server = new grpc.Server();
  servers.push(server);
  const host = addCollectiveService(server);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return { host, address: `127.0.0.1:${port}` };
}

function cpu(): Device {
  const d = createDevice({ kind: 'cpu', threads: 1 });
  devices.push(d);
  return d;
}

/** n ranks through openStageCollective (the worker's own path), each with its own CPU device. */
async function stage(
  n: number,
  group: string,
  transport: (rank: number) => TransportChoice = () => 'auto',
): Promise<{ collectives: Collective[]; devices: Device[] }> {
  const ranks = await Promise.all(Array.from({ length: n }, () => startServer()));
  const peers = ranks.map((r) => r.address);
  const devs = ranks.map(() => cpu());
  const collectives = await Promise.all(
    ranks.map((r, rank) =>
      openStageCollective({
        group,
        rank,
        size: n,
        peers,
        host: r.host,
        device: devs[rank],
        transport: transport(rank),
        connectTimeoutMs: 10_000,
      }),
    ),
  );
  open.push(...collectives);
  return { collectives, devices: devs };
}

/** Deterministic float32 data with a wide range of magnitudes, so the summation order matters. */
function data(length: number, seed: number): Float32Array {
  const out = new Float32Array(length);
  let x = seed * 2654435761;
  for (let i = 0; i < length; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = (x / 2 ** 32 - 0.5) * 2 ** ((x >>> 27) - 12);
  }
  return out;
}

const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
const read = async (t: Tensor) => (await t.read()) as Float32Array;

describe('HostCollective (the grpc transport of the Collective contract)', () => {
  it('a CPU stage chooses the host transport', async () => {
    const { collectives } = await stage(2, 'choose');
    expect(collectives.map((c) => [c.transport, c.rank, c.size, c.device])).toEqual([
      ['grpc', 0, 2, undefined],
      ['grpc', 1, 2, undefined],
    ]);
    expect(collectives.map((c) => c.grpcBytes)).toEqual([0, 0]);
  });

  it('sums device tensors in place, in rank order, with identical bits on every rank', async () => {
    const { collectives, devices: devs } = await stage(4, 'sum');
    for (const [rows, cols] of [
      [1, 8192],
      [3, 7],
      [64, 512],
    ]) {
      const inputs = devs.map((_, r) => data(rows * cols, 10 * r + rows));
      const xs = devs.map((d, r) => d.fromArray(inputs[r], [rows, cols], 'f32'));
      await Promise.all(collectives.map((c, r) => c.allReduceSum(xs[r])));
      const expected = new Float32Array(rows * cols);
      for (let i = 0; i < expected.length; i++) {
        let acc = inputs[0][i];
        for (let r = 1; r < 4; r++) acc = Math.fround(acc + inputs[r][i]);
        expected[i] = acc;
      }
      for (const x of xs) expect(bytes(await read(x)).equals(bytes(expected))).toBe(true);
    }
    // Bytes this rank sent for its calls: (1*8192 + 3*7 + 64*512) floats.
    expect(collectives.map((c) => c.grpcBytes)).toEqual(Array(4).fill((8192 + 21 + 64 * 512) * 4));
  });

  it('gathers uneven column slices (a vocabulary split) into rank order', async () => {
    const { collectives, devices: devs } = await stage(3, 'gather');
    const widths = [11, 11, 10];
    const rows = 5;
    const inputs = widths.map((w, r) => data(rows * w, 50 + r));
    const outs = await Promise.all(
      collectives.map((c, r) =>
        c.allGatherCols(devs[r].fromArray(inputs[r], [rows, widths[r]], 'f32'), widths),
      ),
    );
    for (const out of outs) {
      expect(out.shape).toEqual([rows, 32]);
      const got = await read(out);
      for (let row = 0; row < rows; row++) {
        let col = 0;
        for (const [q, w] of widths.entries()) {
          expect(Array.from(got.subarray(row * 32 + col, row * 32 + col + w))).toEqual(
            Array.from(inputs[q].subarray(row * w, (row + 1) * w)),
          );
          col += w;
        }
      }
    }
  });

  it('names the op and the operand of a bad call, and the rank whose part does not fit', async () => {
    const { collectives, devices: devs } = await stage(2, 'bad');
    const [c0, c1] = collectives;
    await expect(c0.allReduceSum(devs[0].zeros([4], 'f32'))).rejects.toThrow(
      /^allReduceSum: x \[4\] f32 must be 2-D f32$/,
    );
    await expect(c0.allReduceSum(devs[0].zeros([2, 2], 'f16'))).rejects.toThrow(CollectiveError);
    await expect(c0.allGatherCols(devs[0].zeros([2, 3], 'f32'), [3])).rejects.toThrow(
      /^allGatherCols: widths \[3\] must have one entry per rank \(2\)$/,
    );
    await expect(c0.allGatherCols(devs[0].zeros([2, 3], 'f32'), [4, 3])).rejects.toThrow(
      /^allGatherCols: x has 3 columns, but widths\[0\] \(this rank's\) is 4$/,
    );
    // Rank 1 claims 2 columns but sends 3: rank 0 names it.
    const a = c0.allGatherCols(devs[0].zeros([2, 3], 'f32'), [3, 2]);
    const b = c1.allGatherCols(devs[1].zeros([2, 3], 'f32'), [3, 3]);
    await expect(a).rejects.toThrow(/^allGatherCols: rank 1 sent 6 elements, not 2 rows x 2 columns$/);
    await b;
  });

  it('carries bytes through the group unchanged (float32 NaN patterns included)', async () => {
    const ranks = await Promise.all([startServer(), startServer()]);
    const peers = ranks.map((r) => r.address);
    const group = await Promise.all(
      ranks.map((r, rank) => GrpcCollective.create({ group: 'bytes', rank, size: 2, peers, host: r.host })),
    );
    open.push(...group);
    const payloads = [Uint8Array.from([0xff, 0xff, 0xff, 0x7f, 1, 0xc0, 0xff]), Uint8Array.from([])];
    const got = await Promise.all(group.map((g, r) => gatherBytes(g, payloads[r])));
    for (const parts of got)
      expect(parts.map((p) => Array.from(p))).toEqual(payloads.map((p) => Array.from(p)));
    // A host collective handed this group counts only what passes after the hand-over.
    const hosts = group.map((g) => new HostCollective(g));
    expect(hosts.map((h) => h.grpcBytes)).toEqual([0, 0]);
  });

  it('refuses ranks that ask for different transports, and device transports on CPU ranks', async () => {
    await expect(stage(2, 'differ', (r) => (r === 0 ? 'auto' : 'grpc'))).rejects.toThrow(
      /^group differ: ranks ask for different transports \(rank 0: auto, rank 1: grpc\)$/,
    );
    await expect(stage(2, 'ipc-cpu', () => 'ipc')).rejects.toThrow(
      /^group ipc-cpu: transport ipc needs CUDA on every rank; rank 0 runs cpu$/,
    );
    await expect(stage(2, 'nccl-cpu', () => 'nccl')).rejects.toThrow(
      /transport nccl needs CUDA on every rank/,
    );
  });
});
