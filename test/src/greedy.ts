// Greedy decoding straight on a StepExecutor, keeping what parity checks need: the prompt's
// last logits, every generated token, and the top-2 margin at each step.

import type { BlockAllocator, StepExecutor } from '@medcluster/coordinator';

export interface GreedyRun {
  promptLogits: Float32Array;
  tokens: number[];
  margins: number[];
}

function top2(row: Float32Array): { best: number; margin: number } {
  let best = 0;
  let second = -1;
  for (let i = 1; i < row.length; i++) {
    if (row[i] > row[best]) {
      second = best;
      best = i;
    } else if (second < 0 || row[i] > row[second]) second = i;
  }
  return { best, margin: row[best] - row[second] };
}

export async function greedy(
  executor: StepExecutor,
  blocks: BlockAllocator,
  seqId: string,
  promptIds: number[],
  steps: number,
): Promise<GreedyRun> {
  const table: number[] = [];
  blocks.ensure(table, promptIds.length + steps);
  try {
    let { logits } = await executor.execute([
      {
        seqId,
        startPos: 0,
        numTokens: promptIds.length,
        tokens: promptIds,
        blockTable: table,
        logitRows: 1,
      },
    ]);
    const promptLogits = logits;
    const tokens: number[] = [];
    const margins: number[] = [];
    for (let s = 0; s < steps; s++) {
      const { best, margin } = top2(logits);
      tokens.push(best);
      margins.push(margin);
      ({ logits } = await executor.execute([
        {
          seqId,
          startPos: promptIds.length + s,
          numTokens: 1,
          tokens: [best],
          blockTable: table,
          logitRows: 1,
        },
      ]));
    }
    return { promptLogits, tokens, margins };
  } finally {
    blocks.release(table);
  }
}

export function relativeError(out: Float32Array, ref: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < ref.length; i++) {
    num += (out[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  return Math.sqrt(num / den);
}

/** Tokens must agree up to the reference's first step whose top-2 margin is below `nearTie`. */
export function agreedPrefix(ref: GreedyRun, nearTie: number): number {
  const firstTie = ref.margins.findIndex((m) => m < nearTie);
  return firstTie < 0 ? ref.tokens.length : firstTie;
}
