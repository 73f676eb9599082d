/**
 * Log-probabilities of the generated tokens (OpenAI's `logprobs`): each chosen token's under the model (the
 * log-softmax of its raw logits, before penalties, bias and temperature, as vLLM and llama.cpp's server report
 * them) and the most likely tokens at its position; and which tokens' text a streamed piece carries.
 */
import type { TokenLogprob } from './types.js';

/** Most alternatives a token may report (OpenAI's limit for top_logprobs). */
export const MAX_TOP_LOGPROBS = 20;

/**
 * The log-probability of `id` under softmax(logits) and the `top` most likely ids (ties: the lower id first), in
 * float64, without a vocabulary-sized copy.
 */
export function tokenLogprob(logits: ArrayLike<number>, id: number, top: number): TokenLogprob {
  const n = logits.length;
  let max = Number.NEGATIVE_INFINITY;
  for (let i = 0; i < n; i++) if (logits[i] > max) max = logits[i];
  let total = 0;
  for (let i = 0; i < n; i++) total += Math.exp(logits[i] - max);
  const lse = max + Math.log(total);
  const k = Math.min(Math.max(Math.floor(top), 0), n);
  // the k best ids, best first: a sorted buffer (k is at most 20)
  const best: number[] = [];
  for (let i = 0; i < n && k > 0; i++) {
    const v = logits[i];
    if (best.length === k && !(v > logits[best[k - 1]])) continue;
    let j = best.length === k ? k - 1 : best.length;
    while (j > 0 && v > logits[best[j - 1]]) {
      best[j] = best[j - 1];
      j--;
    }
    best[j] = i;
  }
  return { id, logprob: logits[id] - lse, top: best.map((t) => ({ id: t, logprob: logits[t] - lse })) };
}

/**
 * The generated tokens' entries until the text they wrote is streamed. A token is handed out with the piece that
 * completes its text (a character split over byte tokens comes with the piece that shows it); at the end, every
 * token with text in the final answer, so those whose text a stop string cut away are left out.
 */
export class LogprobQueue {
  private pending: { entry: TokenLogprob; start: number; end: number }[] = [];
  private written = 0;

  /** A token whose text ends at `end` of the decoded answer (it starts where the one before ended). */
  add(entry: TokenLogprob, end: number): void {
    this.pending.push({ entry, start: this.written, end });
    this.written = end;
  }

  /** The entries whose text is all within the first `released` characters. */
  released(released: number): TokenLogprob[] {
    let i = 0;
    while (i < this.pending.length && this.pending[i].end <= released) i++;
    return this.pending.splice(0, i).map((p) => p.entry);
  }

  /** The rest, at the end: those with text in the final answer of `length` characters (or no text, before its end). */
  finish(length: number): TokenLogprob[] {
    const out = this.pending.filter((p) => p.start < length || p.end <= length).map((p) => p.entry);
    this.pending = [];
    return out;
  }
}
