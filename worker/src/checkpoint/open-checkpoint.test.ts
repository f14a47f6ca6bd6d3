import { cp, mkdtemp, open, readFile, rm, truncate, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CheckpointError } from './errors.js';
import { makeModel } from './make-model.js';
import { openCheckpoint } from './open.js';
import { encodeSafetensorsHeader, type HeaderEntry } from './safetensors.js';

// A small fast-path checkpoint: 26 tensors over 4 shards, ~1.3 MB.
const SMALL = {
  preset: 'llama-2-70b',
  seed: 3,
  layers: 1,
  hidden: 256,
  heads: 2,
  kvHeads: 1,
  intermediate: 512,
  vocabRows: 1000,
} as const;
const SHARD1 = 'model-00001-of-00004.safetensors';
const INDEX = 'model.safetensors.index.json';
let root: string;
let pristine: string;
let caseNo = 0;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'medcluster-open-'));
  pristine = (await makeModel({ out: join(root, 'pristine'), ...SMALL })).dir;
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function copy(): Promise<string> {
  const dir = join(root, `case-${caseNo++}`);
  await cp(pristine, dir, { recursive: true });
  return dir;
}

/** The shard holding `name` (per the index). */
async function shardOf(dir: string, name: string): Promise<string> {
  const index = JSON.parse(await readFile(join(dir, INDEX), 'utf8'));
  return index.weight_map[name];
}

interface RawHeader {
  [name: string]: { dtype: string; shape: number[]; data_offsets: [number, number] };
}

/** Rewrites a shard's JSON header in place of the old one, keeping the data section's bytes. */
async function editHeader(file: string, edit: (header: RawHeader) => void): Promise<void> {
  const bytes = await readFile(file);
  const length = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + length).toString('utf8'));
  edit(header);
  const json = Buffer.from(JSON.stringify(header));
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length));
  await writeFile(file, Buffer.concat([prefix, json, bytes.subarray(8 + length)]));
}

/** Rebuilds a shard from a different tensor list (zero data): a well-formed file with other tensors. */
async function rebuildShard(file: string, edit: (tensors: HeaderEntry[]) => HeaderEntry[]): Promise<void> {
  const bytes = await readFile(file);
  const length = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + length).toString('utf8')) as RawHeader;
  const tensors = Object.entries(header)
    .filter(([name]) => name !== '__metadata__')
    .sort(([, a], [, b]) => a.data_offsets[0] - b.data_offsets[0])
    .map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape }) as HeaderEntry);
  const encoded = encodeSafetensorsHeader(edit(tensors));
  await writeFile(file, Buffer.concat([encoded.bytes, Buffer.alloc(encoded.dataBytes)]));
}

async function expectError(dir: string, pattern: RegExp): Promise<void> {
  const error = await openCheckpoint(dir).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(CheckpointError);
  expect((error as Error).message).toMatch(pattern);
}

describe('openCheckpoint', () => {
  it('opens the pristine checkpoint and locates tensors inside their files', async () => {
    const ckpt = await openCheckpoint(pristine);
    expect(ckpt.tensors.size).toBe(26);
    const norm = ckpt.tensor('model.norm.weight');
    expect(norm).toMatchObject({ dtype: 'F16', shape: [256], byteLength: 512 });
    // offsets are absolute: past the 8-byte prefix and the header
    const handle = await open(norm.file, 'r');
    const prefix = Buffer.alloc(8);
    await handle.read(prefix, 0, 8, 0);
    await handle.close();
    expect(norm.offset).toBeGreaterThanOrEqual(8 + Number(prefix.readBigUInt64LE(0)));
  });

  it('accepts a single model.safetensors without an index', async () => {
    const dir = await copy();
    const ckpt = await openCheckpoint(dir);
    const tensors = [...ckpt.tensors.values()].sort((a, b) =>
      a.file === b.file ? a.offset - b.offset : a.file < b.file ? -1 : 1,
    );
    const encoded = encodeSafetensorsHeader(tensors);
    await writeFile(
      join(dir, 'model.safetensors'),
      Buffer.concat([encoded.bytes, Buffer.alloc(encoded.dataBytes)]),
    );
    await unlink(join(dir, INDEX));
    expect((await openCheckpoint(dir)).tensors.size).toBe(26);
  });

  it('accepts quant_config.json alone (AutoAWQ spelling) and rejects other quantization', async () => {
    const dir = await copy();
    const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    delete config.quantization_config;
    await writeFile(join(dir, 'config.json'), JSON.stringify(config));
    expect((await openCheckpoint(dir)).config.quant).toEqual({
      bits: 4,
      groupSize: 128,
      zeroPoint: true,
      version: 'gemm',
    });
    await writeFile(
      join(dir, 'quant_config.json'),
      JSON.stringify({ zero_point: true, q_group_size: 128, w_bit: 8, version: 'GEMM' }),
    );
    await expectError(dir, /quant_config\.json: AWQ bits .* is 8; only 4-bit/);
    await writeFile(
      join(dir, 'quant_config.json'),
      JSON.stringify({ zero_point: true, q_group_size: 128, w_bit: 4, version: 'GEMV' }),
    );
    await expectError(dir, /only the GEMM packing/);
    await writeFile(
      join(dir, 'quant_config.json'),
      JSON.stringify({ zero_point: false, q_group_size: 128, w_bit: 4, version: 'GEMM' }),
    );
    await expectError(dir, /only zero-point/);
    await unlink(join(dir, 'quant_config.json'));
    await expectError(dir, /not an AWQ checkpoint/);
  });

  it('rejects rope_scaling and a broken config', async () => {
    const dir = await copy();
    const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'));
    await writeFile(
      join(dir, 'config.json'),
      JSON.stringify({ ...config, rope_scaling: { type: 'linear', factor: 2 } }),
    );
    await expectError(dir, /rope_scaling .* is not supported/);
    await writeFile(join(dir, 'config.json'), JSON.stringify({ ...config, hidden_size: undefined }));
    await expectError(dir, /config\.json: missing required field "hidden_size"/);
    await writeFile(join(dir, 'config.json'), '{"hidden_size": 256,');
    await expectError(dir, /config\.json: not valid JSON/);
  });

  it('rejects a missing config.json', async () => {
    const dir = await copy();
    await unlink(join(dir, 'config.json'));
    await expectError(dir, /config\.json: cannot read/);
  });

  it('rejects a truncated file, naming the tensor and the data section size', async () => {
    const dir = await copy();
    await truncate(join(dir, SHARD1), (await readFile(join(dir, SHARD1))).length - 100);
    await expectError(
      dir,
      new RegExp(
        `${SHARD1}: tensor \\S+ ends at byte \\d+ but the file's data section has \\d+ bytes \\(truncated file\\?\\)`,
      ),
    );
  });

  it('rejects header offsets past the end of the file', async () => {
    const dir = await copy();
    const file = join(dir, await shardOf(dir, 'model.norm.weight'));
    await editHeader(file, (h) => {
      h['model.norm.weight'].data_offsets = [10_000_000, 10_000_512];
    });
    await expectError(
      dir,
      /tensor model\.norm\.weight ends at byte 10000512 but the file's data section has \d+ bytes/,
    );
  });

  it('rejects overlapping entries', async () => {
    const dir = await copy();
    const file = join(dir, await shardOf(dir, 'model.layers.0.input_layernorm.weight'));
    await editHeader(file, (h) => {
      const a = h['model.layers.0.input_layernorm.weight'];
      h['model.layers.0.post_attention_layernorm.weight'].data_offsets = [
        a.data_offsets[0] + 2,
        a.data_offsets[1] + 2,
      ];
    });
    await expectError(dir, /model\.layers\.0\.(input|post_attention)_layernorm\.weight .* overlap/);
  });

  it('rejects an entry whose byte size does not match dtype x shape', async () => {
    const dir = await copy();
    const file = join(dir, await shardOf(dir, 'model.norm.weight'));
    await editHeader(file, (h) => {
      h['model.norm.weight'].shape = [300];
    });
    await expectError(
      dir,
      /tensor model\.norm\.weight: F16 \[300\] needs 600 bytes but data_offsets .* span 512/,
    );
  });

  it('rejects the wrong dtype (scales stored as F32)', async () => {
    const dir = await copy();
    const name = 'model.layers.0.mlp.up_proj.scales';
    const shard = await shardOf(dir, name);
    await rebuildShard(join(dir, shard), (ts) =>
      ts.map((t) => (t.name === name ? { ...t, dtype: 'F32' } : t)),
    );
    await expectError(
      dir,
      new RegExp(`${shard}: tensor ${name.replaceAll('.', '\\.')} has dtype F32, expected F16`),
    );
  });

  it('rejects an unknown dtype', async () => {
    const dir = await copy();
    const file = join(dir, await shardOf(dir, 'model.norm.weight'));
    await editHeader(file, (h) => {
      h['model.norm.weight'].dtype = 'Q4';
    });
    await expectError(dir, /tensor model\.norm\.weight: unknown dtype "Q4"/);
  });

  it('rejects the wrong shape', async () => {
    const dir = await copy();
    const name = 'model.layers.0.self_attn.k_proj.qweight';
    const shard = await shardOf(dir, name);
    await rebuildShard(join(dir, shard), (ts) =>
      ts.map((t) => (t.name === name ? { ...t, shape: [256, 32] } : t)),
    );
    await expectError(
      dir,
      /tensor model\.layers\.0\.self_attn\.k_proj\.qweight has shape \[256, 32\], expected \[256, 16\]/,
    );
  });

  it('rejects a missing tensor, and a weight_map that disagrees with the files', async () => {
    const dir = await copy();
    const name = 'model.layers.0.mlp.gate_proj.qzeros';
    const shard = await shardOf(dir, name);
    await rebuildShard(join(dir, shard), (ts) => ts.filter((t) => t.name !== name));
    await expectError(
      dir,
      new RegExp(`maps tensor ${name.replaceAll('.', '\\.')} to ${shard}, but ${shard} has no such tensor`),
    );
    const index = JSON.parse(await readFile(join(dir, INDEX), 'utf8'));
    delete index.weight_map[name];
    await writeFile(join(dir, INDEX), JSON.stringify(index));
    await expectError(
      dir,
      /tensor model\.layers\.0\.mlp\.gate_proj\.qzeros \(I32 \[2, 64\]\) is missing from the checkpoint/,
    );
    index.weight_map['model.norm.weight'] =
      SHARD1 === index.weight_map['model.norm.weight'] ? 'model-00002-of-00004.safetensors' : SHARD1;
    await writeFile(join(dir, INDEX), JSON.stringify(index));
    await expectError(dir, /holds tensor model\.norm\.weight but model\.safetensors\.index\.json maps it to/);
  });

  it('rejects a garbage header length', async () => {
    const dir = await copy();
    const handle = await open(join(dir, SHARD1), 'r+');
    await handle.write(Buffer.alloc(8, 0xff), 0, 8, 0);
    await handle.close();
    await expectError(dir, new RegExp(`${SHARD1}: header length 18446744073709551615 is not sane`));
    const small = await open(join(dir, SHARD1), 'r+');
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(50_000_000n);
    await small.write(length, 0, 8, 0);
    await small.close();
    await expectError(dir, /header length 50000000 runs past the end of the \d+-byte file/);
  });

  it('rejects a header that is not valid JSON', async () => {
    const dir = await copy();
    const handle = await open(join(dir, SHARD1), 'r+');
    await handle.write(Buffer.from('}'), 0, 1, 8);
    await handle.close();
    await expectError(dir, new RegExp(`${SHARD1}: header is not valid JSON`));
  });

  it('rejects a missing shard file', async () => {
    const dir = await copy();
    await unlink(join(dir, SHARD1));
    await expectError(dir, new RegExp(`${SHARD1}: cannot open safetensors file`));
  });
});
