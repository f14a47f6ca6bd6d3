// Assigns pipeline stages (contiguous layer ranges) and tensor-parallel ranks to workers,
// balancing layers by memory. Pure: no I/O.
import type { ShardSpec, StageLayers } from '@medcluster/proto';
import type { CheckpointShape } from '@medcluster/worker';
import { PlacementError } from './placement-error.js';
import { validateTensorParallel } from './validate-tp.js';
import { embedBytesForRank, layerBytesPerRank, lmHeadBytesForRank } from './weight-bytes.js';

export interface PlacementWorker {
  id: string;
  device: 'cpu' | 'cuda';
  /** Memory the worker offers for weights and KV cache, in bytes. */
  memoryBytes: number;
}

export interface PlacementRequest {
  config: CheckpointShape;
  workers: readonly PlacementWorker[];
  tp: number;
  pp: number;
  /** Fraction of each worker's memory kept for the KV cache and activations (default 0). */
  kvCacheFraction?: number;
  /** KV cache bytes per layer for the whole stage (all KV heads); each rank holds 1/tp of it (default 0). */
  bytesPerLayerKv?: number;
}

export interface StageRank {
  workerId: string;
  tpRank: number;
}

export interface PlacedStage extends StageLayers {
  index: number;
  /** Workers of the stage, indexed by tp rank. */
  ranks: StageRank[];
  /** Weight (+ per-layer KV) bytes of the most loaded rank. */
  bytesPerRank: number;
  /** Usable bytes of the stage's smallest worker. */
  availableBytesPerRank: number;
}

export interface PlacementPlan {
  tp: number;
  pp: number;
  stages: PlacedStage[];
  /** Workers left out (the smallest ones, when there are more than tp * pp). */
  unusedWorkers: string[];
}

const GIB = 1024 ** 3;
const gib = (bytes: number) => `${(bytes / GIB).toFixed(2)} GiB`;

function validateRequest(req: PlacementRequest): void {
  const { config, workers, tp, pp } = req;
  for (const [key, value] of Object.entries({
    numLayers: config.numLayers,
    hiddenSize: config.hiddenSize,
    intermediateSize: config.intermediateSize,
    numHeads: config.numHeads,
    numKvHeads: config.numKvHeads,
    headDim: config.headDim,
    vocabRows: config.vocabRows,
    groupSize: config.quant.groupSize,
  })) {
    if (!Number.isInteger(value) || value < 1)
      throw new PlacementError(`config.${key} must be a positive integer, got ${value}`);
  }
  validateTensorParallel(config, tp);
  if (!Number.isInteger(pp) || pp < 1) throw new PlacementError(`pp must be a positive integer, got ${pp}`);
  if (pp > config.numLayers) {
    throw new PlacementError(
      `pp ${pp} exceeds the ${config.numLayers} layers: every stage needs at least one layer`,
    );
  }
  if (workers.length < tp * pp) {
    throw new PlacementError(
      `tp ${tp} x pp ${pp} needs ${tp * pp} workers, but only ${workers.length} are available`,
    );
  }
  const ids = new Set<string>();
  for (const w of workers) {
    if (ids.has(w.id)) throw new PlacementError(`worker id ${w.id} appears twice`);
    ids.add(w.id);
    if (!Number.isFinite(w.memoryBytes) || w.memoryBytes < 0) {
      throw new PlacementError(
        `worker ${w.id}: memoryBytes must be a non-negative number, got ${w.memoryBytes}`,
      );
    }
  }
  const fraction = req.kvCacheFraction ?? 0;
  if (!(fraction >= 0 && fraction < 1))
    throw new PlacementError(`kvCacheFraction must be in [0, 1), got ${fraction}`);
  const kv = req.bytesPerLayerKv ?? 0;
  if (!(kv >= 0)) throw new PlacementError(`bytesPerLayerKv must be >= 0, got ${kv}`);
}

/** Orders workers so that similar ones are adjacent: CUDA before CPU, then memory descending. */
function rankWorkers(workers: readonly PlacementWorker[]): PlacementWorker[] {
  return [...workers].sort(
    (a, b) =>
      (a.device === b.device ? 0 : a.device === 'cuda' ? -1 : 1) ||
      b.memoryBytes - a.memoryBytes ||
      (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
  );
}

/**
 * Plans tp x pp placement: the tp*pp largest workers, grouped tp at a time by similar memory;
 * stage s gets group s; layers go to stages so that the largest fraction of memory used by any
 * stage is as small as possible (first stage also holds the embedding, last the lm_head).
 */
export function planPlacement(req: PlacementRequest): PlacementPlan {
  validateRequest(req);
  const { config, tp, pp } = req;
  const usableFraction = 1 - (req.kvCacheFraction ?? 0);
  const perLayer = layerBytesPerRank(config, tp) + (req.bytesPerLayerKv ?? 0) / tp;
  const ordered = rankWorkers(req.workers);
  const used = ordered.slice(0, tp * pp);

  const groups = Array.from({ length: pp }, (_, s) => used.slice(s * tp, (s + 1) * tp));
  const capacity = groups.map((g) => Math.floor(Math.min(...g.map((w) => w.memoryBytes)) * usableFraction));
  const fixed = groups.map((_, s) => {
    let bytes = 0;
    if (s === 0) bytes += embedBytesForRank(config, tp, 0); // rank 0 holds the largest vocab shard
    if (s === pp - 1) bytes += lmHeadBytesForRank(config, tp, 0);
    return bytes;
  });

  // Greedy: each further layer goes to the stage whose memory use fraction stays lowest. With
  // identical unit items this minimizes the largest fraction.
  const layers = new Array<number>(pp).fill(1);
  const ratio = (s: number, n: number) =>
    capacity[s] > 0 ? (fixed[s] + n * perLayer) / capacity[s] : Number.POSITIVE_INFINITY;
  for (let remaining = config.numLayers - pp; remaining > 0; remaining--) {
    let best = 0;
    for (let s = 1; s < pp; s++) if (ratio(s, layers[s] + 1) < ratio(best, layers[best] + 1)) best = s;
    layers[best]++;
  }

  const stages: PlacedStage[] = [];
  let layerStart = 0;
  for (let s = 0; s < pp; s++) {
    const bytesPerRank = fixed[s] + layers[s] * perLayer;
    const stage: PlacedStage = {
      index: s,
      layerStart,
      layerEnd: layerStart + layers[s],
      embeds: s === 0,
      computesLogits: s === pp - 1,
      ranks: groups[s].map((w, tpRank) => ({ workerId: w.id, tpRank })),
      bytesPerRank,
      availableBytesPerRank: capacity[s],
    };
    if (bytesPerRank > capacity[s]) {
      const parts = [`${layers[s]} layers x ${gib(perLayer)}`];
      if (stage.embeds) parts.push('embedding');
      if (stage.computesLogits) parts.push('lm_head');
      const smallest = groups[s].reduce((a, b) => (b.memoryBytes < a.memoryBytes ? b : a));
      const totalNeeded = fixed.reduce((a, b) => a + b, 0) + config.numLayers * perLayer;
      const totalAvailable = capacity.reduce((a, b) => a + b, 0);
      throw new PlacementError(
        `stage ${s} (layers ${layerStart}..${stage.layerEnd - 1}; workers ${stage.ranks.map((r) => r.workerId).join(', ')}) ` +
          `does not fit: each rank needs ${gib(bytesPerRank)} (${parts.join(' + ')}) but worker ${smallest.id} has ` +
          `${gib(capacity[s])} usable` +
          (usableFraction < 1
            ? ` after reserving ${((1 - usableFraction) * 100).toFixed(0)}% for the KV cache`
            : '') +
          `; the whole model needs about ${gib(totalNeeded)} per tp rank column, the ${pp} stages offer ${gib(totalAvailable)}` +
          ` (add workers, raise pp or tp, or use larger devices)`,
      );
    }
    stages.push(stage);
    layerStart = stage.layerEnd;
  }
  return { tp, pp, stages, unusedWorkers: ordered.slice(tp * pp).map((w) => w.id) };
}

/** A worker's part of a plan: its stage index and the ShardSpec it must load. */
export interface WorkerShard {
  stageIndex: number;
  shard: ShardSpec;
  /** Worker ids of the stage, indexed by tp rank (the collective peers). */
  stageWorkers: string[];
}

/** The shard of workerId in plan; throws PlacementError when the plan does not use it. */
export function shardSpecFor(plan: PlacementPlan, workerId: string): WorkerShard {
  for (const stage of plan.stages) {
    const rank = stage.ranks.find((r) => r.workerId === workerId);
    if (rank !== undefined) {
      return {
        stageIndex: stage.index,
        shard: {
          layerStart: stage.layerStart,
          layerEnd: stage.layerEnd,
          tpRank: rank.tpRank,
          tpSize: plan.tp,
          embeds: stage.embeds,
          computesLogits: stage.computesLogits,
        },
        stageWorkers: stage.ranks.map((r) => r.workerId),
      };
    }
  }
  throw new PlacementError(`worker ${workerId} has no shard in this plan`);
}
