export { type ChatMessage, ChatTemplate, type ChatTemplateOptions } from './chat-template.js';
export { TokenizerError } from './errors.js';
export { type DecodeFn, IncrementalDetokenizer } from './stream-decoder.js';
export {
  type DecodeOptions,
  type EncodeOptions,
  LlamaTokenizer,
  type LoadTokenizerOptions,
  loadTokenizer,
} from './tokenizer.js';
