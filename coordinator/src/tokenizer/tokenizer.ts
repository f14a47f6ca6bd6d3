// The model's tokenizer: Hugging Face's tokenizer.json + tokenizer_config.json from the model directory,
// run by @huggingface/tokenizers (a JS port that encodes as the Rust tokenizers do).

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { type ChatMessage, ChatTemplate, type ChatTemplateOptions } from './chat-template.js';
import { TokenizerError } from './errors.js';
import { IncrementalDetokenizer } from './stream-decoder.js';

export interface EncodeOptions {
  /** Let the post-processor prepend BOS, as Hugging Face's add_special_tokens does. Default true. */
  addBos?: boolean;
}

export interface DecodeOptions {
  /** Drop special tokens (<s>, </s>, <|im_end|>, ...). Default false. */
  skipSpecial?: boolean;
}

export interface LoadTokenizerOptions {
  /** A Jinja chat template to use instead of tokenizer_config.json's chat_template. */
  chatTemplate?: string;
}

type JsonObject = Record<string, unknown>;

/** A token given in tokenizer_config.json either as a string or as an AddedToken object. */
function tokenContent(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (typeof value === 'object' && value !== null && typeof (value as JsonObject).content === 'string') {
    return (value as JsonObject).content as string;
  }
  return undefined;
}

export class LlamaTokenizer {
  readonly bosTokenId: number;
  readonly eosTokenId: number;
  /** Ids the tokenizer can produce: its vocabulary plus added tokens (may exceed the model's embedding rows). */
  readonly vocabSize: number;
  /**
   * UTF-8 bytes of the longest vocabulary entry: no token covers more text than that, so text of
   * B bytes has at least B / maxPieceBytes tokens (how a prompt too long to fit is refused
   * before it is tokenized).
   */
  readonly maxPieceBytes: number;
  private readonly chatTemplate: ChatTemplate | undefined;

  constructor(
    private readonly tokenizer: HfTokenizer,
    config: JsonObject,
    chatTemplate: string | undefined,
    readonly source: string,
  ) {
    const bos = tokenContent(config.bos_token) ?? '<s>';
    const eos = tokenContent(config.eos_token) ?? '</s>';
    this.bosTokenId = this.requireId(bos, 'bos_token');
    this.eosTokenId = this.requireId(eos, 'eos_token');
    let maxId = -1;
    let maxBytes = 1;
    for (const [piece, id] of tokenizer.get_vocab(true)) {
      maxId = Math.max(maxId, id);
      maxBytes = Math.max(maxBytes, Buffer.byteLength(piece, 'utf8'));
    }
    this.vocabSize = maxId + 1;
    this.maxPieceBytes = maxBytes;
    const template =
      chatTemplate ?? (typeof config.chat_template === 'string' ? config.chat_template : undefined);
    this.chatTemplate =
      template === undefined ? undefined : new ChatTemplate(template, { bos_token: bos, eos_token: eos });
  }

  private requireId(token: string, field: string): number {
    const id = this.tokenizer.token_to_id(token);
    if (id === undefined)
      throw new TokenizerError(`${this.source}: ${field} ${JSON.stringify(token)} is not in the vocabulary`);
    return id;
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: options.addBos ?? true }).ids;
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    if (ids.length === 0) return ''; // the library rejects an empty list
    return this.tokenizer.decode([...ids], { skip_special_tokens: options.skipSpecial ?? false });
  }

  tokenToId(token: string): number | undefined {
    return this.tokenizer.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.tokenizer.id_to_token(id);
  }

  /** The text one token decodes to on its own (what logprob listings show for it). */
  tokenText(id: number): string {
    return this.decode([id]);
  }

  /** A streaming detokenizer for one sequence of generated ids, after `context` (prompt) ids. */
  detokenizer(options: DecodeOptions = {}, context: readonly number[] = []): IncrementalDetokenizer {
    return new IncrementalDetokenizer((ids) => this.decode(ids, options), context);
  }

  get hasChatTemplate(): boolean {
    return this.chatTemplate !== undefined;
  }

  /** Renders messages to prompt text; encode the result with encode() (which adds BOS). */
  applyChatTemplate(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    if (!this.chatTemplate) {
      throw new TokenizerError(
        `${this.source}: no chat_template in tokenizer_config.json and none configured`,
      );
    }
    return this.chatTemplate.render(messages, options);
  }
}

async function readJson(path: string): Promise<JsonObject> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (cause) {
    throw new TokenizerError(`cannot read ${path}`, { cause });
  }
  try {
    return JSON.parse(text) as JsonObject;
  } catch (cause) {
    throw new TokenizerError(`${path} is not valid JSON (${(cause as Error).message})`, { cause });
  }
}

/** Loads tokenizer.json and tokenizer_config.json from a model directory. */
export async function loadTokenizer(
  modelDir: string,
  options: LoadTokenizerOptions = {},
): Promise<LlamaTokenizer> {
  const tokenizerJson = await readJson(join(modelDir, 'tokenizer.json'));
  const config = await readJson(join(modelDir, 'tokenizer_config.json'));
  let tokenizer: HfTokenizer;
  try {
    tokenizer = new HfTokenizer(tokenizerJson, config);
  } catch (cause) {
    throw new TokenizerError(`${modelDir}: tokenizer.json could not be loaded: ${(cause as Error).message}`, {
      cause,
    });
  }
  return new LlamaTokenizer(tokenizer, config, options.chatTemplate, modelDir);
}
