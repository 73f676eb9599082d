/**
 * Model-independent text generation: the abstractions the decoding loop is written against.
 *
 * The ONNX decoder (KV cache, embeddings, ...) is wrapped elsewhere; it only has to implement {@link StepModel}.
 */

/**
 * An immutable decoding state (e.g. a KV cache). Stepping returns a NEW state; the old one stays valid until
 * disposed, so beams can share a prefix.
 */
export interface DecodeState {
  readonly length: number;
  dispose(): void;
}

export interface StepModel<S extends DecodeState = DecodeState> {
  readonly vocabSize: number;
  /**
   * Append one token to each state (batched; states may repeat); returns next-token logits (length vocabSize each)
   * and new states (one per input, in the same order).
   */
  step(states: readonly S[], tokens: readonly number[], signal?: AbortSignal): Promise<{ states: S[]; logits: Float32Array[] }>;
}

export interface TokenDecoder {
  decode(ids: readonly number[]): string;
  /**
   * Optional fast path for streaming: a decoder of a growing id list whose push(id) returns decode(every id
   * pushed so far), exactly, without re-decoding them all at every step. May return undefined (not available).
   */
  incremental?(): IncrementalDecoder | undefined;
}

export interface IncrementalDecoder {
  push(id: number): string;
}

export interface GenerationOptions {
  /** default 300 (upstream Chat.answer); 0 generates nothing */
  maxNewTokens: number;
  /** upstream min_length=1: stop ids are masked (-inf) while fewer than this many tokens were generated. Default 0. */
  minNewTokens?: number;
  /** 0 or doSample=false -> greedy. Default 1. */
  temperature?: number;
  /** default: true when temperature > 0 is given, else false (greedy) */
  doSample?: boolean;
  /** nucleus sampling (HF TopPLogitsWarper); default 1 (off) */
  topP?: number;
  /** HF TopKLogitsWarper; default 50 like HF GenerationConfig (upstream never overrides it); 0 disables */
  topK?: number;
  /**
   * HF semantics (divide positive logits, multiply negative) over the GENERATED ids
   * (HF generate(inputs_embeds=...) starts input_ids empty). Default 1 (off).
   */
  repetitionPenalty?: number;
  /**
   * OpenAI's frequency penalty: an id's score loses this much per time it was generated (ids of the answer so far,
   * as the repetition penalty). Default 0 (off); negative values favour repeats.
   */
  frequencyPenalty?: number;
  /** OpenAI's presence penalty: an id generated at least once loses this much. Default 0 (off). */
  presencePenalty?: number;
  /** OpenAI's logit_bias: (token id, added to its logit) pairs, applied before every other processor. */
  logitBias?: readonly (readonly [number, number])[];
  /**
   * Report each generated token's log-probability with this many (0-20) most likely alternatives at its position
   * (`logprobs` of the 'text' events); undefined: none. Greedy / sampling only: beam search reports none.
   */
  logprobs?: number;
  /** HF beam search semantics (num_beam_hyps_to_keep=1); default 1 */
  numBeams?: number;
  /** default 1 */
  lengthPenalty?: number;
  /** HF early_stopping: false (default, heuristic), true, or 'never' */
  earlyStopping?: boolean | 'never';
  /** e.g. [2] (</s>); the stop token is not part of the text nor of tokenIds */
  stopIds?: number[];
  /**
   * e.g. ['###', '</s>']; text is cut before the first occurrence, and a trailing partial stop string is held back
   * while streaming
   */
  stopStrings?: string[];
  /** deterministic sampling (seeded xoshiro128**; Math.random is never used when a seed is given) */
  seed?: number;
  /**
   * Test hook: the model still runs every step, but these token ids are chosen in order (then the first stop
   * id), so a known answer flows through the real decoding, streaming and stop handling.
   */
  forceTokens?: readonly number[];
}

export type FinishReason = 'stop' | 'length' | 'aborted';

/**
 * A generated token's log-probability under the model (log-softmax of its raw logits) and the most likely tokens at
 * its position (best first).
 */
export interface TokenLogprob {
  id: number;
  logprob: number;
  top: { id: number; logprob: number }[];
}

export type GenerationEvent =
  /**
   * a streamed piece; concatenation of pieces == final text. `logprobs` (when asked for): the tokens whose text
   * this piece completes, in order; a piece may then be empty (tokens without text of their own).
   */
  | { type: 'text'; text: string; logprobs?: TokenLogprob[] }
  | { type: 'done'; text: string; tokenIds: number[]; finishReason: FinishReason; steps: number };

/** What generate() needs after the prefill: the state holding the prompt and the logits of its last position. */
export interface GenerationStart<S extends DecodeState = DecodeState> {
  state: S;
  logits: Float32Array;
  /**
   * Greedy / sampling only: when generation ends normally ('stop' or 'length'), the last state (the prompt
   * plus every token fed to the model, i.e. all of tokenIds except, at 'length' or a stop string, the last
   * one) is handed to this callback instead of being disposed; the callee owns it. Not called on abort or
   * error, nor by beam search.
   */
  retain?: (state: S) => void;
}

/** A uniform random number generator on [0, 1). */
export type Rng = () => number;
