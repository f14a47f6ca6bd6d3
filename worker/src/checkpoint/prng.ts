// Seeded randomness for generated checkpoints. Every tensor draws from its own stream, keyed by
// (seed, tensor name), so one tensor can be regenerated alone (tests do) and same seed => same bytes.

import { createHash } from 'node:crypto';

function streamKey(seed: number, name: string): Buffer {
  return createHash('sha256').update(`medcluster-checkpoint:${seed}:${name}`).digest();
}

/** xoshiro128** (Blackman & Vigna): fast, small state, good enough statistics for synthetic weights. */
export class Xoshiro128 {
  private readonly s = new Uint32Array(4);
  private spareNormal: number | undefined;

  constructor(seed: number, name: string) {
    const key = streamKey(seed, name);
    for (let i = 0; i < 4; i++) this.s[i] = key.readUInt32LE(4 * i);
    // An all-zero state would only ever produce zeros.
    if ((this.s[0] | this.s[1] | this.s[2] | this.s[3]) === 0) this.s[0] = 1;
  }

  nextU32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /** Fills `out` with the next out.length outputs (the same values nextU32 would give, faster). */
  fill(out: Uint32Array): void {
    let [s0, s1, s2, s3] = this.s;
    for (let i = 0; i < out.length; i++) {
      const m = Math.imul(s1, 5);
      out[i] = Math.imul((m << 7) | (m >>> 25), 9);
      const t = s1 << 9;
      s2 ^= s0;
      s3 ^= s1;
      s1 ^= s2;
      s0 ^= s3;
      s2 ^= t;
      s3 = (s3 << 11) | (s3 >>> 21);
    }
    this.s[0] = s0;
    this.s[1] = s1;
    this.s[2] = s2;
    this.s[3] = s3;
  }

  /** Uniform in (0, 1): never 0, so log() below is finite. */
  nextOpenUnit(): number {
    return (this.nextU32() + 0.5) / 4294967296;
  }

  /** Standard normal (Box-Muller; V8's Math functions are deterministic fdlibm ports). */
  nextNormal(): number {
    if (this.spareNormal !== undefined) {
      const v = this.spareNormal;
      this.spareNormal = undefined;
      return v;
    }
    const r = Math.sqrt(-2 * Math.log(this.nextOpenUnit()));
    const theta = 2 * Math.PI * this.nextOpenUnit();
    this.spareNormal = r * Math.sin(theta);
    return r * Math.cos(theta);
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/**
 * A byte stream at memory speed for the full-size preset (xoshiro128** over the whole chunk with its
 * state in locals: ~1.8 GB/s here, where the crypto ciphers manage ~200 MB/s). Each call returns the
 * next `length` bytes of the (seed, name) stream in a fresh buffer.
 */
export class KeystreamBytes {
  private readonly rng: Xoshiro128;

  constructor(seed: number, name: string) {
    this.rng = new Xoshiro128(seed, name);
  }

  next(length: number): Buffer {
    const words = new Uint32Array(Math.ceil(length / 4));
    this.rng.fill(words);
    return Buffer.from(words.buffer, 0, length);
  }
}
