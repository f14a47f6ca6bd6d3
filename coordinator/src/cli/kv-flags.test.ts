import { describe, expect, it } from 'vitest';
import { UsageError } from './args.js';
import { kvCacheFromFlags } from './kv-flags.js';

describe('kvCacheFromFlags', () => {
  it('reads a count, a share, or neither (the device default)', () => {
    expect(kvCacheFromFlags({ 'kv-blocks': '256' })).toEqual({ blockSize: 16, numBlocks: 256 });
    expect(kvCacheFromFlags({ 'kv-memory-fraction': '0.9', 'block-size': '32' })).toEqual({
      blockSize: 32,
      memoryFraction: 0.9,
    });
    expect(kvCacheFromFlags({})).toEqual({ blockSize: 16 });
  });

  it('refuses both flags and out-of-range values with a usage error', () => {
    const both = () => kvCacheFromFlags({ 'kv-blocks': '8', 'kv-memory-fraction': '0.5' });
    expect(both).toThrow(UsageError);
    expect(both).toThrow(/give --kv-blocks .* or --kv-memory-fraction .*, not both/);
    for (const bad of ['0', '1.5', '-0.1', 'abc', '']) {
      expect(() => kvCacheFromFlags({ 'kv-memory-fraction': bad })).toThrow(
        `--kv-memory-fraction must be a number in (0, 1], got ${bad}`,
      );
    }
    expect(() => kvCacheFromFlags({ 'kv-blocks': '0' })).toThrow('--kv-blocks must be at least 1, got 0');
    expect(() => kvCacheFromFlags({ 'kv-blocks': '1.5' })).toThrow('--kv-blocks must be an integer, got 1.5');
    expect(() => kvCacheFromFlags({ 'kv-blocks': '8', 'block-size': '0' })).toThrow(
      '--block-size must be at least 1, got 0',
    );
  });
});
