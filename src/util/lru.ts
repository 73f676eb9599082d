/** A Map of at most `capacity` entries: setting past it drops the least recently set or read one. */
export class LruMap<K, V> {
  /** oldest use first: each entry with when it was last set or read (ms since the epoch) */
  private readonly map = new Map<K, { v: V; at: number }>();
  constructor(private readonly capacity: number) {}
  /** the value, which then counts as just used */
  get(k: K): V | undefined {
    const e = this.map.get(k);
    if (e === undefined) return undefined;
    this.map.delete(k);
    this.map.set(k, { v: e.v, at: Date.now() });
    return e.v;
  }
  /** whether `k` is there (without counting as a use) */
  has(k: K): boolean {
    return this.map.has(k);
  }
  /** removes `k`; whether it was there */
  delete(k: K): boolean {
    return this.map.delete(k);
  }
  /** stores nothing when the capacity is 0 */
  set(k: K, v: V): void {
    if (this.capacity <= 0) return;
    this.map.delete(k);
    this.map.set(k, { v, at: Date.now() });
    while (this.map.size > this.capacity) this.map.delete(this.map.keys().next().value as K);
  }
  /** Removes the entries not set or read since `cutoff` (ms since the epoch); their keys. */
  dropUnusedSince(cutoff: number): K[] {
    const gone: K[] = [];
    for (const [k, e] of this.map) {
      if (e.at >= cutoff) break;
      this.map.delete(k);
      gone.push(k);
    }
    return gone;
  }
}
