// GPU tests, run on demand (`npm run test:gpu`, or bundled onto the GPU machine): every kernel
// of the CUDA backend against the CPU backend on fresh random inputs (odd shapes included),
// then the tiny model's greedy tokens and logits on CUDA against CPU. Where there is no GPU
// it says so and exits 0; where nvidia-smi lists a GPU but the CUDA backend cannot be used
// (an addon built without CUDA, a driver mismatch) it fails.

import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockAllocator, LocalExecutor, loadTokenizer } from '@medcluster/coordinator';
import {
  createDevice,
  type Device,
  type DType,
  disposeAwq,
  packAwqInt4,
  type Tensor,
} from '@medcluster/kernels';
import { randomNibbles, relativeError, rng, uniform } from '@medcluster/kernels/testing';
import {
  type Checkpoint,
  compareDeviceSampler,
  GREEDY,
  makeModel,
  openCheckpoint,
  presetConfig,
  type SeqStep,
  ShardRunner,
  type ShardSpec,
  sample,
  sampleRowOf,
} from '@medcluster/worker';
import { serveThrough } from '../src/follow-on.js';

let passed = 0;
let failed = 0;

function check(name: string, err: number, tol: number): void {
  const ok = Number.isFinite(err) && err <= tol;
  if (ok) passed++;
  else failed++;
  console.log(
    `${ok ? 'ok  ' : 'FAIL'} ${name}: rel err ${err.toExponential(2)} (tol ${tol.toExponential(0)})`,
  );
}

function checkEqual(name: string, a: ArrayLike<number>, b: ArrayLike<number>): void {
  let same = a.length === b.length;
  for (let i = 0; same && i < a.length; i++) same = a[i] === b[i];
  if (same) passed++;
  else failed++;
  console.log(`${same ? 'ok  ' : 'FAIL'} ${name}: ${same ? 'identical' : 'differs'}`);
}

/** The same host data on both devices. */
function both(
  cpu: Device,
  gpu: Device,
  data: Float32Array | Int32Array,
  shape: number[],
  dtype: DType,
): [Tensor, Tensor] {
  return [cpu.fromArray(data, shape, dtype), gpu.fromArray(data, shape, dtype)];
}

/**
 * Reads are settled off the device thread (small ones from pinned blocks, large ones at once)
 * and uploads are staged: each read returns what the tensor held where it was queued, and
 * completions resolve in the order they were queued.
 */
async function compareTransfers(gpu: Device): Promise<void> {
  for (const n of [3, 65536, 600000]) {
    const a = Int32Array.from({ length: n }, (_, i) => i * 7 - 5);
    const b = Int32Array.from({ length: n }, (_, i) => -i);
    const t = gpu.fromArray(a, [n], 'i32');
    const order: string[] = [];
    const noted =
      <T>(what: string) =>
      (v: T) => {
        order.push(what);
        return v;
      };
    const before = t.read().then(noted('read before'));
    gpu.write(t, b);
    const after = t.read().then(noted('read after'));
    const synced = gpu.sync().then(() => order.push('sync'));
    const [x, y] = await Promise.all([before, after, synced]);
    checkEqual(`read of ${n} ints queued before a write`, x, a);
    checkEqual(`read of ${n} ints queued after it`, y, b);
    checkEqual(
      `completions of ${n}-int reads in queued order`,
      order.map((o) => ['read before', 'read after', 'sync'].indexOf(o)),
      [0, 1, 2],
    );
    t.dispose();
  }
}

async function compareOps(cpu: Device, gpu: Device): Promise<void> {
  const rand = rng(Date.now() & 0x7fffffff); // fresh inputs every run
  const read = async (t: Tensor) => (await t.read()) as Float32Array;

  for (const [m, k, n] of [
    [1, 512, 1536],
    [3, 1536, 512],
    [17, 1024, 776],
    [64, 2048, 1024],
    [300, 512, 640],
  ]) {
    const g = 128;
    const x = uniform(rand, m * k);
    const qweight = packAwqInt4(randomNibbles(rand, k * n), k, n);
    const qzeros = packAwqInt4(randomNibbles(rand, (k / g) * n), k / g, n);
    const scales = uniform(rand, (k / g) * n, 0.001, 0.02);
    const [xc, xg] = both(cpu, gpu, x, [m, k], 'f16');
    const [qc, qg] = both(cpu, gpu, qweight, [k, n / 8], 'i32');
    const [zc, zg] = both(cpu, gpu, qzeros, [k / g, n / 8], 'i32');
    const [sc, sg] = both(cpu, gpu, scales, [k / g, n], 'f16');
    // The CUDA kernels read the weights packed at load; packAwq consumes the AutoAWQ tensors
    // there (on the CPU it returns them unchanged).
    const onCpu = cpu.packAwq({ qweight: qc, qzeros: zc, scales: sc, groupSize: g });
    const onGpu = gpu.packAwq({ qweight: qg, qzeros: zg, scales: sg, groupSize: g });
    for (const out of ['f16', 'f32'] as const) {
      const a = await read(cpu.awqLinear(xc, onCpu, out));
      const b = await read(gpu.awqLinear(xg, onGpu, out));
      check(
        `awqLinear M=${m} K=${k} N=${n} -> ${out} (packed on cuda)`,
        relativeError(b, a),
        out === 'f16' ? 3e-3 : 2e-3,
      );
    }
    disposeAwq(onCpu);
    disposeAwq(onGpu);
    if (n % 16 === 0) {
      // The MLP's gated matmul on the same matrix as [gate | up]: the matmul's epilogue on CUDA,
      // awqLinear then siluMul on the CPU.
      const pack = (d: Device, gated: boolean) =>
        d.packAwq(
          {
            qweight: d.fromArray(qweight, [k, n / 8], 'i32'),
            qzeros: d.fromArray(qzeros, [k / g, n / 8], 'i32'),
            scales: d.fromArray(scales, [k / g, n], 'f16'),
            groupSize: g,
          },
          { gated },
        );
      const gc = pack(cpu, true);
      const gg = pack(gpu, true);
      check(
        `awqSiluGate M=${m} K=${k} N=${n} (packed gated on cuda)`,
        relativeError(await read(gpu.awqSiluGate(xg, gg)), await read(cpu.awqSiluGate(xc, gc))),
        3e-3,
      );
      disposeAwq(gc);
      disposeAwq(gg);
    }
  }

  {
    const [m, k, n] = [5, 512, 3001];
    const [xc, xg] = both(cpu, gpu, uniform(rand, m * k), [m, k], 'f16');
    const [wc, wg] = both(cpu, gpu, uniform(rand, n * k, -0.05, 0.05), [n, k], 'f16');
    check(
      `linear M=${m} K=${k} N=${n}`,
      relativeError(await read(gpu.linear(xg, wg, 'f32')), await read(cpu.linear(xc, wc, 'f32'))),
      1e-4,
    );
  }

  {
    const [t, h] = [7, 512];
    const [xc, xg] = both(cpu, gpu, uniform(rand, t * h, -3, 3), [t, h], 'f32');
    const [wc, wg] = both(cpu, gpu, uniform(rand, h, 0.5, 1.5), [h], 'f16');
    check(
      'rmsNorm',
      relativeError(await read(gpu.rmsNorm(xg, wg, 1e-5)), await read(cpu.rmsNorm(xc, wc, 1e-5))),
      2e-3,
    );
    const [dc, dg] = both(cpu, gpu, uniform(rand, t * h), [t, h], 'f32');
    const a = await read(cpu.addRmsNorm(xc, dc, wc, 1e-5));
    const b = await read(gpu.addRmsNorm(xg, dg, wg, 1e-5));
    check('addRmsNorm (normed)', relativeError(b, a), 2e-3);
    check('addRmsNorm (residual)', relativeError(await read(xg), await read(xc)), 1e-6);
  }

  {
    const [t, nq, nk, hd, blocks, blockSize] = [9, 8, 4, 64, 4, 4];
    const width = (nq + 2 * nk) * hd;
    const [xc, xg] = both(cpu, gpu, uniform(rand, t * width), [t, width], 'f16');
    const pos = Int32Array.from({ length: t }, (_, i) => 3 + i * 37);
    const [pc, pg] = both(cpu, gpu, pos, [t], 'i32');
    const [sc, sg] = both(cpu, gpu, Int32Array.from([15, 0, 3, 4, 9, 12, 1, 7, 8]), [t], 'i32');
    const caches = (d: Device) => [0, 1].map(() => d.zeros([blocks, blockSize, nk, hd], 'f16'));
    const [kcC, vcC] = caches(cpu);
    const [kcG, vcG] = caches(gpu);
    const qc = cpu.ropeWriteKv(xc, kcC, vcC, pc, sc, 10000);
    const qg = gpu.ropeWriteKv(xg, kcG, vcG, pg, sg, 10000);
    check('ropeWriteKv q', relativeError(await read(qg), await read(qc)), 2e-3);
    check('ropeWriteKv k cache', relativeError(await read(kcG), await read(kcC)), 2e-3);
    checkEqual('ropeWriteKv v cache', await read(vcG), await read(vcC));
  }

  {
    const [t, i] = [6, 1536];
    const [gc, gg] = both(cpu, gpu, uniform(rand, t * 2 * i, -4, 4), [t, 2 * i], 'f16');
    check('siluMul', relativeError(await read(gpu.siluMul(gg)), await read(cpu.siluMul(gc))), 2e-3);
  }

  {
    const [v, h] = [1000, 256];
    const [tc, tg] = both(cpu, gpu, uniform(rand, v * h), [v, h], 'f16');
    const ids = Int32Array.from([0, 999, 17, 17, 512]);
    const [ic, ig] = both(cpu, gpu, ids, [ids.length], 'i32');
    const ec = cpu.embedding(tc, ic);
    const eg = gpu.embedding(tg, ig);
    checkEqual('embedding', await read(eg), await read(ec));
    const rows = Int32Array.from([4, 0, 2]);
    const [rc, rg] = both(cpu, gpu, rows, [3], 'i32');
    checkEqual('gatherRows', await read(gpu.gatherRows(eg, rg)), await read(cpu.gatherRows(ec, rc)));
    const [sc, sg] = both(cpu, gpu, Int32Array.from([5, -1, 6, -1, 7, 3]), [3, 2], 'i32');
    const from = Int32Array.from([2, -1, 0, 1, 2]);
    cpu.takeSampled(ic, sc, from);
    gpu.takeSampled(ig, sg, from);
    checkEqual('takeSampled', await read(ig), await read(ic));
  }

  // Column concat (fused q/k/v weights at load): pure copies, so identical. Odd widths and rows
  // exercise unaligned pitches.
  for (const [dtype, rows, widths] of [
    ['f16', 37, [1024, 128, 128]],
    ['f32', 5, [3, 7, 1]],
    ['i32', 64, [128, 16, 16]],
  ] as const) {
    const host = (n: number) =>
      dtype === 'i32'
        ? Int32Array.from({ length: n }, () => Math.floor((rand() - 0.5) * 2 ** 32))
        : uniform(rand, n, -4, 4);
    const parts = widths.map((w) => both(cpu, gpu, host(rows * w), [rows, w], dtype));
    const cc = cpu.concatCols(parts.map(([c]) => c));
    const cg = gpu.concatCols(parts.map(([, g]) => g));
    checkEqual(`concatCols ${dtype} [${rows}, ${widths}]`, await cg.read(), await cc.read());
  }

  // Paged attention: three sequences (prefill, decode, long context with a partial last block), GQA 8:1 and 2:1.
  for (const [nh, nkv, hd] of [
    [8, 1, 128],
    [8, 4, 64],
  ]) {
    const blockSize = 16;
    const lens = [37, 1, 2100];
    const starts = [0, 200, 0];
    const perSeq = 140;
    const numBlocks = 3 * perSeq;
    const cacheShape = [numBlocks, blockSize, nkv, hd];
    const kcC = cpu.zeros(cacheShape, 'f16');
    const vcC = cpu.zeros(cacheShape, 'f16');
    const kcG = gpu.zeros(cacheShape, 'f16');
    const vcG = gpu.zeros(cacheShape, 'f16');
    // Each sequence owns its own blocks (sequences never share KV), scattered within its range.
    const tables = new Int32Array(3 * perSeq);
    for (let s = 0; s < 3; s++) {
      for (let b = 0; b < perSeq; b++) tables[s * perSeq + b] = s * perSeq + ((b * 11) % perSeq);
    }
    // Fill each sequence's history (positions before its step) and the step itself.
    const positions: number[] = [];
    const tokenSeq: number[] = [];
    for (let s = 0; s < 3; s++) {
      const total = starts[s] + lens[s];
      for (let p = 0; p < total; p++) {
        positions.push(p);
        tokenSeq.push(s);
      }
    }
    const t = positions.length;
    const slots = Int32Array.from(
      positions,
      (p, i) => tables[tokenSeq[i] * perSeq + Math.floor(p / blockSize)] * blockSize + (p % blockSize),
    );
    const [kc, kg] = both(cpu, gpu, uniform(rand, t * nkv * hd), [t, nkv * hd], 'f16');
    const [vc, vg] = both(cpu, gpu, uniform(rand, t * nkv * hd), [t, nkv * hd], 'f16');
    const [sc, sg] = both(cpu, gpu, slots, [t], 'i32');
    cpu.writeKv(kcC, vcC, kc, vc, sc);
    gpu.writeKv(kcG, vcG, kg, vg, sg);
    // Queries: the step's tokens only (the last lens[s] positions of each sequence).
    const qPos: number[] = [];
    const qSeq: number[] = [];
    for (let s = 0; s < 3; s++) {
      for (let p = starts[s]; p < starts[s] + lens[s]; p++) {
        qPos.push(p);
        qSeq.push(s);
      }
    }
    const tq = qPos.length;
    const [qc, qg] = both(cpu, gpu, uniform(rand, tq * nh * hd, -2, 2), [tq, nh * hd], 'f16');
    const [btc, btg] = both(cpu, gpu, tables, [3, perSeq], 'i32');
    const [tsc, tsg] = both(cpu, gpu, Int32Array.from(qSeq), [tq], 'i32');
    const [pc, pg] = both(cpu, gpu, Int32Array.from(qPos), [tq], 'i32');
    const shape = { numHeads: nh, numKvHeads: nkv, headDim: hd };
    const a = await read(cpu.attention(qc, kcC, vcC, btc, tsc, pc, shape));
    const b = await read(gpu.attention(qg, kcG, vcG, btg, tsg, pg, shape));
    check(
      `attention GQA ${nh}:${nkv} hd=${hd} (prefill 37, decode at 200, prefill 2100)`,
      relativeError(b, a),
      3e-3,
    );
  }
}

async function compareTinyModel(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'medcluster-gpu-'));
  try {
    await makeModel({ out: dir, preset: 'tiny', seed: 0 });
    const checkpoint = await openCheckpoint(dir);
    const tokenizer = await loadTokenizer(dir);
    await compareDeterministicRows('tiny model', { checkpoint });
    await compareDeterministicRows('two 70B-shaped layers', {
      synthetic: { config: presetConfig('llama-2-70b', { layers: 2 }), seed: 1 },
    });
    await compareGraphs(
      checkpoint,
      ['The patient presented with', 'Question: What causes anemia?\nAnswer:', 'Hello'].map((p) =>
        tokenizer.encode(p),
      ),
    );
    await compareFollowOn(
      checkpoint,
      ['The patient presented with', 'Question: What causes anemia?\nAnswer:', 'Hello'].map((p) =>
        tokenizer.encode(p),
      ),
    );
    const runs: { logits: Float32Array; tokens: number[]; margins: number[] }[][] = [];
    for (const device of ['cpu', 'cuda'] as const) {
      const executor = await LocalExecutor.create({
        checkpoint,
        device,
        kvCache: { numBlocks: 128, blockSize: 16 },
      });
      const blocks = new BlockAllocator(128, 16);
      const perPrompt = [];
      for (const prompt of ['The patient presented with', 'Question: What causes anemia?\nAnswer:']) {
        const ids = tokenizer.encode(prompt);
        const table: number[] = [];
        blocks.ensure(table, ids.length + 32);
        let { logits } = await executor.execute([
          {
            seqId: 'p',
            startPos: 0,
            numTokens: ids.length,
            tokens: ids,
            blockTable: table,
            logitRows: 1,
          },
        ]);
        const first = logits;
        const tokens: number[] = [];
        const margins: number[] = [];
        for (let s = 0; s < 32; s++) {
          const order = Array.from(logits.keys()).sort((x, y) => logits[y] - logits[x]);
          tokens.push(order[0]);
          margins.push(logits[order[0]] - logits[order[1]]);
          ({ logits } = await executor.execute([
            {
              seqId: 'p',
              startPos: ids.length + s,
              numTokens: 1,
              tokens: [order[0]],
              blockTable: table,
              logitRows: 1,
            },
          ]));
        }
        blocks.release(table);
        perPrompt.push({ logits: first, tokens, margins });
      }
      await executor.close();
      runs.push(perPrompt);
    }
    for (let p = 0; p < runs[0].length; p++) {
      const [c, g] = [runs[0][p], runs[1][p]];
      check(`tiny model prompt ${p}: prompt logits cuda vs cpu`, relativeError(g.logits, c.logits), 2e-3);
      const tie = c.margins.findIndex((m) => m < 0.05);
      const n = tie < 0 ? 32 : tie;
      checkEqual(
        `tiny model prompt ${p}: ${n} greedy tokens before the first near-tie`,
        g.tokens.slice(0, n),
        c.tokens.slice(0, n),
      );
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * The scheduler's follow-on steps on CUDA (graph replays whose ids take the previous step's
 * sampled tokens on the device) against the same requests with every token fed from the host, in
 * the deterministic mode, where a row's logits do not depend on the rest of its batch: the same
 * tokens, greedy and sampled.
 */
async function compareFollowOn(checkpoint: Checkpoint, prompts: number[][]): Promise<void> {
  const previous = process.env.MEDCLUSTER_DETERMINISTIC;
  process.env.MEDCLUSTER_DETERMINISTIC = '1';
  const cache = { numBlocks: 128, blockSize: 16 };
  const executor = await LocalExecutor.create({ checkpoint, device: 'cuda', kvCache: cache });
  try {
    const requests = prompts.map((promptIds, i) => ({
      requestId: `f${i}`,
      promptIds,
      maxTokens: 24 + 4 * i,
      n: i === 2 ? 2 : 1,
      sampling: i === 0 ? GREEDY : { ...GREEDY, temperature: 0.8, topP: 0.9, seed: 11 + i },
    }));
    const limits = { maxBatchTokens: 256, maxRunning: 8, maxWaiting: 16, maxContext: 256, eosTokenId: 2 };
    const hostFed = await serveThrough(executor, false, requests, limits, cache);
    const deviceFed = await serveThrough(executor, true, requests, limits, cache);
    const fed = deviceFed.sampledInputs;
    const same = JSON.stringify(deviceFed.choices) === JSON.stringify(hostFed.choices);
    checkEqual(
      `follow-on steps on cuda (${fed} sampled inputs) vs host-fed: finish reasons and tokens`,
      [same ? 1 : 0],
      [1],
    );
    checkEqual('follow-on steps sent more than 50 sampled inputs', [fed > 50 ? 1 : 0], [1]);
  } finally {
    await executor.close();
    // '0', not unset: the backend's tuning is process-wide and keeps a flag no variable names.
    process.env.MEDCLUSTER_DETERMINISTIC = previous ?? '0';
  }
}

/**
 * Decode steps replayed as CUDA graphs against the same steps issued op by op, on CUDA:
 * one shard, and a two-stage pipeline (the second stage's graph takes hidden states).
 * Three sequences decode together (bucket 4: one padded row), then two (bucket 2).
 */
async function compareGraphs(checkpoint: Checkpoint, prompts: number[][]): Promise<void> {
  const device = createDevice({ kind: 'cuda' });
  const L = checkpoint.config.numLayers;
  const spec = (layerStart: number, layerEnd: number): ShardSpec => ({
    layerStart,
    layerEnd,
    tpRank: 0,
    tpSize: 1,
    embeds: layerStart === 0,
    computesLogits: layerEnd === L,
  });
  const setups = [
    { name: 'eager', stages: [spec(0, L)], graphs: false },
    { name: 'graphs', stages: [spec(0, L)], graphs: true },
    { name: 'graphs, 2 stages', stages: [spec(0, L / 2), spec(L / 2, L)], graphs: true },
  ];
  const results: { tokens: number[][]; logits: Float32Array[]; picks: number[] }[] = [];
  try {
    for (const setup of setups) {
      const runners: ShardRunner[] = [];
      for (const s of setup.stages) {
        runners.push(
          await ShardRunner.load({
            checkpoint,
            device,
            spec: s,
            kvCache: { numBlocks: 64, blockSize: 16 },
            decodeGraphs: setup.graphs,
          }),
        );
      }
      const run = async (seqs: SeqStep[]): Promise<Float32Array> => {
        let hidden: Float32Array | undefined;
        for (const r of runners) {
          const out = await r.step(seqs, hidden);
          hidden = out.hidden;
          if (out.output) return out.output.logits;
        }
        throw new Error('no stage computed logits');
      };
      const blocks = new BlockAllocator(64, 16);
      const tables = prompts.map((ids) => {
        const t: number[] = [];
        blocks.ensure(t, ids.length + 48);
        return t;
      });
      const vocab = checkpoint.config.vocabRows;
      const last = new Map<number, number>();
      for (const [i, ids] of prompts.entries()) {
        const logits = await run([
          {
            seqId: `s${i}`,
            startPos: 0,
            numTokens: ids.length,
            tokens: ids,
            blockTable: tables[i],
            logitRows: 1,
          },
        ]);
        last.set(i, argmaxOf(logits));
      }
      const record = {
        tokens: prompts.map(() => [] as number[]),
        logits: [] as Float32Array[],
        picks: [] as number[],
      };
      // The eager run (first) picks greedily; the others are fed its tokens.
      const forced = results[0];
      for (let step = 0; step < 24; step++) {
        const active = step < 12 ? [0, 1, 2] : [0, 2];
        for (const i of active) {
          const n = record.tokens[i].length;
          record.tokens[i].push(forced ? forced.tokens[i][n] : (last.get(i) as number));
        }
        const seqs = active.map((i) => ({
          seqId: `s${i}`,
          startPos: prompts[i].length + record.tokens[i].length - 1,
          numTokens: 1,
          tokens: [record.tokens[i][record.tokens[i].length - 1]],
          blockTable: tables[i],
          logitRows: 1,
        }));
        const logits = await run(seqs);
        record.logits.push(logits);
        for (const [row, i] of active.entries()) {
          const rowLogits = logits.subarray(row * vocab, (row + 1) * vocab);
          last.set(i, argmaxOf(rowLogits));
          // Where the top two are not nearly tied, the pick must agree between runs.
          record.picks.push(topMargin(rowLogits) >= 0.05 ? argmaxOf(rowLogits) : -1);
        }
      }
      for (const r of runners) r.dispose();
      results.push(record);
    }
  } finally {
    await device.close();
  }
  const [eager] = results;
  for (const [k, setup] of setups.entries()) {
    if (k === 0) continue;
    const got = results[k];
    let worst = 0;
    for (let s = 0; s < 24; s++) worst = Math.max(worst, relativeError(got.logits[s], eager.logits[s]));
    check(`decode ${setup.name} vs eager (cuda): logits of 24 batched steps (teacher-forced)`, worst, 1e-3);
    const clear = eager.picks.map((p, j) => (p >= 0 ? got.picks[j] === -1 || got.picks[j] === p : true));
    checkEqual(
      `decode ${setup.name} vs eager (cuda): greedy picks wherever the top-2 margin >= 0.05`,
      clear.map(Number),
      eager.picks.map(() => 1),
    );
  }
}

/**
 * Deterministic mode (MEDCLUSTER_DETERMINISTIC=1): one sequence's logits in a decode step are
 * bit-identical whether it decodes alone or with 1, 15, 63 or 255 others (every AWQ block-shape,
 * lm_head and attention-split switch point), on the tiny model and on two 70B-shaped layers.
 * The others have contexts of 1..60 tokens, so the block table's width changes with the batch.
 */
async function compareDeterministicRows(
  label: string,
  weights:
    | { checkpoint: Checkpoint }
    | { synthetic: { config: ReturnType<typeof presetConfig>; seed: number } },
): Promise<void> {
  const batches = [1, 2, 16, 64, 256];
  const blockSize = 16;
  const lengths = [7, ...Array.from({ length: 255 }, (_, i) => 1 + ((i * 37 + 11) % 60))];
  const numBlocks = lengths.reduce((n, len) => n + Math.ceil((len + 1) / blockSize), 0);
  const previous = process.env.MEDCLUSTER_DETERMINISTIC;
  process.env.MEDCLUSTER_DETERMINISTIC = '1';
  const device = createDevice({ kind: 'cuda' });
  try {
    const L = ('checkpoint' in weights ? weights.checkpoint.config : weights.synthetic.config).numLayers;
    const spec: ShardSpec = {
      layerStart: 0,
      layerEnd: L,
      tpRank: 0,
      tpSize: 1,
      embeds: true,
      computesLogits: true,
    };
    const runner = await ShardRunner.load({ ...weights, device, spec, kvCache: { numBlocks, blockSize } });
    const vocab = runner.config.vocabRows;
    const blocks = new BlockAllocator(numBlocks, blockSize);
    const seqs = lengths.map((len, i) => {
      const table: number[] = [];
      blocks.ensure(table, len + 1);
      const tokens = Array.from({ length: len }, (_, k) => 1 + ((i * 131 + k * 17) % (vocab - 1)));
      return { seqId: `d${i}`, tokens, table };
    });
    const logitsOf = async (step: SeqStep[]): Promise<Float32Array> => {
      const out = await runner.step(step);
      if (!('output' in out) || !out.output) throw new Error('the shard computed no logits');
      return out.output.logits;
    };
    for (const s of seqs)
      await logitsOf([
        {
          seqId: s.seqId,
          startPos: 0,
          numTokens: s.tokens.length,
          tokens: s.tokens,
          blockTable: s.table,
          logitRows: 1,
        },
      ]);
    let alone: Uint32Array | undefined;
    const same: number[] = [];
    for (const B of batches) {
      const step = seqs.slice(0, B).map((s) => ({
        seqId: s.seqId,
        startPos: s.tokens.length,
        numTokens: 1,
        tokens: [2],
        blockTable: s.table,
        logitRows: 1,
      }));
      const row0 = new Uint32Array((await logitsOf(step)).slice(0, vocab).buffer);
      alone ??= row0;
      same.push(row0.every((v, i) => v === (alone as Uint32Array)[i]) ? 1 : 0);
    }
    runner.dispose();
    checkEqual(
      `deterministic mode, ${label}: row 0's logits bit-identical at batch ${batches.join(', ')}`,
      same,
      batches.map(() => 1),
    );
  } finally {
    await device.close();
    process.env.MEDCLUSTER_DETERMINISTIC = previous ?? '0';
  }
}

function argmaxOf(v: Float32Array): number {
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

/**
 * Device.sample on CUDA against the serving core's JS sampler (the parity cases, boundaries
 * included), then its time for a batch of 64 sampled rows against the JS sampler's.
 */
async function compareSampler(gpu: Device): Promise<void> {
  for (const c of await compareDeviceSampler(gpu, Date.now() & 0x7fffffff)) {
    if (c.ok) passed++;
    else failed++;
    console.log(`${c.ok ? 'ok  ' : 'FAIL'} sample on cuda, ${c.name}${c.ok ? '' : `: ${c.detail}`}`);
  }
  const V = 32000;
  const R = 64;
  const rand = rng(7);
  const data = Float32Array.from({ length: R * V }, () => (rand() - 0.5) * 16);
  const logits = gpu.fromArray(data, [R, V], 'f32');
  for (const [label, params] of [
    ['greedy', GREEDY],
    ['temperature 0.7, top-p 0.9', { ...GREEDY, temperature: 0.7, topP: 0.9 }],
    ['temperature 0.7, top-k 50', { ...GREEDY, temperature: 0.7, topK: 50 }],
    ['temperature 1', { ...GREEDY, temperature: 1 }],
  ] as const) {
    const rows = Array.from({ length: R }, (_, r) =>
      sampleRowOf(
        { params, key: { seed: r, choice: 0, position: 100 }, generated: { count: 0, ids: [] } },
        r,
      ),
    );
    const once = async () => {
      const out = gpu.sample(logits, rows);
      await out.ids.read();
      out.ids.dispose();
      out.logprobs.dispose();
    };
    await once();
    const t0 = performance.now();
    for (let i = 0; i < 20; i++) await once();
    const deviceMs = (performance.now() - t0) / 20;
    const t1 = performance.now();
    for (let r = 0; r < 8; r++) {
      sample(
        data.subarray(r * V, (r + 1) * V),
        params,
        { count: 0, ids: [] },
        { seed: r, choice: 0, position: 100 },
      );
    }
    const jsMs = ((performance.now() - t1) / 8) * R;
    console.log(
      `RESULT sample-64x32000 ${JSON.stringify({ label, cudaMsPerStep: Number(deviceMs.toFixed(3)), jsMsPerStep: Number(jsMs.toFixed(2)) })}`,
    );
  }
  logits.dispose();
}

async function main(): Promise<void> {
  let gpu: Device;
  try {
    gpu = createDevice({ kind: 'cuda' });
  } catch (err) {
    const smi = spawnSync('nvidia-smi', ['-L'], { encoding: 'utf8' });
    if (!smi.error && smi.status === 0 && /GPU \d+:/.test(smi.stdout ?? '')) {
      console.log(
        `FAIL nvidia-smi lists a GPU but the CUDA backend cannot be used: ${(err as Error).message}`,
      );
      console.log('0 passed, 1 failed');
      process.exitCode = 1;
      return;
    }
    console.log(`GPU tests skipped (no GPU): ${(err as Error).message}`);
    return;
  }
  console.log(`GPU tests on ${gpu.name}`);
  const cpu = createDevice({ kind: 'cpu' });
  await compareTransfers(gpu);
  await compareOps(cpu, gpu);
  await compareSampler(gpu);
  await cpu.close();
  await gpu.close();
  await compareTinyModel();
  console.log(`${passed} passed, ${failed} failed`);
  if (failed > 0) process.exitCode = 1;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
