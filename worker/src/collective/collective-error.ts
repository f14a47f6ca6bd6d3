/** A collective call or group that failed: a peer left, ranks disagreed, or the group is closed. */
export class CollectiveError extends Error {
  override name = 'CollectiveError';
}
