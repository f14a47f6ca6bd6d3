// Chat templates are data: a Jinja template from tokenizer_config.json (or configured), rendered with
// @huggingface/jinja exactly as transformers' apply_chat_template renders it.

import { Template } from '@huggingface/jinja';
import { TokenizerError } from './errors.js';

export interface ChatMessage {
  role: string;
  content: string;
}

export interface ChatTemplateOptions {
  /** Append the prompt that opens the assistant's turn. */
  addGenerationPrompt?: boolean;
}

export class ChatTemplate {
  private readonly template: Template;

  constructor(
    readonly source: string,
    private readonly specialTokens: { bos_token: string; eos_token: string },
  ) {
    try {
      this.template = new Template(source);
    } catch (cause) {
      throw new TokenizerError(`chat template does not parse: ${(cause as Error).message}`, { cause });
    }
  }

  render(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    try {
      return this.template.render({
        messages,
        add_generation_prompt: options.addGenerationPrompt ?? false,
        ...this.specialTokens,
      });
    } catch (cause) {
      throw new TokenizerError(`chat template failed to render: ${(cause as Error).message}`, { cause });
    }
  }
}
