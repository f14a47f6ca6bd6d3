// How a single token is shown in logprob listings and TGI's token details. The tokenizer's
// decode() of one id drops the SentencePiece word marker, so "▁the" would read "the"; listings
// need what the token adds in context instead: its piece with "▁" as a space, a byte-fallback
// piece ("<0xE2>") as its one raw byte, a special token as its content.

import type { LlamaTokenizer } from '../tokenizer/index.js';

export interface TokenShown {
  /** The text of the piece; a lone byte that is not ASCII reads `bytes:\xNN`, as OpenAI shows it. */
  text: string;
  /** UTF-8 bytes the token contributes to the text (its raw byte for a byte-fallback piece). */
  bytes: number[];
  /** A special token (BOS, EOS, ChatML markers, ...): dropped from generated text. */
  special: boolean;
}

const BYTE_PIECE = /^<0x([0-9A-Fa-f]{2})>$/;

export class TokenTexts {
  private readonly cache = new Map<number, TokenShown>();

  constructor(private readonly tokenizer: LlamaTokenizer) {}

  of(id: number): TokenShown {
    let shown = this.cache.get(id);
    if (!shown) {
      shown = this.compute(id);
      if (this.cache.size < 65536) this.cache.set(id, shown);
    }
    return shown;
  }

  private compute(id: number): TokenShown {
    const piece = this.tokenizer.idToToken(id) ?? '';
    const byte = BYTE_PIECE.exec(piece);
    if (byte) {
      const b = Number.parseInt(byte[1], 16);
      return {
        text: b < 0x80 ? String.fromCharCode(b) : `bytes:\\x${byte[1].toLowerCase()}`,
        bytes: [b],
        special: false,
      };
    }
    const special =
      piece !== '' &&
      this.tokenizer.decode([id], { skipSpecial: true }) === '' &&
      this.tokenizer.decode([id]) !== '';
    const text = special ? piece : piece.replaceAll('\u2581', ' ');
    return { text, bytes: [...Buffer.from(text, 'utf8')], special };
  }
}
