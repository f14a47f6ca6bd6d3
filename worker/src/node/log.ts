// Structured logs: one JSON object per line on stderr (for log collectors), or the same facts as
// readable text where a person watches a terminal. Lines about a request carry its requestId,
// which travels with each step from the coordinator through every stage and rank, so one
// request's lines can be followed across processes. Fields never hold secrets or prompt text.

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LogFormat = 'json' | 'text';

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export type LogFields = Record<string, string | number | boolean | undefined>;

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  /** Whether lines of `level` are written (to skip building costly fields). */
  enabled(level: LogLevel): boolean;
  /** A logger whose every line also carries `fields`. */
  child(fields: LogFields): Logger;
}

export interface LoggerOptions {
  level?: LogLevel;
  /** Default: text on a terminal, json otherwise. */
  format?: LogFormat;
  /** Where lines go (default: stderr). */
  write?: (line: string) => void;
}

export function isLogLevel(value: string): value is LogLevel {
  return Object.hasOwn(RANK, value);
}

export function isLogFormat(value: string): value is LogFormat {
  return value === 'json' || value === 'text';
}

/** `medcluster[ component][ worker]: msg (other fields)`, the level when it is not info. */
function textLine(level: LogLevel, msg: string, fields: LogFields): string {
  const { component, worker, ...rest } = fields;
  const extra = Object.entries(rest)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${typeof v === 'string' && /\s/.test(v) ? JSON.stringify(v) : v}`)
    .join(' ');
  const who = ['medcluster', component, worker].filter((p) => p !== undefined).join(' ');
  return `${level === 'info' ? '' : `${level.toUpperCase()} `}${who}: ${msg}${extra ? ` (${extra})` : ''}`;
}

export function createLogger(base: LogFields = {}, options: LoggerOptions = {}): Logger {
  const threshold = RANK[options.level ?? 'info'];
  const format = options.format ?? (process.stderr.isTTY ? 'text' : 'json');
  const write = options.write ?? ((line: string) => process.stderr.write(`${line}\n`));
  const make = (fields: LogFields): Logger => {
    const emit = (level: LogLevel, msg: string, extra: LogFields = {}) => {
      if (RANK[level] < threshold) return;
      const all = { ...fields, ...extra };
      write(
        format === 'json'
          ? JSON.stringify({ time: new Date().toISOString(), level, ...all, msg })
          : textLine(level, msg, all),
      );
    };
    return {
      debug: (msg, extra) => emit('debug', msg, extra),
      info: (msg, extra) => emit('info', msg, extra),
      warn: (msg, extra) => emit('warn', msg, extra),
      error: (msg, extra) => emit('error', msg, extra),
      enabled: (level) => RANK[level] >= threshold,
      child: (more) => make({ ...fields, ...more }),
    };
  };
  return make(base);
}
