// Argument checks run on the JS thread before anything is queued, so a bad call
// throws at its call site with a message naming the op, the argument and its shape.

import { type DType, KernelError, type Tensor } from './api.js';

export function describe(t: Tensor): string {
  return `[${t.shape.join(', ')}] ${t.dtype}`;
}

export function fail(op: string, message: string): never {
  throw new KernelError(`${op}: ${message}`);
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function checkShape(op: string, shape: readonly number[]): void {
  if (!Array.isArray(shape) || shape.length < 1 || shape.length > 4) {
    fail(op, `shape [${shape}] must have 1 to 4 dimensions`);
  }
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0)
      fail(op, `shape [${shape.join(', ')}] has an invalid dimension ${d}`);
  }
}

export function checkDtype(
  op: string,
  dtype: DType,
  allowed: readonly DType[] = ['f16', 'f32', 'i32'],
): void {
  if (!allowed.includes(dtype)) fail(op, `dtype ${dtype} is not one of ${allowed.join(', ')}`);
}

/** Checks rank and dtype; returns the shape for destructuring. */
export function expect(
  op: string,
  name: string,
  t: Tensor,
  rank: number,
  dtypes: readonly DType[],
): number[] {
  if (t.shape.length !== rank || !dtypes.includes(t.dtype)) {
    fail(op, `${name} ${describe(t)} must be ${rank}-D ${dtypes.join(' or ')}`);
  }
  return [...t.shape];
}

export function sameShape(op: string, aName: string, a: Tensor, bName: string, b: Tensor): void {
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) {
    fail(op, `${aName} ${describe(a)} and ${bName} ${describe(b)} must have the same shape`);
  }
}

export function positiveInt(op: string, name: string, v: number): void {
  if (!Number.isSafeInteger(v) || v <= 0) fail(op, `${name} ${v} must be a positive integer`);
}
