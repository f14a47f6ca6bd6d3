// Runs the whole model in this process on one device: a single shard holding every layer.
// Used by `medcluster generate --model` and by tests as the one-worker reference.

import { createDevice, type Device, type DeviceKind } from '@medcluster/kernels';
import type { KvCacheSpec } from '@medcluster/proto';
import { type SeqStep, ShardRunner, type StepOutput, type WeightSource } from '@medcluster/worker';
import type { StepExecutor } from './executor.js';

export type LocalExecutorOptions = WeightSource & {
  device: DeviceKind;
  kvCache: KvCacheSpec;
  threads?: number;
  /** Replay decode steps as CUDA graphs where the device can (default true). */
  decodeGraphs?: boolean;
};

export class LocalExecutor implements StepExecutor {
  readonly maxInFlight = 1;
  readonly sampledInputs = true;
  readonly vocabRows: number;
  /** KV cache blocks the shard allocated (sized from memory when asked to). */
  readonly numBlocks: number;

  private constructor(
    private readonly device: Device,
    private readonly runner: ShardRunner,
  ) {
    this.vocabRows = runner.config.vocabRows;
    this.numBlocks = runner.numBlocks;
  }

  static async create(options: LocalExecutorOptions): Promise<LocalExecutor> {
    const device = createDevice({ kind: options.device, threads: options.threads });
    try {
      const config = 'checkpoint' in options ? options.checkpoint.config : options.synthetic.config;
      const runner = await ShardRunner.load({
        ...options,
        device,
        spec: {
          layerStart: 0,
          layerEnd: config.numLayers,
          tpRank: 0,
          tpSize: 1,
          embeds: true,
          computesLogits: true,
        },
      });
      return new LocalExecutor(device, runner);
    } catch (err) {
      await device.close();
      throw err;
    }
  }

  async execute(seqs: SeqStep[]): Promise<StepOutput> {
    return (await this.runner.step(seqs)).output as StepOutput;
  }

  async close(): Promise<void> {
    this.runner.dispose();
    await this.device.close();
  }
}
