export type {
  DecodeState,
  FinishReason,
  GenerationEvent,
  GenerationOptions,
  GenerationStart,
  IncrementalDecoder,
  Rng,
  StepModel,
  TokenDecoder,
  TokenLogprob,
} from './types.js';
export { createRng, type SeededRng } from './rng.js';
export {
  applyCountPenalties,
  applyLogitBias,
  applyRepetitionPenalty,
  applyTemperature,
  argmax,
  logSoftmax,
  maskTokens,
  sampleFrom,
  softmax,
  topKFilter,
  topPFilter,
  type Scores,
} from './processors.js';
export {
  IncrementalTextStream,
  StopStringMatcher,
  findFirstStop,
  partialStopSuffixLength,
  type StopPushResult,
} from './text-stream.js';
export { StatePool, runStep } from './state-pool.js';
export {
  DEFAULT_MAX_NEW_TOKENS,
  HF_DEFAULT_TOP_K,
  UPSTREAM_CHAT_OPTIONS,
  resolveGenerationOptions,
  type ResolvedGenerationOptions,
} from './options.js';
export {
  BeamHypotheses,
  beamSearch,
  type BeamHypothesis,
  type BeamSearchContext,
  type BeamSearchResult,
} from './beam-search.js';
export { generate, selectNextToken } from './generate.js';
export { LogprobQueue, MAX_TOP_LOGPROBS, tokenLogprob } from './logprobs.js';
