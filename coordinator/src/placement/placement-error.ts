/** A placement that cannot work; the message says why and what would fix it. */
export class PlacementError extends Error {
  override name = 'PlacementError';
}
