/** A tokenizer could not be loaded or used: the message names the file or the input at fault. */
export class TokenizerError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TokenizerError';
  }
}
