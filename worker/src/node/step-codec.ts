// The step descriptor's sequences and the last stage's outputs, as the internal API carries them
// (medcluster.worker.v1), and back. One home for the mapping: the coordinator's executor encodes
// what the stages decode, and the stages encode what it decodes.

import type { workerV1 } from '@medcluster/proto';
import type { SampleSpec, SeqStep } from '../engine/types.js';
import type { SampledToken } from '../sampling/sampler.js';

export function encodeSeqStep(s: SeqStep): workerV1.SeqStep {
  return {
    seqId: s.seqId,
    startPos: s.startPos,
    numTokens: s.numTokens,
    tokenIds: s.tokens ?? [],
    blockTable: s.blockTable,
    logitRows: s.logitRows,
    requestId: s.requestId ?? '',
    sample: s.sample ? encodeSampleSpec(s.sample) : null,
    sampledInput: s.sampledInput === true,
  };
}

/** `withTokens`: only the first stage reads the token ids. */
export function decodeSeqStep(s: workerV1.SeqStep__Output, withTokens: boolean): SeqStep {
  return {
    seqId: s.seqId,
    startPos: s.startPos,
    numTokens: s.numTokens,
    ...(s.sampledInput ? { sampledInput: true } : { tokens: withTokens ? s.tokenIds : undefined }),
    blockTable: s.blockTable,
    logitRows: s.logitRows,
    ...(s.requestId ? { requestId: s.requestId } : {}),
    ...(s.sample ? { sample: decodeSampleSpec(s.sample) } : {}),
  };
}

function encodeSampleSpec({ params: p, key, generated }: SampleSpec): workerV1.SampleSpec {
  return {
    temperature: p.temperature,
    topK: p.topK,
    topP: p.topP,
    repetitionPenalty: p.repetitionPenalty,
    presencePenalty: p.presencePenalty,
    frequencyPenalty: p.frequencyPenalty,
    stopTokenIds: [...p.stopTokenIds],
    minTokens: p.minTokens,
    seed: key.seed,
    logprobs: p.logprobs ?? -1,
    choice: key.choice,
    position: key.position,
    generatedCount: generated.count,
    generatedIds: [...generated.ids],
  };
}

function decodeSampleSpec(m: workerV1.SampleSpec__Output): SampleSpec {
  return {
    params: {
      temperature: m.temperature,
      topK: m.topK,
      topP: m.topP,
      repetitionPenalty: m.repetitionPenalty,
      presencePenalty: m.presencePenalty,
      frequencyPenalty: m.frequencyPenalty,
      stopTokenIds: m.stopTokenIds,
      minTokens: m.minTokens,
      seed: m.seed,
      ...(m.logprobs >= 0 ? { logprobs: m.logprobs } : {}),
    },
    key: { seed: m.seed, choice: m.choice, position: m.position },
    generated: { count: m.generatedCount, ids: m.generatedIds },
  };
}

export function encodeSampled(t: SampledToken): workerV1.SampledToken {
  return {
    tokenId: t.id,
    logprobs:
      t.logprob === undefined
        ? null
        : {
            logprob: t.logprob,
            topIds: (t.topLogprobs ?? []).map((x) => x.id),
            topLogprobs: (t.topLogprobs ?? []).map((x) => x.logprob),
          },
  };
}

export function decodeSampled(m: workerV1.SampledToken__Output): SampledToken {
  if (!m.logprobs) return { id: m.tokenId };
  const { logprob, topIds, topLogprobs } = m.logprobs;
  return { id: m.tokenId, logprob, topLogprobs: topIds.map((id, i) => ({ id, logprob: topLogprobs[i] })) };
}
