// CPU AWQ linear benchmark: time per call and effective bandwidth (bytes of qweight,
// qzeros, scales, x and out over the time), next to this machine's memcpy bandwidth.
// Weights rotate through enough copies that one pass is well past the caches.
//
//   npm run bench -w @medcluster/kernels [-- --json out.json] [-- --threads N]

import { writeFileSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import type { AwqLinear, Device } from '../api.js';
import { createDevice } from '../device.js';
import { rng, uniform } from '../reference.js';

const ROTATION_BYTES = 256 * 2 ** 20; // well past any CPU cache
const GROUP = 128;
const SHAPES = [
  { k: 4096, n: 4096 },
  { k: 8192, n: 10240 },
  { k: 28672, n: 8192 },
];
const BATCHES = [1, 4, 16];

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** memcpy bandwidth, counting bytes read plus bytes written. */
function memcpyGBps(): number {
  const bytes = ROTATION_BYTES;
  const src = Buffer.alloc(bytes, 1);
  const dst = Buffer.alloc(bytes);
  src.copy(dst); // fault the pages in
  const times: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    src.copy(dst);
    times.push(performance.now() - t0);
  }
  return (2 * bytes) / (median(times) / 1e3) / 1e9;
}

function makeWeights(dev: Device, k: number, n: number, seed: number): AwqLinear {
  return {
    qweight: dev.randomBits([k, n / 8], 'i32', seed),
    qzeros: dev.randomBits([k / GROUP, n / 8], 'i32', seed + 1),
    scales: dev.fromArray(uniform(rng(seed), (k / GROUP) * n, 0.001, 0.02), [k / GROUP, n], 'f16'),
    groupSize: GROUP,
  };
}

interface Row {
  k: number;
  n: number;
  m: number;
  ms: number;
  gbps: number;
}

async function benchShape(dev: Device, k: number, n: number): Promise<Row[]> {
  const weightBytes = (k * n) / 2 + ((k / GROUP) * n) / 2 + (k / GROUP) * n * 2;
  const copies = Math.max(1, Math.ceil(ROTATION_BYTES / weightBytes));
  const weights = Array.from({ length: copies }, (_, i) => makeWeights(dev, k, n, 1000 * i + k));
  const rows: Row[] = [];
  for (const m of BATCHES) {
    const x = dev.fromArray(uniform(rng(m), m * k), [m, k], 'f16');
    // Enough calls per timed sample to cover a full rotation and at least ~50 ms.
    const perSample = Math.max(copies, 4);
    const sample = async () => {
      const t0 = performance.now();
      for (let i = 0; i < perSample; i++) dev.awqLinear(x, weights[i % copies], 'f16').dispose();
      await dev.sync();
      return (performance.now() - t0) / perSample;
    };
    await sample(); // warm-up
    const times: number[] = [];
    for (let i = 0; i < 5; i++) times.push(await sample());
    const ms = median(times);
    const bytes = weightBytes + m * k * 2 + m * n * 2;
    rows.push({ k, n, m, ms, gbps: bytes / (ms / 1e3) / 1e9 });
    x.dispose();
  }
  for (const w of weights) for (const t of [w.qweight, w.qzeros, w.scales]) t.dispose();
  return rows;
}

export interface CpuKernelBenchOptions {
  /** Writes the figures as JSON here too. */
  json?: string;
  threads?: number;
}

/** Prints the AWQ linear's effective GB/s next to this machine's memcpy GB/s. */
export async function runCpuKernelBench(options: CpuKernelBenchOptions = {}): Promise<void> {
  const values = options;
  const threads = options.threads ?? availableParallelism();
  const dev = createDevice({ kind: 'cpu', threads });
  const copy = memcpyGBps();
  console.log(`device: ${dev.name}; cpu: ${cpus()[0]?.model ?? 'unknown'}`);
  console.log(`memcpy: ${copy.toFixed(1)} GB/s (read + write)\n`);
  console.log('   K      N    M    ms/call   GB/s   % of memcpy');
  const rows: Row[] = [];
  for (const { k, n } of SHAPES) {
    for (const r of await benchShape(dev, k, n)) {
      rows.push(r);
      const pct = ((100 * r.gbps) / copy).toFixed(0);
      console.log(
        `${String(r.k).padStart(6)} ${String(r.n).padStart(6)} ${String(r.m).padStart(4)} ` +
          `${r.ms.toFixed(2).padStart(10)} ${r.gbps.toFixed(1).padStart(6)} ${pct.padStart(8)}%`,
      );
    }
  }
  await dev.close();
  if (values.json) {
    const report = { device: dev.name, cpu: cpus()[0]?.model, threads, memcpyGBps: copy, awqLinear: rows };
    writeFileSync(values.json, `${JSON.stringify(report, null, 2)}\n`);
    console.log(`\nwrote ${values.json}`);
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({ options: { json: { type: 'string' }, threads: { type: 'string' } } });
  runCpuKernelBench({
    json: values.json,
    threads: values.threads ? Number(values.threads) : undefined,
  }).catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
