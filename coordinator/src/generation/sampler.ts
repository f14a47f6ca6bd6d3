// Picks the next token from a row of logits: greedy at temperature 0, otherwise
// temperature, top-k and top-p sampling from a seeded generator (reproducible per request).

export interface SamplingParams {
  /** 0 means greedy. */
  temperature: number;
  /** 0 means no top-k cut. */
  topK: number;
  /** 1 means no nucleus cut. */
  topP: number;
  /** Seed of the request's random stream. */
  seed: number;
}

export const GREEDY: SamplingParams = { temperature: 0, topK: 0, topP: 1, seed: 0 };

export function validateSampling(p: SamplingParams): void {
  if (!(p.temperature >= 0) || !Number.isFinite(p.temperature)) {
    throw new RangeError(`temperature must be a finite number >= 0, got ${p.temperature}`);
  }
  if (!Number.isInteger(p.topK) || p.topK < 0)
    throw new RangeError(`top_k must be an integer >= 0, got ${p.topK}`);
  if (!(p.topP > 0 && p.topP <= 1)) throw new RangeError(`top_p must be in (0, 1], got ${p.topP}`);
}

/** mulberry32: a small, fast, seedable 32-bit generator. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

export class Sampler {
  private readonly random: () => number;

  constructor(private readonly params: SamplingParams) {
    validateSampling(params);
    this.random = mulberry32(params.seed);
  }

  next(logits: Float32Array): number {
    const { temperature, topK, topP } = this.params;
    if (temperature === 0) return argmax(logits);
    let ids = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]);
    if (topK > 0) ids = ids.slice(0, topK);
    const max = logits[ids[0]];
    let probs = ids.map((i) => Math.exp((logits[i] - max) / temperature));
    let total = probs.reduce((s, p) => s + p, 0);
    if (topP < 1) {
      let cumulative = 0;
      let keep = 0;
      while (keep < probs.length && cumulative < topP * total) cumulative += probs[keep++];
      ids = ids.slice(0, keep);
      probs = probs.slice(0, keep);
      total = cumulative;
    }
    let r = this.random() * total;
    for (let i = 0; i < ids.length; i++) {
      r -= probs[i];
      if (r <= 0) return ids[i];
    }
    return ids[ids.length - 1];
  }
}
