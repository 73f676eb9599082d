// What `minigpt bench`'s scenarios (src/cli/bench/scenarios/) and its weight-type and thread measurements
// (src/cli/bench/weights.ts) share: the greedy options every measured answer uses, medians, number formatting.
import type { GenerationOptions } from '../../inference/generation/index.js';

/** Greedy, no penalty, no stop words: every run of a package gives the same tokens, as many as asked for. */
export const GREEDY: Partial<GenerationOptions> = { temperature: 0, repetitionPenalty: 1, stopIds: [], stopStrings: [] };

/** `--thread` / `--api`: `rounds` conversations (the first a warm-up), `tokens` per answer, the manager's KV cache budget. */
export interface ConversationRounds {
  rounds: number;
  tokens: number;
  kvCacheMb: number;
}

/** One package measured as a client meets it, a conversation at a time (`minigpt bench --thread` and `--api`). */
export type ConversationBench<R> = (
  dir: string,
  image: Uint8Array,
  threads: number,
  o: ConversationRounds,
  log: (s: string) => void,
) => Promise<R>;

export interface Stat {
  median: number;
  p95: number;
  n: number;
}

export function stat(xs: readonly number[]): Stat {
  if (xs.length === 0) return { median: NaN, p95: NaN, n: 0 };
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
  // nearest rank
  const p95 = s[Math.min(s.length - 1, Math.ceil(0.95 * s.length) - 1)];
  return { median, p95, n: s.length };
}

export function round(x: number): number {
  if (!Number.isFinite(x)) return x;
  const a = Math.abs(x);
  const d = a >= 100 ? 1 : a >= 1 ? 3 : 4;
  return Math.round(x * 10 ** d) / 10 ** d;
}

export function roundAll<T>(v: T): T {
  if (typeof v === 'number') return round(v) as T;
  if (Array.isArray(v)) return v.map(roundAll) as T;
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, roundAll(x)])) as T;
  return v;
}

export function fmt(x: number | undefined, unit = ''): string {
  if (x === undefined || !Number.isFinite(x)) return '-';
  const a = Math.abs(x);
  const s = a >= 100 ? x.toFixed(0) : a >= 10 ? x.toFixed(1) : a >= 1 ? x.toFixed(2) : x.toFixed(3);
  return `${s}${unit}`;
}
