import { describe, expect, test } from 'vitest';
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
