// Turns a step's per-sequence descriptors into the flat host arrays the kernels take.

import type { SeqStep } from './types.js';

export interface StepInputs {
  numTokens: number;
  /** Token ids of every new position, sequence after sequence (first stage only). */
  tokens: Int32Array;
  positions: Int32Array;
  /** Row of blockTables each token belongs to. */
  tokenSeq: Int32Array;
  /** Flat KV slot (block * blockSize + offset) of each token. */
  slots: Int32Array;
  /** [numSeqs, maxBlocks], padded with 0 (never read past a sequence's length). */
  blockTables: Int32Array;
  maxBlocks: number;
  /** Token rows whose logits are wanted, in sequence order. */
  logitRows: Int32Array;
}

export function buildStepInputs(seqs: readonly SeqStep[], blockSize: number, numBlocks: number): StepInputs {
  const numTokens = seqs.reduce((n, s) => n + s.numTokens, 0);
  const maxBlocks = Math.max(1, ...seqs.map((s) => s.blockTable.length));
  const tokens = new Int32Array(numTokens);
  const positions = new Int32Array(numTokens);
  const tokenSeq = new Int32Array(numTokens);
  const slots = new Int32Array(numTokens);
  const blockTables = new Int32Array(seqs.length * maxBlocks);
  const logitRows: number[] = [];
  let t = 0;
  seqs.forEach((seq, s) => {
    const end = seq.startPos + seq.numTokens;
    if (seq.numTokens < 1) throw new RangeError(`sequence ${seq.seqId}: a step needs at least one token`);
    if (seq.blockTable.length * blockSize < end) {
      throw new RangeError(
        `sequence ${seq.seqId}: ${seq.blockTable.length} blocks of ${blockSize} cannot hold ${end} positions`,
      );
    }
    for (const block of seq.blockTable) {
      if (!Number.isInteger(block) || block < 0 || block >= numBlocks) {
        throw new RangeError(
          `sequence ${seq.seqId}: block ${block} is outside the cache (${numBlocks} blocks)`,
        );
      }
    }
    if (!Number.isInteger(seq.logitRows) || seq.logitRows < 0 || seq.logitRows > seq.numTokens) {
      throw new RangeError(
        `sequence ${seq.seqId}: ${seq.logitRows} logit rows for ${seq.numTokens} positions`,
      );
    }
    if (seq.sampledInput && (seq.numTokens !== 1 || seq.tokens)) {
      throw new RangeError(
        `sequence ${seq.seqId}: a sampled input is one position with no token ids, got ${seq.numTokens} positions${seq.tokens ? ' and ids' : ''}`,
      );
    }
    if (seq.tokens && seq.tokens.length !== seq.numTokens) {
      throw new RangeError(
        `sequence ${seq.seqId}: ${seq.tokens.length} token ids for ${seq.numTokens} positions`,
      );
    }
    blockTables.set(seq.blockTable, s * maxBlocks);
    for (let i = 0; i < seq.numTokens; i++, t++) {
      const pos = seq.startPos + i;
      tokens[t] = seq.tokens ? seq.tokens[i] : 0;
      positions[t] = pos;
      tokenSeq[t] = s;
      slots[t] = seq.blockTable[Math.floor(pos / blockSize)] * blockSize + (pos % blockSize);
    }
    for (let r = t - seq.logitRows; r < t; r++) logitRows.push(r);
  });
  return {
    numTokens,
    tokens,
    positions,
    tokenSeq,
    slots,
    blockTables,
    maxBlocks,
    logitRows: Int32Array.from(logitRows),
  };
}
