// Small helpers over node:util parseArgs so every command validates flags the same way.

import { parseArgs } from 'node:util';

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

/** Parses `argv` strictly against `options`; unknown flags become a UsageError that shows `usage`. */
export function parseFlags<T extends OptionSpec>(argv: string[], options: T, usage: string): Flags<T> {
  try {
    return parseArgs({ args: argv, options, strict: true, allowPositionals: false }).values as Flags<T>;
  } catch (err) {
    throw new UsageError(`${(err as Error).message}\n\n${usage}`);
  }
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
