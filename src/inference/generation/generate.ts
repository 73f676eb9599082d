/**
 * The decoding loop: greedy / sampling with streaming, or beam search (one text event at the end).
 */
import { runBeamSearch } from './beam-search.js';
import { resolveGenerationOptions, type ResolvedGenerationOptions } from './options.js';
import {
  applyCountPenalties,
  applyLogitBias,
  applyRepetitionPenalty,
  applyTemperature,
  argmax,
  maskTokens,
  sampleFrom,
  softmax,
  topKFilter,
  topPFilter,
} from './processors.js';
import { LogprobQueue, tokenLogprob } from './logprobs.js';
import { createRng } from './rng.js';
import { StatePool, runStep } from './state-pool.js';
import { IncrementalTextStream } from './text-stream.js';
import type {
  DecodeState,
  GenerationEvent,
  GenerationOptions,
  GenerationStart,
  Rng,
  StepModel,
  TokenDecoder,
  TokenLogprob,
} from './types.js';

/**
 * Chooses the next token from raw logits: OpenAI's logit bias, then HF's order (repetition penalty over
 * `generated`), OpenAI's frequency and presence penalties, the min-new-tokens mask of the stop ids, then (sampling
 * only) temperature, top-k, top-p warpers and a multinomial draw; greedy is argmax (ties -> lowest id). `logits`
 * is not modified. `scratch` (length vocab), when given, holds the processed scores instead of a new array per
 * call; plain greedy needs none (argmax of the logits).
 */
export function selectNextToken(
  logits: ArrayLike<number>,
  generated: readonly number[],
  o: Pick<
    ResolvedGenerationOptions,
    | 'repetitionPenalty'
    | 'minNewTokens'
    | 'stopIds'
    | 'sample'
    | 'temperature'
    | 'topK'
    | 'topP'
    | 'frequencyPenalty'
    | 'presencePenalty'
    | 'logitBias'
  >,
  rng?: Rng,
  scratch?: Float64Array,
): number {
  const penalise = o.repetitionPenalty !== 1;
  const count = o.frequencyPenalty !== 0 || o.presencePenalty !== 0;
  const bias = o.logitBias.length > 0;
  const mask = generated.length < o.minNewTokens;
  // float32 -> float64 is exact, so the argmax (ties included) is the same as over a float64 copy
  if (!o.sample && !penalise && !count && !bias && !mask) return argmax(logits);
  const scores = scratch && scratch.length === logits.length ? scratch : new Float64Array(logits.length);
  scores.set(logits);
  if (bias) applyLogitBias(scores, o.logitBias);
  if (penalise) applyRepetitionPenalty(scores, generated, o.repetitionPenalty);
  if (count) applyCountPenalties(scores, generated, o.frequencyPenalty, o.presencePenalty);
  if (mask) maskTokens(scores, o.stopIds);
  if (!o.sample) return argmax(scores);
  applyTemperature(scores, o.temperature);
  topKFilter(scores, o.topK, 1);
  topPFilter(scores, o.topP, 1);
  if (!rng) throw new Error('selectNextToken: sampling needs an rng');
  return sampleFrom(softmax(scores, scores), rng);
}

/** The forced id at `position`, then the first stop id; -1 when the forced answer is over and there is none. */
function forcedToken(forced: readonly number[], position: number, stopIds: readonly number[]): number {
  if (position < forced.length) return forced[position];
  return stopIds.length ? stopIds[0] : -1;
}

/**
 * Generates text after a prefilled prompt.
 *
 * `start.logits` are the logits after the prompt; ownership of `start.state` passes to generate (once iteration
 * starts): every state it creates or receives is disposed exactly once when the generator finishes, is aborted
 * through `signal`, throws, or is left early by the consumer (`break` in `for await`).
 *
 * Greedy / sampling stream 'text' pieces (see IncrementalTextStream: trailing U+FFFD and partial stop strings are
 * held back); beam search (numBeams > 1) yields the final text once at the end. The last event is always 'done'
 * (unless the consumer left early or an error is thrown): `text` == concatenation of the 'text' pieces, i.e.
 * decode(tokenIds) cut before the first stop string; `tokenIds` never contains the stop id that ended generation;
 * `steps` counts decoding iterations (tokens selected, the stop token included). On abort nothing more is
 * emitted: `text` is what was streamed, `tokenIds` all ids chosen so far (beam search: the best live beam, text '').
 */
export async function* generate<S extends DecodeState>(
  model: StepModel<S>,
  start: GenerationStart<S>,
  decoder: TokenDecoder,
  opts: GenerationOptions,
  signal?: AbortSignal,
): AsyncGenerator<GenerationEvent, void, undefined> {
  const pool = new StatePool<S>();
  pool.add(start.state);
  try {
    const o = resolveGenerationOptions(opts);

    if (o.numBeams > 1 && !o.forceTokens) {
      const r = await runBeamSearch(model, start, o, pool, { signal, decoder });
      pool.releaseAllExcept(new Set());
      if (r.finishReason !== 'aborted' && r.text) yield { type: 'text', text: r.text };
      yield { type: 'done', text: r.text, tokenIds: r.tokenIds, finishReason: r.finishReason, steps: r.steps };
      return;
    }

    const rng = o.sample ? createRng(o.seed) : undefined;
    const logprobs = o.logprobs !== undefined ? new LogprobQueue() : undefined;
    /** A streamed piece with the tokens it completes (asked for): such a piece may be empty. */
    const piece = (text: string, entries: TokenLogprob[] | undefined): GenerationEvent | undefined =>
      entries?.length ? { type: 'text', text, logprobs: entries } : text ? { type: 'text', text } : undefined;
    /** The last piece of the answer, and the tokens with text in it not handed out yet. */
    const lastPiece = (): GenerationEvent | undefined => {
      const last = stream.finish(fullText());
      return piece(last, logprobs?.finish(stream.text.length));
    };
    const stopSet = new Set(o.stopIds);
    const stream = new IncrementalTextStream(o.stopStrings);
    const ids: number[] = [];
    // Per-generation buffers, so that a step allocates nothing vocabulary-sized besides the model's logits.
    const scratch = new Float64Array(model.vocabSize);
    const incremental = decoder.incremental?.();
    let decoded = '';
    const fullText = () => (incremental ? decoded : decoder.decode(ids));
    /** Normal end: the last state goes to start.retain (if any) instead of being disposed. */
    const finishStates = () => {
      if (start.retain && pool.has(state)) {
        pool.take(state);
        pool.releaseAllExcept(new Set());
        start.retain(state);
      } else {
        pool.releaseAllExcept(new Set());
      }
    };
    let state = start.state;
    let logits = start.logits;
    let steps = 0;
    const done = (finishReason: 'stop' | 'length' | 'aborted'): GenerationEvent => ({
      type: 'done',
      text: stream.text,
      tokenIds: [...ids],
      finishReason,
      steps,
    });

    for (;;) {
      if (signal?.aborted) {
        yield done('aborted');
        return;
      }
      if (ids.length >= o.maxNewTokens) break;

      const token = o.forceTokens ? forcedToken(o.forceTokens, ids.length, o.stopIds) : selectNextToken(logits, ids, o, rng, scratch);
      if (token >= 0) steps++;
      if (token < 0 || stopSet.has(token)) {
        finishStates();
        const last = lastPiece();
        if (last) yield last;
        yield done('stop');
        return;
      }
      ids.push(token);
      if (incremental) decoded = incremental.push(token);
      const text = fullText();
      logprobs?.add(tokenLogprob(logits, token, o.logprobs!), text.length);
      const r = stream.update(text);
      // (a stop string ends the answer: the tokens with text before it)
      const length = stream.text.length;
      const released = piece(r.text, r.stopped ? logprobs?.finish(length) : logprobs?.released(length));
      if (released) yield released;
      if (r.stopped) {
        finishStates();
        yield done('stop');
        return;
      }
      if (ids.length >= o.maxNewTokens) break;
      if (signal?.aborted) continue; // reported at the top of the loop

      const res = await runStep(model, [state], [token], pool, signal);
      if (!res) continue; // aborted
      if (res.states[0] !== state) pool.release(state);
      state = res.states[0];
      logits = res.logits[0];
    }

    // maxNewTokens reached
    finishStates();
    const last = lastPiece();
    if (last) yield last;
    yield done(stream.stopped ? 'stop' : 'length');
  } finally {
    pool.disposeAll();
  }
}
