// Reusing the KV cache of a conversation's previous turn: what each row of a context is (a text token, or
// a row of an identified image), the longest common prefix of two contexts, and an LRU of caches by bytes.
import type { KvCache } from './kv-cache.js';

/**
 * The rows of a context in order: segments[0], images[0], segments[1], ..., segments[n] (text segments
 * as token ids, images as `rows` embedding rows identified by `key`, e.g. the image's content hash; an
 * image without a key never matches another).
 */
export interface ContextLayout {
  segments: readonly (readonly number[])[];
  images: readonly { key: string | undefined; rows: number }[];
}

export function layoutLength(l: ContextLayout): number {
  let n = 0;
  for (const s of l.segments) n += s.length;
  for (const i of l.images) n += i.rows;
  return n;
}

/** Number of leading rows that two contexts have in common (same token ids, same image rows). */
export function commonPrefixRows(a: ContextLayout, b: ContextLayout): number {
  let n = 0;
  const segs = Math.min(a.segments.length, b.segments.length);
  for (let i = 0; i < segs; i++) {
    const sa = a.segments[i];
    const sb = b.segments[i];
    const m = Math.min(sa.length, sb.length);
    let j = 0;
    while (j < m && sa[j] === sb[j]) j++;
    n += j;
    if (j < sa.length || j < sb.length) return n;
    const ia = a.images[i];
    const ib = b.images[i];
    if (!ia || !ib || ia.key === undefined || ia.key !== ib.key || ia.rows !== ib.rows) return n;
    n += ia.rows;
  }
  return n;
}

/**
 * Of `candidates` (each with a context layout and the KV cache of its rows, or of the first of them), the one with
 * the most leading rows in common with `layout`, if more than `above`; the rows capped at `most` and at its cache's.
 */
export function mostShared<T>(
  candidates: Iterable<T>,
  of: (c: T) => { layout: ContextLayout; kv: KvCache },
  layout: ContextLayout,
  above: number,
  most: number,
): { candidate: T; rows: number } | undefined {
  let best: { candidate: T; rows: number } | undefined;
  for (const candidate of candidates) {
    const c = of(candidate);
    const rows = Math.min(commonPrefixRows(c.layout, layout), c.kv.length, most);
    if (rows > (best?.rows ?? above)) best = { candidate, rows };
  }
  return best;
}

/** A conversation's context after its last turn: the KV cache of exactly the rows `layout` describes. */
export class CachedContext {
  constructor(
    readonly kv: KvCache,
    readonly layout: ContextLayout,
  ) {
    const rows = layoutLength(layout);
    if (rows !== kv.length) throw new Error(`cached context: the layout has ${rows} rows but the KV cache ${kv.length}`);
  }

  get length(): number {
    return this.kv.length;
  }

  get bytes(): number {
    return this.kv.disposed ? 0 : this.kv.bytes;
  }

  dispose(): void {
    this.kv.dispose();
  }
}

export interface KvCacheStats {
  entries: number;
  bytes: number;
  budget: number;
  hits: number;
  misses: number;
  evictions: number;
  /** prompts that started from another conversation's kept rows (e.g. the same image, asked about elsewhere) */
  lent: number;
}

/** Rows lent by a kept context: `kv` (a reference the borrower disposes) has at least `rows` positions. */
export interface LentRows {
  kv: KvCache;
  rows: number;
}

/** Kept contexts that a new prompt may start from (see KvCacheLru.lend). */
export interface SharedContexts {
  /** The most leading rows any of them has in common with `layout`, capped at `most` (nothing taken or counted). */
  longest(layout: ContextLayout, most: number): number;
  /**
   * The kept context with the most leading rows in common with `layout`, if more than `above` (capped at `most`):
   * a reference to its rows, which the caller disposes; the context stays kept.
   */
  lend(layout: ContextLayout, above: number, most: number): LentRows | undefined;
}

/**
 * Cached contexts by key (a conversation), least recently used evicted first once their bytes exceed the
 * budget. take() removes the entry: the caller owns it (a conversation runs one request at a time) and
 * put()s the next one back. An entry larger than the whole budget is not kept.
 */
export class KvCacheLru<K = string> implements SharedContexts {
  /** least recently used first: each cache with when it was put (ms since the epoch) */
  private readonly map = new Map<K, { c: CachedContext; at: number }>();
  private used = 0;
  private hits = 0;
  private misses = 0;
  private evictions = 0;
  private lent = 0;

  constructor(readonly budget: number) {}

  /**
   * SharedContexts.lend over the kept contexts (a linear scan: a few dozen entries, each compared up to its
   * first difference). The lender counts as used for the budget (it moves to the back of the eviction order), not
   * for retention: its own conversation has not gone on (dropUnusedSince goes by when it was put).
   */
  lend(layout: ContextLayout, above: number, most: number): LentRows | undefined {
    const best = mostShared(this.map, ([, e]) => e.c, layout, above, most);
    if (!best) return undefined;
    const [key, e] = best.candidate;
    this.map.delete(key);
    this.map.set(key, e);
    this.lent++;
    return { kv: e.c.kv.share(), rows: best.rows };
  }

  longest(layout: ContextLayout, most: number): number {
    return mostShared(this.map, ([, e]) => e.c, layout, 0, most)?.rows ?? 0;
  }

  take(key: K): CachedContext | undefined {
    const e = this.map.get(key);
    if (!e) {
      this.misses++;
      return undefined;
    }
    this.map.delete(key);
    this.used -= e.c.bytes;
    this.hits++;
    return e.c;
  }

  put(key: K, c: CachedContext): void {
    this.delete(key);
    const bytes = c.bytes;
    if (bytes > this.budget) {
      c.dispose();
      this.evictions++;
      return;
    }
    this.map.set(key, { c, at: Date.now() });
    this.used += bytes;
    while (this.used > this.budget) {
      const [oldest, entry] = this.map.entries().next().value as [K, { c: CachedContext }];
      this.map.delete(oldest);
      this.used -= entry.c.bytes;
      entry.c.dispose();
      this.evictions++;
    }
  }

  delete(key: K): void {
    const e = this.map.get(key);
    if (!e) return;
    this.map.delete(key);
    this.used -= e.c.bytes;
    e.c.dispose();
  }

  /** Drops (disposes) the caches put before `cutoff` (ms since the epoch) and not taken since; how many. */
  dropUnusedSince(cutoff: number): number {
    let n = 0;
    // (every entry: one lent moved back in the eviction order, not in time)
    for (const [key, e] of this.map) {
      if (e.at >= cutoff) continue;
      this.delete(key);
      n++;
    }
    return n;
  }

  clear(): void {
    for (const e of this.map.values()) e.c.dispose();
    this.map.clear();
    this.used = 0;
  }

  get stats(): KvCacheStats {
    return {
      entries: this.map.size,
      bytes: this.used,
      budget: this.budget,
      hits: this.hits,
      misses: this.misses,
      evictions: this.evictions,
      lent: this.lent,
    };
  }
}
