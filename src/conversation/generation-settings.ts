// A request's generation settings as the model gets them: upstream Chat.answer's settings, then the
// configured defaults, then what the user asked for, sanitised and clamped (never an error: users type these).
import type { MiniGPT } from '../inference/model.js';
import { UPSTREAM_CHAT_OPTIONS, type GenerationOptions } from '../inference/generation/index.js';
import { LIMITS } from './limits.js';
import type { RequestGeneration } from './types.js';

/** Most extra stop strings a request may add. */
const MAX_STOP_STRINGS = 8;

/** Upstream Chat.answer's settings minus its stop conditions (the package's apply). */
const { stopIds: _stopIds, stopStrings: _stopStrings, ...CHAT_DEFAULTS } = UPSTREAM_CHAT_OPTIONS;

function finite(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

const clamp = (v: number, lo: number, hi: number) => Math.min(Math.max(v, lo), hi);

/** A request's logit_bias as (id, bias) pairs: decimal ids below `vocabSize`, biases clamped to +-100, at most LIMITS.logitBias. */
function logitBiasPairs(bias: RequestGeneration['logitBias'], vocabSize: number): [number, number][] {
  if (typeof bias !== 'object' || bias === null) return [];
  const out = new Map<number, number>();
  for (const [key, value] of Object.entries(bias)) {
    if (!/^\d{1,9}$/.test(key) || !finite(value)) continue;
    const id = Number(key);
    if (id < vocabSize) out.set(id, clamp(value, -100, 100));
    if (out.size === LIMITS.logitBias) break;
  }
  return [...out];
}

/** Defaults (upstream Chat.answer, then `defaults`), then the request's settings, sanitised and clamped. */
export function generationOptions(
  g: RequestGeneration | undefined,
  defaults: Partial<GenerationOptions>,
  model: Pick<MiniGPT, 'meta'>,
): GenerationOptions {
  const out: Partial<GenerationOptions> = { ...CHAT_DEFAULTS, ...defaults };
  const window = model.meta.llm.maxPositions;
  if (g) {
    if (finite(g.temperature) && g.temperature >= 0) out.temperature = Math.min(g.temperature, 10);
    if (finite(g.maxNewTokens) && g.maxNewTokens >= 1) out.maxNewTokens = Math.min(Math.floor(g.maxNewTokens), window);
    if (finite(g.topP) && g.topP > 0) out.topP = Math.min(g.topP, 1);
    if (finite(g.numBeams) && g.numBeams >= 1) out.numBeams = Math.min(Math.floor(g.numBeams), LIMITS.beams);
    if (finite(g.repetitionPenalty) && g.repetitionPenalty > 0) out.repetitionPenalty = Math.min(g.repetitionPenalty, 10);
    if (finite(g.seed)) out.seed = Math.floor(g.seed);
    if (finite(g.frequencyPenalty)) out.frequencyPenalty = clamp(g.frequencyPenalty, -2, 2);
    if (finite(g.presencePenalty)) out.presencePenalty = clamp(g.presencePenalty, -2, 2);
    if (finite(g.logprobs) && g.logprobs >= 0) out.logprobs = Math.min(Math.floor(g.logprobs), LIMITS.topLogprobs);
    const bias = logitBiasPairs(g.logitBias, model.meta.llm.vocabSize);
    if (bias.length > 0) out.logitBias = bias;
    const stop = Array.isArray(g.stop)
      ? g.stop.filter((x): x is string => typeof x === 'string' && x.length > 0).slice(0, MAX_STOP_STRINGS)
      : [];
    if (stop.length > 0) out.stopStrings = [...(out.stopStrings ?? model.meta.prompt.stopStrings), ...stop];
  }
  return { ...out, maxNewTokens: out.maxNewTokens ?? 300 };
}
