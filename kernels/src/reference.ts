// Float64 reference implementations of every kernel, plus the seeded inputs the tests
// feed both sides. Shared by the CPU tests and the GPU test harness.

/** mulberry32: a small seeded PRNG, so every test input is reproducible. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** n uniform values in [lo, hi). */
export function uniform(rand: () => number, n: number, lo = -1, hi = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * rand();
  return out;
}

export function randomNibbles(rand: () => number, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(rand() * 16);
  return out;
}

/** ||out - ref|| / ||ref|| */
export function relativeError(out: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (out.length !== ref.length) throw new RangeError(`length ${out.length} != ${ref.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < ref.length; i++) {
    num += (out[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  return Math.sqrt(num / (den || 1));
}

/** out [M, N] = x [M, K] @ w [K, N] (w input-major, as dequantizeAwq returns it). */
export function matmulRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  m: number,
  k: number,
  n: number,
): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let kk = 0; kk < k; kk++) {
      const xv = x[i * k + kk];
      for (let j = 0; j < n; j++) out[i * n + j] += xv * w[kk * n + j];
    }
  }
  return out;
}

/** out [M, N] = x [M, K] @ w [N, K]^T (nn.Linear layout). */
export function linearRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  m: number,
  k: number,
  n: number,
): Float64Array {
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let kk = 0; kk < k; kk++) s += x[i * k + kk] * w[j * k + kk];
      out[i * n + j] = s;
    }
  }
  return out;
}

export function rmsNormRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  t: number,
  h: number,
  eps: number,
): Float64Array {
  const out = new Float64Array(t * h);
  for (let r = 0; r < t; r++) {
    let ss = 0;
    for (let i = 0; i < h; i++) ss += x[r * h + i] ** 2;
    const inv = 1 / Math.sqrt(ss / h + eps);
    for (let i = 0; i < h; i++) out[r * h + i] = w[i] * x[r * h + i] * inv;
  }
  return out;
}

/** HF rotate-half RoPE on rows [T, width] (width a multiple of headDim). */
export function ropeRef(
  x: ArrayLike<number>,
  positions: ArrayLike<number>,
  t: number,
  width: number,
  headDim: number,
  theta: number,
): Float64Array {
  const out = Float64Array.from(x);
  const half = headDim / 2;
  for (let r = 0; r < t; r++) {
    for (let h = 0; h < width / headDim; h++) {
      const base = r * width + h * headDim;
      for (let i = 0; i < half; i++) {
        const angle = positions[r] * theta ** (-(2 * i) / headDim);
        const a = x[base + i];
        const b = x[base + i + half];
        out[base + i] = a * Math.cos(angle) - b * Math.sin(angle);
        out[base + i + half] = b * Math.cos(angle) + a * Math.sin(angle);
      }
    }
  }
  return out;
}

export function siluMulRef(gate: ArrayLike<number>, up: ArrayLike<number>): Float64Array {
  const out = new Float64Array(gate.length);
  for (let i = 0; i < gate.length; i++) out[i] = (gate[i] / (1 + Math.exp(-gate[i]))) * up[i];
  return out;
}

/** Per-sequence K or V rows: seqs[s][pos] is a [numKvHeads * headDim] row. */
export type SeqRows = Float32Array[][];

/** Causal attention of q rows [T, nh*hd] over each token's sequence positions 0..pos. */
export function attentionRef(
  q: ArrayLike<number>,
  keys: SeqRows,
  values: SeqRows,
  tokenSeq: ArrayLike<number>,
  positions: ArrayLike<number>,
  nh: number,
  nkv: number,
  hd: number,
  scale: number,
): Float64Array {
  const t = tokenSeq.length;
  const out = new Float64Array(t * nh * hd);
  for (let r = 0; r < t; r++) {
    const ks = keys[tokenSeq[r]];
    const vs = values[tokenSeq[r]];
    for (let h = 0; h < nh; h++) {
      const kvh = Math.floor(h / (nh / nkv));
      const n = positions[r] + 1;
      const scores = new Float64Array(n);
      let max = Number.NEGATIVE_INFINITY;
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let d = 0; d < hd; d++) s += q[r * nh * hd + h * hd + d] * ks[j][kvh * hd + d];
        scores[j] = s * scale;
        max = Math.max(max, scores[j]);
      }
      let sum = 0;
      for (let j = 0; j < n; j++) {
        scores[j] = Math.exp(scores[j] - max);
        sum += scores[j];
      }
      for (let d = 0; d < hd; d++) {
        let acc = 0;
        for (let j = 0; j < n; j++) acc += scores[j] * vs[j][kvh * hd + d];
        out[r * nh * hd + h * hd + d] = acc / sum;
      }
    }
  }
  return out;
}
