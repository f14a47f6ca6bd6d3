// The Worker gRPC service: runs the steps that arrive on Stage streams and answers each with a
// StageResult. A non-last stage forwards its output hidden states to the next stage and relays
// that stage's result back, so results flow back up the same path the step came down.
//
// Failure scope: an error in a step answers that step with a StepError; the stream stays open.
// Regroup re-forms the stage's collective group after a peer was lost (WorkerNode.regroup).

import * as grpc from '@grpc/grpc-js';
import { loadWorkerProto, type workerV1 } from '@medcluster/proto';
import { CollectiveError } from '../collective/collective-error.js';
import { returnsLogits, type SeqStep, type StageInput, type StepOutput } from '../engine/types.js';
import { decodeActivation, encodeActivation } from './activation.js';
import type { LentBuffer } from './hand-off.js';
import { StageLinkError } from './stage-link.js';
import { decodeSeqStep, encodeSampled } from './step-codec.js';
import { type CollectiveOpener, type WorkerNode, WorkerStateError } from './worker-node.js';

/** Error codes of a StepError. STAGE_UNREACHABLE: a peer of the pipeline (the next stage, or a
 * tensor-parallel rank) is gone, so the step's KV state is lost beyond this worker too.
 * STALE_STEP: the step names another collective group for this stage than the one this rank is
 * in (it was sent before the stage re-formed, or the coordinator has not seen the new group). */
export const STEP_ERROR = {
  invalid: 'INVALID_STEP',
  unreachable: 'STAGE_UNREACHABLE',
  stale: 'STALE_STEP',
  internal: 'INTERNAL',
} as const;

/** A step for another collective group than the one this rank is in. */
class StaleStepError extends Error {
  override name = 'StaleStepError';
}

/** `lost`: the worker's device is gone, so the pipeline is broken like a dead worker's. */
function stepError(stepId: number, err: unknown, lost: boolean): workerV1.StageResult {
  const message = err instanceof Error ? err.message : String(err);
  const code = lost
    ? STEP_ERROR.unreachable
    : err instanceof RangeError
      ? STEP_ERROR.invalid
      : err instanceof StaleStepError
        ? STEP_ERROR.stale
        : err instanceof StageLinkError || err instanceof CollectiveError
          ? STEP_ERROR.unreachable
          : STEP_ERROR.internal;
  return { stepId, error: { code, message, seqIds: [] } };
}

async function runStage(
  node: WorkerNode,
  message: workerV1.StageMessage__Output,
): Promise<workerV1.StageResult> {
  const step = message.step;
  if (!step) throw new RangeError('a StageMessage needs a step descriptor');
  const spec = node.spec;
  if (!spec) throw new Error(`worker ${node.options.workerId} has no shard loaded`);
  const stage = node.assignment?.stageIndex ?? 0;
  const expected = step.stageGroups[stage];
  if (spec.tpSize > 1 && expected !== undefined && expected !== node.collectiveGroup) {
    throw new StaleStepError(
      `step ${step.stepId} is for group ${expected} of stage ${stage}; this rank is in ${node.collectiveGroup}`,
    );
  }
  const started = performance.now();
  if (message.activation) node.metrics?.activation('received', message.activation.data.length);
  const seqs = step.seqs.map((s) => decodeSeqStep(s, spec.embeds));
  // Nothing is awaited before the step is queued (node.runStep), so steps run in arrival order;
  // the queued step awaits its inputs. Handed off on the device, the step writes its hidden
  // states into a buffer lent to it until the next stage's result is back.
  const hidden = settled(stageInput(node, message));
  const rows = seqs.reduce((n, s) => n + s.numTokens, 0);
  const lent = node.outbox && !spec.computesLogits ? settled(node.outbox.lend(rows)) : undefined;
  try {
    return await runAndHandOn(node, step, seqs, hidden, lent, started);
  } finally {
    (await lent?.catch(() => undefined))?.release();
  }
}

/** A promise awaited later, by the queued step: marked handled now (its rejection fails that step). */
function settled<T>(p: Promise<T>): Promise<T> {
  p.catch(() => undefined);
  return p;
}

/** The previous stage's hidden states: bytes from the stream, or its shared buffer mapped. */
async function stageInput(
  node: WorkerNode,
  message: workerV1.StageMessage__Output,
): Promise<StageInput | undefined> {
  if (message.activation) return decodeActivation(message.activation);
  if (!message.sharedActivation) return undefined;
  if (!node.inbox) {
    throw new RangeError(
      `worker ${node.options.workerId} (${node.options.device}) cannot map another process's device memory`,
    );
  }
  return node.inbox.open(message.sharedActivation);
}

async function runAndHandOn(
  node: WorkerNode,
  step: workerV1.StepDescriptor__Output,
  seqs: SeqStep[],
  hidden: Promise<StageInput | undefined>,
  lent: Promise<LentBuffer> | undefined,
  started: number,
): Promise<workerV1.StageResult> {
  const spec = node.spec as NonNullable<WorkerNode['spec']>;
  const log = node.options.log;
  let result: Awaited<ReturnType<WorkerNode['runStep']>>;
  try {
    result = await node.runStep(
      seqs,
      hidden,
      lent?.then((b) => b.tensor),
    );
  } catch (err) {
    // One line per request: a line never names two requests.
    for (const s of seqs) {
      log?.warn('step failed', {
        stepId: Number(step.stepId),
        requestId: s.requestId,
        seqId: s.seqId,
        stage: node.assignment?.stageIndex,
        rank: spec.tpRank,
        error: err instanceof Error ? err.message : String(err),
      });
    }
    throw err;
  }
  const computeMs = performance.now() - started;
  if (log?.enabled('debug')) {
    for (const s of seqs) {
      log.debug('step', {
        stepId: Number(step.stepId),
        requestId: s.requestId,
        seqId: s.seqId,
        stage: node.assignment?.stageIndex,
        rank: spec.tpRank,
        startPos: s.startPos,
        tokens: s.numTokens,
        ms: Number(computeMs.toFixed(3)),
      });
    }
  }
  if (spec.computesLogits) {
    // Every rank of the last stage holds the gathered logits and draws the same tokens; rank 0
    // alone answers, with tokens where the step asked for them and logit rows only where it
    // needs the rows.
    if (spec.tpRank !== 0) return { stepId: step.stepId, output: { seqs: [] }, computeMs };
    const vocab = node.vocabRows as number;
    const { logits, sampled } = result.output as StepOutput;
    const outputs: workerV1.SeqOutput[] = [];
    let row = 0;
    let next = 0;
    for (const s of seqs) {
      if (s.logitRows === 0) continue;
      const out: workerV1.SeqOutput = { seqId: s.seqId };
      if (returnsLogits(s)) {
        out.logits = Buffer.from(logits.buffer, logits.byteOffset + row * vocab * 4, s.logitRows * vocab * 4);
        row += s.logitRows;
      }
      if (s.sample) out.sampled = encodeSampled(sampled[next++]);
      outputs.push(out);
    }
    return { stepId: step.stepId, output: { seqs: outputs }, computeMs };
  }
  const downstream = node.downstream;
  if (!downstream) throw new Error(`worker ${node.options.workerId} has no link to the next stage`);
  const rows = seqs.reduce((n, s) => n + s.numTokens, 0);
  let forward: workerV1.StageMessage;
  if (lent) forward = { step, sharedActivation: (await lent).describe(rows) };
  else {
    const activation = encodeActivation(result.hidden as Float32Array, rows);
    const bytes = (activation.data as Buffer).length;
    node.metrics?.activation('sent', bytes);
    node.activationGrpcBytes += bytes;
    forward = { step, activation };
  }
  const sent = performance.now();
  const relayed = await downstream.send(forward, node.assignment?.deadlines?.stepMs);
  // The hand-off's own cost: the round trip less what the stages downstream computed.
  node.metrics?.transfer((performance.now() - sent - relayed.computeMs) / 1000);
  return { ...relayed, computeMs: relayed.computeMs + computeMs };
}

/** `openCollective` forms a new group for Regroup (absent: Regroup is refused). */
export function workerServiceHandlers(
  node: WorkerNode,
  openCollective?: CollectiveOpener,
): grpc.UntypedServiceImplementation {
  return {
    Regroup(
      call: grpc.ServerUnaryCall<workerV1.RegroupRequest__Output, workerV1.RegroupReply>,
      callback: grpc.sendUnaryData<workerV1.RegroupReply>,
    ) {
      const { assignmentId, group, peers, timeoutMs } = call.request;
      if (!openCollective) {
        callback({ code: grpc.status.UNIMPLEMENTED, details: 'this worker cannot re-form its group' });
        return;
      }
      if (group === '' || !(timeoutMs > 0)) {
        callback({
          code: grpc.status.INVALID_ARGUMENT,
          details: 'Regroup needs a group name and a timeout_ms above 0',
        });
        return;
      }
      node
        .regroup({ assignmentId, group, peers, timeoutMs }, openCollective)
        .then((collective) => callback(null, { group, collectiveTransport: collective.transport }))
        .catch((err: Error) =>
          callback({
            code:
              err instanceof WorkerStateError
                ? grpc.status.FAILED_PRECONDITION
                : err instanceof CollectiveError
                  ? grpc.status.UNAVAILABLE
                  : grpc.status.INTERNAL,
            details: err.message,
          }),
        );
    },
    Stage(call: grpc.ServerDuplexStream<workerV1.StageMessage__Output, workerV1.StageResult>) {
      call.on('data', (message: workerV1.StageMessage__Output) => {
        const stepId = Number(message.step?.stepId ?? 0);
        runStage(node, message)
          .then((result) => call.write(result))
          .catch((err) => call.write(stepError(stepId, err, node.deviceLostReason !== undefined)));
      });
      call.on('end', () => call.end());
      call.on('error', () => undefined); // the peer went away; its pending steps are its concern
    },
    GetStatus(
      _call: grpc.ServerUnaryCall<workerV1.GetStatusRequest__Output, workerV1.WorkerStatus>,
      callback: grpc.sendUnaryData<workerV1.WorkerStatus>,
    ) {
      const a = node.assignment;
      callback(null, {
        workerId: node.options.workerId,
        state:
          `WORKER_STATE_${node.state === 'leaving' ? 'DRAINING' : node.state.toUpperCase()}` as workerV1.WorkerState,
        shard: a?.shard,
        // The blocks allocated: with a memory share that count is known only once loaded.
        kvCache: a && {
          numBlocks: node.kvBlocks ?? ('numBlocks' in a.kvCache ? a.kvCache.numBlocks : 0),
          blockSize: a.kvCache.blockSize,
        },
        stepsCompleted: node.stepsCompleted,
        error: node.error ?? '',
        collectiveTransport: node.collectiveTransport ?? '',
        collectiveGrpcBytes: node.collectiveGrpcBytes,
        graphReplays: node.graphReplays,
        assignmentId: a?.assignmentId ?? '',
        collectiveGroup: node.collectiveGroup ?? '',
        hostProcess: node.hostProcess,
        deviceKind: node.options.device,
        handOff: node.handOff ?? '',
        activationGrpcBytes: node.activationGrpcBytes,
      });
    },
  };
}

export function addWorkerService(
  server: grpc.Server,
  node: WorkerNode,
  openCollective?: CollectiveOpener,
): void {
  const { medcluster } = loadWorkerProto();
  server.addService(medcluster.worker.v1.Worker.service, workerServiceHandlers(node, openCollective));
}
