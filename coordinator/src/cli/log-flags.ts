// --log-level and --log-format, shared by the long-running commands (up, coordinator, worker).

import { createLogger, isLogFormat, isLogLevel, type LogFields, type Logger } from '@medcluster/worker';
import { UsageError } from './args.js';

export const LOG_FLAGS = {
  'log-level': { type: 'string', default: 'info' },
  'log-format': { type: 'string', default: 'text' },
} as const;

export const LOG_USAGE = `Logs (stderr):
  --log-level info              debug (one line per sequence per step on every worker), info, warn, error
  --log-format text             text for people, json for collectors: one object per line, with the
                                requestId on every line about a request, across every stage and rank`;

export interface LogSettings {
  level: 'debug' | 'info' | 'warn' | 'error';
  format: 'json' | 'text';
}

export function logSettingsFromFlags(flags: { 'log-level'?: string; 'log-format'?: string }): LogSettings {
  const level = flags['log-level'] ?? 'info';
  const format = flags['log-format'] ?? 'text';
  if (!isLogLevel(level))
    throw new UsageError(`--log-level must be debug, info, warn or error, got ${level}`);
  if (!isLogFormat(format)) throw new UsageError(`--log-format must be text or json, got ${format}`);
  return { level, format };
}

export function loggerFor(settings: LogSettings, base: LogFields): Logger {
  return createLogger(base, settings);
}

/** The same flags for a child process. */
export function logArgs(settings: LogSettings): string[] {
  return ['--log-level', settings.level, '--log-format', settings.format];
}
