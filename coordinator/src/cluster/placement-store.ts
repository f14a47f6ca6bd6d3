// Where a coordinator keeps its placement: a NATS key-value bucket (JetStream), one per cluster
// (proto's placementBucket), holding the whole PlacementRecord under one key. A coordinator that
// starts reads it to re-adopt the workers that still hold their shards; it rewrites it whenever
// an assignment changes, and after its NATS connection comes back (a server that restarted with
// an empty store gets the bucket again). Without JetStream there is no store: a restarted
// coordinator then places the model anew, and the log says so.

import { controlCodecs, PLACEMENT_KEY, type PlacementRecord, placementBucket } from '@medcluster/proto';
import type { KV, NatsConnection } from 'nats';

/** How long a store operation waits for JetStream. */
const STORE_TIMEOUT_MS = 5_000;
const RETRY_MS = 1_000;

/** Opens the bucket, creating it where it is missing (a NATS server that restarted empty). */
function openBucket(nc: NatsConnection, bucket: string): Promise<KV> {
  return nc
    .jetstream({ timeout: STORE_TIMEOUT_MS })
    .views.kv(bucket, { history: 1, timeout: STORE_TIMEOUT_MS });
}

export class PlacementStore {
  /** The record waiting to be written (a newer write replaces an older one not yet written). */
  private pending?: PlacementRecord;
  private writing?: Promise<void>;
  private closed = false;

  private constructor(
    private readonly nc: NatsConnection,
    private kv: KV | undefined,
    readonly bucket: string,
    private readonly log: (line: string) => void,
  ) {}

  /** Opens (or creates) the cluster's bucket; undefined where the server has no JetStream. */
  static async open(
    nc: NatsConnection,
    cluster: string,
    log: (line: string) => void,
  ): Promise<PlacementStore | undefined> {
    const bucket = placementBucket(cluster);
    try {
      return new PlacementStore(nc, await openBucket(nc, bucket), bucket, log);
    } catch (err) {
      log(
        `coordinator: no placement store (NATS key-value bucket ${bucket}: ${(err as Error).message}); run nats-server with JetStream (-js) so that a restarted coordinator re-adopts its workers instead of reloading the model`,
      );
      return undefined;
    }
  }

  /** The stored placement; undefined when there is none or it cannot be read (logged). */
  async read(): Promise<PlacementRecord | undefined> {
    try {
      this.kv ??= await openBucket(this.nc, this.bucket);
      const entry = await this.kv.get(PLACEMENT_KEY);
      return entry?.operation === 'PUT' ? controlCodecs.placement.decode(entry.value) : undefined;
    } catch (err) {
      this.log(`coordinator: the stored placement is unusable: ${(err as Error).message}`);
      return undefined;
    }
  }

  /**
   * Stores the placement. Writes happen one at a time in the background; one that fails (NATS
   * down) is retried until it succeeds or a newer record replaces it. Resolves once this record,
   * or a newer one, is stored.
   */
  write(record: PlacementRecord): Promise<void> {
    this.pending = record;
    this.writing ??= this.flush().finally(() => {
      this.writing = undefined;
    });
    return this.writing;
  }

  private async flush(): Promise<void> {
    let failures = 0;
    while (this.pending && !this.closed) {
      const record = this.pending;
      try {
        this.kv ??= await openBucket(this.nc, this.bucket);
        await this.kv.put(PLACEMENT_KEY, controlCodecs.placement.encode(record));
        if (this.pending === record) this.pending = undefined;
        if (failures > 0) this.log('coordinator: stored the placement');
      } catch (err) {
        if (failures++ === 0)
          this.log(`coordinator: cannot store the placement yet (${(err as Error).message}); retrying`);
        this.kv = undefined; // the bucket may be gone with the server's store: open it again
        await new Promise((r) => setTimeout(r, RETRY_MS));
      }
    }
  }

  close(): void {
    this.closed = true;
  }
}
