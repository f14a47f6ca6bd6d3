// Finds stop sequences in streamed text. Text that could still become the start of a stop
// sequence is held back, so a client never sees part of a stop string.

export class StopMatcher {
  private pending = '';
  private readonly longest: number;

  constructor(private readonly stops: readonly string[]) {
    this.longest = Math.max(0, ...stops.map((s) => s.length));
  }

  /** Adds text; returns what can be emitted now and whether a stop sequence was hit. */
  push(text: string): { emit: string; stopped: boolean; matched?: string } {
    this.pending += text;
    let cut = -1;
    let matched: string | undefined;
    for (const stop of this.stops) {
      const at = stop ? this.pending.indexOf(stop) : -1;
      if (at >= 0 && (cut < 0 || at < cut)) {
        cut = at;
        matched = stop;
      }
    }
    if (cut >= 0) {
      const emit = this.pending.slice(0, cut);
      this.pending = '';
      return { emit, stopped: true, matched };
    }
    const hold = this.heldSuffix();
    const emit = this.pending.slice(0, this.pending.length - hold);
    this.pending = this.pending.slice(this.pending.length - hold);
    return { emit, stopped: false };
  }

  /** The text held back at the end of generation (no stop sequence followed). */
  flush(): string {
    const rest = this.pending;
    this.pending = '';
    return rest;
  }

  /** Length of the longest suffix of pending text that is a proper prefix of a stop sequence. */
  private heldSuffix(): number {
    for (let n = Math.min(this.longest - 1, this.pending.length); n > 0; n--) {
      const tail = this.pending.slice(this.pending.length - n);
      if (this.stops.some((s) => s.startsWith(tail))) return n;
    }
    return 0;
  }
}
