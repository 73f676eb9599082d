// A small deterministic PRNG for the synthetic data (sfc32 seeded through splitmix32). Only 32-bit integer
// arithmetic, so a seed gives the same numbers on every platform and Node version.

import { splitmix32 } from '../inference/generation/rng.js';

export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  /** `parts` are mixed into one stream: e.g. `new Rng(seed, imageIndex, STREAM_SCENE)`. */
  constructor(...parts: number[]) {
    let h = 0x811c9dc5;
    for (const p of parts) {
      if (!Number.isSafeInteger(p)) throw new RangeError(`seed parts must be integers, got ${p}`);
      const lo = p >>> 0;
      const hi = Math.floor(p / 0x1_0000_0000) >>> 0;
      h = splitmix32(h ^ lo)() ^ hi;
      h = splitmix32(h)();
    }
    const sm = splitmix32(h);
    this.a = sm();
    this.b = sm();
    this.c = sm();
    this.d = sm();
    for (let i = 0; i < 12; i++) this.u32();
  }

  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** [0, 1) */
  next(): number {
    return this.u32() / 0x1_0000_0000;
  }

  /** [lo, hi) */
  range(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }

  /** integer in [lo, hi] */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError('pick from an empty list');
    return items[Math.floor(this.next() * items.length)];
  }

  /** Weighted choice: `weights[i]` >= 0, not all 0. */
  weighted<T>(items: readonly T[], weights: readonly number[]): T {
    const total = weights.reduce((s, w) => s + w, 0);
    let r = this.next() * total;
    for (let i = 0; i < items.length; i++) {
      r -= weights[i];
      if (r < 0) return items[i];
    }
    return items[items.length - 1];
  }

  shuffle<T>(items: readonly T[]): T[] {
    const out = items.slice();
    for (let i = out.length - 1; i > 0; i--) {
      const j = Math.floor(this.next() * (i + 1));
      [out[i], out[j]] = [out[j], out[i]];
    }
    return out;
  }
}
