// API_MAX_CONCURRENT: the requests of one key in progress at once. In one process a count per key; front ends on
// Redis share theirs there (src/cluster/concurrency.ts), so that a client spread over several front ends by a load
// balancer gets the number set, not that number per front end.

/** Gives a held place back; a second call does nothing. */
export type Release = () => void;

/** Places for the requests of each key in progress. */
export interface ConcurrencyLimiter {
  /** Holds one of `max` places of `key`: its release, or null when all are held. */
  acquire(key: string, max: number): Release | null | Promise<Release | null>;
}

/** The places of this process alone. */
export class LocalConcurrency implements ConcurrencyLimiter {
  private readonly held = new Map<string, number>();

  acquire(key: string, max: number): Release | null {
    const n = this.held.get(key) ?? 0;
    if (n >= max) return null;
    this.held.set(key, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.held.get(key) ?? 1) - 1;
      if (left > 0) this.held.set(key, left);
      else this.held.delete(key);
    };
  }
}
