// Incremental detokenization (the approach of TGI and vLLM): decode a short window of earlier tokens
// with and without the new ones, and emit the difference only once it no longer ends in U+FFFD. A
// byte-fallback token that is the first byte of a multi-byte character thus waits for the rest, and
// the window keeps the SentencePiece leading-space handling of the full decode.

/** Decodes ids to text (the tokenizer's decode, with its options already bound). */
export type DecodeFn = (ids: readonly number[]) => string;

const REPLACEMENT = '\uFFFD';

export class IncrementalDetokenizer {
  private readonly ids: number[] = [];
  /** Start of the window decoded for context. */
  private prefixOffset = 0;
  /** End of the text already emitted. */
  private readOffset = 0;

  /**
   * `context`: the ids before the first one pushed (the prompt's last few), decoded for context
   * only, so the first generated token keeps the leading space a decode from scratch would strip.
   */
  constructor(
    private readonly decode: DecodeFn,
    context: readonly number[] = [],
  ) {
    this.ids.push(...context);
    this.readOffset = context.length;
  }

  /** Adds generated ids and returns the new text they complete (possibly ''). */
  push(...ids: number[]): string {
    this.ids.push(...ids);
    const prefixText = this.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const newText = this.decode(this.ids.slice(this.prefixOffset));
    if (newText.length > prefixText.length && !newText.endsWith(REPLACEMENT)) {
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      return newText.slice(prefixText.length);
    }
    return '';
  }

  /** Text still held back at the end of generation (a genuinely incomplete character decodes as U+FFFD). */
  flush(): string {
    const prefixText = this.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const newText = this.decode(this.ids.slice(this.prefixOffset));
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    return newText.length > prefixText.length ? newText.slice(prefixText.length) : '';
  }

  get tokenIds(): readonly number[] {
    return this.ids;
  }
}
