// Tiny runtime validators for JSON control messages: each returns the value typed, or throws
// ControlMessageError naming the offending path.

/** A control-plane message that is not valid JSON or does not match its schema. */
export class ControlMessageError extends Error {
  override name = 'ControlMessageError';
}

export type Validator<T> = (value: unknown, path: string) => T;

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'string' ? `string ${JSON.stringify(value)}` : `${typeof value} ${String(value)}`;
}

function fail(path: string, expected: string, value: unknown): never {
  throw new ControlMessageError(`${path}: expected ${expected}, got ${describe(value)}`);
}

export function str(options: { nonEmpty?: boolean; pattern?: RegExp } = {}): Validator<string> {
  return (value, path) => {
    if (typeof value !== 'string') fail(path, 'a string', value);
    if (options.nonEmpty === true && value.length === 0) fail(path, 'a non-empty string', value);
    if (options.pattern !== undefined && !options.pattern.test(value)) {
      fail(path, `a string matching ${options.pattern}`, value);
    }
    return value;
  };
}

/** A finite number; with integer, a safe integer; bounds inclusive. */
export function num(options: { integer?: boolean; min?: number; max?: number } = {}): Validator<number> {
  return (value, path) => {
    if (typeof value !== 'number' || !Number.isFinite(value)) fail(path, 'a finite number', value);
    if (options.integer === true && !Number.isSafeInteger(value)) fail(path, 'an integer', value);
    if (options.min !== undefined && value < options.min) fail(path, `a number >= ${options.min}`, value);
    if (options.max !== undefined && value > options.max) fail(path, `a number <= ${options.max}`, value);
    return value;
  };
}

/** A non-negative safe integer. */
export const count: Validator<number> = num({ integer: true, min: 0 });

/** A positive safe integer. */
export const positive: Validator<number> = num({ integer: true, min: 1 });

/** A share in (0, 1]: a fraction of something that may be all of it but not none of it. */
export const share: Validator<number> = (value, path) => {
  if (typeof value !== 'number' || !(value > 0 && value <= 1)) fail(path, 'a number in (0, 1]', value);
  return value;
};

export const bool: Validator<boolean> = (value, path) => {
  if (typeof value !== 'boolean') fail(path, 'a boolean', value);
  return value;
};

export function oneOf<const T extends string | number>(...values: T[]): Validator<T> {
  return (value, path) => {
    if (!values.includes(value as T))
      fail(path, `one of ${values.map((v) => JSON.stringify(v)).join(', ')}`, value);
    return value as T;
  };
}

export function arrayOf<T>(item: Validator<T>): Validator<T[]> {
  return (value, path) => {
    if (!Array.isArray(value)) fail(path, 'an array', value);
    return value.map((element, i) => item(element, `${path}[${i}]`));
  };
}

/** Marks a field that may be absent (undefined); null is rejected. */
export function optional<T>(inner: Validator<T>): Validator<T | undefined> {
  return (value, path) => (value === undefined ? undefined : inner(value, path));
}

/**
 * An object with exactly these fields (unknown fields are dropped, so newer senders can add
 * fields). Absent optional fields stay absent.
 */
export function object<T>(shape: { [K in keyof T]-?: Validator<T[K]> }): Validator<T> {
  return (value, path) => {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) fail(path, 'an object', value);
    const source = value as Record<string, unknown>;
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(shape) as (keyof T & string)[]) {
      const parsed = shape[key](source[key], `${path}.${key}`);
      if (parsed !== undefined) out[key] = parsed;
    }
    return out as T;
  };
}
