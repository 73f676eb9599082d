/**
 * Logits processors / warpers with Hugging Face transformers (4.30) semantics, plus the small numeric helpers
 * (softmax, argmax, sampling) the decoding loops use. Processors work in place on a mutable score array and
 * return it; use Float64Array copies of the model's logits so that the caller's buffers are never modified.
 */
import type { Rng } from './types.js';

/** A mutable array of scores (logits or log-probabilities), one per vocabulary entry. */
export type Scores = Float64Array | Float32Array | number[];

/**
 * HF RepetitionPenaltyLogitsProcessor: for every DISTINCT id in `ids`, a score < 0 is multiplied by `penalty`,
 * any other score (>= 0) is divided by it. Ids outside the vocabulary are ignored. In place; returns `scores`.
 */
export function applyRepetitionPenalty<T extends Scores>(scores: T, ids: readonly number[], penalty: number): T {
  if (!(penalty > 0) || !Number.isFinite(penalty)) {
    throw new RangeError(`repetitionPenalty must be a strictly positive number, got ${penalty}`);
  }
  if (penalty === 1 || ids.length === 0) return scores;
  const seen = new Set<number>();
  for (const id of ids) {
    if (seen.has(id) || !Number.isInteger(id) || id < 0 || id >= scores.length) continue;
    seen.add(id);
    const s = scores[id];
    scores[id] = s < 0 ? s * penalty : s / penalty;
  }
  return scores;
}

/**
 * OpenAI's `logit_bias`: each (id, bias) pair adds `bias` to that id's score (-100 bans a token in practice, +100
 * makes it the only choice). Ids outside the vocabulary have no score and are skipped. In place.
 */
export function applyLogitBias<T extends Scores>(scores: T, bias: readonly (readonly [number, number])[]): T {
  for (const [id, b] of bias) {
    if (Number.isInteger(id) && id >= 0 && id < scores.length) scores[id] = scores[id] + b;
  }
  return scores;
}

/**
 * OpenAI's frequency and presence penalties (its "Parameter details"): every id generated c > 0 times loses
 * c * frequency + presence from its score, over the ids generated so far (negative values favour repeats).
 * Ids outside the vocabulary are ignored. In place.
 */
export function applyCountPenalties<T extends Scores>(scores: T, generated: readonly number[], frequency: number, presence: number): T {
  if ((frequency === 0 && presence === 0) || generated.length === 0) return scores;
  const counts = new Map<number, number>();
  for (const id of generated) {
    if (Number.isInteger(id) && id >= 0 && id < scores.length) counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  for (const [id, c] of counts) scores[id] = scores[id] - c * frequency - presence;
  return scores;
}

/** Sets the given ids to -Infinity (HF MinLengthLogitsProcessor / MinNewTokensLengthLogitsProcessor). In place. */
export function maskTokens<T extends Scores>(scores: T, ids: readonly number[]): T {
  for (const id of ids) {
    if (Number.isInteger(id) && id >= 0 && id < scores.length) scores[id] = Number.NEGATIVE_INFINITY;
  }
  return scores;
}

/** HF TemperatureLogitsWarper: scores / temperature (temperature must be > 0). In place. */
export function applyTemperature<T extends Scores>(scores: T, temperature: number): T {
  if (!(temperature > 0) || !Number.isFinite(temperature)) {
    throw new RangeError(`temperature must be a strictly positive number, got ${temperature}`);
  }
  if (temperature === 1) return scores;
  for (let i = 0; i < scores.length; i++) scores[i] = scores[i] / temperature;
  return scores;
}

/**
 * HF TopKLogitsWarper: k' = min(max(k, minTokensToKeep), vocab); every score strictly below the k'-th largest
 * value becomes -Infinity. Ties with the k'-th value are all kept (so more than k tokens can survive), exactly as
 * `scores < torch.topk(scores, k)[0][..., -1]`. k <= 0 disables the filter. In place.
 */
export function topKFilter<T extends Scores>(scores: T, k: number, minTokensToKeep = 1): T {
  if (!(k > 0)) return scores;
  const n = scores.length;
  const kk = Math.min(Math.max(Math.floor(k), minTokensToKeep), n);
  if (kk >= n || n === 0) return scores;
  const kth = kthLargest(scores, kk);
  for (let i = 0; i < n; i++) {
    if (scores[i] < kth) scores[i] = Number.NEGATIVE_INFINITY;
  }
  return scores;
}

/** The k-th largest value (1-based, duplicates counted) of the array. */
function kthLargest(scores: Scores, k: number): number {
  const n = scores.length;
  if (k <= 64) {
    // small k (the usual case: top-k 50): keep a sorted (descending) buffer of the k best values
    const best = new Float64Array(k).fill(Number.NEGATIVE_INFINITY);
    let filled = 0;
    for (let i = 0; i < n; i++) {
      const v = scores[i];
      if (Number.isNaN(v)) continue;
      if (filled === k && v <= best[k - 1]) continue;
      let j = filled < k ? filled++ : k - 1;
      while (j > 0 && best[j - 1] < v) {
        best[j] = best[j - 1];
        j--;
      }
      best[j] = v;
    }
    return best[k - 1];
  }
  const sorted = Float64Array.from(scores as ArrayLike<number>).sort();
  return sorted[n - k];
}

/**
 * HF TopPLogitsWarper (4.30): sort ascending, softmax, cumulative sum; every token whose ascending cumulative
 * probability is <= 1 - p is removed (-Infinity), except the `minTokensToKeep` most probable ones.
 * Equivalently: a token is kept iff the probability mass of the tokens ranked strictly above it is < p (up to
 * rounding), i.e. the minimal nucleus reaching mass p. p >= 1 disables the filter (HF does not add the warper).
 *
 * Ties: HF's order among equal scores is torch.sort's (unspecified); here equal scores are ranked by id, the
 * LOWER id counting as more probable, so at the nucleus boundary lower ids are kept first.
 * Softmax and cumulative sums are computed in float64. In place.
 */
export function topPFilter<T extends Scores>(scores: T, p: number, minTokensToKeep = 1): T {
  if (!(p >= 0 && p <= 1)) throw new RangeError(`topP must be in [0, 1], got ${p}`);
  if (p >= 1) return scores;
  // -Infinity tokens have probability 0: they are removed already and cannot change the cumulative sums.
  const idx: number[] = [];
  for (let i = 0; i < scores.length; i++) if (scores[i] !== Number.NEGATIVE_INFINITY) idx.push(i);
  // ascending by score; among equal scores the higher id comes first (= ranked as less probable)
  idx.sort((a, b) => {
    const sa = scores[a];
    const sb = scores[b];
    return sa < sb ? -1 : sa > sb ? 1 : b - a;
  });
  const m = idx.length;
  if (m === 0) return scores;
  const max = scores[idx[m - 1]];
  const probs = new Float64Array(m);
  let total = 0;
  for (let j = 0; j < m; j++) {
    const e = Math.exp(scores[idx[j]] - max);
    probs[j] = e;
    total += e;
  }
  const threshold = 1 - p;
  const keepFrom = m - minTokensToKeep; // positions >= keepFrom are always kept
  let cum = 0;
  for (let j = 0; j < m; j++) {
    cum += probs[j] / total;
    if (j >= keepFrom) break;
    if (cum <= threshold) scores[idx[j]] = Number.NEGATIVE_INFINITY;
    else break; // cumulative sums only grow
  }
  return scores;
}

/**
 * Softmax in float64 (exp(-Infinity) = 0). Returns all-NaN, like torch, when every score is -Infinity.
 * `out` (length n; may be `scores` itself) receives the result instead of a new array.
 */
export function softmax(scores: ArrayLike<number>, out: Float64Array = new Float64Array(scores.length)): Float64Array {
  const n = scores.length;
  if (out.length !== n) throw new RangeError(`softmax: output of length ${out.length} for ${n} scores`);
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < n; i++) if (scores[i] > max || Number.isNaN(scores[i])) max = scores[i];
  if (!Number.isFinite(max)) {
    if (max === Number.POSITIVE_INFINITY) {
      for (let i = 0; i < n; i++) out[i] = scores[i] === max ? 1 : 0;
      let c = 0;
      for (let i = 0; i < n; i++) c += out[i];
      for (let i = 0; i < n; i++) out[i] /= c;
      return out;
    }
    return out.fill(Number.NaN);
  }
  let total = 0;
  for (let i = 0; i < n; i++) {
    const e = Math.exp(scores[i] - max);
    out[i] = e;
    total += e;
  }
  for (let i = 0; i < n; i++) out[i] /= total;
  return out;
}

/** log_softmax in float64 (x - max - log(sum(exp(x - max)))). */
export function logSoftmax(scores: ArrayLike<number>): Float64Array {
  const n = scores.length;
  const out = new Float64Array(n);
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < n; i++) if (scores[i] > max) max = scores[i];
  if (!Number.isFinite(max)) return out.fill(Number.NaN);
  let total = 0;
  for (let i = 0; i < n; i++) total += Math.exp(scores[i] - max);
  const lse = max + Math.log(total);
  for (let i = 0; i < n; i++) out[i] = scores[i] - lse;
  return out;
}

/**
 * Index of the maximum; ties -> lowest index (torch.argmax). NaN counts as the maximum (torch semantics), the
 * first NaN wins. Returns -1 for an empty array.
 */
export function argmax(scores: ArrayLike<number>): number {
  let best = -1;
  let bestV = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < scores.length; i++) {
    const v = scores[i];
    if (Number.isNaN(v)) return i;
    if (best < 0 || v > bestV) {
      best = i;
      bestV = v;
    }
  }
  return best;
}

/**
 * Draws one index with probability proportional to `probs[i]` (need not be normalised) using one uniform draw:
 * the first i whose cumulative sum exceeds u * total. Zero-probability entries are never returned.
 * Throws if the total mass is not a positive finite number (e.g. every token masked).
 */
export function sampleFrom(probs: ArrayLike<number>, rng: Rng): number {
  let total = 0;
  for (let i = 0; i < probs.length; i++) {
    const p = probs[i];
    if (p < 0 || Number.isNaN(p)) throw new RangeError(`invalid probability ${p} at index ${i}`);
    total += p;
  }
  if (!(total > 0) || !Number.isFinite(total)) {
    throw new RangeError('cannot sample: the distribution has no positive finite mass (every token masked?)');
  }
  const u = rng() * total;
  let acc = 0;
  let last = -1;
  for (let i = 0; i < probs.length; i++) {
    const p = probs[i];
    if (p <= 0) continue;
    acc += p;
    last = i;
    if (u < acc) return i;
  }
  return last; // rounding: u landed on the very top of the cumulative sum
}
