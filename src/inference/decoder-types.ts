// The decoder's contract (decoder.ts): how it keeps the KV cache, its options, what a run returns, its
// counters, and the one error a caller handles (a conversation past the model's positions).
import type { KvCache } from './kv-cache.js';
import type { DeviceKvCopier } from './kv-device.js';

/**
 * How the decoder keeps its KV cache:
 * - 'append': in buffers of its own, [rows, kvHeads, capacity, headDim], into which the new positions of each
 *   run (the graph's `present_new.*` outputs) are written. The whole buffer is fed as `past_key_values.*`
 *   with the attention mask hiding each row's unused tail, so a step copies nothing but its new positions.
 * - 'present': the graph's `present.*` outputs as they are (past + new, every step). Used for packages
 *   converted before `present_new` existed, and where outputs stay on the device (WebGPU).
 */
export type KvMode = 'append' | 'present';

/** Which positions' logits a forward run returns: the last one (all generation needs) or every new one. */
export type KeepLogits = 'last' | 'all';

export interface ForwardResult {
  /** logits of the last new position [vocab], or of every new position [seqLen, vocab] (KeepLogits) */
  logits: Float32Array;
  state: KvCache;
}

export interface DecoderStats {
  /** decoder session runs and the time spent in them (ms, wall clock around session.run) */
  runs: number;
  runMs: number;
  /** batched steps (more than one row) and the rows they decoded */
  steps: number;
  stepRows: number;
  /** runs whose past had to be copied first (a batch's membership changed, a shared prefix, growth) */
  repacks: number;
}

export interface DecoderOptions {
  /** see KvMode; default 'append' when the graph has `present_new` outputs */
  mode?: KvMode;
  /** rows a batch's KV storage is made for, so that conversations join without re-packing (default 8) */
  batchRows?: number;
  /** memory of freed KV storage kept for reuse (default 512 MiB) */
  poolBytes?: number;
  /** 'append' mode: the most positions one run of a prefill takes; longer prompts run in chunks (default 128) */
  prefillChunk?: number;
  /**
   * The most new positions any run may take, in either mode and whatever logits are kept: where the provider's
   * attention kernel is inexact on longer runs (attention-check.ts). Default: no limit.
   */
  maxRunPositions?: number;
  /**
   * 'present' mode with the session's `present.*` and `present_new.*` outputs kept in device memory (WebGPU):
   * copies rows of such caches on the device. Node's binding then wants every output fetched at every run;
   * the present_new ones are freed unread.
   */
  deviceKv?: DeviceKvCopier;
}

export const DEFAULT_PREFILL_CHUNK = 128;

export class ContextLengthError extends Error {
  constructor(
    readonly needed: number,
    readonly limit: number,
  ) {
    super(`the conversation needs ${needed} positions but the model handles at most ${limit}`);
  }
}
