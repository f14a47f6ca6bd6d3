// Fuzzing the checkpoint reader with mutations of real generated shards: every case must end in
// a loaded checkpoint or a CheckpointError (never another error, a crash or a hang), and every
// documented error must be reached. MEDCLUSTER_FUZZ_CASES raises the count (CI runs 600).

import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { rng } from '@medcluster/kernels/testing';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CheckpointError } from './errors.js';
import { makeModel } from './make-model.js';
import { openCheckpoint } from './open.js';

const CASES = Number(process.env.MEDCLUSTER_FUZZ_CASES ?? 600);

/** Each documented failure of the reader, recognised by its message. */
const DOCUMENTED: Record<string, RegExp> = {
  'header length': /header length \d+ (is not sane|runs past the end)/,
  'invalid UTF-8': /header is not valid UTF-8/,
  'not JSON': /header (is not valid JSON|must be a JSON object)/,
  'duplicate key': /is listed twice in the header/,
  dtype: /(unknown|unsupported) dtype/,
  shape: /shape .* is not a list of non-negative integers/,
  'data offsets': /data_offsets .* is not \[begin, end\]/,
  'size mismatch': /needs \d+ bytes but data_offsets/,
  'past the end': /ends at byte \d+ but the file's data section has/,
  overlap: /overlap/,
  // What the layout checks say once a shard's header is sound: the index and the tensors it
  // promises, each tensor's dtype and shape against the config.
  'index and layout':
    /(does not list it|has no such tensor|is also stored in|is missing from the checkpoint|has dtype \S+, expected|has shape \[[^\]]*\], expected)/,
};

interface Entry {
  dtype: unknown;
  shape: unknown;
  data_offsets: unknown;
}
type Header = Record<string, Entry | Record<string, string>>;

interface Shard {
  name: string;
  header: Header;
  data: Buffer;
}

function encode(header: Header | string, data: Buffer, lengthOverride?: bigint): Buffer {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(lengthOverride ?? BigInt(json.length));
  return Buffer.concat([prefix, json, data]);
}

const tensorNames = (h: Header) => Object.keys(h).filter((k) => k !== '__metadata__');

/** One mutated copy of a shard's bytes. */
function mutate(shard: Shard, rand: () => number): Buffer {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  const header: Header = structuredClone(shard.header);
  const names = tensorNames(header);
  const name = pick(names);
  const entry = header[name] as Entry;
  const [begin, end] = entry.data_offsets as [number, number];
  switch (Math.floor(rand() * 14)) {
    case 0:
      return encode(
        header,
        shard.data,
        pick([0n, 2n ** 40n, BigInt(JSON.stringify(header).length + shard.data.length + 1)]),
      );
    case 1: {
      // A byte that no UTF-8 sequence allows, inside a tensor name.
      const bytes = encode(header, shard.data);
      const at = bytes.indexOf(Buffer.from(name)) + 1;
      bytes[at] = pick([0xff, 0xc0, 0x80]);
      return bytes;
    }
    case 2: {
      const text = JSON.stringify(header);
      return encode(
        pick([text.slice(0, Math.floor(rand() * text.length)), `[${text}]`, '42', 'null']),
        shard.data,
      );
    }
    case 3: {
      // The same tensor twice: JSON.parse alone would keep the second silently.
      const text = JSON.stringify(header);
      return encode(`{${JSON.stringify(name)}:${JSON.stringify(entry)},${text.slice(1)}`, shard.data);
    }
    case 4:
      entry.dtype = pick(['F64', 'I8', 'BF17', 7, null, '']);
      break;
    case 5:
      entry.shape = pick([[-1], ['a'], 1.5, null, [1.5, 2], [2 ** 60]]);
      break;
    case 6:
      entry.data_offsets = pick([
        [end, begin + (end === begin ? -1 : 0)],
        [-1, end],
        [begin],
        'x',
        [begin, end, 0],
      ]);
      break;
    case 7:
      // Consistent size, different shape: a mismatch the data offsets reveal.
      entry.shape = [...(entry.shape as number[]), 2];
      break;
    case 8:
      entry.data_offsets = [begin + shard.data.length, end + shard.data.length];
      break;
    case 9: {
      // Another tensor moved onto this one's bytes, with a zero-byte tensor between them: the
      // zero-byte one must not hide the overlap.
      const others = names.filter((n) => n !== name);
      if (others.length === 0) break;
      const other = header[pick(others)] as Entry;
      const [ob, oe] = other.data_offsets as [number, number];
      const size = oe - ob;
      if (size > 0 && end - begin > 0) {
        const start = begin + Math.floor(rand() * (end - begin));
        other.data_offsets = [start, start + size];
        header.zero_sized = { dtype: 'F16', shape: [0], data_offsets: [begin, begin] };
        if (start + size > shard.data.length) other.data_offsets = [begin, begin + size];
      }
      break;
    }
    case 10:
      return encode(header, shard.data.subarray(0, Math.floor(rand() * shard.data.length)));
    case 11: {
      // A sound header whose shapes disagree with the config: a 2-D tensor transposed.
      const shape = entry.shape as number[];
      if (shape.length === 2 && shape[0] !== shape[1]) entry.shape = [shape[1], shape[0]];
      else entry.shape = [shape.reduce((n, d) => n * d, 1)];
      break;
    }
    case 12:
      // A sound header that no longer holds what the index promises.
      header[`${name}.renamed`] = entry;
      delete header[name];
      break;
    default: {
      // A few random bytes of the header flipped.
      const bytes = encode(header, shard.data);
      const headerLength = Number(bytes.readBigUInt64LE(0));
      for (let i = 0, n = 1 + Math.floor(rand() * 4); i < n; i++) {
        bytes[8 + Math.floor(rand() * headerLength)] ^= 1 << Math.floor(rand() * 8);
      }
      return bytes;
    }
  }
  return encode(header, shard.data);
}

describe('the safetensors reader under fuzzing', () => {
  let root: string;
  let pristine: string;
  let shards: Shard[];

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'medcluster-fuzz-'));
    pristine = (
      await makeModel({
        out: join(root, 'pristine'),
        preset: 'llama-2-70b',
        seed: 5,
        layers: 1,
        hidden: 256,
        heads: 2,
        kvHeads: 1,
        intermediate: 512,
        vocabRows: 1000,
      })
    ).dir;
    shards = [];
    for (const name of (await readdir(pristine)).filter((f) => f.endsWith('.safetensors')).sort()) {
      const bytes = await readFile(join(pristine, name));
      const length = Number(bytes.readBigUInt64LE(0));
      shards.push({
        name,
        header: JSON.parse(bytes.subarray(8, 8 + length).toString('utf8')) as Header,
        data: bytes.subarray(8 + length),
      });
    }
  });
  afterAll(async () => {
    if (root) await rm(root, { recursive: true, force: true });
  });

  test(`${CASES} mutated checkpoints: each loads or fails with a CheckpointError, and every documented error is hit`, async () => {
    const rand = rng(20261201);
    const hit = new Map<string, number>();
    let loaded = 0;
    const dir = join(root, 'case');
    await cp(pristine, dir, { recursive: true });
    for (let i = 0; i < CASES; i++) {
      const shard = shards[Math.floor(rand() * shards.length)];
      await writeFile(join(dir, shard.name), mutate(shard, rand));
      const outcome = await Promise.race([
        openCheckpoint(dir).then(
          () => 'loaded' as const,
          (err: unknown) => err,
        ),
        new Promise((r) => setTimeout(() => r('hang'), 5000)),
      ]);
      if (outcome === 'loaded') loaded++;
      else {
        expect(outcome, `case ${i} did not finish within 5 s`).not.toBe('hang');
        expect(outcome, `case ${i}: ${String(outcome)}`).toBeInstanceOf(CheckpointError);
        const message = (outcome as Error).message;
        const kind = Object.keys(DOCUMENTED).find((k) => DOCUMENTED[k].test(message));
        expect(kind, `case ${i}: an undocumented error: ${message}`).toBeDefined();
        hit.set(kind as string, (hit.get(kind as string) ?? 0) + 1);
      }
      await writeFile(join(dir, shard.name), encode(shard.header, shard.data)); // restore
    }
    const missed = Object.keys(DOCUMENTED).filter((k) => !hit.has(k));
    expect(missed, `documented errors never reached in ${CASES} cases`).toEqual([]);
    console.log(
      `safetensors fuzz: ${CASES} cases, ${loaded} loaded, ${CASES - loaded} refused clearly, 0 crashes or hangs; ` +
        [...hit].map(([k, n]) => `${k} ${n}`).join(', '),
    );
  });

  test('a zero-byte tensor between two overlapping ones does not hide their overlap', async () => {
    const shard = shards.reduce((most, s) =>
      tensorNames(s.header).length > tensorNames(most.header).length ? s : most,
    );
    const header: Header = structuredClone(shard.header);
    const [a, b] = tensorNames(header)
      .map((n) => ({ n, o: (header[n] as Entry).data_offsets as [number, number] }))
      .filter(({ o }) => o[1] - o[0] >= 8)
      .sort((x, y) => x.o[0] - y.o[0]);
    const size = b.o[1] - b.o[0];
    (header[b.n] as Entry).data_offsets = [a.o[0] + 2, a.o[0] + 2 + size];
    header.zero_sized = { dtype: 'F16', shape: [0], data_offsets: [a.o[0] + 1, a.o[0] + 1] };
    const dir = join(root, 'zero');
    await cp(pristine, dir, { recursive: true });
    await writeFile(join(dir, shard.name), encode(header, shard.data));
    await expect(openCheckpoint(dir)).rejects.toThrow(new RegExp(`${a.n} .* and ${b.n} .* overlap`));
  });
});
