// @prometheus-io/lezer-promql 0.42 ships its types but its package.json "exports" does not name
// them, so NodeNext resolution cannot find them: declare the one export these tests use.
declare module '@prometheus-io/lezer-promql' {
  import type { LRParser } from '@lezer/lr';
  export const parser: LRParser;
}
