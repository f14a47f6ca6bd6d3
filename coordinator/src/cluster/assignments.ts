// Turns a placement plan into each worker's assignment: its shard, the stage's collective
// peers, and the address of the same rank in the next stage.

import type { Assignment, KvCacheSpec } from '@medcluster/proto';
import { type PlacementPlan, shardSpecFor } from '../placement/index.js';

/**
 * `kvCacheFor` gives each worker its KV cache sizing (per worker, since the default depends on
 * the worker's device).
 */
export function assignmentsFor(
  plan: PlacementPlan,
  addresses: ReadonlyMap<string, string>,
  modelDir: string,
  kvCacheFor: (workerId: string) => KvCacheSpec,
  clusterRun: string,
): Map<string, Assignment> {
  const address = (id: string) => {
    const a = addresses.get(id);
    if (!a) throw new Error(`worker ${id} has no known address`);
    return a;
  };
  const out = new Map<string, Assignment>();
  for (const stage of plan.stages) {
    const next = plan.stages[stage.index + 1];
    for (const rank of stage.ranks) {
      const { shard } = shardSpecFor(plan, rank.workerId);
      out.set(rank.workerId, {
        v: 1,
        assignmentId: `${clusterRun}-s${stage.index}-r${rank.tpRank}`,
        modelDir,
        stageIndex: stage.index,
        shard,
        kvCache: kvCacheFor(rank.workerId),
        collectiveGroup: `${clusterRun}-stage-${stage.index}`,
        peers: plan.tp > 1 ? stage.ranks.map((r) => address(r.workerId)) : [],
        downstream: next ? address(next.ranks[rank.tpRank].workerId) : undefined,
      });
    }
  }
  return out;
}

/** Addresses of the first stage's ranks, by tp rank: where the coordinator sends steps. */
export function firstStageAddresses(plan: PlacementPlan, addresses: ReadonlyMap<string, string>): string[] {
  return plan.stages[0].ranks.map((r) => addresses.get(r.workerId) as string);
}
