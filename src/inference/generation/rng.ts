import type { Rng } from './types.js';

/** splitmix32: used only to expand a seed into the 128-bit xoshiro state. */
export function splitmix32(seed: number): () => number {
  let a = seed | 0;
  return () => {
    a = (a + 0x9e3779b9) | 0;
    let t = a ^ (a >>> 16);
    t = Math.imul(t, 0x21f0aaad);
    t ^= t >>> 15;
    t = Math.imul(t, 0x735a2d97);
    t ^= t >>> 15;
    return t >>> 0;
  };
}

/** Split any JS number into two 32-bit words (integers exactly, other values through their float64 bits). */
function seedWords(seed: number): [number, number] {
  if (Number.isSafeInteger(seed)) {
    const lo = seed >>> 0;
    const hi = Math.floor(seed / 0x1_0000_0000) >>> 0;
    return [lo, hi];
  }
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, Number.isNaN(seed) ? Number.NaN : seed);
  return [view.getUint32(4), view.getUint32(0) ^ 0x5bd1e995];
}

export interface SeededRng extends Rng {
  /** the next raw 32-bit output */
  nextUint32(): number;
}

/**
 * Deterministic PRNG: xoshiro128** seeded through splitmix32. Returns doubles in [0, 1) with 53 random bits.
 * The same seed always yields the same sequence (across platforms: only 32-bit integer arithmetic is used).
 * Without a seed, a random seed is drawn from crypto.getRandomValues.
 */
export function createRng(seed?: number): SeededRng {
  if (seed === undefined) {
    const buf = new Uint32Array(2);
    globalThis.crypto.getRandomValues(buf);
    seed = buf[0] * 0x200000 + (buf[1] & 0x1fffff); // 53-bit safe integer
  }
  const [lo, hi] = seedWords(seed);
  const sm = splitmix32(lo ^ Math.imul(hi, 0x85ebca6b) ^ hi);
  let s0 = sm();
  let s1 = sm() ^ hi;
  let s2 = sm();
  let s3 = sm();
  if ((s0 | s1 | s2 | s3) === 0) s0 = 1;

  const nextUint32 = (): number => {
    const result = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = rotl(s3, 11);
    return result;
  };
  const rng = (() => {
    const a = nextUint32() >>> 5; // 27 bits
    const b = nextUint32() >>> 6; // 26 bits
    return (a * 67108864 + b) / 9007199254740992;
  }) as SeededRng;
  rng.nextUint32 = nextUint32;
  return rng;
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
