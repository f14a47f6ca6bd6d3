// GPU tests and figures of the data plane's device collectives (issue 10), run on a GPU machine
// through the device bundle (scripts/device-bundle.mjs). One mode per invocation, so that each
// part runs in its own process under its own time limit:
//   kernels            IPC all-reduce / all-gather with the ranks as devices of one process (two
//                      streams, one GPU): float64 references per element, graph replays, the
//                      failure paths, and the kernel's latency for 1 / 16 / 64 rows x 8192 fp32
//   nccl               an NCCL communicator of one rank; a missing libnccl.so.2 (in a child)
//   processes          two processes sharing the GPU (the layout tp = 2 has on one H200): the
//                      stage's real group formation, IPC vs the host (gRPC) path, timed
//   model              tp = 2 on the tiny model in one process: tokens against one GPU, decode
//                      steps as graph replays, replayed logits bit-identical to eager ones
//   cluster CLI        tp = 2 and tp = 2 x pp = 2 as worker processes sharing the GPU (CLI: the
//                      bundled medcluster.mjs): IPC chosen, zero collective bytes on gRPC
//   overhead [L]       the split's cost on 70B-shaped synthetic layers (L of them, default 8):
//                      decode step time of tp = 2 in one process (IPC, graphs) against tp = 1
// Lines "ok"/"FAIL" are checks; "RESULT <name> <json>" lines are figures. Exit 1 on a failure.
// MEDCLUSTER_TINY_MODEL names an already generated tiny model (`medcluster make-model --preset
// tiny`, deterministic) for the model and cluster modes; without it they generate one.

import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { BlockAllocator, LocalExecutor, loadTokenizer, startLocalCluster } from '@medcluster/coordinator';
import {
  createDevice,
  type Device,
  type DeviceCollective,
  type Graph,
  type Tensor,
} from '@medcluster/kernels';
import { loadWorkerProto, type workerV1 } from '@medcluster/proto';
import {
  addCollectiveService,
  type Checkpoint,
  type Collective,
  type CollectiveHost,
  freePort,
  GREEDY,
  makeModel,
  openCheckpoint,
  openStageCollective,
  presetConfig,
  type SeqStep,
  ShardRunner,
  type ShardSpec,
  sampleRowOf,
  type TransportChoice,
} from '@medcluster/worker';
import { agreedPrefix, type GreedyRun, greedy, relativeError } from '../src/greedy.js';

const SCRIPT = fileURLToPath(import.meta.url);
let passed = 0;
let failed = 0;

function check(name: string, ok: boolean, detail = ''): void {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${detail ? `: ${detail}` : ''}`);
}

function result(name: string, value: unknown): void {
  console.log(`RESULT ${name} ${JSON.stringify(value)}`);
}

async function rejects(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return '(resolved)';
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
}

/** Random float32 with magnitudes over many binades, so that the summation order shows. */
function randomData(length: number, seed: number): Float32Array {
  const out = new Float32Array(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = (x / 2 ** 32 - 0.5) * 2 ** ((x & 15) - 6);
  }
  return out;
}

/** The host collective's sum: rank order, rounding to fp32 after each addition. */
function rankOrderSum(inputs: Float32Array[]): Float32Array {
  const out = inputs[0].slice();
  for (let r = 1; r < inputs.length; r++) for (let i = 0; i < out.length; i++) out[i] += inputs[r][i];
  return out;
}

function sameBits(a: Float32Array, b: Float32Array): boolean {
  return (
    a.length === b.length &&
    Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(
      Buffer.from(b.buffer, b.byteOffset, b.byteLength),
    )
  );
}

/** Worst |out - ref| / (n * 2^-24 * sum |x_r|) over elements against the float64 sum: <= 1 is
 * within fp32 rounding of n - 1 additions. */
function float64Ratio(out: Float32Array, inputs: Float32Array[]): number {
  let worst = 0;
  for (let i = 0; i < out.length; i++) {
    let ref = 0;
    let mag = 0;
    for (const x of inputs) {
      ref += x[i];
      mag += Math.abs(x[i]);
    }
    const bound = inputs.length * 2 ** -24 * mag + 1e-38;
    worst = Math.max(worst, Math.abs(out[i] - ref) / bound);
  }
  return worst;
}

const read = async (t: Tensor) => (await t.read()) as Float32Array;
const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];

/** An IPC group over devices of this process (each its own stream). */
async function ipcGroup(
  devices: Device[],
  timeoutMs?: number,
  bufferBytes?: number,
): Promise<DeviceCollective[]> {
  const setups = await Promise.all(
    devices.map((d, rank) => d.prepareIpcCollective({ rank, size: devices.length, timeoutMs, bufferBytes })),
  );
  const handles = setups.map((s) => s.handle);
  return Promise.all(setups.map((s) => s.connect(handles)));
}

// ---- kernels ---------------------------------------------------------------------------

async function allReduceCase(
  devices: Device[],
  groups: DeviceCollective[],
  rows: number,
  cols: number,
  seed: number,
) {
  const n = devices.length;
  const inputs = devices.map((_, r) => randomData(rows * cols, seed + 101 * r));
  const xs = devices.map((d, r) => d.fromArray(inputs[r], [rows, cols], 'f32'));
  for (const [r, g] of groups.entries()) g.allReduceSum(xs[r]);
  const outs = await Promise.all(xs.map(read));
  const expected = rankOrderSum(inputs);
  const name = `ipc allReduceSum ${n} ranks [${rows}, ${cols}]`;
  check(
    `${name}: every rank has the same bits`,
    outs.every((o) => sameBits(o, outs[0])),
  );
  check(`${name}: bits of the host collective's rank-order sum`, sameBits(outs[0], expected));
  const ratio = float64Ratio(outs[0], inputs);
  check(
    `${name}: within fp32 rounding of the float64 sum`,
    ratio <= 1,
    `worst ${ratio.toFixed(3)} of the bound`,
  );
  for (const x of xs) x.dispose();
}

async function allGatherCase(devices: Device[], groups: DeviceCollective[], rows: number, widths: number[]) {
  const inputs = widths.map((w, r) => randomData(rows * w, 7 + r));
  const xs = devices.map((d, r) => d.fromArray(inputs[r], [rows, widths[r]], 'f32'));
  const outs = await Promise.all(groups.map((g, r) => read(g.allGatherCols(xs[r], widths))));
  const total = widths.reduce((a, b) => a + b, 0);
  const expected = new Float32Array(rows * total);
  for (let row = 0; row < rows; row++) {
    let col = 0;
    for (const [q, w] of widths.entries()) {
      expected.set(inputs[q].subarray(row * w, (row + 1) * w), row * total + col);
      col += w;
    }
  }
  check(
    `ipc allGatherCols ${widths.length} ranks, ${rows} rows of [${widths}]`,
    outs.every((o) => sameBits(o, expected)),
  );
}

/** Graphs holding a copy and an all-reduce, replayed on fresh inputs: the epochs must advance. */
async function graphCase(devices: Device[], groups: DeviceCollective[], rows: number, cols: number) {
  const srcs = devices.map((d) => d.zeros([rows, cols], 'f32'));
  const idx = devices.map((d) =>
    d.fromArray(
      Int32Array.from({ length: rows }, (_, i) => i),
      [rows],
      'i32',
    ),
  );
  const builders = devices.map((d, r) =>
    d.buildGraph(() => {
      const t = d.gatherRows(srcs[r], idx[r]);
      groups[r].allReduceSum(t);
      return t;
    }),
  );
  const warm = builders.map((b) => b.warmup());
  await Promise.all(warm.map(read));
  for (const w of warm) w.dispose();
  const graphs: Graph<Tensor>[] = builders.map((b) => b.capture());
  let ok = true;
  for (let k = 0; k < 6; k++) {
    const inputs = devices.map((_, r) => randomData(rows * cols, 1000 * k + r));
    for (const [r, d] of devices.entries()) d.write(srcs[r], inputs[r]);
    for (const g of graphs) g.replay();
    const outs = await Promise.all(graphs.map((g) => read(g.outputs)));
    const expected = rankOrderSum(inputs);
    ok &&= outs.every((o) => sameBits(o, expected));
  }
  check(`ipc allReduceSum inside CUDA graphs [${rows}, ${cols}], 6 replays on fresh inputs`, ok);
  for (const g of graphs) {
    g.outputs.dispose();
    g.dispose();
  }
}

/** Per-call time of an all-reduce on every device at once, eager (queued calls) and inside a graph. */
async function timeAllReduce(devices: Device[], groups: DeviceCollective[], rows: number, calls = 200) {
  const cols = 8192;
  const xs = devices.map((d, r) => d.fromArray(randomData(rows * cols, r + 1), [rows, cols], 'f32'));
  const syncAll = () => Promise.all(devices.map((d) => d.sync()));
  for (let i = 0; i < 10; i++) for (const [r, g] of groups.entries()) g.allReduceSum(xs[r]);
  await syncAll();
  const eager: number[] = [];
  for (let rep = 0; rep < 5; rep++) {
    const t0 = performance.now();
    for (let i = 0; i < calls; i++) for (const [r, g] of groups.entries()) g.allReduceSum(xs[r]);
    await syncAll();
    eager.push(((performance.now() - t0) * 1000) / calls);
  }
  const perGraph = 50;
  const builders = devices.map((d, r) =>
    d.buildGraph(() => {
      for (let i = 0; i < perGraph; i++) groups[r].allReduceSum(xs[r]);
      return xs[r];
    }),
  );
  for (const b of builders) b.warmup();
  await syncAll();
  const graphs = builders.map((b) => b.capture());
  for (const g of graphs) g.replay();
  await syncAll();
  const inGraph: number[] = [];
  for (let rep = 0; rep < 5; rep++) {
    const t0 = performance.now();
    for (let k = 0; k < 4; k++) for (const g of graphs) g.replay();
    await syncAll();
    inGraph.push(((performance.now() - t0) * 1000) / (4 * perGraph));
  }
  for (const g of graphs) g.dispose();
  for (const x of xs) x.dispose();
  return { eagerUs: median(eager), graphUs: median(inGraph) };
}

/** A trivial kernel's per-call time inside a graph, for scale. */
async function timeAddInPlace(device: Device, rows: number) {
  const x = device.fromArray(randomData(rows * 8192, 3), [rows, 8192], 'f32');
  const d = device.fromArray(randomData(rows * 8192, 4), [rows, 8192], 'f32');
  const b = device.buildGraph(() => {
    for (let i = 0; i < 50; i++) device.addInPlace(x, d);
    return x;
  });
  b.warmup();
  const g = b.capture();
  g.replay();
  await device.sync();
  const times: number[] = [];
  for (let rep = 0; rep < 5; rep++) {
    const t0 = performance.now();
    for (let k = 0; k < 4; k++) g.replay();
    await device.sync();
    times.push(((performance.now() - t0) * 1000) / 200);
  }
  g.dispose();
  return median(times);
}

async function kernelsMode(): Promise<void> {
  const devices = Array.from({ length: 4 }, () => createDevice({ kind: 'cuda' }));
  console.log(`device: ${devices[0].name}; ranks are devices of one process (one stream each)`);
  try {
    const two = devices.slice(0, 2);
    const g2 = await ipcGroup(two);
    const g4 = await ipcGroup(devices);
    for (const [rows, cols] of [
      [1, 8192],
      [16, 8192],
      [64, 8192],
      [3, 1001],
      [2048, 8192],
    ]) {
      await allReduceCase(two, g2, rows, cols, rows + cols);
    }
    await allReduceCase(devices, g4, 16, 8192, 5);
    await allReduceCase(devices, g4, 5, 777, 6);
    await allGatherCase(two, g2, 1, [16010, 16009]);
    await allGatherCase(two, g2, 64, [16010, 16009]);
    await allGatherCase(two, g2, 300, [16010, 16009]); // 19 MB per rank: several chunks
    await allGatherCase(devices, g4, 7, [8005, 8005, 8005, 8004]);
    await graphCase(two, g2, 16, 8192);

    const timing: Record<string, unknown> = {};
    for (const rows of [1, 16, 64]) {
      timing[`rows${rows}`] = {
        ipc2: await timeAllReduce(two, g2, rows),
        addInPlaceGraphUs: await timeAddInPlace(two[0], rows),
      };
    }
    result('inprocess-allreduce-us', timing);
    for (const g of [...g2, ...g4]) g.dispose();

    // A rank that never arrives: the call fails at the deadline, naming it; later calls fail at once.
    const late = await ipcGroup(two, 300);
    const x0 = two[0].fromArray(randomData(8192, 1), [1, 8192], 'f32');
    const t0 = performance.now();
    late[0].allReduceSum(x0);
    const m1 = await rejects(two[0].sync());
    const waited = performance.now() - t0;
    check(
      'a rank that never arrives fails the call at the deadline, named',
      /device collective \(ipc, rank 0 of 2\): rank 1 did not arrive within 300 ms/.test(m1) && waited < 5000,
      `${m1} (after ${waited.toFixed(0)} ms)`,
    );
    late[0].allReduceSum(x0);
    const m2 = await rejects(two[0].sync());
    check('a failed group stays failed', /rank 1 did not arrive/.test(m2), m2);
    const x1 = two[1].fromArray(randomData(8192, 2), [1, 8192], 'f32');
    late[1].allReduceSum(x1); // meets rank 0's published first call
    late[1].allReduceSum(x1); // rank 0 never publishes again: it is marked failed
    const t1 = performance.now();
    const m3 = await rejects(two[1].sync());
    check(
      'the peer of a failed rank stops waiting at once and says which rank failed',
      /rank 1 of 2\): rank 0 failed/.test(m3) && performance.now() - t1 < 250,
      `${m3} (after ${(performance.now() - t1).toFixed(0)} ms)`,
    );
    for (const g of late) g.dispose();

    // Ranks whose calls disagree fail at once on both sides, naming what each called.
    const mis = await ipcGroup(two, 3000);
    mis[0].allReduceSum(two[0].zeros([1, 8], 'f32'));
    mis[1].allReduceSum(two[1].zeros([1, 16], 'f32'));
    const t2 = performance.now();
    const [e0, e1] = await Promise.all(two.map((d) => rejects(d.sync())));
    check(
      'ranks whose all-reduce sizes disagree fail at once, both naming the peer',
      /rank 0 of 2\): ranks disagree .*allReduceSum of 1 rows contributing 8 elements, rank 1 called allReduceSum of 1 rows contributing 16/.test(
        e0,
      ) &&
        /rank 1 of 2\): ranks disagree/.test(e1) &&
        performance.now() - t2 < 1000,
      `${e0} | ${e1}`,
    );
    for (const g of mis) g.dispose();
    const ops = await ipcGroup(two, 3000);
    ops[0].allReduceSum(two[0].zeros([2, 8], 'f32'));
    ops[1].allGatherCols(two[1].zeros([2, 8], 'f32'), [8, 8]);
    const [o0] = await Promise.all(two.map((d) => rejects(d.sync())));
    check(
      'an all-reduce met by an all-gather of the same size is refused',
      /called allReduceSum .* rank 1 called allGatherCols/.test(o0),
      o0,
    );
    for (const g of ops) g.dispose();
  } finally {
    await Promise.all(devices.map((d) => d.close().catch(() => undefined)));
  }
}

// ---- nccl ------------------------------------------------------------------------------

async function ncclMode(): Promise<void> {
  const device = createDevice({ kind: 'cuda' });
  try {
    const version = await device.ncclVersion();
    check('NCCL loads at run time', version > 0, `ncclGetVersion ${version}`);
    const uniqueId = await device.ncclUniqueId();
    for (const bufferBytes of [undefined, 65536]) {
      const g = await device.openNcclCollective({
        rank: 0,
        size: 1,
        uniqueId: await device.ncclUniqueId(),
        bufferBytes,
      });
      const input = randomData(64 * 8192, 9);
      const x = device.fromArray(input, [64, 8192], 'f32');
      g.allReduceSum(x);
      const gathered = g.allGatherCols(x, [8192]);
      const [sum, all] = [await read(x), await read(gathered)];
      check(
        `an NCCL communicator of one rank initializes and runs (buffer ${bufferBytes ?? 'default'})`,
        g.transport === 'nccl' && sameBits(sum, input) && sameBits(all, input),
      );
      g.dispose();
    }
    check('ncclUniqueId has 128 bytes', uniqueId.length === 128);
    // NCCL calls captured into a CUDA graph, replayed on fresh inputs.
    const g = await device.openNcclCollective({ rank: 0, size: 1, uniqueId });
    const rows = 16;
    const src = device.zeros([rows, 8192], 'f32');
    const idx = device.fromArray(
      Int32Array.from({ length: rows }, (_, i) => i),
      [rows],
      'i32',
    );
    const builder = device.buildGraph(() => {
      const t = device.gatherRows(src, idx);
      g.allReduceSum(t);
      const all = g.allGatherCols(t, [8192]);
      t.dispose();
      return all;
    });
    const warm = builder.warmup();
    await read(warm);
    warm.dispose();
    const graph = builder.capture();
    let replayOk = true;
    for (let k = 0; k < 3; k++) {
      const input = randomData(rows * 8192, 77 + k);
      device.write(src, input);
      graph.replay();
      replayOk &&= sameBits(await read(graph.outputs), input);
    }
    check('NCCL all-reduce and all-gather inside a CUDA graph, 3 replays on fresh inputs', replayOk);
    graph.outputs.dispose();
    graph.dispose();
    g.dispose();
  } finally {
    await device.close();
  }
  for (const [label, env] of [
    [
      'MEDCLUSTER_NCCL_LIBRARY names a missing file',
      { MEDCLUSTER_NCCL_LIBRARY: '/nonexistent/libnccl.so.2' },
    ],
    ['LD_LIBRARY_PATH points nowhere', { LD_LIBRARY_PATH: '/nonexistent', MEDCLUSTER_NCCL_LIBRARY: '' }],
  ] as const) {
    const child = spawnSync(process.execPath, [SCRIPT, 'nccl-missing'], {
      env: { ...process.env, ...env },
      encoding: 'utf8',
      timeout: 30_000,
    });
    const line = (child.stdout ?? '').split('\n').find((l) => l.startsWith('NCCL: ')) ?? child.stderr;
    console.log(`  ${label}: ${line}`);
    if (env.MEDCLUSTER_NCCL_LIBRARY) {
      check(
        'a missing libnccl.so.2 is reported clearly',
        /^NCCL: ncclVersion: NCCL not available: could not load \/nonexistent\/libnccl\.so\.2 \(.*\); install NCCL 2\.x or add its directory to LD_LIBRARY_PATH/.test(
          line,
        ),
        line,
      );
    }
  }
}

async function ncclMissingChild(): Promise<void> {
  const device = createDevice({ kind: 'cuda' });
  try {
    console.log(`NCCL: loaded, version ${await device.ncclVersion()}`);
  } catch (err) {
    console.log(`NCCL: ${(err as Error).message}`);
  } finally {
    await device.close();
  }
}

// ---- processes -------------------------------------------------------------------------

async function serve(address: string): Promise<{ server: grpc.Server; host: CollectiveHost }> {
  const server = new grpc.Server();
  const host = addCollectiveService(server);
  await new Promise<number>((resolve, reject) =>
    server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return { server, host };
}

/** One rank's part; `untilPeerDone` resolves when the other rank no longer needs this rank's
 * gRPC server (rank 0 serves the group: shutting it down first cancels the peer's last call). */
async function processesRank(rank: number, peers: string[], untilPeerDone?: Promise<unknown>): Promise<void> {
  const { server, host } = await serve(peers[rank]);
  const device = createDevice({ kind: 'cuda' });
  const say = rank === 0 ? check : () => undefined;
  const open = (group: string, transport: TransportChoice) =>
    openStageCollective({ group, rank, size: 2, peers, host, device, transport, connectTimeoutMs: 30_000 });
  try {
    const ipc = await open('p-ipc', 'auto');
    say('two processes on one host choose CUDA IPC', ipc.transport === 'ipc', ipc.transport);
    const grpcGroup = await open('p-grpc', 'grpc');
    // Correctness across processes, and the same bits as the host path.
    let ok = true;
    let sameAsHost = true;
    for (const rows of [1, 64, 2048]) {
      const inputs = [0, 1].map((r) => randomData(rows * 8192, 31 * rows + r));
      const x = device.fromArray(inputs[rank], [rows, 8192], 'f32');
      await ipc.allReduceSum(x);
      const viaIpc = await read(x);
      const y = device.fromArray(inputs[rank], [rows, 8192], 'f32');
      await grpcGroup.allReduceSum(y);
      const viaHost = await read(y);
      ok &&= sameBits(viaIpc, rankOrderSum(inputs));
      sameAsHost &&= sameBits(viaIpc, viaHost);
    }
    say('ipc all-reduce across processes, 1 / 64 / 2048 rows x 8192: the rank-order sum', ok);
    say('ipc and the host (gRPC) path give the same bits', sameAsHost);
    const widths = [16010, 16009];
    const parts = [0, 1].map((r) => randomData(8 * widths[r], 5 + r));
    const gathered = await read(
      await ipc.allGatherCols(device.fromArray(parts[rank], [8, widths[rank]], 'f32'), widths),
    );
    let gatherOk = gathered.length === 8 * 32019;
    for (let row = 0; row < 8 && gatherOk; row++) {
      gatherOk &&=
        sameBits(
          gathered.subarray(row * 32019, row * 32019 + widths[0]),
          parts[0].subarray(row * widths[0], (row + 1) * widths[0]),
        ) &&
        sameBits(
          gathered.subarray(row * 32019 + widths[0], (row + 1) * 32019),
          parts[1].subarray(row * widths[1], (row + 1) * widths[1]),
        );
    }
    say('ipc all-gather of an uneven vocabulary split across processes', gatherOk);
    say('no collective bytes went over gRPC on the ipc group', ipc.grpcBytes === 0, `${ipc.grpcBytes} bytes`);

    const timing: Record<string, unknown> = {};
    for (const rows of [1, 16, 64]) {
      const x = device.fromArray(randomData(rows * 8192, rank + 1), [rows, 8192], 'f32');
      const dev = ipc.device as DeviceCollective;
      for (let i = 0; i < 5; i++) dev.allReduceSum(x);
      await device.sync();
      const eager: number[] = [];
      for (let rep = 0; rep < 3; rep++) {
        const t0 = performance.now();
        for (let i = 0; i < 50; i++) dev.allReduceSum(x);
        await device.sync();
        eager.push(((performance.now() - t0) * 1000) / 50);
      }
      const b = device.buildGraph(() => {
        for (let i = 0; i < 20; i++) dev.allReduceSum(x);
        return x;
      });
      b.warmup();
      await device.sync();
      const g = b.capture();
      const inGraph: number[] = [];
      for (let rep = 0; rep < 3; rep++) {
        const t0 = performance.now();
        for (let k = 0; k < 3; k++) g.replay();
        await device.sync();
        inGraph.push(((performance.now() - t0) * 1000) / 60);
      }
      g.dispose();
      const host: number[] = [];
      for (let i = 0; i < 20; i++) {
        const t0 = performance.now();
        await grpcGroup.allReduceSum(x);
        host.push((performance.now() - t0) * 1000);
      }
      timing[`rows${rows}`] = {
        ipcEagerUs: median(eager),
        ipcGraphUs: median(inGraph),
        grpcUs: median(host),
      };
      x.dispose();
    }
    if (rank === 0) result('two-processes-one-gpu-allreduce-us', timing);
    await untilPeerDone;
    await ipc.close();
    await grpcGroup.close();
  } finally {
    await device.close().catch(() => undefined);
    server.forceShutdown();
  }
}

async function processesMode(): Promise<void> {
  const peers = [`127.0.0.1:${await freePort()}`, `127.0.0.1:${await freePort()}`];
  const child = spawn(process.execPath, [SCRIPT, 'processes-child', JSON.stringify(peers)], {
    stdio: 'inherit',
  });
  const exited = new Promise<number>((resolve) => child.on('exit', (code) => resolve(code ?? 1)));
  await processesRank(0, peers, exited);
  check('rank 1 (the other process) finished cleanly', (await exited) === 0);
}

// ---- model (in-process tp = 2) ---------------------------------------------------------

/** The tiny model's directory, generated unless MEDCLUSTER_TINY_MODEL names one; and a cleanup. */
async function tinyModel(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const given = process.env.MEDCLUSTER_TINY_MODEL;
  if (given) return { dir: given, cleanup: async () => undefined };
  const dir = await mkdtemp(join(tmpdir(), 'medcluster-dp-'));
  await makeModel({ out: dir, preset: 'tiny', seed: 0 });
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

const PROMPTS = ['The patient presented with', 'Question: What causes anemia?\nAnswer:', 'Hello'];

interface Stage {
  /** One runner per rank; they step together. */
  runners: ShardRunner[];
}

async function stepStage(stage: Stage, seqs: SeqStep[]): Promise<Float32Array[]> {
  const outs = await Promise.all(stage.runners.map((r) => r.step(seqs)));
  return outs.map((o) => o.output?.logits as Float32Array);
}

/**
 * tp = 2 as two devices of this process on the one GPU, its group formed the way a worker forms
 * its stage (gRPC group, then the device transport). What it opens is pushed onto the caller's
 * lists, which the caller closes.
 */
async function inProcessPair(
  group: string,
  devices: Device[],
  servers: grpc.Server[],
  collectives: Collective[],
): Promise<{ pair: Device[]; cs: Collective[] }> {
  const pair = [createDevice({ kind: 'cuda' }), createDevice({ kind: 'cuda' })];
  devices.push(...pair);
  const peers = [`127.0.0.1:${await freePort()}`, `127.0.0.1:${await freePort()}`];
  const hosts = await Promise.all(peers.map((p) => serve(p)));
  servers.push(...hosts.map((h) => h.server));
  const cs = await Promise.all(
    pair.map((device, rank) =>
      openStageCollective({ group, rank, size: 2, peers, host: hosts[rank].host, device }),
    ),
  );
  collectives.push(...cs);
  return { pair, cs };
}

async function modelMode(): Promise<void> {
  const { dir, cleanup } = await tinyModel();
  const devices: Device[] = [];
  const collectives: Collective[] = [];
  const servers: grpc.Server[] = [];
  try {
    const checkpoint: Checkpoint = await openCheckpoint(dir);
    const tokenizer = await loadTokenizer(dir);
    const prompts = PROMPTS.map((p) => tokenizer.encode(p));
    const L = checkpoint.config.numLayers;
    const vocab = checkpoint.config.vocabRows;
    const spec = (tpRank: number, tpSize: number): ShardSpec => ({
      layerStart: 0,
      layerEnd: L,
      tpRank,
      tpSize,
      embeds: true,
      computesLogits: true,
    });
    const kvCache = { numBlocks: 64, blockSize: 16 };
    const one = createDevice({ kind: 'cuda' });
    devices.push(one);
    const reference: Stage = {
      runners: [await ShardRunner.load({ checkpoint, device: one, spec: spec(0, 1), kvCache })],
    };
    const { pair, cs } = await inProcessPair('tp2', devices, servers, collectives);
    check(
      'tp = 2 in one process chooses CUDA IPC',
      cs.every((c) => c.transport === 'ipc'),
    );
    const tp2: Stage = {
      runners: await Promise.all(
        pair.map((device, rank) =>
          ShardRunner.load({ checkpoint, device, spec: spec(rank, 2), kvCache, collective: cs[rank] }),
        ),
      ),
    };

    const blocks = new BlockAllocator(64, 16);
    // Control, no collective: two tp = 1 runners on the pair's devices stepping at once must give
    // the reference's bits. Devices of one process share the CUDA module's globals, so this
    // fails where a kernel keeps per-call state there (main's AWQ split-K tickets): then the
    // tp = 2 checks below fail for that reason, not the collective's.
    {
      const ctlTable: number[] = [];
      blocks.ensure(ctlTable, prompts[0].length);
      const ctlStep: SeqStep[] = [
        {
          seqId: 'ctl',
          startPos: 0,
          numTokens: prompts[0].length,
          tokens: prompts[0],
          blockTable: ctlTable,
          logitRows: 1,
        },
      ];
      const [alone] = await stepStage(reference, ctlStep);
      const ctl = await Promise.all(
        pair.map((device) =>
          ShardRunner.load({ checkpoint, device, spec: spec(0, 1), kvCache, decodeGraphs: false }),
        ),
      );
      let worstCtl = 0;
      for (let k = 0; k < 3; k++) {
        const together = await Promise.all(ctl.map((r) => r.step(ctlStep)));
        for (const o of together)
          worstCtl = Math.max(worstCtl, relativeError(o.output?.logits as Float32Array, alone));
      }
      check(
        "control: two tp = 1 runners on two devices of one process stepping at once give one runner's bits",
        worstCtl === 0,
        `worst rel err ${worstCtl.toExponential(2)}`,
      );
      for (const r of ctl) r.dispose();
      blocks.release(ctlTable);
    }
    const tables = prompts.map((ids) => {
      const t: number[] = [];
      blocks.ensure(t, ids.length + 40);
      return t;
    });
    // Prompts one at a time (a runner runs one step at a time; every rank sees the same order).
    const refPrompt: Float32Array[] = [];
    for (const [i, ids] of prompts.entries()) {
      const [logits] = await stepStage(reference, [
        {
          seqId: `s${i}`,
          startPos: 0,
          numTokens: ids.length,
          tokens: ids,
          blockTable: tables[i],
          logitRows: 1,
        },
      ]);
      refPrompt.push(logits);
    }
    const tpPrompt: Float32Array[] = [];
    for (const [i, ids] of prompts.entries()) {
      const outs = await stepStage(tp2, [
        {
          seqId: `s${i}`,
          startPos: 0,
          numTokens: ids.length,
          tokens: ids,
          blockTable: tables[i],
          logitRows: 1,
        },
      ]);
      check(
        `tp = 2 prefill of prompt ${i}: both ranks hold the same logits bits`,
        sameBits(outs[0], outs[1]),
      );
      tpPrompt.push(outs[0]);
    }
    const promptErr = Math.max(...tpPrompt.map((l, i) => relativeError(l, refPrompt[i])));
    check('tp = 2 prompt logits against one GPU', promptErr < 1e-3, `rel err ${promptErr.toExponential(2)}`);

    // Decode: three sequences for 12 steps (bucket 4), then two for 12 (bucket 2), teacher-forced
    // with one GPU's greedy tokens. The first step of each bucket is repeated: its first run is
    // the graph's eager warm-up, the repeat a replay on the same inputs (the K/V rewrite is
    // idempotent), so their logits must be bit-identical.
    const tokens = prompts.map((_, i) => [argmax(refPrompt[i])]);
    const pos = prompts.map((ids) => ids.length);
    let agree = 0;
    let compared = 0;
    let worst = 0;
    let ranksSame = true;
    const replaysBefore = tp2.runners.map((r) => r.graphReplays);
    let decodeCalls = 0;
    for (let step = 0; step < 24; step++) {
      const active = step < 12 ? [0, 1, 2] : [0, 2];
      const seqs: SeqStep[] = active.map((i) => ({
        seqId: `s${i}`,
        startPos: pos[i],
        numTokens: 1,
        tokens: [tokens[i][tokens[i].length - 1]],
        blockTable: tables[i],
        logitRows: 1,
      }));
      const [ref] = await stepStage(reference, seqs);
      const repeat = step === 0 || step === 12;
      const runs = repeat ? 2 : 1;
      let outs: Float32Array[] = [];
      for (let k = 0; k < runs; k++) {
        const before = tp2.runners.map((r) => r.graphReplays);
        const got = await stepStage(tp2, seqs);
        decodeCalls++;
        const replayed = tp2.runners.every((r, j) => r.graphReplays === before[j] + 1);
        if (repeat && k === 0)
          check(
            `decode bucket ${active.length === 3 ? 4 : 2}: the first step runs eagerly (warm-up)`,
            !replayed,
          );
        if (repeat && k === 1) {
          check(
            `decode bucket ${active.length === 3 ? 4 : 2}: the repeated step is a graph replay`,
            replayed,
          );
          check(
            `decode bucket ${active.length === 3 ? 4 : 2}: replayed logits are bit-identical to the eager step's`,
            got.every((g) => sameBits(g, outs[0])),
          );
        }
        outs = got;
      }
      ranksSame &&= sameBits(outs[0], outs[1]);
      worst = Math.max(worst, relativeError(outs[0], ref));
      for (const [row, i] of active.entries()) {
        const r = ref.subarray(row * vocab, (row + 1) * vocab);
        const t = outs[0].subarray(row * vocab, (row + 1) * vocab);
        if (topMargin(r) >= 0.05) {
          compared++;
          if (argmax(r) === argmax(t)) agree++;
        }
        tokens[i].push(argmax(r));
        pos[i]++;
      }
    }
    const replays = tp2.runners.map((r, j) => r.graphReplays - replaysBefore[j]);
    check('tp = 2 decode: both ranks hold the same logits bits at every step', ranksSame);
    check(
      'tp = 2 decode logits against one GPU (24 steps)',
      worst < 1e-3,
      `worst rel err ${worst.toExponential(2)}`,
    );
    check(
      'tp = 2 greedy picks agree with one GPU wherever its top-2 margin >= 0.05',
      agree === compared,
      `${agree}/${compared}`,
    );
    check(
      'tp = 2 decode steps ran as graph replays (all but the two warm-ups)',
      replays.every((n) => n === decodeCalls - 2),
      `replays per rank ${replays.join(', ')} of ${decodeCalls} steps`,
    );
    check(
      'one GPU (tp = 1) also replays its decode graphs',
      reference.runners[0].graphReplays === 22,
      `${reference.runners[0].graphReplays}`,
    );
    check(
      'no collective bytes on gRPC in tp = 2 steps',
      cs.every((c) => c.grpcBytes === 0),
      cs.map((c) => c.grpcBytes).join(', '),
    );
    for (const r of [...reference.runners, ...tp2.runners]) r.dispose();
  } finally {
    for (const c of collectives) await c.close().catch(() => undefined);
    for (const s of servers) s.forceShutdown();
    for (const d of devices) await d.close().catch(() => undefined);
    await cleanup();
  }
}

function argmax(v: Float32Array): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
}

function topMargin(v: Float32Array): number {
  let a = -Infinity;
  let b = -Infinity;
  for (const x of v) {
    if (x > a) {
      b = a;
      a = x;
    } else if (x > b) b = x;
  }
  return a - b;
}

// ---- overhead (tp = 2 against tp = 1, 70B shapes) --------------------------------------

/**
 * Decode step time per token of L 70B-shaped layers plus the head, tp = 1 on one device against
 * tp = 2 as two devices of this process on the same GPU (IPC all-reduces inside the graphs), at
 * 1, 16 and 64 sequences of 512-token contexts, greedy tokens drawn by Device.sample. Both ranks'
 * halves run at once on the one GPU, so tp = 2 does tp = 1's work plus the split: (tp2 - tp1) / L
 * is the split's overhead per layer (its two all-reduces, the halves' smaller kernels, the vocab
 * all-gather spread over the layers).
 */
async function overheadMode(layersArg?: string): Promise<void> {
  // Two ranks in one process share one CUDA context. With lazy module loading the first launch of
  // a kernel waits for the context's running kernels, among them the peer's all-reduce, which
  // spins until this rank arrives: the graph warm-up (each rank's whole step queued at once) then
  // stalls until the collective's deadline. Worker processes have a context each and are not
  // exposed; here every kernel is loaded at start.
  if (process.env.CUDA_MODULE_LOADING !== 'EAGER') {
    throw new Error('the overhead mode needs CUDA_MODULE_LOADING=EAGER (set before the process starts)');
  }
  const layers = layersArg ? Number(layersArg) : 8;
  const config = presetConfig('llama-2-70b', { layers });
  const synthetic = { config, seed: 1 };
  const context = 512;
  const batches = [1, 16, 64];
  const blocksPerSeq = Math.ceil((context + 64) / 16);
  const kvCache = { numBlocks: Math.max(...batches) * blocksPerSeq + 2, blockSize: 16 };
  const spec = (tpRank: number, tpSize: number): ShardSpec => ({
    layerStart: 0,
    layerEnd: layers,
    tpRank,
    tpSize,
    embeds: true,
    computesLogits: true,
  });
  const devices: Device[] = [];
  const collectives: Collective[] = [];
  const servers: grpc.Server[] = [];
  try {
    const one = createDevice({ kind: 'cuda' });
    devices.push(one);
    // OVERHEAD_GRAPHS=0: eager steps (the figure without graphs).
    const decodeGraphs = process.env.OVERHEAD_GRAPHS !== '0';
    const tp1 = [await ShardRunner.load({ synthetic, device: one, spec: spec(0, 1), kvCache, decodeGraphs })];
    const { pair, cs } = await inProcessPair('tp2-70b', devices, servers, collectives);
    const tp2 = await Promise.all(
      pair.map((device, rank) =>
        ShardRunner.load({
          synthetic,
          device,
          spec: spec(rank, 2),
          kvCache,
          collective: cs[rank],
          decodeGraphs,
        }),
      ),
    );
    // OVERHEAD_SAMPLE=0: steps without sampling (every logit row read back, as the model mode does).
    const sampled = process.env.OVERHEAD_SAMPLE !== '0';
    // Each device's first Device.sample (its workspace, its pinned staging) before any step.
    for (const device of [one, ...pair]) {
      const logits = device.zeros([64, config.vocabRows], 'f32');
      const rowsOf = Array.from({ length: 64 }, (_, r) =>
        sampleRowOf(
          { params: GREEDY, key: { seed: r, choice: 0, position: 1 }, generated: { count: 0, ids: [] } },
          r,
        ),
      );
      const out = device.sample(logits, rowsOf);
      await out.ids.read();
      for (const t of [logits, out.ids, out.logprobs]) t.dispose();
    }
    const rows: { batch: number; tp1Ms: number; tp2Ms: number; overheadUsPerLayer: number }[] = [];
    for (const batch of batches) {
      const stepOf = (step: number): SeqStep[] =>
        Array.from({ length: batch }, (_, s) => ({
          seqId: `s${s}`,
          startPos: context + step,
          numTokens: 1,
          tokens: [1 + ((s * 7919 + step * 31) % (config.vocabRows - 1))],
          blockTable: Array.from({ length: blocksPerSeq }, (_, b) => s * blocksPerSeq + b),
          logitRows: 1,
          sample: sampled
            ? {
                params: GREEDY,
                key: { seed: s, choice: 0, position: context + step },
                generated: { count: step, ids: [] },
              }
            : undefined,
        }));
      const time = async (runners: ShardRunner[]): Promise<number> => {
        const replays = runners.map((r) => r.graphReplays);
        for (let step = 0; step < 3; step++) await Promise.all(runners.map((r) => r.step(stepOf(step))));
        const steps = 40;
        const t0 = performance.now();
        for (let step = 0; step < steps; step++)
          await Promise.all(runners.map((r) => r.step(stepOf(3 + step))));
        const ms = (performance.now() - t0) / steps;
        check(
          `batch ${batch}, tp = ${runners.length}: the timed steps are ${decodeGraphs ? 'graph replays' : 'eager'}`,
          runners.every((r, i) => r.graphReplays - replays[i] === (decodeGraphs ? steps + 2 : 0)),
          runners.map((r, i) => r.graphReplays - replays[i]).join(', '),
        );
        return ms;
      };
      const tp1Ms = await time(tp1);
      const tp2Ms = await time(tp2);
      rows.push({ batch, tp1Ms, tp2Ms, overheadUsPerLayer: ((tp2Ms - tp1Ms) * 1000) / layers });
      console.log(
        `batch ${batch}: tp = 1 ${tp1Ms.toFixed(3)} ms per step, tp = 2 ${tp2Ms.toFixed(3)} ms, ` +
          `split overhead ${(((tp2Ms - tp1Ms) * 1000) / layers).toFixed(1)} us per layer (${layers} layers)`,
      );
    }
    check(
      'no collective bytes on gRPC',
      cs.every((c) => c.grpcBytes === 0),
      cs.map((c) => c.grpcBytes).join(', '),
    );
    result('tp2-overhead-70b-shapes', { layers, context, sampled, decodeGraphs, rows });
    for (const r of [...tp1, ...tp2]) r.dispose();
  } finally {
    for (const c of collectives) await c.close().catch(() => undefined);
    for (const s of servers) s.forceShutdown();
    for (const d of devices) await d.close().catch(() => undefined);
  }
}

// ---- cluster (worker processes sharing the GPU) ----------------------------------------

function workerStatus(address: string): Promise<workerV1.WorkerStatus__Output> {
  const { medcluster } = loadWorkerProto();
  const client = new medcluster.worker.v1.Worker(address, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) =>
    client.GetStatus({}, (err: Error | null, status?: workerV1.WorkerStatus__Output) => {
      client.close();
      if (err || !status) reject(err ?? new Error('no status'));
      else resolve(status);
    }),
  );
}

async function clusterMode(cli: string): Promise<void> {
  const { dir, cleanup } = await tinyModel();
  const STEPS = 16;
  const KV = { numBlocks: 128, blockSize: 16 };
  try {
    const checkpoint = await openCheckpoint(dir);
    const tokenizer = await loadTokenizer(dir);
    const prompts = PROMPTS.slice(0, 2).map((p) => tokenizer.encode(p));
    const reference: GreedyRun[] = [];
    const one = await LocalExecutor.create({ checkpoint, device: 'cuda', kvCache: KV });
    try {
      const blocks = new BlockAllocator(KV.numBlocks, KV.blockSize);
      await greedy(one, blocks, 'warm', prompts[0], 2); // graph capture out of the timing
      const t0 = performance.now();
      for (const [i, ids] of prompts.entries())
        reference.push(await greedy(one, blocks, `ref-${i}`, ids, STEPS));
      result('cluster-tp1-one-process', {
        msPerStep: Number(((performance.now() - t0) / (prompts.length * (STEPS + 1))).toFixed(2)),
      });
    } finally {
      await one.close();
    }
    for (const { tp, pp, transport, handOff } of [
      { tp: 2, pp: 1, transport: 'ipc', handOff: '' },
      { tp: 2, pp: 2, transport: 'ipc', handOff: 'shared' },
      { tp: 2, pp: 2, transport: 'ipc', handOff: 'bytes' },
      { tp: 2, pp: 1, transport: 'grpc', handOff: '' },
    ]) {
      const name =
        `tp = ${tp} x pp = ${pp} (${tp * pp} worker processes sharing the GPU, ${transport}` +
        `${handOff ? `, hand-offs as ${handOff}` : ''})`;
      // Workers read MEDCLUSTER_COLLECTIVE (default auto, which picks ipc here) and
      // MEDCLUSTER_HAND_OFF (default auto, which hands off on the device here).
      if (transport === 'grpc') process.env.MEDCLUSTER_COLLECTIVE = 'grpc';
      else delete process.env.MEDCLUSTER_COLLECTIVE;
      if (handOff === 'bytes') process.env.MEDCLUSTER_HAND_OFF = 'bytes';
      else delete process.env.MEDCLUSTER_HAND_OFF;
      const started = performance.now();
      const cluster = await startLocalCluster({
        modelDir: dir,
        config: checkpoint.config,
        tp,
        pp,
        device: 'cuda',
        kvCache: KV,
        workerCommand: [process.execPath, cli],
        readyTimeoutMs: 90_000,
        log: (line) => console.log(`  ${line}`),
      });
      const statuses = () => Promise.all(cluster.workers().map((w) => workerStatus(w.address)));
      const replaysOf = async () => (await statuses()).map((st) => Number(st.graphReplays));
      try {
        const transports = cluster.workers().map((w) => w.collective);
        check(
          `${name}: every stage reports ${transport}`,
          transports.every((t) => t === transport),
          transports.join(', '),
        );
        const blocks = new BlockAllocator(KV.numBlocks, KV.blockSize);
        // One decode step twice: first the bucket's eager warm-up, then a replay of its graph on
        // the same inputs (the K/V rewrite is idempotent): the logits must be the same bits.
        if (transport === 'ipc') {
          const ids = prompts[0];
          const table: number[] = [];
          blocks.ensure(table, ids.length + 1);
          const { logits: first } = await cluster.executor.execute([
            {
              seqId: 'rep',
              startPos: 0,
              numTokens: ids.length,
              tokens: ids,
              blockTable: table,
              logitRows: 1,
            },
          ]);
          const step: SeqStep[] = [
            {
              seqId: 'rep',
              startPos: ids.length,
              numTokens: 1,
              tokens: [argmax(first)],
              blockTable: table,
              logitRows: 1,
            },
          ];
          const r0 = await replaysOf();
          const { logits: eager } = await cluster.executor.execute(step);
          const r1 = await replaysOf();
          const { logits: replayed } = await cluster.executor.execute(step);
          const r2 = await replaysOf();
          check(
            `${name}: a decode step's graph replay gives the bits of its eager warm-up`,
            r1.every((n, j) => n === r0[j]) &&
              r2.every((n, j) => n === r1[j] + 1) &&
              sameBits(eager, replayed),
            `replays ${r0.join(',')} -> ${r1.join(',')} -> ${r2.join(',')}`,
          );
          blocks.release(table);
        }
        const base = await replaysOf();
        let ok = true;
        let worst = 0;
        const t0 = performance.now();
        for (const [i, ids] of prompts.entries()) {
          const run = await greedy(cluster.executor, blocks, `seq-${i}`, ids, STEPS);
          worst = Math.max(worst, relativeError(run.promptLogits, reference[i].promptLogits));
          const n = agreedPrefix(reference[i], 0.05);
          ok &&= n >= 4 && run.tokens.slice(0, n).join() === reference[i].tokens.slice(0, n).join();
        }
        const decodeMs = (performance.now() - t0) / (prompts.length * (STEPS + 1));
        check(`${name}: one GPU's greedy tokens up to a near-tie`, ok);
        check(`${name}: prompt logits against one GPU`, worst < 1e-3, `rel err ${worst.toExponential(2)}`);
        const after = await statuses();
        const bytes = after.map((st) => Number(st.collectiveGrpcBytes));
        const replays = after.map((st, j) => Number(st.graphReplays) - base[j]);
        if (transport === 'ipc') {
          check(
            `${name}: zero collective bytes on gRPC`,
            after.every((st) => st.collectiveTransport === 'ipc') && bytes.every((b) => b === 0),
            after
              .map((st) => `${st.workerId} ${st.collectiveTransport} ${st.collectiveGrpcBytes} B`)
              .join(', '),
          );
          // Every decode step replays (the bucket was captured by the repeated step above).
          check(
            `${name}: all ${prompts.length * STEPS} decode steps ran as graph replays on every worker`,
            replays.every((n) => n === prompts.length * STEPS),
            replays.join(', '),
          );
        } else {
          check(
            `${name}: the host path carries the collectives over gRPC, eagerly`,
            bytes.every((b) => b > 0) && replays.every((n) => n === 0),
            `${bytes.join(', ')} B; replays ${replays.join(', ')}`,
          );
        }
        const senders = after.filter((st) => st.handOff !== '');
        const activationBytes = senders.map((st) => Number(st.activationGrpcBytes));
        if (pp > 1) {
          check(
            `${name}: the first stage's ranks hand off as ${handOff}` +
              (handOff === 'shared' ? ', zero hidden-state bytes on gRPC' : ', the hidden states on gRPC'),
            senders.length === tp * (pp - 1) &&
              senders.every((st) => st.handOff === handOff) &&
              activationBytes.every((b) => (handOff === 'shared' ? b === 0 : b > 0)),
            senders.map((st) => `${st.workerId} ${st.handOff} ${st.activationGrpcBytes} B`).join(', '),
          );
        }
        result(`cluster-tp${tp}pp${pp}-${transport}${handOff ? `-${handOff}` : ''}`, {
          activationGrpcBytes: activationBytes,
          startMs: Math.round(t0 - started),
          msPerStep: Number(decodeMs.toFixed(2)),
          grpcBytes: bytes,
          replays,
        });
      } finally {
        await cluster.stop();
      }
    }
    delete process.env.MEDCLUSTER_COLLECTIVE;
    delete process.env.MEDCLUSTER_HAND_OFF;
  } finally {
    await cleanup();
  }
}

async function main(): Promise<void> {
  const [mode, arg] = process.argv.slice(2);
  try {
    createDevice({ kind: 'cuda' })
      .close()
      .catch(() => undefined);
  } catch (err) {
    console.log(`GPU data-plane tests skipped: ${(err as Error).message}`);
    return;
  }
  switch (mode) {
    case 'kernels':
      await kernelsMode();
      break;
    case 'nccl':
      await ncclMode();
      break;
    case 'nccl-missing':
      await ncclMissingChild();
      return;
    case 'processes':
      await processesMode();
      break;
    case 'processes-child':
      await processesRank(1, JSON.parse(arg) as string[]);
      return;
    case 'model':
      await modelMode();
      break;
    case 'cluster':
      await clusterMode(arg);
      break;
    case 'overhead':
      await overheadMode(arg);
      break;
    default:
      throw new Error(
        `unknown mode '${mode}' (kernels, nccl, processes, model, cluster CLI, overhead [layers])`,
      );
  }
  console.log(`${mode}: ${passed} passed, ${failed} failed`);
  if (failed > 0) process.exitCode = 1;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
