// Argument errors throw at the call site; failures of queued work reject the next
// sync/read with a KernelError naming the op, and the device keeps working.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { isDeviceFault, KernelError, type SampleRow } from './api.js';
import { createDevice, cudaCompiledIn, cudaDeviceCount } from './device.js';

const dev = createDevice({ kind: 'cpu', threads: 2 });
afterAll(() => dev.close());

function thrown(fn: () => unknown): KernelError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(KernelError);
    return err as KernelError;
  }
  throw new Error('expected a KernelError');
}

describe('argument errors', () => {
  const awq = (k: number, n: number, g: number) => ({
    qweight: dev.zeros([k, n / 8], 'i32'),
    qzeros: dev.zeros([k / g, n / 8], 'i32'),
    scales: dev.zeros([k / g, n], 'f16'),
    groupSize: g,
  });

  it('keeps the AutoAWQ tensors on the CPU: packAwq returns them, packed weights are refused', () => {
    const w = awq(256, 128, 128);
    expect(dev.packAwq(w)).toBe(w);
    expect(
      thrown(() => dev.packAwq({ ...awq(256, 128, 128), qzeros: dev.zeros([3, 16], 'i32') })).message,
    ).toBe('packAwq: qzeros [3, 16] i32 must be [2, 16] for K=256, N=128, groupSize 128');
    const packed = {
      packed: dev.zeros([16], 'i32'),
      inFeatures: 256,
      outFeatures: 128,
      groupSize: 128,
      gated: false,
    };
    expect(thrown(() => dev.awqLinear(dev.zeros([1, 256], 'f16'), packed, 'f32')).message).toBe(
      'awqLinear: the cpu device reads the AutoAWQ tensors, not packed weights',
    );
  });

  it('names the op, the arguments and their shapes', () => {
    const x = dev.zeros([3, 512], 'f16');
    expect(thrown(() => dev.awqLinear(x, awq(1024, 512, 128), 'f16')).message).toBe(
      'awqLinear: x [3, 512] f16 does not match qweight [1024, 64] i32 (K=1024)',
    );
    expect(
      thrown(() => dev.awqLinear(dev.zeros([3, 512], 'f32'), awq(512, 512, 128), 'f16')).message,
    ).toMatch(/^awqLinear: x \[3, 512\] f32 must be 2-D f16/);
    expect(thrown(() => dev.awqLinear(x, awq(512, 64, 128), 'i32')).message).toMatch(/^awqLinear: dtype i32/);
    expect(thrown(() => dev.linear(x, dev.zeros([8, 511], 'f16'), 'f32')).message).toMatch(
      /^linear: x \[3, 512\]/,
    );
    expect(thrown(() => dev.rmsNorm(dev.zeros([2, 8], 'f32'), dev.zeros([9], 'f16'), 1e-5)).message).toMatch(
      /^rmsNorm: weight \[9\] f16 does not match x \[2, 8\] f32/,
    );
    const cache = dev.zeros([4, 16, 2, 32], 'f16');
    const i32 = (n: number) => dev.zeros([n], 'i32');
    expect(
      thrown(() =>
        dev.attention(dev.zeros([2, 128], 'f16'), cache, cache, dev.zeros([1, 4], 'i32'), i32(2), i32(2), {
          numHeads: 3,
          numKvHeads: 2,
          headDim: 32,
        }),
      ).message,
    ).toMatch(/^attention: numHeads 3 is not a multiple of numKvHeads 2/);
    expect(
      thrown(() => dev.writeKv(cache, cache, dev.zeros([2, 32], 'f16'), dev.zeros([2, 32], 'f16'), i32(2)))
        .message,
    ).toMatch(/^writeKv: k \[2, 32\] f16 does not match kCache/);
    expect(thrown(() => dev.fromArray(new Float32Array(5), [2, 3], 'f32')).message).toMatch(
      /^fromArray: 5 values/,
    );
    expect(thrown(() => dev.fromArray(new Int32Array(6), [2, 3], 'f16')).message).toMatch(
      /Int32Array cannot fill/,
    );
    expect(thrown(() => dev.zeros([2, -1], 'f32')).message).toMatch(/^zeros: shape/);
  });

  it('refuses disposed tensors and tensors of another device', async () => {
    const t = dev.zeros([4], 'f32');
    t.dispose();
    expect(thrown(() => dev.addInPlace(t as never, t as never)).message).toMatch(/was disposed|must be 2-D/);
    const m = dev.zeros([1, 4], 'f32');
    m.dispose();
    expect(thrown(() => dev.rmsNorm(m, dev.zeros([4], 'f16'), 1e-5)).message).toBe(
      'rmsNorm: tensor [1, 4] f32 was disposed',
    );
    const other = createDevice({ kind: 'cpu', threads: 1 });
    expect(
      thrown(() => dev.rmsNorm(other.zeros([1, 4], 'f32'), dev.zeros([4], 'f16'), 1e-5)).message,
    ).toMatch(/belongs to another device/);
    await other.close();
    expect(thrown(() => other.zeros([1], 'f32')).message).toBe('zeros: device is closed');
  });

  it('sample names the bad row and its field, and the device carries on', async () => {
    const logits = dev.zeros([2, 8], 'f32');
    const ok: SampleRow = {
      row: 1,
      temperature: 1,
      topK: 0,
      topP: 1,
      repetitionPenalty: 1,
      presencePenalty: 0,
      frequencyPenalty: 0,
      penalizedIds: [],
      penalizedCounts: [],
      maskedIds: [],
      uniform: 0.5,
    };
    // The bad row is the second, so a message naming rows[0] (or no row) fails.
    const bad = (patch: Partial<SampleRow>) =>
      thrown(() => dev.sample(logits, [ok, { ...ok, ...patch }])).message;
    expect(bad({ row: 2 })).toBe('sample: rows[1].row 2 is not a row of the 2 logit rows');
    expect(bad({ row: -1 })).toMatch(/^sample: rows\[1\]\.row -1 /);
    expect(bad({ row: 0.5 })).toMatch(/^sample: rows\[1\]\.row 0\.5 /);
    expect(bad({ temperature: Number.NaN })).toBe(
      'sample: rows[1].temperature must be a finite number, got NaN',
    );
    expect(bad({ temperature: -0.5 })).toBe('sample: rows[1].temperature must be >= 0, got -0.5');
    expect(bad({ topP: 0 })).toBe('sample: rows[1].topP must be in (0, 1], got 0');
    expect(bad({ topP: 1.01 })).toMatch(/^sample: rows\[1\]\.topP must be in \(0, 1\]/);
    expect(bad({ topK: -1 })).toMatch(/^sample: rows\[1\]\.topK must be an integer >= 0/);
    expect(bad({ topK: 2.5 })).toMatch(/^sample: rows\[1\]\.topK /);
    expect(bad({ repetitionPenalty: 0 })).toMatch(/^sample: rows\[1\]\.repetitionPenalty must be > 0/);
    expect(bad({ presencePenalty: Number.POSITIVE_INFINITY })).toBe(
      'sample: rows[1].presencePenalty must be a finite number, got Infinity',
    );
    expect(bad({ frequencyPenalty: Number.NaN })).toMatch(/^sample: rows\[1\]\.frequencyPenalty /);
    expect(bad({ uniform: 1 })).toBe('sample: rows[1].uniform must be in [0, 1), got 1');
    expect(bad({ uniform: -0.1 })).toMatch(/^sample: rows\[1\]\.uniform /);
    expect(bad({ logprobs: 1025 })).toMatch(/^sample: rows\[1\]\.logprobs must be an integer in \[0, 1024\]/);
    expect(bad({ logprobs: -1 })).toMatch(/^sample: rows\[1\]\.logprobs /);
    expect(bad({ penalizedIds: [3, -1], penalizedCounts: [1, 1] })).toBe(
      'sample: rows[1].penalizedIds has -1, not an id',
    );
    expect(bad({ penalizedIds: [3], penalizedCounts: [] })).toBe(
      'sample: rows[1].penalizedCounts has 0 entries for 1 ids',
    );
    expect(bad({ maskedIds: [1.5] })).toBe('sample: rows[1].maskedIds has 1.5, not an id');
    expect(thrown(() => dev.sample(logits, [])).message).toBe('sample: rows must be a non-empty array');
    expect(thrown(() => dev.sample(dev.zeros([2, 8], 'f16'), [ok])).message).toMatch(
      /^sample: logits \[2, 8\] f16 must be 2-D f32/,
    );
    expect(thrown(() => dev.sample(dev.zeros([8], 'f32'), [ok])).message).toMatch(
      /^sample: logits \[8\] f32/,
    );
    // Nothing was queued by the refused calls: the next one runs. Eight equal logits, draw 0.5:
    // the walk 4 - 1 - 1 - 1 - 1 reaches 0 (not below it) at id 3, so id 4 is picked.
    const out = dev.sample(logits, [ok, { ...ok, row: 0, temperature: 0 }]);
    expect(Array.from(await out.ids.read())).toEqual([4, 0]);
  });

  it('counts CUDA devices, and creating one agrees with the count', () => {
    const n = cudaDeviceCount();
    expect(Number.isInteger(n) && n >= 0).toBe(true);
    if (n === 0) expect(() => createDevice({ kind: 'cuda' })).toThrow(/no CUDA device|not compiled/);
  });

  it('explains a missing CUDA backend', () => {
    if (cudaCompiledIn()) return; // this build has CUDA: creation depends on the machine's GPU
    expect(thrown(() => createDevice({ kind: 'cuda' })).message).toMatch(
      /CUDA support was not compiled into this addon/,
    );
  });
});

describe('failures of queued work', () => {
  it('an embedding id past the table is refused, never read, and the device carries on', async () => {
    const table = dev.fromArray(new Float32Array(32 * 4).fill(1), [32, 4], 'f16');
    const out = dev.embedding(table, dev.fromArray(Int32Array.from([3, 32]), [2], 'i32'));
    const err = await out.read().catch((e) => e);
    expect(err).toBeInstanceOf(KernelError);
    expect(err.message).toBe(
      "embedding: token id 32 at index 1 is out of range for the embedding table's rows (32)",
    );
    // The error was reported once; later work runs normally.
    const ok = dev.embedding(table, dev.fromArray(Int32Array.from([31]), [1], 'i32'));
    expect(Array.from(await ok.read())).toEqual([1, 1, 1, 1]);
    await expect(dev.fromArray(Int32Array.from([-1]), [1], 'i32').read()).resolves.toBeDefined();
    dev.embedding(table, dev.fromArray(Int32Array.from([-1]), [1], 'i32'));
    await expect(dev.sync()).rejects.toThrow(/embedding: token id -1/);
    await expect(dev.sync()).resolves.toBeUndefined();
  });

  it('readFile rejects on a missing or short file with the path and offset', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kernels-'));
    const missing = join(dir, 'nope.safetensors');
    dev.readFile({ path: missing, offset: 0, dtype: 'f32', rows: 1, cols: 4 });
    await expect(dev.sync()).rejects.toThrow(`readFile: cannot open ${missing}: No such file or directory`);

    const short = join(dir, 'short.bin');
    writeFileSync(short, Buffer.alloc(24));
    const t = dev.readFile({ path: short, offset: 8, dtype: 'f32', rows: 2, cols: 3 });
    const err = await t.read().catch((e) => e);
    expect(err).toBeInstanceOf(KernelError);
    expect(err.message).toBe(
      `readFile: short read of ${short}: wanted 24 bytes at offset 8 but the file ends after 16 of them`,
    );
  });

  it('readFile reads a sub-matrix at an offset', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kernels-'));
    const path = join(dir, 'm.bin');
    const values = Float32Array.from({ length: 5 * 7 }, (_, i) => i);
    writeFileSync(path, Buffer.concat([Buffer.alloc(13), Buffer.from(values.buffer)]));
    const whole = await dev.readFile({ path, offset: 13, dtype: 'f32', rows: 5, cols: 7 }).read();
    expect(whole).toEqual(values);
    const region = dev.readFile({
      path,
      offset: 13,
      dtype: 'f32',
      rows: 5,
      cols: 7,
      rowStart: 1,
      rowEnd: 3,
      colStart: 2,
      colEnd: 5,
    });
    expect(region.shape).toEqual([2, 3]);
    expect(Array.from(await region.read())).toEqual([9, 10, 11, 16, 17, 18]);
    expect(
      thrown(() => dev.readFile({ path, offset: 0, dtype: 'f32', rows: 5, cols: 7, rowEnd: 6 })).message,
    ).toMatch(/^readFile: region rows \[0, 6\)/);
  });
});

describe('isDeviceFault', () => {
  it("knows the addon's CUDA runtime errors from argument and collective errors", () => {
    // The format of throwCudaError (native/cuda/cuda_backend.cu), as a failed sync reports it.
    expect(
      isDeviceFault(
        new KernelError(
          'sync: CUDA error cudaErrorIllegalAddress (an illegal memory access was encountered) in cudaStreamSynchronize(s()) at cuda_backend.cu:463',
        ),
      ),
    ).toBe(true);
    expect(
      isDeviceFault(thrown(() => dev.rmsNorm(dev.zeros([2, 8], 'f32'), dev.zeros([9], 'f16'), 1e-5))),
    ).toBe(false);
    expect(isDeviceFault(new KernelError('allReduceSum: rank 1 did not arrive within 300 ms'))).toBe(false);
    expect(isDeviceFault('CUDA error cudaErrorLaunchFailure')).toBe(false); // not an Error
  });
});
