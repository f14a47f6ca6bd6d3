// `medcluster generate`: prints a prompt's continuation to stdout as it is produced, and
// nothing else on stdout. In this process with --model, or from a cluster with --server.

import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import type { DeviceKind } from '@medcluster/kernels';
import type { InferenceClientOptions } from '@medcluster/proto';
import { GREEDY, openCheckpoint, type SamplingParams } from '@medcluster/worker';
import { TextGenerator } from '../generation/text-generation.js';
import { BlockAllocator } from '../scheduler/block-allocator.js';
import { LocalExecutor } from '../scheduler/local-executor.js';
import { Scheduler } from '../scheduler/scheduler.js';
import { loadTokenizer } from '../tokenizer/index.js';
import { deviceFlag, floatFlag, intFlag, parseFlags, requiredString, UsageError } from './args.js';

const USAGE = `usage: medcluster generate (--model DIR [--device cpu|cuda] | --server HOST:PORT) --prompt TEXT
         [--max-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed N] [--stop TEXT]
         [--kv-memory-fraction F]   (cuda: share of the memory left after the weights for the
                                     KV cache, default 0.9; cpu: one full-length sequence's blocks)

  With --server:
  --api-key-file FILE        the API key to send (its first line), or $MEDCLUSTER_API_KEY
  --tls                      connect over TLS, trusting the system's CAs
  --tls-ca FILE              connect over TLS, trusting this PEM CA (a development CA)
  --tls-server-name NAME     the name the server's certificate must carry, when it is not the
                             --server host (through a port-forward to localhost, say)`;

export async function generateCommand(argv: string[]): Promise<void> {
  const flags = parseFlags(
    argv,
    {
      model: { type: 'string' },
      server: { type: 'string' },
      device: { type: 'string', default: 'cpu' },
      prompt: { type: 'string' },
      'max-tokens': { type: 'string' },
      temperature: { type: 'string' },
      'top-k': { type: 'string' },
      'top-p': { type: 'string' },
      seed: { type: 'string' },
      stop: { type: 'string' },
      threads: { type: 'string' },
      'kv-memory-fraction': { type: 'string' },
      'api-key-file': { type: 'string' },
      tls: { type: 'boolean' },
      'tls-ca': { type: 'string' },
      'tls-server-name': { type: 'string' },
      help: { type: 'boolean' },
    },
    USAGE,
  );
  if (flags.help) {
    console.log(USAGE);
    return;
  }
  const prompt = requiredString(flags.prompt, 'prompt');
  const maxTokens = intFlag(flags['max-tokens'], 'max-tokens', 64);
  const sampling: SamplingParams = {
    ...GREEDY,
    temperature: floatFlag(flags.temperature, 'temperature', 0),
    topK: intFlag(flags['top-k'], 'top-k', 0),
    topP: floatFlag(flags['top-p'], 'top-p', 1),
    seed: intFlag(flags.seed, 'seed', 0),
  };
  const stop = flags.stop ? [flags.stop] : [];
  if (flags.model && flags.server) throw new UsageError('give either --model or --server, not both');
  const remoteOnly = (['api-key-file', 'tls', 'tls-ca', 'tls-server-name'] as const).find(
    (f) => flags[f] !== undefined,
  );
  if (remoteOnly && !flags.server) throw new UsageError(`--${remoteOnly} applies to --server`);
  if (flags.server) {
    const { generateRemote } = await import('../client/generate-remote.js');
    await generateRemote(
      flags.server,
      { prompt, maxTokens, ...sampling, stop },
      (text) => process.stdout.write(text),
      remoteConnection(flags),
    );
    process.stdout.write('\n');
    return;
  }
  const modelDir = requiredString(flags.model, 'model');
  const device = deviceFlag(flags.device);

  const checkpoint = await openCheckpoint(modelDir);
  const tokenizer = await loadTokenizer(modelDir);
  const blockSize = 16;
  const maxContext = checkpoint.config.maxPositions;
  const fraction = flags['kv-memory-fraction'];
  const executor = await LocalExecutor.create({
    checkpoint,
    device: device as DeviceKind,
    kvCache:
      device === 'cuda' || fraction !== undefined
        ? { blockSize, memoryFraction: floatFlag(fraction, 'kv-memory-fraction', 0.9) }
        : { blockSize, numBlocks: Math.ceil(maxContext / blockSize) },
    threads: flags.threads === undefined ? undefined : intFlag(flags.threads, 'threads'),
  });
  const blocks = new BlockAllocator(executor.numBlocks, blockSize);
  try {
    const scheduler = new Scheduler(executor, blocks, {
      maxBatchTokens: 512,
      maxRunning: 1,
      maxWaiting: 1,
      maxContext,
      eosTokenId: tokenizer.eosTokenId,
    });
    const generator = new TextGenerator(tokenizer, scheduler, { maxTokens });
    const result = await generator.generate({ prompt, maxTokens, sampling, stop }, (event) =>
      process.stdout.write(event.text),
    );
    process.stdout.write('\n');
    const { timing, completionTokens } = result;
    console.error(
      `generate: ${result.promptTokens} prompt tokens, ${completionTokens} generated (${result.choices[0].finishReason}); ` +
        `first token ${(timing.timeToFirstToken * 1000).toFixed(0)} ms, ` +
        `${completionTokens > 1 ? ((completionTokens - 1) / timing.decode).toFixed(1) : '-'} tokens/s decode`,
    );
  } finally {
    await executor.close();
  }
}

/** The API key, TLS and server name `generate --server` connects with. */
function remoteConnection(flags: {
  'api-key-file'?: string;
  tls?: boolean;
  'tls-ca'?: string;
  'tls-server-name'?: string;
}): Pick<InferenceClientOptions, 'credentials' | 'apiKey' | 'channelOptions'> {
  const keyFile = flags['api-key-file'];
  let apiKey = process.env.MEDCLUSTER_API_KEY || undefined;
  if (keyFile !== undefined) {
    try {
      apiKey = readFileSync(keyFile, 'utf8').split(/\r?\n/)[0].trim();
    } catch (cause) {
      throw new UsageError(
        `--api-key-file: cannot read ${keyFile} (${(cause as NodeJS.ErrnoException).code})`,
      );
    }
  }
  const caFile = flags['tls-ca'];
  let ca: Buffer | undefined;
  if (caFile !== undefined) {
    try {
      ca = readFileSync(caFile);
    } catch (cause) {
      throw new UsageError(`--tls-ca: cannot read ${caFile} (${(cause as NodeJS.ErrnoException).code})`);
    }
  }
  const serverName = flags['tls-server-name'];
  const tls = flags.tls === true || ca !== undefined;
  if (serverName !== undefined && !tls) throw new UsageError('--tls-server-name needs --tls or --tls-ca');
  return {
    ...(apiKey ? { apiKey } : {}),
    ...(tls ? { credentials: grpc.credentials.createSsl(ca ?? null) } : {}),
    ...(serverName !== undefined ? { channelOptions: { 'grpc.ssl_target_name_override': serverName } } : {}),
  };
}
