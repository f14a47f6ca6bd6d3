// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a
// counter-based generator. Its output is a pure function of (key, counter), so a sample's random
// number depends only on what names it (the request's seed, the choice, the position), never on
// how many numbers other sequences drew before it or in which batch it ran. curand's
// Philox4_32_10 computes the same function, so a device sampler can draw the same numbers.

const M0 = 0xd2511f53;
const M1 = 0xcd9e8d57;
const W0 = 0x9e3779b9;
const W1 = 0xbb67ae85;

/** High 32 bits of the 64-bit product of two uint32 (JS numbers hold 53 bits, so in 16-bit halves). */
function mulHi(a: number, b: number): number {
  const aH = a >>> 16;
  const aL = a & 0xffff;
  const bH = b >>> 16;
  const bL = b & 0xffff;
  const lh = aL * bH;
  const hl = aH * bL;
  const mid = ((aL * bL) >>> 16) + (lh & 0xffff) + (hl & 0xffff);
  return (aH * bH + (lh >>> 16) + (hl >>> 16) + Math.floor(mid / 65536)) >>> 0;
}

/** The four uint32 outputs for a 128-bit counter and a 64-bit key (each given as uint32 words). */
export function philox4x32(
  counter: readonly [number, number, number, number],
  key: readonly [number, number],
): [number, number, number, number] {
  let [c0, c1, c2, c3] = counter.map((x) => x >>> 0);
  let k0 = key[0] >>> 0;
  let k1 = key[1] >>> 0;
  for (let round = 0; round < 10; round++) {
    const hi0 = mulHi(M0, c0);
    const lo0 = Math.imul(M0, c0) >>> 0;
    const hi1 = mulHi(M1, c2);
    const lo1 = Math.imul(M1, c2) >>> 0;
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
    k0 = (k0 + W0) >>> 0;
    k1 = (k1 + W1) >>> 0;
  }
  return [c0, c1, c2, c3];
}

/** What names one sampled token's random number. */
export interface SampleKey {
  /** The request's seed: a non-negative safe integer. */
  seed: number;
  /** Which of the request's `n` choices. */
  choice: number;
  /** Position in the sequence of the token being sampled (prompt tokens count). */
  position: number;
}

/** A uniform double in [0, 1) from 53 bits of Philox output keyed by (seed) at counter (position, choice). */
export function uniformFor({ seed, choice, position }: SampleKey): number {
  const key: [number, number] = [seed % 2 ** 32, Math.floor(seed / 2 ** 32)];
  const [r0, r1] = philox4x32([position, choice, 0, 0], key);
  return ((r0 >>> 5) * 67108864 + (r1 >>> 6)) / 9007199254740992;
}
