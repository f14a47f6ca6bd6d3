// Serves requests through a Scheduler on one executor, with follow-on steps (each decoding
// sequence's next step fed the sampled token on the device) or with every token fed from the
// host: the tests that compare the two call this once for each.

import {
  BlockAllocator,
  type GenerationRequest,
  Scheduler,
  type SchedulerLimits,
  type StepExecutor,
} from '@medcluster/coordinator';

export interface ServedRun {
  /** Per request, per choice: the finish reason, then the token ids, joined. */
  choices: string[][];
  /** Rows the executor was sent as sampled inputs. */
  sampledInputs: number;
}

export async function serveThrough(
  executor: StepExecutor,
  sampledInputs: boolean,
  requests: readonly GenerationRequest[],
  limits: SchedulerLimits,
  cache: { numBlocks: number; blockSize: number },
): Promise<ServedRun> {
  let fed = 0;
  const through: StepExecutor = {
    vocabRows: executor.vocabRows,
    maxInFlight: 1,
    sampledInputs,
    execute: (seqs) => {
      fed += seqs.filter((s) => s.sampledInput).length;
      return executor.execute(seqs);
    },
    close: async () => {},
  };
  const scheduler = new Scheduler(through, new BlockAllocator(cache.numBlocks, cache.blockSize), limits);
  const results = await Promise.all(requests.map((r) => scheduler.submit(r)));
  return {
    choices: results.map((r) => r.choices.map((c) => [c.finishReason, ...c.tokens.map((t) => t.id)].join())),
    sampledInputs: fed,
  };
}
