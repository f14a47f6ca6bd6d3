// `medcluster up`: a whole cluster on this machine with no NATS: a coordinator (this process)
// and tp x pp worker processes. Without --model it serves the tiny generated model.

import type { DeviceKind } from '@medcluster/kernels';
import { openCheckpoint } from '@medcluster/worker';
import { startLocalCluster } from '../cluster/local-cluster.js';
import { ensureGeneratedModel } from '../model-cache.js';
import { intFlag, parseFlags, UsageError } from './args.js';
import { KV_USAGE, kvCacheFromFlags } from './kv-flags.js';
import { serveUntilSignal } from './serve.js';

const USAGE = `usage: medcluster up [--model DIR] [--tp N] [--pp N] [--grpc-port 50051] [--host 127.0.0.1]
         [--device cpu|cuda] [--kv-blocks N | --kv-memory-fraction F] [--block-size 16] [--threads N]
         [--max-batch-tokens 512]   (tokens per step: decode rows plus prompt chunks; on GPUs 2048
                                     prefills faster, the matmuls of larger steps run more efficiently)

${KV_USAGE}`;

export async function upCommand(argv: string[]): Promise<void> {
  const flags = parseFlags(
    argv,
    {
      model: { type: 'string' },
      tp: { type: 'string', default: '1' },
      pp: { type: 'string', default: '1' },
      'grpc-port': { type: 'string', default: '50051' },
      host: { type: 'string', default: '127.0.0.1' },
      device: { type: 'string', default: 'cpu' },
      'kv-blocks': { type: 'string' },
      'kv-memory-fraction': { type: 'string' },
      'block-size': { type: 'string', default: '16' },
      'max-batch-tokens': { type: 'string', default: '512' },
      threads: { type: 'string' },
      help: { type: 'boolean' },
    },
    USAGE,
  );
  if (flags.help) {
    console.log(USAGE);
    return;
  }
  const device = flags.device;
  if (device !== 'cpu' && device !== 'cuda')
    throw new UsageError(`--device must be cpu or cuda, got ${device}`);
  const tp = intFlag(flags.tp, 'tp');
  const pp = intFlag(flags.pp, 'pp');
  const kvCache = kvCacheFromFlags(flags);
  const modelDir = flags.model ?? (await ensureGeneratedModel());
  const { config } = await openCheckpoint(modelDir);
  console.error(`medcluster up: starting ${tp * pp} worker processes (tp=${tp}, pp=${pp}) for ${modelDir}`);
  const cluster = await startLocalCluster({
    modelDir,
    config,
    tp,
    pp,
    device: device as DeviceKind,
    kvCache,
    threadsPerWorker: flags.threads === undefined ? undefined : intFlag(flags.threads, 'threads'),
    log: (line) => console.error(line),
  });
  let healthy = true;
  let stopping = false;
  for (const w of cluster.workers) {
    w.process.on('exit', (code, signal) => {
      healthy = false;
      if (stopping) return;
      console.error(
        `medcluster up: worker ${w.id} exited (${signal ?? `code ${code}`}); the cluster is degraded`,
      );
    });
  }
  await serveUntilSignal({
    modelDir,
    config,
    executor: cluster.executor,
    kvCache: cluster.kvCache,
    tp,
    pp,
    grpcAddress: `${flags.host}:${flags['grpc-port']}`,
    maxBatchTokens: intFlag(flags['max-batch-tokens'], 'max-batch-tokens'),
    workers: () =>
      cluster.workers.map((w) => ({
        id: w.id,
        address: w.address,
        device,
        stage: w.stageIndex,
        tpRank: w.tpRank,
        layerStart: w.layerStart,
        layerEnd: w.layerEnd,
        state: w.process.exitCode === null && w.process.signalCode === null ? 'ready' : 'exited',
      })),
    healthy: () => healthy,
    stopCluster: async () => {
      stopping = true;
      healthy = false;
      await cluster.stop();
    },
  });
}
