// Which part of each tensor a tensor-parallel rank holds (shared MODEL.md's split rules).
// Column-parallel layers (q, k, v, gate, up) split their outputs; row-parallel layers
// (o, down) split their inputs on AWQ group boundaries and are all-reduced afterwards.

export interface Range {
  start: number;
  end: number;
}

/** An even split of `total` into `parts`; throws unless `unit` divides every part. */
export function evenSplit(total: number, parts: number, rank: number, unit: number, what: string): Range {
  const size = total / parts;
  if (!Number.isInteger(size) || size % unit !== 0) {
    throw new RangeError(`${what}: ${total} cannot be split ${parts} ways in multiples of ${unit}`);
  }
  return { start: rank * size, end: (rank + 1) * size };
}

/**
 * Rows of a vocabulary-split matrix (lm_head) held by `rank`: the first `total % parts` ranks
 * take one extra row, so an uneven vocabulary (32017, 32019 rows) loses nothing.
 */
export function vocabShard(total: number, parts: number, rank: number): Range {
  const base = Math.floor(total / parts);
  const extra = total % parts;
  const start = rank * base + Math.min(rank, extra);
  return { start, end: start + base + (rank < extra ? 1 : 0) };
}
