import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { CollectiveError } from './collective-error.js';
import { addCollectiveService, type CollectiveHost } from './collective-host.js';
import { GrpcCollective } from './grpc-collective.js';

interface Rank {
  server: grpc.Server;
  host: CollectiveHost;
  address: string;
}

const servers: grpc.Server[] = [];
const collectives: GrpcCollective[] = [];

afterEach(async () => {
  await Promise.all(collectives.splice(0).map((c) => c.close()));
  for (const s of servers.splice(0)) s.forceShutdown();
});

async function startServer(): Promise<Rank> {
  const server = new grpc.Server();
  servers.push(server);
  const host = addCollectiveService(server); // added like the worker's own server would
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return { server, host, address: `127.0.0.1:${port}` };
}

/** n ranks, each with its own server on port 0; the other ranks start before rank 0 exists. */
async function startGroup(n: number, group = 'stage-0', callTimeoutMs?: number): Promise<GrpcCollective[]> {
  const ranks = await Promise.all(Array.from({ length: n }, () => startServer()));
  const peers = ranks.map((r) => r.address);
  const members = ranks.slice(1).map((r, i) =>
    GrpcCollective.create({
      group,
      rank: i + 1,
      size: n,
      peers,
      host: r.host,
      connectTimeoutMs: 10_000,
      callTimeoutMs,
    }),
  );
  await new Promise((r) => setTimeout(r, 150)); // rank 0 late: the others must retry
  const root = GrpcCollective.create({
    group,
    rank: 0,
    size: n,
    peers,
    host: ranks[0].host,
    connectTimeoutMs: 10_000,
    callTimeoutMs,
  });
  const all = await Promise.all([root, ...members]);
  collectives.push(...all);
  return all;
}

/** Deterministic float32 data with a wide range of magnitudes, so the summation order matters. */
function data(length: number, seed: number): Float32Array {
  const out = new Float32Array(length);
  let x = seed * 2654435761;
  for (let i = 0; i < length; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    const mantissa = x / 2 ** 32 - 0.5;
    out[i] = mantissa * 2 ** ((x >>> 27) - 12);
  }
  return out;
}

/** Reference: fp32 sum in rank order 0..n-1, rounding after every addition. */
function rankOrderedSum(inputs: Float32Array[]): Float32Array {
  const out = new Float32Array(inputs[0].length);
  for (let i = 0; i < out.length; i++) {
    let acc = inputs[0][i];
    for (let r = 1; r < inputs.length; r++) acc = Math.fround(acc + inputs[r][i]);
    out[i] = acc;
  }
  return out;
}

const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

describe('GrpcCollective', () => {
  for (const n of [2, 4]) {
    it(`all-reduces bit-identically across ${n} ranks for 1 to 1M floats`, async () => {
      const group = await startGroup(n);
      for (const length of [1, 7, 1000, 262_147, 1 << 20]) {
        const inputs = group.map((_, r) => data(length, r + 1 + length));
        const results = await Promise.all(group.map((c, r) => c.allReduceSum(inputs[r])));
        const expected = bytes(rankOrderedSum(inputs));
        for (const result of results) {
          expect(result.length).toBe(length);
          expect(bytes(result).equals(expected)).toBe(true);
        }
      }
      if (n > 2) {
        // The order is not an accident of the data: a reversed order gives other bits here.
        const inputs = group.map((_, r) => data(4096, 100 + r));
        expect(bytes(rankOrderedSum(inputs)).equals(bytes(rankOrderedSum([...inputs].reverse())))).toBe(
          false,
        );
      }
    });
  }

  it('all-gathers buffers of different lengths (uneven vocab shards) in rank order', async () => {
    const group = await startGroup(4);
    const inputs = group.map((_, r) => data(8005 - (r === 3 ? 1 : 0), r + 7));
    const results = await Promise.all(group.map((c, r) => c.allGather(inputs[r])));
    for (const parts of results) {
      expect(parts).toHaveLength(4);
      for (const [r, p] of parts.entries()) expect(bytes(p).equals(bytes(inputs[r]))).toBe(true);
    }
  });

  it('keeps pipelined calls apart by sequence number', async () => {
    const group = await startGroup(4);
    const calls = group.map((c, r) =>
      Promise.all(
        Array.from({ length: 24 }, (_, k) =>
          k % 3 === 2
            ? c.allGather(new Float32Array([r, k]))
            : c.allReduceSum(new Float32Array(300).fill(k + r / 8)),
        ),
      ),
    );
    const results = await Promise.all(calls);
    for (const perRank of results) {
      perRank.forEach((result, k) => {
        if (k % 3 === 2) {
          expect((result as Float32Array[]).map((p) => Array.from(p))).toEqual(
            [0, 1, 2, 3].map((r) => [r, k]),
          );
        } else {
          const sum = result as Float32Array;
          expect(sum[0]).toBe(rankOrderedSum([0, 1, 2, 3].map((r) => new Float32Array([k + r / 8])))[0]);
          expect(sum[299]).toBe(sum[0]);
        }
      });
    }
  });

  it('works with a single rank without any network', async () => {
    const c = await GrpcCollective.create({ group: 'solo', rank: 0, size: 1, peers: [] });
    const input = new Float32Array([1.5, 2]);
    const out = await c.allReduceSum(input);
    expect(Array.from(out)).toEqual([1.5, 2]);
    expect(out).not.toBe(input);
    expect((await c.allGather(input)).map((p) => Array.from(p))).toEqual([[1.5, 2]]);
  });

  it('rejects rank 0 pending calls naming the peer that closed mid-call, and later calls at once', async () => {
    const [root, member] = await startGroup(2);
    const pending = root.allReduceSum(new Float32Array(1000).fill(1));
    await new Promise((r) => setTimeout(r, 20));
    await member.close();
    await expect(pending).rejects.toBeInstanceOf(CollectiveError);
    await expect(pending).rejects.toThrow(/rank 1 \(127\.0\.0\.1:\d+\) left the group/);
    await expect(root.allReduceSum(new Float32Array(1))).rejects.toThrow(
      /rank 1 \(127\.0\.0\.1:\d+\) left the group/,
    );
    await expect(member.allReduceSum(new Float32Array(1))).rejects.toThrow(/closed/);
  });

  it('rejects the other ranks when rank 0 closes or its server dies', async () => {
    const group = await startGroup(4, 'g-close');
    const pending = group.slice(1).map((c) => c.allReduceSum(new Float32Array(10)));
    await new Promise((r) => setTimeout(r, 20));
    await group[0].close();
    for (const p of pending) await expect(p).rejects.toThrow(/rank 0 \(127\.0\.0\.1:\d+\) closed the group/);

    const again = await startGroup(2, 'g-crash');
    const call = again[1].allGather(new Float32Array(3));
    servers.at(-2)?.forceShutdown(); // rank 0's server of the second group
    await expect(call).rejects.toThrow(CollectiveError);
    await expect(call).rejects.toThrow(/group g-crash rank 1: .*rank 0 \(127\.0\.0\.1:\d+\)/);
  });

  it('tells every rank when one member of four leaves mid-call', async () => {
    const group = await startGroup(4, 'g-leave');
    const pending = [0, 1, 3].map((r) => group[r].allReduceSum(new Float32Array(5)));
    await new Promise((r) => setTimeout(r, 20));
    await group[2].close();
    for (const p of pending) await expect(p).rejects.toThrow(/rank 2 \(127\.0\.0\.1:\d+\) left the group/);
  });

  it('fails a call whose peer does not arrive within the deadline, naming the late rank, on every rank', async () => {
    // Rank 2 hangs (never calls): rank 0 fails the group at the deadline, and rank 1 hears it.
    const [root, member] = await startGroup(3, 'g-late', 300);
    const started = performance.now();
    const calls = [root.allReduceSum(new Float32Array(8)), member.allReduceSum(new Float32Array(8))];
    for (const c of calls)
      await expect(c).rejects.toThrow(
        /rank 2 \(127\.0\.0\.1:\d+\) did not arrive for call 0 .* within 300 ms/,
      );
    const took = performance.now() - started;
    expect(took).toBeGreaterThanOrEqual(290);
    expect(took).toBeLessThan(1500);
    // Rank 0 itself is late: its group says so, and the other ranks hear why.
    const [, lonely] = await startGroup(2, 'g-late-root', 300);
    await expect(lonely.allGather(new Float32Array(2))).rejects.toThrow(
      /reported by rank 0 .*: rank 0 \(127\.0\.0\.1:\d+\) did not arrive for call 0 \(COLLECTIVE_OP_ALL_GATHER\) within 300 ms/,
    );
  });

  it('rejects mismatched lengths and fails to form without rank 0 in time', async () => {
    const [root, member] = await startGroup(2, 'g-len');
    const a = root.allReduceSum(new Float32Array(4));
    const b = member.allReduceSum(new Float32Array(5));
    b.catch(() => undefined);
    await expect(a).rejects.toThrow(/lengths differ: rank 0: 4, rank 1: 5/);
    await expect(b).rejects.toThrow(/lengths differ/);

    const lonely = await startServer();
    const nobody = await startServer();
    await expect(
      GrpcCollective.create({
        group: 'never',
        rank: 1,
        size: 2,
        peers: [nobody.address, lonely.address],
        host: lonely.host,
        connectTimeoutMs: 300,
      }),
    ).rejects.toThrow(
      /group never: rank 1 could not join rank 0 \(127\.0\.0\.1:\d+\) within 300 ms: .*not served here/,
    );
    await expect(
      GrpcCollective.create({
        group: 'g',
        rank: 0,
        size: 2,
        peers: [lonely.address, nobody.address],
        host: lonely.host,
        connectTimeoutMs: 200,
      }),
    ).rejects.toThrow(/group g: rank 1 \(127\.0\.0\.1:\d+\) did not join within 200 ms/);
  });
});
