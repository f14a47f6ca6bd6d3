import { createHash } from 'node:crypto';
import { mkdtemp, open, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { f16BitsToF32, unpackAwqInt4 } from '@medcluster/kernels';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blockLinears, expectedTensors } from './layout.js';
import { type MakeModelResult, makeModel } from './make-model.js';
import { openCheckpoint } from './open.js';
import { generateFp16Bits, generateFp16Weight } from './tiny-weights.js';
import type { Checkpoint, TensorEntry } from './types.js';

const SEED = 1234;
let root: string;

async function hashDir(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of (await readdir(dir)).sort()) {
    out[name] = createHash('sha256')
      .update(await readFile(join(dir, name)))
      .digest('hex');
  }
  return out;
}

async function readTensor(entry: TensorEntry): Promise<Buffer> {
  const handle = await open(entry.file, 'r');
  try {
    const buf = Buffer.alloc(entry.byteLength);
    await handle.read(buf, 0, entry.byteLength, entry.offset);
    return buf;
  } finally {
    await handle.close();
  }
}

async function readI32(entry: TensorEntry): Promise<Int32Array> {
  const b = await readTensor(entry);
  return new Int32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
}

async function readF16(entry: TensorEntry): Promise<Float32Array> {
  const b = await readTensor(entry);
  const bits = new Uint16Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = f16BitsToF32(bits[i]);
  return out;
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'medcluster-make-model-'));
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('makeModel tiny preset', () => {
  let made: MakeModelResult;
  let ckpt: Checkpoint;
  let seconds: number;

  beforeAll(async () => {
    const t0 = performance.now();
    made = await makeModel({ out: join(root, 'tiny-a'), preset: 'tiny', seed: SEED });
    seconds = (performance.now() - t0) / 1000;
    ckpt = await openCheckpoint(made.dir);
  });

  it('writes the Meditron-70B-AWQ file set', async () => {
    console.log(
      `tiny preset: ${(made.totalBytes / 1e6).toFixed(1)} MB of weights in ${seconds.toFixed(1)} s`,
    );
    expect((await readdir(made.dir)).sort()).toEqual(
      [
        'added_tokens.json',
        'config.json',
        'generation_config.json',
        'model-00001-of-00002.safetensors',
        'model-00002-of-00002.safetensors',
        'model.safetensors.index.json',
        'quant_config.json',
        'tokenizer.json',
        'tokenizer_config.json',
      ].sort(),
    );
    const quant = JSON.parse(await readFile(join(made.dir, 'quant_config.json'), 'utf8'));
    expect(quant).toEqual({ zero_point: true, q_group_size: 128, w_bit: 4, version: 'GEMM' });
    const config = JSON.parse(await readFile(join(made.dir, 'config.json'), 'utf8'));
    expect(config.architectures).toEqual(['LlamaForCausalLM']);
    expect(config.torch_dtype).toBe('float16');
    expect(config.vocab_size).toBe(32019);
    expect(config.quantization_config).toEqual({
      quant_method: 'awq',
      bits: 4,
      group_size: 128,
      zero_point: true,
      version: 'gemm',
    });
    const added = JSON.parse(await readFile(join(made.dir, 'added_tokens.json'), 'utf8'));
    expect(added['<CLS>']).toBe(32000);
    expect(added['[/formula]']).toBe(32016);
    expect(added['<|im_end|>']).toBe(32018);
  });

  it('round-trips through openCheckpoint with the preset shape', () => {
    expect(ckpt.config).toMatchObject({
      numLayers: 4,
      hiddenSize: 512,
      numHeads: 8,
      numKvHeads: 4,
      headDim: 64,
      intermediateSize: 1536,
      vocabRows: 32019,
      maxPositions: 4096,
      ropeTheta: 10000,
      rmsNormEps: 1e-5,
      bosTokenId: 1,
      eosTokenId: 2,
      quant: { bits: 4, groupSize: 128, zeroPoint: true, version: 'gemm' },
    });
    expect(ckpt.tensors.size).toBe(4 * 23 + 3);
    const expected = expectedTensors(ckpt.config);
    for (const t of expected) {
      expect(ckpt.tensor(t.name)).toMatchObject({ dtype: t.dtype, shape: t.shape });
    }
    expect(ckpt.tensor('model.layers.0.self_attn.k_proj.qweight').shape).toEqual([512, 32]);
    expect(ckpt.tensor('model.layers.3.mlp.down_proj.scales').shape).toEqual([12, 512]);
    expect(new Set([...ckpt.tensors.values()].map((t) => t.file)).size).toBe(2);
    expect(() => ckpt.tensor('model.layers.4.mlp.up_proj.qweight')).toThrow(/not in the checkpoint/);
  });

  it('stores AWQ-packed int4 weights that dequantize to the generated fp16 weights', async () => {
    const shape = ckpt.config;
    const linears = [...blockLinears(shape, 0), blockLinears(shape, 3)[6]];
    for (const { prefix, k, n } of linears) {
      const q = unpackAwqInt4(await readI32(ckpt.tensor(`${prefix}.qweight`)), k, n);
      const z = unpackAwqInt4(await readI32(ckpt.tensor(`${prefix}.qzeros`)), k / 128, n);
      const s = await readF16(ckpt.tensor(`${prefix}.scales`));
      const w = generateFp16Weight(SEED, prefix, [k, n]);
      let worst = 0;
      for (let r = 0; r < k; r++) {
        const g = Math.floor(r / 128);
        for (let c = 0; c < n; c++) {
          const step = s[g * n + c];
          const err = Math.abs((q[r * n + c] - z[g * n + c]) * step - w[r * n + c]) / step;
          worst = Math.max(worst, err);
        }
      }
      // Half a step, plus the fp16 rounding of the scale (15 steps x 2^-11) that can clip the group max.
      expect(worst, prefix).toBeLessThanOrEqual(0.5 + 15 * 2 ** -11 + 1e-6);
      expect(worst, prefix).toBeGreaterThan(0.4); // rounding really happened
    }
  });

  it('stores the generated fp16 tensors bit-exactly', async () => {
    for (const name of [
      'model.embed_tokens.weight',
      'model.layers.2.input_layernorm.weight',
      'model.norm.weight',
    ]) {
      const entry = ckpt.tensor(name);
      const bits = generateFp16Bits(SEED, name, entry.shape);
      // Buffer.equals, not toEqual: a deep-equality diff over millions of elements exhausts the heap.
      expect((await readTensor(entry)).equals(Buffer.from(bits.buffer)), name).toBe(true);
    }
  });

  it('gives lm_head a logit spread of several units for RMS-1 hidden states', async () => {
    const head = await readF16(ckpt.tensor('lm_head.weight'));
    const h = 512;
    const x = generateFp16Weight(99, 'model.embed_tokens.weight', [1, h]); // N(0,1): RMS ~1, as after the final norm
    const logits = new Float64Array(32019);
    for (let v = 0; v < logits.length; v++) {
      let dot = 0;
      for (let i = 0; i < h; i++) dot += head[v * h + i] * x[i];
      logits[v] = dot;
    }
    const mean = logits.reduce((a, b) => a + b, 0) / logits.length;
    const std = Math.sqrt(logits.reduce((a, b) => a + (b - mean) ** 2, 0) / logits.length);
    expect(std).toBeGreaterThan(3);
    expect(std).toBeLessThan(12);
  });

  it('is deterministic: same seed gives identical files, another seed differs', async () => {
    const again = await makeModel({ out: join(root, 'tiny-b'), preset: 'tiny', seed: SEED });
    const a = await hashDir(made.dir);
    expect(await hashDir(again.dir)).toEqual(a);
    const other = await makeModel({ out: join(root, 'tiny-c'), preset: 'tiny', seed: SEED + 1 });
    const c = await hashDir(other.dir);
    for (const name of made.shards) expect(c[name], name).not.toBe(a[name]);
    expect(c['config.json']).toBe(a['config.json']);
  });
});

describe('makeModel llama-2-70b fast path (shrunk by overrides)', () => {
  const overrides = { layers: 1, hidden: 256, heads: 2, kvHeads: 1, intermediate: 512, vocabRows: 1000 };

  it('writes the same layout in 4 shards, deterministically, reporting progress', async () => {
    const progress: number[] = [];
    const totals = new Set<number>();
    const made = await makeModel({
      out: join(root, 'fast-a'),
      preset: 'llama-2-70b',
      seed: 7,
      ...overrides,
      onProgress: (p) => {
        progress.push(p.bytesWritten);
        totals.add(p.totalBytes);
      },
    });
    expect(made.shards).toHaveLength(4);
    expect(progress.at(-1)).toBe(made.totalBytes);
    expect([...totals]).toEqual([made.totalBytes]);
    expect(progress.every((b, i) => i === 0 || b > progress[i - 1])).toBe(true);

    const ckpt = await openCheckpoint(made.dir);
    expect(ckpt.config).toMatchObject({
      numLayers: 1,
      hiddenSize: 256,
      numHeads: 2,
      numKvHeads: 1,
      headDim: 128,
      vocabRows: 1000,
    });
    expect(ckpt.tensors.size).toBe(26);
    expect(new Set([...ckpt.tensors.values()].map((t) => t.file)).size).toBe(4);

    // fp16 tensors hold finite values in the ranges the fast path promises.
    const scales = await readF16(ckpt.tensor('model.layers.0.mlp.down_proj.scales'));
    expect(scales.every((v) => v > 0 && Number.isFinite(v))).toBe(true);
    const norms = await readF16(ckpt.tensor('model.norm.weight'));
    expect(norms.every((v) => v >= 1 && v < 1.0625)).toBe(true);
    const embed = await readF16(ckpt.tensor('model.embed_tokens.weight'));
    expect(embed.every((v) => Math.abs(v) >= 0.5 && Math.abs(v) < 1)).toBe(true);
    expect(embed.some((v) => v < 0)).toBe(true);

    const again = await makeModel({
      out: join(root, 'fast-b'),
      preset: 'llama-2-70b',
      seed: 7,
      ...overrides,
    });
    expect(await hashDir(again.dir)).toEqual(await hashDir(made.dir));
  });
});
