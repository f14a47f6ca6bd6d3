// Reads the fields of a JSON request body with one rule for every API: an absent or null field
// takes its default, a present one must have the documented type and range, and any other
// value is refused with a FieldError that names the field (its full path, as the client spelled
// it) and shows what was sent. Unknown fields are never looked at, so they are ignored.

import { RequestError } from '../scheduler/errors.js';

/** An invalid field of a request; `param` is its path in the body (`messages[2].content`). */
export class FieldError extends RequestError {
  constructor(
    readonly param: string,
    message: string,
  ) {
    super(message);
    this.name = 'FieldError';
  }
}

type JsonObject = Record<string, unknown>;

/** A sent value as the error message shows it: JSON, cut short. */
export function shown(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 40 ? `${text.slice(0, 37)}...` : text;
}

function kindOf(value: unknown): string {
  if (Array.isArray(value)) return 'an array';
  if (value === null) return 'null';
  return typeof value === 'object' ? 'an object' : shown(value);
}

export interface NumberRange {
  min?: number;
  max?: number;
  /** min itself is not allowed. */
  minExclusive?: boolean;
  /** max itself is not allowed. */
  maxExclusive?: boolean;
}

function rangeText(r: NumberRange): string {
  const { min, max } = r;
  if (min !== undefined && max !== undefined)
    return `in ${r.minExclusive ? '(' : '['}${min}, ${max}${r.maxExclusive ? ')' : ']'}`;
  if (min !== undefined) return `${r.minExclusive ? '>' : '>='} ${min}`;
  if (max !== undefined) return `${r.maxExclusive ? '<' : '<='} ${max}`;
  return '';
}

function inRange(v: number, r: NumberRange): boolean {
  if (r.min !== undefined && (r.minExclusive ? v <= r.min : v < r.min)) return false;
  if (r.max !== undefined && (r.maxExclusive ? v >= r.max : v > r.max)) return false;
  return true;
}

/** The fields of one JSON object of a request body; `path` prefixes the names in errors. */
export class Fields {
  private constructor(
    private readonly value: JsonObject,
    private readonly path: string,
  ) {}

  /** The request body, which must be a JSON object. */
  static body(body: unknown): Fields {
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      throw new FieldError(
        '',
        `the request body must be a JSON object, got ${body === undefined ? 'no body' : kindOf(body)}`,
      );
    }
    return new Fields(body as JsonObject, '');
  }

  /** The full name of a field, as errors report it. */
  name(field: string): string {
    return this.path ? `${this.path}.${field}` : field;
  }

  /** The raw value; undefined when absent or null. */
  raw(field: string): unknown {
    const v = Object.hasOwn(this.value, field) ? this.value[field] : undefined;
    return v === null ? undefined : v;
  }

  has(field: string): boolean {
    return this.raw(field) !== undefined;
  }

  fail(field: string, message: string): never {
    const name = this.name(field);
    throw new FieldError(name, `${name} ${message}`);
  }

  number(field: string, range: NumberRange = {}): number | undefined {
    const v = this.raw(field);
    if (v === undefined) return undefined;
    const rule = `must be a number${range.min === undefined && range.max === undefined ? '' : ` ${rangeText(range)}`}`;
    if (typeof v !== 'number' || !Number.isFinite(v) || !inRange(v, range))
      this.fail(field, `${rule}, got ${kindOf(v)}`);
    return v;
  }

  integer(field: string, range: NumberRange = {}): number | undefined {
    const v = this.raw(field);
    if (v === undefined) return undefined;
    const rule = `must be an integer${range.min === undefined && range.max === undefined ? '' : ` ${rangeText(range)}`}`;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || !inRange(v, range))
      this.fail(field, `${rule}, got ${kindOf(v)}`);
    return v;
  }

  boolean(field: string): boolean | undefined {
    const v = this.raw(field);
    if (v === undefined) return undefined;
    if (typeof v !== 'boolean') this.fail(field, `must be true or false, got ${kindOf(v)}`);
    return v;
  }

  string(field: string, options: { nonEmpty?: boolean } = {}): string | undefined {
    const v = this.raw(field);
    if (v === undefined) return undefined;
    if (typeof v !== 'string') this.fail(field, `must be a string, got ${kindOf(v)}`);
    if (options.nonEmpty && v.length === 0) this.fail(field, 'must not be empty');
    return v;
  }

  /** A string or a list of strings (OpenAI's `stop`), as a list. */
  strings(field: string, options: { maxItems: number; maxLength: number }): string[] | undefined {
    const v = this.raw(field);
    if (v === undefined) return undefined;
    const list = typeof v === 'string' ? [v] : v;
    if (!Array.isArray(list)) this.fail(field, `must be a string or a list of strings, got ${kindOf(v)}`);
    if (list.length > options.maxItems)
      this.fail(field, `may hold at most ${options.maxItems} strings, got ${list.length}`);
    list.forEach((s, i) => {
      if (typeof s !== 'string' || s.length === 0 || s.length > options.maxLength)
        this.fail(`${field}[${i}]`, `must be a string of 1 to ${options.maxLength} characters`);
    });
    return list as string[];
  }

  /** A list of integers in a range (`stop_token_ids`). */
  integers(field: string, range: NumberRange & { maxItems: number }): number[] | undefined {
    const v = this.raw(field);
    if (v === undefined) return undefined;
    if (!Array.isArray(v)) this.fail(field, `must be a list of integers, got ${kindOf(v)}`);
    if (v.length > range.maxItems)
      this.fail(field, `may hold at most ${range.maxItems} ids, got ${v.length}`);
    v.forEach((x, i) => {
      if (typeof x !== 'number' || !Number.isSafeInteger(x) || !inRange(x, range))
        this.fail(`${field}[${i}]`, `must be an integer ${rangeText(range)}, got ${kindOf(x)}`);
    });
    return v as number[];
  }

  object(field: string): Fields | undefined {
    const v = this.raw(field);
    if (v === undefined) return undefined;
    if (typeof v !== 'object' || Array.isArray(v)) this.fail(field, `must be an object, got ${kindOf(v)}`);
    return new Fields(v as JsonObject, this.name(field));
  }

  /** A list of objects, each read with its own Fields (`messages`). */
  objects(field: string): Fields[] | undefined {
    const v = this.raw(field);
    if (v === undefined) return undefined;
    if (!Array.isArray(v)) this.fail(field, `must be a list, got ${kindOf(v)}`);
    return v.map((item, i) => {
      if (typeof item !== 'object' || item === null || Array.isArray(item))
        this.fail(`${field}[${i}]`, `must be an object, got ${kindOf(item)}`);
      return new Fields(item as JsonObject, `${this.name(field)}[${i}]`);
    });
  }

  /** Refuses a field this server knows but does not implement, unless it has its neutral value. */
  unsupported(field: string, neutral: (v: unknown) => boolean, why: string): void {
    const v = this.raw(field);
    if (v !== undefined && !neutral(v)) this.fail(field, `is not supported by this server (${why})`);
  }
}
