// A checkpoint whose embedding table is smaller than the tokenizer (`make-model --vocab-rows
// 32017`, like Meditron 7B's 32017 rows): token ids past the table are refused with a clear
// error, never read; ids inside it still work.

import { describe, expect, test } from 'vitest';
import { runCli } from './harness/index.js';
import { testModel } from './models.js';

describe('a model with fewer embedding rows than the tokenizer has tokens', () => {
  test('a ChatML prompt (ids 32017, 32018) is refused; plain text generates', async () => {
    const dir = await testModel({ vocabRows: 32017 });
    const chat = await runCli([
      'generate',
      '--model',
      dir,
      '--prompt',
      '<|im_start|>user\nHi<|im_end|>',
      '--max-tokens',
      '4',
    ]);
    expect(chat.code).toBe(1);
    expect(chat.stdout).toBe('');
    expect(chat.stderr).toMatch(/token id 32017 is outside the model's 32017 embedding rows/);
    const plain = await runCli(['generate', '--model', dir, '--prompt', 'The patient', '--max-tokens', '4']);
    expect(plain.code, plain.stderr).toBe(0);
    expect(plain.stdout.trim().length).toBeGreaterThan(0);
  });
});
