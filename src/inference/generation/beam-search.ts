/**
 * Beam search with Hugging Face transformers 4.30 semantics (BeamSearchScorer / BeamHypotheses,
 * num_beam_hyps_to_keep = 1, batch size 1), for decoder-only generation started from inputs_embeds: the
 * "input_ids" HF sees hold only the generated tokens, so hypothesis lengths count generated tokens only.
 *
 * Per step, for every beam: OpenAI's logit bias and frequency / presence penalties on the logits (OpenAI's
 * semantics: before the softmax, so the beam's log-probs stay normalised; no HF counterpart) -> log_softmax ->
 * repetition penalty (on the log-probs, over that beam's
 * generated ids) -> min-new-tokens mask of the stop ids -> + beam score; then the 2*num_beams best
 * (beam, token) pairs over all beams (ties: lower beam index, then lower token id). Walking them best-first, a
 * stop id ranked within the first num_beams closes a hypothesis (its ids without the stop token, scored
 * sum_logprobs / len ** length_penalty), other tokens extend the next beams until num_beams are filled.
 * Done when HF's is_done says so (early_stopping true / false / 'never'), at maxNewTokens, or when every beam's
 * text contains a stop string (upstream StoppingCriteriaSub requires all rows to match). Then the open beams are
 * added as hypotheses unless already done, and the best-scoring hypothesis wins (ties: the later one, like
 * Python's sorted(...).pop()).
 *
 * With sampling (HF beam_sample, 4.30): the warpers (temperature, top-k, top-p with min_tokens_to_keep=2) are
 * applied per beam AFTER adding the beam score, and 2*num_beams candidates are drawn without replacement from
 * the softmax over all beams' warped scores; candidate scores are the warped scores.
 *
 * Deviations, only where HF raises: an empty hypothesis (stop id as the first token) is scored with length 1
 * instead of dividing by zero; if fewer than num_beams non-stop candidates exist among the 2*num_beams, more
 * candidates are taken; if sampling without replacement runs out of positive mass, the remaining candidates are
 * the best remaining warped scores.
 */
import { createRng } from './rng.js';
import {
  applyCountPenalties,
  applyLogitBias,
  applyRepetitionPenalty,
  applyTemperature,
  logSoftmax,
  maskTokens,
  softmax,
  sampleFrom,
  topKFilter,
  topPFilter,
} from './processors.js';
import { resolveGenerationOptions, type ResolvedGenerationOptions } from './options.js';
import { StatePool, runStep } from './state-pool.js';
import { findFirstStop } from './text-stream.js';
import type { DecodeState, FinishReason, GenerationOptions, GenerationStart, Rng, StepModel, TokenDecoder } from './types.js';

/** The logits with OpenAI's bias and count penalties applied (a float64 copy), or the logits themselves without them. */
function openAiProcessed(
  logits: Float32Array,
  generated: readonly number[],
  o: Pick<ResolvedGenerationOptions, 'logitBias' | 'frequencyPenalty' | 'presencePenalty'>,
): ArrayLike<number> {
  if (o.logitBias.length === 0 && o.frequencyPenalty === 0 && o.presencePenalty === 0) return logits;
  const scores = Float64Array.from(logits);
  applyLogitBias(scores, o.logitBias);
  return applyCountPenalties(scores, generated, o.frequencyPenalty, o.presencePenalty);
}

export interface BeamHypothesis {
  /** generated ids (without the closing stop token) */
  tokenIds: number[];
  /** sum of (processed) log-probabilities */
  sumLogprobs: number;
  /** sumLogprobs / len ** lengthPenalty */
  score: number;
  /** closed by a stop id (true) or still open when the search ended (false) */
  finished: boolean;
}

/** HF BeamHypotheses (4.30) for one batch entry. */
export class BeamHypotheses {
  readonly beams: BeamHypothesis[] = [];
  worstScore = 1e9;

  constructor(
    readonly numBeams: number,
    readonly lengthPenalty: number,
    readonly earlyStopping: boolean | 'never',
    readonly maxLength: number,
  ) {}

  get size(): number {
    return this.beams.length;
  }

  add(tokenIds: number[], sumLogprobs: number, finished: boolean): void {
    // HF: sum_logprobs / (hyp.shape[-1] ** length_penalty); length 0 would divide by zero there
    const score = sumLogprobs / Math.max(tokenIds.length, 1) ** this.lengthPenalty;
    if (this.beams.length < this.numBeams || score > this.worstScore) {
      this.beams.push({ tokenIds, sumLogprobs, score, finished });
      if (this.beams.length > this.numBeams) {
        // python: sorted([(s, idx) ...]) -> delete the lowest score (lowest index among ties)
        const order = this.beams.map((_, i) => i).sort((a, b) => cmp(this.beams[a].score, this.beams[b].score) || a - b);
        const worst = order[0];
        this.worstScore = this.beams[order[1]].score;
        this.beams.splice(worst, 1);
      } else {
        this.worstScore = Math.min(score, this.worstScore);
      }
    }
  }

  /** HF is_done(best_sum_logprobs, cur_len) with cur_len = generated length after this step (4.28+ "+1"). */
  isDone(bestSumLogprobs: number, curLen: number): boolean {
    if (this.beams.length < this.numBeams) return false;
    if (this.earlyStopping === true) return true;
    let denom = curLen;
    if (this.earlyStopping === 'never' && this.lengthPenalty > 0) denom = this.maxLength;
    const highest = bestSumLogprobs / Math.max(denom, 1) ** this.lengthPenalty;
    return this.worstScore >= highest;
  }

  /** Best hypothesis: highest score; among equal scores the one added last (python sorted + pop()). */
  best(): BeamHypothesis | undefined {
    let best: BeamHypothesis | undefined;
    for (const b of this.beams) if (!best || !(b.score < best.score)) best = b;
    return best;
  }
}

function cmp(a: number, b: number): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export interface BeamSearchContext {
  signal?: AbortSignal;
  /** needed for stopStrings (all-beams stop criterion, and cutting the final text) */
  decoder?: TokenDecoder;
  /** random source for beam sampling; defaults to createRng(opts.seed) */
  rng?: Rng;
}

export interface BeamSearchResult {
  /** best hypothesis' generated ids (no stop token) */
  tokenIds: number[];
  /** its decoded text cut before the first stop string ('' without a decoder or when aborted) */
  text: string;
  /** its length-penalised score (NaN when aborted) */
  score: number;
  finishReason: FinishReason;
  /** decoding iterations (candidates selected), one more than the number of model.step calls unless aborted */
  steps: number;
  /** all kept hypotheses, best first (empty when aborted) */
  hypotheses: BeamHypothesis[];
}

interface Beam<S> {
  state: S;
  ids: number[];
  score: number;
}

interface Candidate {
  beam: number;
  token: number;
  score: number;
}

/**
 * Beam search / beam sampling (opts.numBeams beams; numBeams = 1 is allowed and, without stop ids, equals greedy
 * decoding). Takes ownership of start.state: every state is disposed before the promise settles, also on abort
 * (then finishReason is 'aborted' and tokenIds is the best live beam) and on errors.
 */
export async function beamSearch<S extends DecodeState>(
  model: StepModel<S>,
  start: GenerationStart<S>,
  opts: GenerationOptions,
  ctx: BeamSearchContext = {},
): Promise<BeamSearchResult> {
  const pool = new StatePool<S>();
  pool.add(start.state);
  try {
    const o = resolveGenerationOptions(opts);
    return await runBeamSearch(model, start, o, pool, ctx);
  } finally {
    pool.disposeAll();
  }
}

/** @internal the search itself; states live in `pool`, which the caller disposes. */
export async function runBeamSearch<S extends DecodeState>(
  model: StepModel<S>,
  start: GenerationStart<S>,
  o: ResolvedGenerationOptions,
  pool: StatePool<S>,
  ctx: BeamSearchContext,
): Promise<BeamSearchResult> {
  const { signal, decoder } = ctx;
  const n = o.numBeams;
  const stopSet = new Set(o.stopIds);
  const useStopStrings = decoder !== undefined && o.stopStrings.length > 0;
  const rng = o.sample ? (ctx.rng ?? createRng(o.seed)) : undefined;
  const hyps = new BeamHypotheses(n, o.lengthPenalty, o.earlyStopping, o.maxNewTokens);

  // HF: every beam starts from the prompt, beam_scores = [0, -1e9, -1e9, ...]
  let beams: Beam<S>[] = Array.from({ length: n }, (_, b) => ({ state: start.state, ids: [], score: b === 0 ? 0 : -1e9 }));
  let logits: Float32Array[] = Array.from({ length: n }, () => start.logits);
  let steps = 0;

  const aborted = (): BeamSearchResult => ({
    tokenIds: [...beams[0].ids],
    text: '',
    score: Number.NaN,
    finishReason: 'aborted',
    steps,
    hypotheses: [],
  });

  if (o.maxNewTokens === 0) {
    return { tokenIds: [], text: '', score: 0, finishReason: 'length', steps: 0, hypotheses: [] };
  }

  let done = false;
  for (;;) {
    if (signal?.aborted) return aborted();
    const vocab = logits[0].length;
    const curGenerated = beams[0].ids.length;

    // --- per-beam scores
    const rows: Float64Array[] = [];
    for (let b = 0; b < n; b++) {
      const row = logSoftmax(openAiProcessed(logits[b], beams[b].ids, o));
      if (o.repetitionPenalty !== 1) applyRepetitionPenalty(row, beams[b].ids, o.repetitionPenalty);
      if (curGenerated < o.minNewTokens) maskTokens(row, o.stopIds);
      const bs = beams[b].score;
      for (let i = 0; i < vocab; i++) row[i] += bs;
      if (o.sample) {
        applyTemperature(row, o.temperature);
        topKFilter(row, o.topK, 2);
        topPFilter(row, o.topP, 2);
      }
      rows.push(row);
    }

    // --- candidates, best first
    const k = Math.min(Math.max(2 * n, n + stopSet.size), n * vocab);
    const candidates = o.sample ? sampleCandidates(rows, k, rng!) : topCandidates(rows, k);
    steps++;

    // --- BeamSearchScorer.process
    const next: Candidate[] = [];
    for (let rank = 0; rank < candidates.length && next.length < n; rank++) {
      const c = candidates[rank];
      if (stopSet.has(c.token)) {
        if (rank >= n) continue;
        hyps.add([...beams[c.beam].ids], c.score, true);
      } else {
        next.push(c);
      }
    }
    if (next.length < n) throw new Error(`beam search: only ${next.length} continuations for ${n} beams (vocabulary too small?)`);
    const curLen = curGenerated + 1;
    done = done || hyps.isDone(candidates[0].score, curLen);

    const nextIds = next.map((c) => [...beams[c.beam].ids, c.token]);
    const lengthReached = curLen >= o.maxNewTokens;
    const allStopped = useStopStrings && nextIds.every((ids) => findFirstStop(decoder.decode(ids), o.stopStrings) !== null);

    if (done || lengthReached || allStopped) {
      if (!done) next.forEach((c, i) => hyps.add(nextIds[i], c.score, false));
      pool.releaseAllExcept(new Set());
      break;
    }

    // --- advance the selected beams (batched; parents may repeat)
    const res = await runStep(
      model,
      next.map((c) => beams[c.beam].state),
      next.map((c) => c.token),
      pool,
      signal,
    );
    if (!res) return aborted();
    pool.releaseAllExcept(new Set(res.states));
    beams = next.map((c, i) => ({ state: res.states[i], ids: nextIds[i], score: c.score }));
    logits = res.logits;
  }

  const sorted = [...hyps.beams].sort((a, b) => cmp(b.score, a.score));
  const best = hyps.best()!;
  let text = '';
  let finishReason: FinishReason = best.finished ? 'stop' : 'length';
  if (decoder) {
    text = decoder.decode(best.tokenIds);
    const hit = findFirstStop(text, o.stopStrings);
    if (hit) {
      text = text.slice(0, hit.index);
      finishReason = 'stop';
    }
  }
  return { tokenIds: best.tokenIds, text, score: best.score, finishReason, steps, hypotheses: [best, ...sorted.filter((h) => h !== best)] };
}

/** The k largest entries over all rows (flattened beam-major), ties -> lower flat index; like torch.topk. */
function topCandidates(rows: Float64Array[], k: number): Candidate[] {
  const out: Candidate[] = [];
  for (let b = 0; b < rows.length; b++) {
    const row = rows[b];
    for (let t = 0; t < row.length; t++) {
      const v = row[t];
      if (Number.isNaN(v)) continue;
      if (out.length === k && !(v > out[k - 1].score)) continue;
      const cand: Candidate = { beam: b, token: t, score: v };
      let j: number;
      if (out.length < k) {
        out.push(cand);
        j = out.length - 1;
      } else {
        out[k - 1] = cand;
        j = k - 1;
      }
      // bubble up past strictly smaller scores only: equal scores keep the lower flat index first
      while (j > 0 && out[j - 1].score < v) {
        out[j] = out[j - 1];
        out[j - 1] = cand;
        j--;
      }
    }
  }
  return out;
}

/** torch.multinomial(softmax(flattened), k, replacement=False), then sorted by score descending. */
function sampleCandidates(rows: Float64Array[], k: number, rng: Rng): Candidate[] {
  const vocab = rows[0].length;
  const flat = new Float64Array(rows.length * vocab);
  rows.forEach((r, b) => flat.set(r, b * vocab));
  const probs = softmax(flat);
  const taken = new Set<number>();
  const out: Candidate[] = [];
  while (out.length < k) {
    let mass = 0;
    for (let i = 0; i < probs.length; i++) if (probs[i] > 0) mass += probs[i];
    let idx: number;
    if (mass > 0 && Number.isFinite(mass)) {
      idx = sampleFrom(probs, rng);
    } else {
      idx = -1; // no positive mass left: best remaining score
      for (let i = 0; i < flat.length; i++) if (!taken.has(i) && (idx < 0 || flat[i] > flat[idx])) idx = i;
      if (idx < 0) break;
    }
    taken.add(idx);
    probs[idx] = 0;
    out.push({ beam: Math.floor(idx / vocab), token: idx % vocab, score: flat[idx] });
  }
  return out.sort((a, b) => cmp(b.score, a.score));
}
