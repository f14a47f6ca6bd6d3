// Small helpers over node:util parseArgs so every command validates flags the same way.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type { DeviceKind } from '@medcluster/kernels';

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export type OptionSpec = Record<
  string,
  { type: 'string' | 'boolean'; short?: string; default?: string | boolean }
>;

/** Parsed flag values: strings for string flags, booleans for boolean flags. */
export type Flags<T extends OptionSpec> = {
  [K in keyof T]?: T[K]['type'] extends 'boolean' ? boolean : string;
};

/** Where the service commands also read their settings (see CONFIG_USAGE). */
export interface SettingSources {
  env: NodeJS.ProcessEnv;
}

export const CONFIG_USAGE = `Settings: every flag can also come from the environment as MEDCLUSTER_<FLAG> (upper case,
dashes as underscores: MEDCLUSTER_MAX_BATCH_TOKENS=2048) or from a JSON file of flag names and
values (--config FILE, or MEDCLUSTER_CONFIG): {"tp": 2, "max-batch-tokens": 2048}. The command line
wins over the environment, the environment over the file; each value is checked like the flag.`;

/** The environment variable that sets `--flag`. */
export function envNameOf(flag: string): string {
  return `MEDCLUSTER_${flag.toUpperCase().replaceAll('-', '_')}`;
}

function settingValue(value: unknown, type: 'string' | 'boolean', where: string): string | boolean {
  if (type === 'boolean') {
    if (typeof value === 'boolean') return value;
    if (value === 'true' || value === '1') return true;
    if (value === 'false' || value === '0') return false;
    throw new UsageError(`${where} must be true or false, got ${JSON.stringify(value)}`);
  }
  if (typeof value === 'string') return value;
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  throw new UsageError(`${where} must be a string or a number, got ${JSON.stringify(value)}`);
}

function readConfigFile(path: string, options: OptionSpec): Record<string, unknown> {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new UsageError(`--config ${path}: ${(err as Error).message}`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json))
    throw new UsageError(`--config ${path}: must be a JSON object of flag names and values`);
  for (const key of Object.keys(json)) {
    if (!Object.hasOwn(options, key) || key === 'help' || key === 'config') {
      throw new UsageError(`--config ${path}: unknown setting "${key}" (the keys are this command's flags)`);
    }
  }
  return json as Record<string, unknown>;
}

/**
 * Parses `argv` strictly against `options`; unknown flags become a UsageError that shows `usage`.
 * With `sources`, a flag the command line leaves out is read from the environment, then from
 * the --config file (CONFIG_USAGE), before its default applies.
 */
export function parseFlags<T extends OptionSpec>(
  argv: string[],
  options: T,
  usage: string,
  sources?: SettingSources,
): Flags<T> {
  const spec: OptionSpec = sources ? { ...options, config: { type: 'string' } } : options;
  // Parsed without defaults, to know what the command line itself gave.
  const bare = Object.fromEntries(
    Object.entries(spec).map(([k, v]) => [k, v.short ? { type: v.type, short: v.short } : { type: v.type }]),
  );
  let given: Record<string, string | boolean | undefined>;
  try {
    given = parseArgs({ args: argv, options: bare, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\n\n${usage}`);
  }
  const configPath = sources
    ? ((given.config as string | undefined) ?? sources.env.MEDCLUSTER_CONFIG)
    : undefined;
  const file = configPath ? readConfigFile(configPath, options) : {};
  const out: Record<string, string | boolean | undefined> = {};
  for (const [key, o] of Object.entries(options)) {
    const env = sources?.env[envNameOf(key)];
    if (given[key] !== undefined) out[key] = given[key];
    else if (sources && key !== 'help' && env !== undefined)
      out[key] = settingValue(env, o.type, envNameOf(key));
    else if (Object.hasOwn(file, key))
      out[key] = settingValue(file[key], o.type, `--config ${configPath}: ${key}`);
    else out[key] = o.default;
  }
  return out as Flags<T>;
}

/** --device: the backends a process can run on. */
export function deviceFlag(value: string | boolean | undefined): DeviceKind {
  if (value !== 'cpu' && value !== 'cuda') throw new UsageError(`--device must be cpu or cuda, got ${value}`);
  return value;
}

export function intFlag(value: string | boolean | undefined, name: string, fallback?: number): number {
  if (value === undefined) {
    if (fallback === undefined) throw new UsageError(`--${name} is required`);
    return fallback;
  }
  const n = Number(value);
  if (typeof value !== 'string' || !Number.isInteger(n))
    throw new UsageError(`--${name} must be an integer, got ${value}`);
  return n;
}

export function floatFlag(value: string | boolean | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (typeof value !== 'string' || !Number.isFinite(n))
    throw new UsageError(`--${name} must be a number, got ${value}`);
  return n;
}

export function requiredString(value: string | boolean | undefined, name: string): string {
  if (typeof value !== 'string' || value === '') throw new UsageError(`--${name} is required`);
  return value;
}
