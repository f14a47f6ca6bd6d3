// safetensors files: an 8-byte little-endian header length, a JSON header, then the data section.
// The reader reads only the header bytes and checks every entry against the file before anyone trusts
// an offset; tensor data never passes through the JS heap here.

import { open } from 'node:fs/promises';
import { basename } from 'node:path';
import { CheckpointError } from './errors.js';
import { DTYPE_BYTES, tensorByteLength } from './layout.js';
import type { SafetensorsDType, TensorEntry } from './types.js';

/** The safetensors format itself caps headers at 100 MB; anything larger is corruption. */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

/** dtypes the format defines that this project does not load: named so the error can say so. */
const OTHER_SAFETENSORS_DTYPES = new Set([
  'BOOL',
  'U8',
  'I8',
  'U16',
  'I16',
  'U32',
  'U64',
  'I64',
  'F64',
  'F8_E4M3',
  'F8_E5M2',
]);

function isDType(value: unknown): value is SafetensorsDType {
  return typeof value === 'string' && Object.hasOwn(DTYPE_BYTES, value);
}

/** Validates and returns every tensor of one safetensors file, in data order. */
export async function readSafetensorsHeader(file: string): Promise<TensorEntry[]> {
  const where = basename(file);
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(file, 'r');
  } catch (cause) {
    throw new CheckpointError(`${where}: cannot open safetensors file ${file}`, { cause });
  }
  try {
    const { size } = await handle.stat();
    if (size < 8)
      throw new CheckpointError(`${where}: file has ${size} bytes, too short for a safetensors header`);
    const lengthBytes = Buffer.alloc(8);
    await handle.read(lengthBytes, 0, 8, 0);
    const headerLength = lengthBytes.readBigUInt64LE(0);
    if (headerLength === 0n || headerLength > BigInt(MAX_HEADER_BYTES)) {
      throw new CheckpointError(
        `${where}: header length ${headerLength} is not sane (expected 1..${MAX_HEADER_BYTES} bytes); not a safetensors file?`,
      );
    }
    const headerBytes = Number(headerLength);
    if (8 + headerBytes > size) {
      throw new CheckpointError(
        `${where}: header length ${headerBytes} runs past the end of the ${size}-byte file (truncated or not safetensors?)`,
      );
    }
    const header = Buffer.alloc(headerBytes);
    const { bytesRead } = await handle.read(header, 0, headerBytes, 8);
    if (bytesRead !== headerBytes)
      throw new CheckpointError(`${where}: read ${bytesRead} of ${headerBytes} header bytes`);
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(header);
    } catch (cause) {
      throw new CheckpointError(`${where}: header is not valid UTF-8`, { cause });
    }
    return parseHeader(where, file, text, 8 + headerBytes, size - 8 - headerBytes);
  } finally {
    await handle.close();
  }
}

function parseHeader(
  where: string,
  file: string,
  text: string,
  dataStart: number,
  dataBytes: number,
): TensorEntry[] {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (cause) {
    throw new CheckpointError(`${where}: header is not valid JSON (${(cause as Error).message})`, { cause });
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new CheckpointError(
      `${where}: header must be a JSON object, found ${Array.isArray(json) ? 'an array' : typeof json}`,
    );
  }
  // JSON.parse keeps the last of two equal keys without a word: a tensor named twice would hide one.
  const duplicate = firstDuplicateKey(text);
  if (duplicate !== undefined)
    throw new CheckpointError(`${where}: tensor ${duplicate} is listed twice in the header`);
  const entries: TensorEntry[] = [];
  const ranges: { name: string; begin: number; end: number }[] = [];
  for (const [name, raw] of Object.entries(json)) {
    if (name === '__metadata__') continue;
    const entry = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof entry !== 'object' || entry === null)
      throw new CheckpointError(`${where}: tensor ${name}: entry is not an object`);
    if (!isDType(entry.dtype)) {
      const known = typeof entry.dtype === 'string' && OTHER_SAFETENSORS_DTYPES.has(entry.dtype);
      throw new CheckpointError(
        `${where}: tensor ${name}: ${known ? 'unsupported' : 'unknown'} dtype ${JSON.stringify(entry.dtype)} (expected one of ${Object.keys(DTYPE_BYTES).join(', ')})`,
      );
    }
    const shape = entry.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new CheckpointError(
        `${where}: tensor ${name}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`,
      );
    }
    const offsets = entry.data_offsets;
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
      offsets[0] > offsets[1]
    ) {
      throw new CheckpointError(
        `${where}: tensor ${name}: data_offsets ${JSON.stringify(offsets)} is not [begin, end] with begin <= end`,
      );
    }
    const [begin, end] = offsets as [number, number];
    const expectedBytes = tensorByteLength(entry.dtype, shape);
    if (end - begin !== expectedBytes) {
      throw new CheckpointError(
        `${where}: tensor ${name}: ${entry.dtype} ${JSON.stringify(shape)} needs ${expectedBytes} bytes but data_offsets [${begin}, ${end}] span ${end - begin}`,
      );
    }
    if (end > dataBytes) {
      throw new CheckpointError(
        `${where}: tensor ${name} ends at byte ${end} but the file's data section has ${dataBytes} bytes (truncated file?)`,
      );
    }
    ranges.push({ name, begin, end });
    entries.push({
      name,
      dtype: entry.dtype,
      shape: [...shape],
      file,
      offset: dataStart + begin,
      byteLength: end - begin,
    });
  }
  // Zero-byte tensors occupy no bytes and overlap nothing; every other range is checked against the
  // furthest-reaching one before it (not only its neighbour, which may be a zero-byte tensor).
  const occupied = ranges.filter((r) => r.end > r.begin).sort((a, b) => a.begin - b.begin || a.end - b.end);
  let reach: (typeof occupied)[number] | undefined;
  for (const cur of occupied) {
    if (reach && cur.begin < reach.end) {
      throw new CheckpointError(
        `${where}: tensors ${reach.name} [${reach.begin}, ${reach.end}) and ${cur.name} [${cur.begin}, ${cur.end}) overlap`,
      );
    }
    if (!reach || cur.end > reach.end) reach = cur;
  }
  entries.sort((a, b) => a.offset - b.offset);
  return entries;
}

/** The first key of the top-level JSON object that appears twice (the text is valid JSON). */
function firstDuplicateKey(text: string): string | undefined {
  const seen = new Set<string>();
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      if (depth === 1 && expectKey) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (seen.has(key)) return key;
        seen.add(key);
        expectKey = false;
      }
      i = j;
    } else if (c === '{' || c === '[') {
      depth++;
      expectKey = c === '{' && depth === 1;
    } else if (c === '}' || c === ']') depth--;
    else if (c === ',' && depth === 1) expectKey = true;
  }
  return undefined;
}

export interface HeaderEntry {
  name: string;
  dtype: SafetensorsDType;
  shape: readonly number[];
}

export interface EncodedHeader {
  /** The 8-byte length prefix and the padded JSON header: write it at offset 0. */
  bytes: Buffer;
  /** Byte offset of each tensor inside the data section, in the given order. */
  dataOffsets: number[];
  dataBytes: number;
}

/**
 * Lays tensors out back to back in the given order and encodes the header. The JSON is padded with
 * spaces to a multiple of 8 bytes (as the reference writer does) so the data section stays aligned.
 */
export function encodeSafetensorsHeader(tensors: readonly HeaderEntry[]): EncodedHeader {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  const dataOffsets: number[] = [];
  let cursor = 0;
  for (const t of tensors) {
    const bytes = tensorByteLength(t.dtype, t.shape);
    header[t.name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [cursor, cursor + bytes] };
    dataOffsets.push(cursor);
    cursor += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const jsonBytes = Buffer.from(json, 'utf8');
  const bytes = Buffer.alloc(8 + jsonBytes.length);
  bytes.writeBigUInt64LE(BigInt(jsonBytes.length), 0);
  jsonBytes.copy(bytes, 8);
  return { bytes, dataOffsets, dataBytes: cursor };
}
