import type { SeqStep, StepOutput } from '@medcluster/worker';
import { describe, expect, it } from 'vitest';
import { BlockAllocator } from '../scheduler/block-allocator.js';
import type { StepExecutor } from '../scheduler/executor.js';
import { blocksNeeded, measureDecode } from './measure-decode.js';

/** An executor that records every step and samples a token derived from the sequence and position. */
function recordingExecutor(maxInFlight: number) {
  const steps: SeqStep[][] = [];
  const token = (s: SeqStep) => 1000 + Number(s.seqId.slice(1)) * 100 + s.startPos + s.numTokens;
  const executor: StepExecutor = {
    vocabRows: 32000,
    maxInFlight,
    async execute(seqs: SeqStep[]): Promise<StepOutput> {
      steps.push(seqs);
      return {
        logits: new Float32Array(0),
        sampled: seqs.filter((s) => s.sample).map((s) => ({ id: token(s) })),
      };
    },
    async close() {},
  };
  return { executor, steps, token };
}

describe('measureDecode', () => {
  it('samples every step where the logits are and feeds each sampled token back as the next input', async () => {
    const shape = { batch: 3, promptTokens: 5, decodeTokens: 4 };
    const blocks = new BlockAllocator(blocksNeeded(shape, 4), 4);
    const { executor, steps, token } = recordingExecutor(1);
    const row = await measureDecode(executor, blocks, shape);
    expect(row.decodeTokensPerS).toBeGreaterThan(0);
    expect(blocks.freeBlocks).toBe(blocks.numBlocks); // every table released
    // The measured run (after the 2-step warm-up): 3 prefills, then 4 decode steps of 3 sequences.
    const measured = steps.slice(-(3 + 4));
    for (const seqs of measured) {
      for (const s of seqs) {
        expect(s.logitRows).toBe(1);
        expect(s.sample?.params.temperature).toBe(0);
        expect(s.sample?.key.position).toBe(s.startPos + s.numTokens);
      }
    }
    for (let step = 0; step < 4; step++) {
      const seqs = measured[3 + step];
      expect(seqs.map((s) => s.seqId)).toEqual(['b0', 'b1', 'b2']);
      for (const s of seqs) {
        expect(s.startPos).toBe(5 + step);
        expect(s.sample?.generated.count).toBe(step + 1);
        // The token this sequence sampled in its previous step (its prefill for the first).
        const prev =
          step === 0
            ? measured.find((x) => x[0].seqId === s.seqId)?.[0]
            : measured[2 + step].find((x) => x.seqId === s.seqId);
        expect(prev).toBeDefined();
        expect(s.tokens).toEqual([token(prev as SeqStep)]);
      }
    }
  });

  it('sends each decode step before the previous one answered where the executor takes sampled inputs', async () => {
    const shape = { batch: 2, promptTokens: 3, decodeTokens: 5 };
    const blocks = new BlockAllocator(blocksNeeded(shape, 4), 4);
    const { executor, steps } = recordingExecutor(1);
    let outstanding = 0;
    let most = 0;
    const feeding: StepExecutor = {
      ...executor,
      sampledInputs: true,
      async execute(seqs) {
        most = Math.max(most, ++outstanding);
        await new Promise((r) => setTimeout(r, 2));
        outstanding--;
        return executor.execute(seqs);
      },
    };
    await measureDecode(feeding, blocks, shape);
    expect(most).toBe(2);
    const decode = steps.slice(-5);
    expect(decode[0].every((s) => s.tokens?.length === 1 && !s.sampledInput)).toBe(true);
    for (const [i, seqs] of decode.slice(1).entries()) {
      for (const s of seqs) {
        expect(s).toMatchObject({ sampledInput: true, numTokens: 1, startPos: 4 + i });
        expect(s.tokens).toBeUndefined();
        expect(s.sample?.key.position).toBe(5 + i);
      }
    }
    expect(blocks.freeBlocks).toBe(blocks.numBlocks);
  });

  it('splits the sequences into as many concurrent groups as the executor overlaps steps', async () => {
    const shape = { batch: 4, promptTokens: 2, decodeTokens: 3 };
    const blocks = new BlockAllocator(blocksNeeded(shape, 4), 4);
    const { executor, steps } = recordingExecutor(2);
    await measureDecode(executor, blocks, shape);
    const decodeSteps = steps.slice(-6).filter((seqs) => seqs[0].numTokens === 1);
    expect(decodeSteps).toHaveLength(6);
    expect(new Set(decodeSteps.map((seqs) => seqs.map((s) => s.seqId).join(',')))).toEqual(
      new Set(['b0,b2', 'b1,b3']),
    );
  });
});
