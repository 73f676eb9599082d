// Greedy decoding steps through a decoder, for tests that compare the logits of two packages or graphs.
import type { LlamaDecoder } from '../../src/inference/decoder.js';
import type { KvCache } from '../../src/inference/kv-cache.js';
import { greedySteps as verifyGreedySteps } from '../../src/inference/verify.js';

/**
 * `steps` greedy steps after a prefill (its `state` and last position's `logits`): the logits before each step
 * and their argmax ids. Each step feeds the argmax, or `feed[t]` where given (teacher forcing). The states are
 * disposed, the prefill's too. (verify.ts's loop, with the tests' argument shape.)
 */
export async function greedySteps(
  decoder: LlamaDecoder,
  state: KvCache,
  logits: Float32Array,
  steps: number,
  feed?: number[],
): Promise<{ ids: number[]; stepLogits: Float32Array[] }> {
  const r = await verifyGreedySteps(decoder, state, logits, steps, (t, id) => (feed ? feed[t] : id));
  return { ids: r.argmaxes, stepLogits: r.stepLogits };
}

/** The conversations of conversationSteps: prefixes of the prompt, and the token each feeds at step t. */
const PREFIX_CUTS = [0, 7, 3];
const stepTokens = (t: number) => [5 + t, 11 + t, 17 + 2 * t];

/**
 * Three conversations of different lengths (`embeds` [rows, hidden], and it 7 and 3 rows shorter) prefilled,
 * then `steps` decoding steps of fixed tokens: together, in batched steps, or (`alone`) each by itself. The
 * logits as [step][conversation]; every state is disposed.
 */
export async function conversationSteps(
  decoder: LlamaDecoder,
  embeds: Float32Array,
  hidden: number,
  steps: number,
  alone = false,
): Promise<Float32Array[][]> {
  const rows = embeds.length / hidden;
  const prefill = async (cut: number) => (await decoder.forward(embeds.subarray(0, (rows - cut) * hidden), null)).state;
  const out: Float32Array[][] = Array.from({ length: steps }, () => []);
  const run = async (states: KvCache[], column: (tokens: number[]) => number[], at: number) => {
    try {
      for (let t = 0; t < steps; t++) {
        const r = await decoder.step(states, column(stepTokens(t)));
        for (const s of states) s.dispose();
        states = r.states;
        r.logits.forEach((l, i) => (out[t][at + i] = l.slice()));
      }
    } finally {
      for (const s of states) s.dispose();
    }
  };
  if (alone) {
    for (const [i, cut] of PREFIX_CUTS.entries()) await run([await prefill(cut)], (tokens) => [tokens[i]], i);
  } else {
    const states: KvCache[] = [];
    for (const cut of PREFIX_CUTS) states.push(await prefill(cut));
    await run(states, (tokens) => tokens, 0);
  }
  return out;
}
