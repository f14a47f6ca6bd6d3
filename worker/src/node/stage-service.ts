// The Worker gRPC service: runs the steps that arrive on Stage streams and answers each with a
// StageResult. A non-last stage forwards its output hidden states to the next stage and relays
// that stage's result back, so results flow back up the same path the step came down.
//
// Failure scope: an error in a step answers that step with a StepError; the stream stays open.

import type * as grpc from '@grpc/grpc-js';
import { loadWorkerProto, type workerV1 } from '@medcluster/proto';
import type { SeqStep } from '../engine/types.js';
import { decodeActivation, encodeActivation } from './activation.js';
import type { WorkerNode } from './worker-node.js';

function toSeqSteps(step: workerV1.StepDescriptor__Output, withTokens: boolean): SeqStep[] {
  return step.seqs.map((s) => ({
    seqId: s.seqId,
    startPos: s.startPos,
    numTokens: s.numTokens,
    tokens: withTokens ? s.tokenIds : undefined,
    blockTable: s.blockTable,
    logitRows: s.logitRows,
  }));
}

function stepError(stepId: number, err: unknown): workerV1.StageResult {
  const message = err instanceof Error ? err.message : String(err);
  const code = err instanceof RangeError ? 'INVALID_STEP' : 'INTERNAL';
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
  const started = performance.now();
  const hidden = message.activation ? decodeActivation(message.activation) : undefined;
  const seqs = toSeqSteps(step, spec.embeds);
  const result = await node.runStep(seqs, hidden);
  const computeMs = performance.now() - started;
  if (spec.computesLogits) {
    // Every rank of the last stage holds the gathered logits; rank 0 alone sends them.
    const vocab = node.vocabRows as number;
    const logits = result.logits as Float32Array;
    const outputs: workerV1.SeqOutput[] = [];
    if (spec.tpRank === 0) {
      let row = 0;
      for (const s of seqs) {
        if (s.logitRows === 0) continue;
        const bytes = s.logitRows * vocab * 4;
        outputs.push({
          seqId: s.seqId,
          logits: Buffer.from(logits.buffer, logits.byteOffset + row * vocab * 4, bytes),
        });
        row += s.logitRows;
      }
    }
    return { stepId: step.stepId, output: { seqs: outputs }, computeMs };
  }
  const downstream = node.downstream;
  if (!downstream) throw new Error(`worker ${node.options.workerId} has no link to the next stage`);
  const rows = seqs.reduce((n, s) => n + s.numTokens, 0);
  const relayed = await downstream.send({
    step,
    activation: encodeActivation(result.hidden as Float32Array, rows),
  });
  return { ...relayed, computeMs: relayed.computeMs + computeMs };
}

export function workerServiceHandlers(node: WorkerNode): grpc.UntypedServiceImplementation {
  return {
    Stage(call: grpc.ServerDuplexStream<workerV1.StageMessage__Output, workerV1.StageResult>) {
      call.on('data', (message: workerV1.StageMessage__Output) => {
        const stepId = Number(message.step?.stepId ?? 0);
        runStage(node, message)
          .then((result) => call.write(result))
          .catch((err) => call.write(stepError(stepId, err)));
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
      });
    },
  };
}

export function addWorkerService(server: grpc.Server, node: WorkerNode): void {
  const { medcluster } = loadWorkerProto();
  server.addService(medcluster.worker.v1.Worker.service, workerServiceHandlers(node));
}
