// From what a client sent to the prompt ids the scheduler gets: text is tokenized with BOS,
// chat messages are rendered with the chat template, and every id is checked against the
// model's embedding rows here, so that a token the model cannot read (a ChatML marker of a
// model whose table ends before it) is refused with a message saying where it came from.
//
// Chat templates are data: the tokenizer's `chat_template`, or `--chat-template FILE`, or for
// a model with neither the plain-text template below (Meditron-70B is a base model: its
// authors recommend plain prompts, not ChatML). It renders
//
//   <system message>\n\nUser: <message>\nAssistant: <message>\n ... Assistant:
//
// so a base model continues the assistant's turn; send `stop: ["\nUser:"]` to end it there.

import type { TextGenerator } from '../generation/text-generation.js';
import { type ChatMessage, ChatTemplate, type LlamaTokenizer, TokenizerError } from '../tokenizer/index.js';
import { FieldError, type Fields } from './fields.js';

/** The chat template of a model that has none: plain text a base model can continue. */
export const PLAIN_CHAT_TEMPLATE =
  '{% for message in messages %}' +
  "{% if message['role'] == 'system' or message['role'] == 'developer' %}{{ message['content'] + '\\n\\n' }}" +
  "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n' }}" +
  "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + '\\n' }}" +
  "{% else %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endif %}" +
  "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

const ROLES = new Set(['system', 'developer', 'user', 'assistant', 'tool']);

/** The most messages one chat request may carry. */
export const MAX_MESSAGES = 1024;

export class Prompts {
  private readonly plain: ChatTemplate | undefined;
  private readonly bosToken: string;

  constructor(
    private readonly generator: TextGenerator,
    /** Rows of the model's embedding table: ids at or past it cannot be read. */
    readonly vocabRows: number,
  ) {
    const tok = this.tokenizer;
    this.bosToken = tok.idToToken(tok.bosTokenId) ?? '<s>';
    this.plain = tok.hasChatTemplate
      ? undefined
      : new ChatTemplate(PLAIN_CHAT_TEMPLATE, {
          bos_token: this.bosToken,
          eos_token: tok.idToToken(tok.eosTokenId) ?? '</s>',
        });
  }

  private get tokenizer(): LlamaTokenizer {
    return this.generator.tokenizer;
  }

  /** Which template chat requests use, for logs and GET /cluster. */
  get chatTemplateSource(): 'tokenizer' | 'plain-text default' {
    return this.plain ? 'plain-text default' : 'tokenizer';
  }

  /** Text (tokenized with BOS unless `addBos` is false) or ids, checked against the embedding rows. */
  fromPrompt(prompt: string | readonly number[], field: string, addBos = true): number[] {
    let ids: number[];
    try {
      ids = typeof prompt !== 'string' ? [...prompt] : this.encode(prompt, addBos);
    } catch (err) {
      if (err instanceof FieldError) throw err;
      throw new FieldError(field, `${field}: ${(err as Error).message}`);
    }
    if (ids.length === 0) throw new FieldError(field, `${field} is empty`);
    this.checkRows(ids, field, (id) =>
      typeof prompt === 'string'
        ? `${field} contains the special token ${JSON.stringify(this.tokenizer.idToToken(id))} (id ${id})`
        : `${field} holds token id ${id}`,
    );
    return ids;
  }

  /** Reads `messages` and renders them with the chat template. */
  fromMessages(body: Fields, addGenerationPrompt: boolean): { text: string; ids: number[] } {
    const messages = readMessages(body);
    let text: string;
    try {
      text = this.plain
        ? this.plain.render(messages, { addGenerationPrompt })
        : this.tokenizer.applyChatTemplate(messages, { addGenerationPrompt });
    } catch (err) {
      if (err instanceof TokenizerError) throw new FieldError('messages', `messages: ${err.message}`);
      throw err;
    }
    // A template that writes the BOS token itself must not get a second one.
    const ids = this.encode(text, !text.startsWith(this.bosToken));
    this.checkRows(ids, 'messages', (id) => {
      const piece = this.tokenizer.idToToken(id) ?? String(id);
      const from = messages.findIndex((m) => m.content.includes(piece));
      return from >= 0
        ? `messages[${from}].content contains the special token ${JSON.stringify(piece)} (id ${id})`
        : `the chat template writes the special token ${JSON.stringify(piece)} (id ${id})`;
    });
    return { text, ids };
  }

  private encode(text: string, addBos: boolean): number[] {
    // promptIds refuses text too long to fit before tokenizing it; it always adds BOS.
    const ids = [...this.generator.promptIds(text)];
    return addBos || ids[0] !== this.tokenizer.bosTokenId ? ids : ids.slice(1);
  }

  private checkRows(ids: readonly number[], field: string, what: (id: number) => string): void {
    const bad = ids.find((id) => !Number.isInteger(id) || id < 0 || id >= this.vocabRows);
    if (bad === undefined) return;
    const advice =
      field === 'messages'
        ? `; serve the model with a chat template it can read (--chat-template FILE) or send a plain prompt to /v1/completions`
        : '';
    throw new FieldError(
      field,
      `${what(bad)}, outside the model's ${this.vocabRows} embedding rows: this model cannot read it${advice}`,
    );
  }
}

/** `messages`: roles and text content (a string, or a list of text parts). */
function readMessages(body: Fields): ChatMessage[] {
  const list = body.objects('messages');
  if (list === undefined) body.fail('messages', 'is required: a list of {role, content}');
  if (list.length === 0) body.fail('messages', 'must hold at least one message');
  if (list.length > MAX_MESSAGES) body.fail('messages', `may hold at most ${MAX_MESSAGES} messages`);
  return list.map((m: Fields): ChatMessage => {
    const role = m.string('role');
    if (role === undefined || !ROLES.has(role))
      m.fail('role', `must be one of ${[...ROLES].join(', ')}, got ${JSON.stringify(role ?? null)}`);
    const raw = m.raw('content');
    let content: string;
    if (raw === undefined || typeof raw === 'string') content = raw ?? '';
    else {
      const parts = m.objects('content');
      if (!parts) m.fail('content', 'must be a string or a list of text parts');
      content = parts
        .map((p: Fields) => {
          const type = p.string('type');
          if (type !== 'text')
            p.fail(
              'type',
              `must be "text" (this server reads text only), got ${JSON.stringify(type ?? null)}`,
            );
          const text = p.string('text');
          if (text === undefined) p.fail('text', 'is required in a text part');
          return text;
        })
        .join('\n');
    }
    return { role, content };
  });
}
