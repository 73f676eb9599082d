// Prompts that arrive together and start alike (the `n` choices of one API request, several users asking about
// the same new image at once) would each prefill the shared rows, one after another, since prefills run one at a
// time. Each answer says what it is waiting to prefill; a finished prefill whose rows a waiting prompt shares is
// held until every such prompt has had its turn, and lent to it (only then: no memory is held for nobody).
import type { KvCache } from './kv-cache.js';
import { commonPrefixRows, mostShared, type ContextLayout, type LentRows, type SharedContexts } from './kv-reuse.js';

/** Fewer shared rows than this are prefilled again rather than a prefill held for them. */
export const MIN_HANDOFF_ROWS = 16;

interface Held {
  layout: ContextLayout;
  kv: KvCache;
  /** the waiting prompts it is held for */
  for: Set<Waiting>;
}

/** A prompt waiting for its prefill: done() once it has taken what it could (or given up), idempotent. */
export interface Waiting {
  readonly layout: ContextLayout;
  /** its rows that come from its own conversation's cache anyway */
  readonly own: number;
  done(): void;
}

export class PrefillHandoff implements SharedContexts {
  private readonly waiting = new Set<Waiting>();
  private readonly held: Held[] = [];
  private holdCount = 0;
  private lentCount = 0;

  /** Registers a prompt that will prefill `layout` after its first `own` rows. */
  expect(layout: ContextLayout, own = 0): Waiting {
    const w: Waiting = {
      layout,
      own,
      done: () => {
        if (!this.waiting.delete(w)) return;
        for (let i = this.held.length - 1; i >= 0; i--) {
          const h = this.held[i];
          if (h.for.delete(w) && h.for.size === 0) {
            this.held.splice(i, 1);
            h.kv.dispose();
          }
        }
      },
    };
    this.waiting.add(w);
    return w;
  }

  /**
   * A finished prefill of `layout` (the caller keeps `kv`): held for the waiting prompts it would spare at least
   * MIN_HANDOFF_ROWS rows of prefill (rows in common beyond their own). What is held is a reference to `kv`, or,
   * where they share less than half of its rows (a long system prompt, another image), a copy of just those rows
   * (`copy`), so that no more memory than they take is held for them.
   */
  async offer(layout: ContextLayout, kv: KvCache, copy: (kv: KvCache, rows: number) => Promise<KvCache>): Promise<void> {
    const sharing = new Set<Waiting>();
    let most = 0;
    for (const w of this.waiting) {
      const rows = commonPrefixRows(w.layout, layout);
      if (rows - w.own < MIN_HANDOFF_ROWS) continue;
      // (one held already giving it as many rows is enough)
      if (this.held.some((h) => h.for.has(w) && Math.min(commonPrefixRows(h.layout, w.layout), h.kv.length) >= rows)) continue;
      sharing.add(w);
      most = Math.max(most, rows);
    }
    if (sharing.size === 0) return;
    const held = most * 2 >= kv.length ? kv.share() : await copy(kv, most);
    // (a prompt may have stopped waiting meanwhile: held for the others, or for none)
    for (const w of sharing) if (!this.waiting.has(w)) sharing.delete(w);
    if (sharing.size === 0) {
      held.dispose();
      return;
    }
    this.held.push({ layout, kv: held, for: sharing });
    this.holdCount++;
  }

  /** SharedContexts.lend over the held prefills. */
  lend(layout: ContextLayout, above: number, most: number): LentRows | undefined {
    const best = mostShared(this.held, (h) => h, layout, above, most);
    if (!best) return undefined;
    this.lentCount++;
    return { kv: best.candidate.kv.share(), rows: best.rows };
  }

  longest(layout: ContextLayout, most: number): number {
    return mostShared(this.held, (h) => h, layout, 0, most)?.rows ?? 0;
  }

  /** Prefills held so far. */
  get holds(): number {
    return this.holdCount;
  }

  /** Prompts that took a held prefill's rows so far. */
  get lent(): number {
    return this.lentCount;
  }

  /** Prefills held now. */
  get holding(): number {
    return this.held.length;
  }

  /** Prompts waiting for their turn to prefill. */
  get pending(): number {
    return this.waiting.size;
  }
}
