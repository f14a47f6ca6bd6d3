import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
// The generator writes the model directory's tokenizer files (Llama 2 + Meditron's added tokens).
// Imported by path because the worker package's entry does not re-export the checkpoint module yet.
import { writeTokenizerFiles } from '../../../worker/src/checkpoint/tokenizer-files.js';
import { TokenizerError } from './errors.js';
import { type LlamaTokenizer, loadTokenizer } from './tokenizer.js';

const HEART = '\u{1FAC0}';
let dir: string;
let tok: LlamaTokenizer;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'medcluster-tokenizer-'));
  await writeTokenizerFiles(dir);
  tok = await loadTokenizer(dir);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('Llama 2 tokenization', () => {
  // Llama 2 ids as Hugging Face's tokenizer gives them (a Mistral vocabulary would give ▁Hello = 22557).
  it('matches known Hugging Face Llama 2 encodings', () => {
    expect(tok.encode('Hello world')).toEqual([1, 15043, 3186]);
    expect(tok.encode('Hello world', { addBos: false })).toEqual([15043, 3186]);
    // SentencePiece digits split one by one; the leading space becomes ▁
    expect(tok.encode('The patient is 42 years old.', { addBos: false })).toEqual([
      450, 16500, 338, 29871, 29946, 29906, 2440, 2030, 29889,
    ]);
    expect(tok.encode('')).toEqual([1]);
  });

  it('uses byte fallback for characters outside the vocabulary', () => {
    // U+1FAC0 (anatomical heart) = F0 9F AB 80: four <0x..> byte tokens, ids 3 + byte value
    const ids = tok.encode(HEART, { addBos: false });
    expect(ids.slice(-4)).toEqual([3 + 0xf0, 3 + 0x9f, 3 + 0xab, 3 + 0x80]);
    expect(tok.decode(tok.encode(`${HEART} ok`), { skipSpecial: true })).toBe(`${HEART} ok`);
  });

  it('round-trips medical text', () => {
    const text = 'Metformin 500 mg b.i.d.; HbA1c ≥ 6.5% — contraindicated in eGFR < 30 mL/min/1.73m².';
    expect(tok.decode(tok.encode(text), { skipSpecial: true })).toBe(text);
    // as the Rust decoder: the Strip decoder only removes a leading space of the whole string
    expect(tok.decode(tok.encode(text))).toBe(`<s> ${text}`);
  });

  it('knows special ids, added tokens and the vocabulary size', () => {
    expect(tok.bosTokenId).toBe(1);
    expect(tok.eosTokenId).toBe(2);
    expect(tok.vocabSize).toBe(32019);
    expect(tok.tokenToId('<|im_start|>')).toBe(32017);
    expect(tok.tokenToId('<|im_end|>')).toBe(32018);
    expect(tok.tokenToId('<CLS>')).toBe(32000);
    expect(tok.tokenToId('[bib_ref]')).toBe(32005);
    expect(tok.tokenToId('[/formula]')).toBe(32016);
    expect(tok.encode('<|im_start|>user\nhi<|im_end|>', { addBos: false })).toEqual(
      expect.arrayContaining([32017, 32018]),
    );
    const ids = tok.encode('<|im_start|>user', { addBos: false });
    expect(ids[0]).toBe(32017);
  });

  it('skips special tokens on request but keeps the text markers', () => {
    const ids = tok.encode('<|im_start|>assistant\nSee [fig_ref]Fig. 2[/fig_ref].<|im_end|>');
    expect(ids).toContain(32007);
    const plain = tok.decode(ids, { skipSpecial: true });
    expect(plain).not.toContain('<|im_start|>');
    expect(plain).not.toContain('<s>');
    // legacy Llama normalization prepends ▁ to each text segment after an added token, as HF does
    expect(plain).toContain('[fig_ref] Fig. 2[/fig_ref]');
    expect(tok.decode(ids)).toContain('<|im_start|>');
  });
});

describe('streaming detokenizer', () => {
  function stream(ids: number[], skipSpecial = false): string[] {
    const decoder = tok.detokenizer({ skipSpecial });
    const deltas = ids.map((id) => decoder.push(id));
    deltas.push(decoder.flush());
    return deltas;
  }

  it('emits deltas whose concatenation is the full decode, never a broken character', () => {
    const texts = [
      'Hello world, how are you?',
      `Dose: 5 µg/kg — ${HEART} fine; 肺炎 (pneumonia)`,
      '  leading spaces\nand lines',
    ];
    for (const text of texts) {
      const ids = tok.encode(text, { addBos: false });
      const deltas = stream(ids);
      expect(deltas.join('')).toBe(tok.decode(ids));
      for (const d of deltas) expect(d).not.toContain('\uFFFD');
    }
  });

  it('after prompt context, the first token keeps its leading space (a decode from scratch strips it)', () => {
    const prompt = tok.encode('The patient');
    const next = tok.encode('The patient presented with', { addBos: false }).slice(2);
    expect(tok.detokenizer({ skipSpecial: true }).push(next[0])).toBe('presented');
    const decoder = tok.detokenizer({ skipSpecial: true }, prompt.slice(-4));
    expect(next.map((id) => decoder.push(id)).join('') + decoder.flush()).toBe(' presented with');
  });

  it('holds back the bytes of a multi-byte character until it is complete', () => {
    const ids = tok.encode(`a${HEART}`, { addBos: false });
    const deltas = stream(ids).slice(0, -1);
    expect(deltas.slice(-4)).toEqual(['', '', '', HEART]);
    expect(deltas.join('')).toBe(`a${HEART}`);
  });

  it('keeps word spacing across deltas', () => {
    const ids = tok.encode('The heart rate', { addBos: false });
    expect(stream(ids).filter((d) => d !== '')).toEqual(['The', ' heart', ' rate']);
  });

  it('flushes a genuinely incomplete character at the end', () => {
    const ids = tok.encode(HEART, { addBos: false }).slice(0, -1);
    const deltas = stream(ids);
    expect(deltas.slice(0, -1).join('')).toBe('');
    expect(deltas.at(-1)).toContain('\uFFFD');
  });
});

describe('chat template', () => {
  it('renders ChatML from tokenizer_config.json', () => {
    const prompt = tok.applyChatTemplate(
      [
        { role: 'system', content: 'You are a careful clinician.' },
        { role: 'user', content: 'What is the first-line treatment for type 2 diabetes?' },
      ],
      { addGenerationPrompt: true },
    );
    expect(prompt).toBe(
      '<|im_start|>system\nYou are a careful clinician.<|im_end|>\n' +
        '<|im_start|>user\nWhat is the first-line treatment for type 2 diabetes?<|im_end|>\n' +
        '<|im_start|>assistant\n',
    );
    const ids = tok.encode(prompt);
    expect(ids.slice(0, 2)).toEqual([1, 32017]);
    expect(ids.filter((id) => id === 32018)).toHaveLength(2);
  });

  it('uses a configured template instead, and fails clearly without one', async () => {
    const fewShot = await loadTokenizer(dir, {
      chatTemplate:
        "{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}ANSWER:{% endif %}",
    });
    expect(fewShot.applyChatTemplate([{ role: 'user', content: 'Q?' }], { addGenerationPrompt: true })).toBe(
      'USER: Q?\nANSWER:',
    );

    const config = JSON.parse(await readFile(join(dir, 'tokenizer_config.json'), 'utf8'));
    const bare = await mkdtemp(join(tmpdir(), 'medcluster-tokenizer-bare-'));
    try {
      await writeFile(join(bare, 'tokenizer.json'), await readFile(join(dir, 'tokenizer.json')));
      await writeFile(
        join(bare, 'tokenizer_config.json'),
        JSON.stringify({ ...config, chat_template: undefined }),
      );
      const none = await loadTokenizer(bare);
      expect(none.hasChatTemplate).toBe(false);
      expect(() => none.applyChatTemplate([{ role: 'user', content: 'x' }])).toThrow(TokenizerError);
      expect(() => none.applyChatTemplate([{ role: 'user', content: 'x' }])).toThrow(/no chat_template/);
    } finally {
      await rm(bare, { recursive: true, force: true });
    }
  });

  it('rejects a missing tokenizer.json with a TokenizerError', async () => {
    await expect(loadTokenizer(join(dir, 'nope'))).rejects.toThrow(TokenizerError);
  });
});
