// tokenizer.json / tokenizer_config.json / added_tokens.json: Llama 2's tokenizer (see
// llama2-tokenizer.ts for where its data comes from) plus Meditron's 19 added tokens.

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CheckpointError } from './errors.js';
import { llama2TokenizerConfig, llama2TokenizerJson } from './llama2-tokenizer.js';
import { jsonText } from './model-files.js';

export interface AddedTokenSpec {
  id: number;
  content: string;
  /** Special tokens are control symbols: skipped by decode(skipSpecial), never produced from user text. */
  special: boolean;
}

/**
 * Meditron's added tokens (MODEL.md), ids 32000..32018 in this order. Choices:
 * - <CLS> <SEP> <EOD> <MASK> <PAD> are control tokens: special.
 * - The twelve bracket markers ([bib_ref] ...) tag structure inside Meditron's training documents; they
 *   are text the model reads and writes, so they are not special and decode shows them.
 * - <|im_start|> / <|im_end|> frame ChatML turns. They are special (as in ChatML-tuned Llama exports), so
 *   decode(skipSpecial) hides the framing and they are matched whole in templated prompts.
 * All are matched verbatim (normalized: false), like Llama's own <s> and </s>.
 */
export const MEDITRON_ADDED_TOKENS: readonly AddedTokenSpec[] = [
  ...['<CLS>', '<SEP>', '<EOD>', '<MASK>', '<PAD>'].map((content) => ({ content, special: true })),
  ...['bib_ref', 'fig_ref', 'bib', 'fig', 'table', 'formula'].flatMap((tag) => [
    { content: `[${tag}]`, special: false },
    { content: `[/${tag}]`, special: false },
  ]),
  { content: '<|im_start|>', special: true },
  { content: '<|im_end|>', special: true },
].map((token, i) => ({ id: 32000 + i, ...token }));

/** ChatML, as the Meditron-70B-AWQ model card suggests. BOS is added by the tokenizer, not the template. */
export const CHATML_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

function addedTokenFields(token: AddedTokenSpec) {
  return {
    content: token.content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: token.special,
  };
}

export async function writeTokenizerFiles(out: string): Promise<void> {
  const tokenizer = llama2TokenizerJson();
  const base = tokenizer.added_tokens as { id: number }[];
  if (base.some((t) => t.id >= 32000))
    throw new CheckpointError('Llama 2 tokenizer.json already has added tokens at or past 32000');
  tokenizer.added_tokens = [
    ...base,
    ...MEDITRON_ADDED_TOKENS.map((t) => ({ id: t.id, ...addedTokenFields(t) })),
  ];

  const config = llama2TokenizerConfig();
  const decoder = { ...(config.added_tokens_decoder as Record<string, unknown>) };
  for (const t of MEDITRON_ADDED_TOKENS) {
    const { content, lstrip, normalized, rstrip, single_word, special } = addedTokenFields(t);
    decoder[String(t.id)] = { content, lstrip, normalized, rstrip, single_word, special };
  }
  config.added_tokens_decoder = decoder;
  config.additional_special_tokens = MEDITRON_ADDED_TOKENS.filter((t) => t.special).map((t) => t.content);
  config.chat_template = CHATML_TEMPLATE;

  const addedTokens = Object.fromEntries(MEDITRON_ADDED_TOKENS.map((t) => [t.content, t.id]));
  await writeFile(join(out, 'tokenizer.json'), jsonText(tokenizer));
  await writeFile(join(out, 'tokenizer_config.json'), jsonText(config));
  await writeFile(join(out, 'added_tokens.json'), jsonText(addedTokens));
}
