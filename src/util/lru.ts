/** A Map of at most `capacity` entries: setting past it drops the least recently set or read one. */
export class LruMap<K, V> {
  private readonly map = new Map<K, V>();
  constructor(private readonly capacity: number) {}
  /** the value, which then counts as just used */
  get(k: K): V | undefined {
    const v = this.map.get(k);
    if (v !== undefined) {
      this.map.delete(k);
      this.map.set(k, v);
    }
    return v;
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
    this.map.set(k, v);
    while (this.map.size > this.capacity) this.map.delete(this.map.keys().next().value as K);
  }
}
