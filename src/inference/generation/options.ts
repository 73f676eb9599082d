import { MAX_TOP_LOGPROBS } from './logprobs.js';
import type { GenerationOptions } from './types.js';

/** Upstream `Chat.answer` default for max_new_tokens. */
export const DEFAULT_MAX_NEW_TOKENS = 300;
/** Hugging Face GenerationConfig default top_k (applies whenever sampling, unless overridden). */
export const HF_DEFAULT_TOP_K = 50;

/**
 * The generation settings of upstream MiniGPT-v2 `Chat.answer` / `answer_prepare` (HF 4.30 generate):
 * do_sample=True, top_p=0.9, temperature=1.0, repetition_penalty=1.05, min_length=1, num_beams=1,
 * length_penalty=1, max_new_tokens=300, HF default top_k=50, stopping on token 2 (</s>), and the answer cut
 * at '###' (`output_text.split('###')[0]`).
 */
export const UPSTREAM_CHAT_OPTIONS: Readonly<GenerationOptions> = Object.freeze({
  maxNewTokens: DEFAULT_MAX_NEW_TOKENS,
  minNewTokens: 1,
  doSample: true,
  temperature: 1,
  topP: 0.9,
  topK: HF_DEFAULT_TOP_K,
  repetitionPenalty: 1.05,
  numBeams: 1,
  lengthPenalty: 1,
  earlyStopping: false,
  stopIds: [2],
  stopStrings: ['###'],
});

export interface ResolvedGenerationOptions {
  maxNewTokens: number;
  minNewTokens: number;
  /** true: sample (multinomial) / beam sample; false: greedy / beam search */
  sample: boolean;
  temperature: number;
  topK: number;
  topP: number;
  repetitionPenalty: number;
  frequencyPenalty: number;
  presencePenalty: number;
  /** (id, bias) pairs; empty: none */
  logitBias: readonly (readonly [number, number])[];
  /** alternatives reported per token; undefined: no log-probabilities */
  logprobs: number | undefined;
  numBeams: number;
  lengthPenalty: number;
  earlyStopping: boolean | 'never';
  stopIds: number[];
  stopStrings: string[];
  seed: number | undefined;
  forceTokens: readonly number[] | undefined;
}

function checkInt(name: string, v: number, min: number): number {
  if (!Number.isInteger(v) || v < min) throw new RangeError(`${name} must be an integer >= ${min}, got ${v}`);
  return v;
}

/** Applies the defaults and validates (throws RangeError on invalid values, like HF's warper constructors). */
export function resolveGenerationOptions(opts: GenerationOptions): ResolvedGenerationOptions {
  const maxNewTokens = checkInt('maxNewTokens', (opts.maxNewTokens as number | undefined) ?? DEFAULT_MAX_NEW_TOKENS, 0);
  const minNewTokens = checkInt('minNewTokens', opts.minNewTokens ?? 0, 0);
  const temperature = opts.temperature ?? 1;
  if (!(temperature >= 0) || !Number.isFinite(temperature)) {
    throw new RangeError(`temperature must be a finite number >= 0, got ${temperature}`);
  }
  const doSample = opts.doSample ?? (opts.temperature !== undefined && opts.temperature > 0);
  const sample = doSample && temperature > 0;
  const topK = checkInt('topK', opts.topK ?? HF_DEFAULT_TOP_K, 0);
  const topP = opts.topP ?? 1;
  if (!(topP >= 0 && topP <= 1)) throw new RangeError(`topP must be in [0, 1], got ${topP}`);
  const repetitionPenalty = opts.repetitionPenalty ?? 1;
  if (!(repetitionPenalty > 0) || !Number.isFinite(repetitionPenalty)) {
    throw new RangeError(`repetitionPenalty must be a strictly positive number, got ${repetitionPenalty}`);
  }
  const frequencyPenalty = opts.frequencyPenalty ?? 0;
  if (!Number.isFinite(frequencyPenalty)) throw new RangeError(`frequencyPenalty must be finite, got ${frequencyPenalty}`);
  const presencePenalty = opts.presencePenalty ?? 0;
  if (!Number.isFinite(presencePenalty)) throw new RangeError(`presencePenalty must be finite, got ${presencePenalty}`);
  const logitBias = opts.logitBias ?? [];
  for (const [id, bias] of logitBias) {
    checkInt('logitBias id', id, 0);
    if (!Number.isFinite(bias)) throw new RangeError(`logitBias of ${id} must be finite, got ${bias}`);
  }
  const logprobs = opts.logprobs === undefined ? undefined : checkInt('logprobs', opts.logprobs, 0);
  if (logprobs !== undefined && logprobs > MAX_TOP_LOGPROBS)
    throw new RangeError(`logprobs must be at most ${MAX_TOP_LOGPROBS}, got ${logprobs}`);
  const numBeams = checkInt('numBeams', opts.numBeams ?? 1, 1);
  const lengthPenalty = opts.lengthPenalty ?? 1;
  if (!Number.isFinite(lengthPenalty)) throw new RangeError(`lengthPenalty must be finite, got ${lengthPenalty}`);
  const earlyStopping = opts.earlyStopping ?? false;
  const stopIds = [...new Set(opts.stopIds ?? [])];
  for (const id of stopIds) checkInt('stopIds[]', id, 0);
  const stopStrings = (opts.stopStrings ?? []).filter((s) => s.length > 0);
  if (opts.seed !== undefined && !Number.isFinite(opts.seed)) throw new RangeError(`seed must be finite, got ${opts.seed}`);
  return {
    maxNewTokens,
    minNewTokens,
    sample,
    temperature,
    topK,
    topP,
    repetitionPenalty,
    frequencyPenalty,
    presencePenalty,
    logitBias,
    logprobs,
    numBeams,
    lengthPenalty,
    earlyStopping,
    stopIds,
    stopStrings,
    seed: opts.seed,
    forceTokens: opts.forceTokens,
  };
}
