// Device.sample's rows, checked on the JS thread and packed into the flat arrays the addon takes
// (native.ts says their layout), so a bad row throws at the call naming the row and the field.

import type { SampleRow } from './api.js';
import { fail } from './validate.js';

export const SAMPLE_DOUBLES_PER_ROW = 6;
export const SAMPLE_INTS_PER_ROW = 7;

export interface PackedSampleRows {
  doubles: Float64Array;
  ints: Int32Array;
  penaltyIds: Int32Array;
  penaltyCounts: Int32Array;
  maskedIds: Int32Array;
  /** The most logprobs alternatives a row asked for. */
  topLogprobs: number;
}

export function packSampleRows(op: string, rows: readonly SampleRow[], logitRows: number): PackedSampleRows {
  if (!Array.isArray(rows) || rows.length === 0) fail(op, 'rows must be a non-empty array');
  const doubles = new Float64Array(rows.length * SAMPLE_DOUBLES_PER_ROW);
  const ints = new Int32Array(rows.length * SAMPLE_INTS_PER_ROW);
  const penaltyIds: number[] = [];
  const penaltyCounts: number[] = [];
  const maskedIds: number[] = [];
  let topLogprobs = 0;
  for (const [i, r] of rows.entries()) {
    const bad = (field: string, why: string): never => fail(op, `rows[${i}].${field} ${why}`);
    const finite = (field: keyof SampleRow, v: number) => {
      if (typeof v !== 'number' || !Number.isFinite(v)) bad(field, `must be a finite number, got ${v}`);
    };
    const ids = (field: keyof SampleRow, list: readonly number[]) => {
      if (!Array.isArray(list)) bad(field, 'must be an array');
      for (const id of list)
        if (!Number.isInteger(id) || id < 0 || id > 0x7fffffff) bad(field, `has ${id}, not an id`);
    };
    if (!Number.isInteger(r.row) || r.row < 0 || r.row >= logitRows) {
      bad('row', `${r.row} is not a row of the ${logitRows} logit rows`);
    }
    for (const f of [
      'temperature',
      'topP',
      'repetitionPenalty',
      'presencePenalty',
      'frequencyPenalty',
      'uniform',
    ] as const) {
      finite(f, r[f]);
    }
    if (r.temperature < 0) bad('temperature', `must be >= 0, got ${r.temperature}`);
    if (!(r.topP > 0 && r.topP <= 1)) bad('topP', `must be in (0, 1], got ${r.topP}`);
    if (!Number.isInteger(r.topK) || r.topK < 0 || r.topK > 0x7fffffff)
      bad('topK', `must be an integer >= 0, got ${r.topK}`);
    if (!(r.repetitionPenalty > 0)) bad('repetitionPenalty', `must be > 0, got ${r.repetitionPenalty}`);
    if (!(r.uniform >= 0 && r.uniform < 1)) bad('uniform', `must be in [0, 1), got ${r.uniform}`);
    if (r.logprobs !== undefined && (!Number.isInteger(r.logprobs) || r.logprobs < 0 || r.logprobs > 1024)) {
      bad('logprobs', `must be an integer in [0, 1024], got ${r.logprobs}`);
    }
    ids('penalizedIds', r.penalizedIds);
    ids('penalizedCounts', r.penalizedCounts);
    ids('maskedIds', r.maskedIds);
    if (r.penalizedCounts.length !== r.penalizedIds.length) {
      bad('penalizedCounts', `has ${r.penalizedCounts.length} entries for ${r.penalizedIds.length} ids`);
    }
    doubles.set(
      [r.temperature, r.topP, r.repetitionPenalty, r.presencePenalty, r.frequencyPenalty, r.uniform],
      i * SAMPLE_DOUBLES_PER_ROW,
    );
    ints.set(
      [
        r.row,
        r.topK,
        r.logprobs ?? -1,
        penaltyIds.length,
        r.penalizedIds.length,
        maskedIds.length,
        r.maskedIds.length,
      ],
      i * SAMPLE_INTS_PER_ROW,
    );
    penaltyIds.push(...r.penalizedIds);
    penaltyCounts.push(...r.penalizedCounts);
    maskedIds.push(...r.maskedIds);
    topLogprobs = Math.max(topLogprobs, r.logprobs ?? 0);
  }
  return {
    doubles,
    ints,
    penaltyIds: Int32Array.from(penaltyIds),
    penaltyCounts: Int32Array.from(penaltyCounts),
    maskedIds: Int32Array.from(maskedIds),
    topLogprobs,
  };
}
