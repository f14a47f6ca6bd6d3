// `medcluster <command>`: one entry point for every process the cluster runs.

import { UsageError } from './args.js';

type Command = (argv: string[]) => Promise<void>;

const COMMANDS: Record<string, { summary: string; load: () => Promise<Command> }> = {
  'make-model': {
    summary: 'write a deterministic AWQ Llama checkpoint (tiny or 70B shapes)',
    load: async () => (await import('./make-model.js')).makeModelCommand,
  },
  generate: {
    summary: 'generate text, in this process (--model) or from a running cluster (--server)',
    load: async () => (await import('./generate.js')).generateCommand,
  },
  up: {
    summary: 'run a whole cluster on this machine (no NATS): coordinator + tp x pp workers',
    load: async () => (await import('./up.js')).upCommand,
  },
  coordinator: {
    summary: 'cluster mode: wait for workers over NATS, assign shards, serve the public API',
    load: async () => (await import('./coordinator.js')).coordinatorCommand,
  },
  worker: {
    summary: 'one worker process for one device (cluster mode with --nats)',
    load: async () => (await import('./worker.js')).workerCommand,
  },
  bench: {
    summary:
      'benchmarks: `bench kernels`, `bench decode`, `bench cluster`, `bench serve` (load on an HTTP server)',
    load: async () => (await import('./bench.js')).benchCommand,
  },
};

const USAGE = `usage: medcluster <command> [flags]

commands:
${Object.entries(COMMANDS)
  .map(([name, c]) => `  ${name.padEnd(12)} ${c.summary}`)
  .join('\n')}

Run \`medcluster <command> --help\` for a command's flags.`;

export async function main(argv: string[]): Promise<void> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(USAGE);
    return;
  }
  const command = COMMANDS[name];
  if (!command) {
    console.error(`medcluster: unknown command '${name}'\n\n${USAGE}`);
    process.exitCode = 2;
    return;
  }
  try {
    await (await command.load())(rest);
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`medcluster ${name}: ${err.message}`);
      process.exitCode = 2;
      return;
    }
    console.error(`medcluster ${name}: ${err instanceof Error ? err.message : String(err)}`);
    if (process.env.MEDCLUSTER_DEBUG) console.error(err);
    process.exitCode = 1;
  }
}
