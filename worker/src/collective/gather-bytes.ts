// Byte strings gathered over a HostGroup: how the ranks of a stage exchange what their device
// group needs (CUDA IPC handles, an NCCL unique id, who they are). The group carries float32
// payloads, but every hop copies them byte for byte (no arithmetic, no NaN canonicalization),
// so bytes survive: each payload is a little-endian uint32 length, the bytes, zero padding.
import { CollectiveError } from './collective-error.js';
import type { HostGroup } from './grpc-collective.js';

function pack(bytes: Uint8Array): Float32Array {
  const words = 1 + Math.ceil(bytes.length / 4);
  const buffer = new ArrayBuffer(words * 4);
  new DataView(buffer).setUint32(0, bytes.length, true);
  new Uint8Array(buffer, 4, bytes.length).set(bytes);
  return new Float32Array(buffer);
}

function unpack(part: Float32Array, rank: number): Uint8Array {
  const view = new Uint8Array(part.buffer, part.byteOffset, part.byteLength);
  const length = part.length > 0 ? new DataView(part.buffer, part.byteOffset, 4).getUint32(0, true) : -1;
  if (length < 0 || 4 + length > view.length)
    throw new CollectiveError(`rank ${rank}'s payload is not a byte string (${part.byteLength} bytes)`);
  return view.slice(4, 4 + length);
}

/** Every rank's bytes, indexed by rank. */
export async function gatherBytes(group: HostGroup, bytes: Uint8Array): Promise<Uint8Array[]> {
  const parts = await group.allGather(pack(bytes));
  return parts.map((p, r) => unpack(p, r));
}

/** Every rank's JSON value, indexed by rank. */
export async function gatherJson<T>(group: HostGroup, value: T): Promise<T[]> {
  const parts = await gatherBytes(group, new TextEncoder().encode(JSON.stringify(value)));
  const decoder = new TextDecoder();
  return parts.map((p) => JSON.parse(decoder.decode(p)) as T);
}
