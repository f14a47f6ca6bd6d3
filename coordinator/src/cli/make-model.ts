// `medcluster make-model`: writes a deterministic checkpoint in the Meditron-70B-AWQ layout.

import { makeModel } from '@medcluster/worker';
import { intFlag, parseFlags, requiredString, UsageError } from './args.js';

const USAGE = `usage: medcluster make-model --out DIR [--preset tiny|llama-2-70b] [--seed N] [--layers N]
         [--hidden N] [--heads N] [--kv-heads N] [--intermediate N] [--vocab-rows N]`;

export async function makeModelCommand(argv: string[]): Promise<void> {
  const flags = parseFlags(
    argv,
    {
      out: { type: 'string' },
      preset: { type: 'string', default: 'tiny' },
      seed: { type: 'string' },
      layers: { type: 'string' },
      hidden: { type: 'string' },
      heads: { type: 'string' },
      'kv-heads': { type: 'string' },
      intermediate: { type: 'string' },
      'vocab-rows': { type: 'string' },
      help: { type: 'boolean' },
    },
    USAGE,
  );
  if (flags.help) {
    console.log(USAGE);
    return;
  }
  const preset = flags.preset;
  if (preset !== 'tiny' && preset !== 'llama-2-70b')
    throw new UsageError(`--preset must be tiny or llama-2-70b, got ${preset}`);
  const optional = (name: string) =>
    flags[name as keyof typeof flags] === undefined
      ? undefined
      : intFlag(flags[name as keyof typeof flags], name);
  const out = requiredString(flags.out, 'out');
  const started = Date.now();
  let lastReport = 0;
  await makeModel({
    out,
    preset,
    seed: intFlag(flags.seed, 'seed', 0),
    layers: optional('layers'),
    hidden: optional('hidden'),
    heads: optional('heads'),
    kvHeads: optional('kv-heads'),
    intermediate: optional('intermediate'),
    vocabRows: optional('vocab-rows'),
    onProgress: ({ bytesWritten: written, totalBytes: total }) => {
      const now = Date.now();
      if (now - lastReport < 2000 && written < total) return;
      lastReport = now;
      const gb = (n: number) => (n / 1e9).toFixed(2);
      process.stderr.write(`make-model: ${gb(written)} / ${gb(total)} GB\n`);
    },
  });
  console.error(`make-model: wrote ${out} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}
