// Hands out KV cache blocks. The coordinator owns block tables; workers own the memory
// the block ids index. Every stage and rank uses the same table for a sequence.

export class OutOfBlocksError extends Error {
  constructor(needed: number, free: number) {
    super(`KV cache is full: ${needed} blocks needed, ${free} free`);
    this.name = 'OutOfBlocksError';
  }
}

export class BlockAllocator {
  private readonly free: number[];

  constructor(
    readonly numBlocks: number,
    readonly blockSize: number,
  ) {
    // Pop from the end: low block ids are handed out first (easier to read in logs).
    this.free = Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i);
  }

  get freeBlocks(): number {
    return this.free.length;
  }

  /** Blocks needed to hold `tokens` positions. */
  blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.blockSize);
  }

  /** Grows `table` so it holds `tokens` positions; throws OutOfBlocksError (taking nothing) if it cannot. */
  ensure(table: number[], tokens: number): void {
    const needed = this.blocksFor(tokens) - table.length;
    if (needed <= 0) return;
    if (needed > this.free.length) throw new OutOfBlocksError(needed, this.free.length);
    for (let i = 0; i < needed; i++) table.push(this.free.pop() as number);
  }

  release(table: number[]): void {
    for (const block of table) this.free.push(block);
    table.length = 0;
  }
}
