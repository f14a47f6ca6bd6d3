import { describe, expect, test } from 'vitest';
import { argmax, Sampler } from './sampler.js';
import { StopMatcher } from './stop-matcher.js';

describe('StopMatcher', () => {
  test('holds back a possible stop prefix and cuts at the stop sequence', () => {
    const m = new StopMatcher(['\n\nQuestion:']);
    expect(m.push('Answer is 4.')).toEqual({ emit: 'Answer is 4.', stopped: false });
    expect(m.push('\n')).toEqual({ emit: '', stopped: false });
    expect(m.push('\nQues')).toEqual({ emit: '', stopped: false });
    expect(m.push('tion: next')).toEqual({ emit: '', stopped: true, matched: '\n\nQuestion:' });
  });

  test('releases held text when the stop sequence does not follow', () => {
    const m = new StopMatcher(['END']);
    expect(m.push('the E')).toEqual({ emit: 'the ', stopped: false });
    expect(m.push('nd')).toEqual({ emit: 'End', stopped: false });
    expect(m.push('EN')).toEqual({ emit: '', stopped: false });
    expect(m.flush()).toBe('EN');
  });

  test('with no stop sequences everything passes straight through', () => {
    const m = new StopMatcher([]);
    expect(m.push('abc')).toEqual({ emit: 'abc', stopped: false });
  });
});

describe('Sampler', () => {
  const logits = Float32Array.from([0.1, 3, 2.9, -1, 0.5]);

  test('temperature 0 is greedy, first index on ties', () => {
    expect(new Sampler({ temperature: 0, topK: 0, topP: 1, seed: 1 }).next(logits)).toBe(1);
    expect(argmax(Float32Array.from([1, 2, 2]))).toBe(1);
  });

  test('same seed, same draws; top-k 2 only ever picks the two best', () => {
    const params = { temperature: 1, topK: 2, topP: 1, seed: 42 };
    const a = new Sampler(params);
    const b = new Sampler(params);
    const draws = Array.from({ length: 200 }, () => a.next(logits));
    expect(draws).toEqual(Array.from({ length: 200 }, () => b.next(logits)));
    expect(new Set(draws)).toEqual(new Set([1, 2]));
  });

  test('a small top-p keeps only the most likely token', () => {
    const s = new Sampler({ temperature: 1, topK: 0, topP: 0.01, seed: 3 });
    for (let i = 0; i < 50; i++) expect(s.next(logits)).toBe(1);
  });

  test('rejects invalid parameters', () => {
    expect(() => new Sampler({ temperature: -1, topK: 0, topP: 1, seed: 0 })).toThrow(/temperature/);
    expect(() => new Sampler({ temperature: 1, topK: 0, topP: 0, seed: 0 })).toThrow(/top_p/);
    expect(() => new Sampler({ temperature: 1, topK: 1.5, topP: 1, seed: 0 })).toThrow(/top_k/);
  });
});
