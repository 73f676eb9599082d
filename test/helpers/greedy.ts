// Greedy decoding steps through a decoder, for tests that compare the logits of two packages or graphs.
import type { LlamaDecoder } from '../../src/inference/decoder.js';
import type { KvCache } from '../../src/inference/kv-cache.js';
import { argmax } from '../../src/inference/generation/index.js';

/**
 * `steps` greedy steps after a prefill (its `state` and last position's `logits`): the logits before each step
 * and their argmax ids. Each step feeds the argmax, or `feed[t]` where given (teacher forcing). The states are
 * disposed, the prefill's too.
 */
export async function greedySteps(
  decoder: LlamaDecoder,
  state: KvCache,
  logits: Float32Array,
  steps: number,
  feed?: number[],
): Promise<{ ids: number[]; stepLogits: Float32Array[] }> {
  const ids: number[] = [];
  const stepLogits: Float32Array[] = [];
  try {
    for (let t = 0; t < steps; t++) {
      stepLogits.push(logits.slice());
      ids.push(argmax(logits));
      if (t === steps - 1) break;
      const next = await decoder.step([state], [feed ? feed[t] : ids[t]]);
      state.dispose();
      state = next.states[0];
      logits = next.logits[0];
    }
  } finally {
    state.dispose();
  }
  return { ids, stepLogits };
}
