// Eight conversations about the same image at once (their decoding steps batched by the model's engine) against
// the same eight one after another: follow-ups from a kept cache, and, in the full profile, first turns.
import type { CachedContext } from '../../../inference/kv-reuse.js';
import type { Turn } from '../../../inference/prompt.js';
import { GREEDY } from '../common.js';
import { clone, FILLER, prefixOf, QUESTIONS, timed, type BenchContext } from './context.js';

/**
 * One greedy answer of `tokens` tokens, from `reuse` (a conversation's own cache) when given; the image identified
 * (as the manager does), so that prompts prefilled together share the image's rows (PrefillHandoff).
 */
async function answerIds(
  b: BenchContext,
  image: Float32Array,
  prompt: string,
  reuse: CachedContext | undefined,
  tokens: number,
): Promise<number[]> {
  let ids: number[] = [];
  const more = reuse ? { imageKeys: ['img'], reuse } : { imageKeys: ['img'] };
  for await (const ev of b.model.answer(prompt, [image], { ...GREEDY, maxNewTokens: tokens }, undefined, more))
    if (ev.type === 'done') ids = ev.tokenIds;
  return ids;
}

export interface Batch8Samples {
  sequentialMs: number[];
  batchedMs: number[];
  /** the last run's tokens of each conversation, either side (the same, checked by the caller) */
  sequentialIds: number[][];
  batchedIds: number[][];
  /** conversations per engine step while batched (8 at best) */
  meanRows: number;
}

/** Eight conversations, each asking a follow-up about the image (the thread's cache kept, as the manager does). */
export async function batch8FollowUps(b: BenchContext, image: Float32Array): Promise<Batch8Samples> {
  const { model, profile: p, say, ask } = b;
  const batchTokens = p.batchTokens;
  const turn1: Turn[] = [{ user: QUESTIONS[0], assistant: FILLER }];
  const cache8 = await model.extendContext(null, prefixOf(b, turn1), [image], ['img']);
  const prompts8 = QUESTIONS.map((q) => ask([...turn1, { user: q }]));
  const out: Batch8Samples = { sequentialMs: [], batchedMs: [], sequentialIds: [], batchedIds: [], meanRows: 0 };
  for (let i = 0; i < p.warmup + p.batchReps; i++) {
    say(`8 conversations x ${batchTokens} tokens ${i + 1}/${p.warmup + p.batchReps}: one after another`);
    const own1 = await Promise.all(prompts8.map(() => clone(model, cache8)));
    const [a, ms1] = await timed(async () => {
      const seq: number[][] = [];
      for (const [j, pr] of prompts8.entries()) seq.push(await answerIds(b, image, pr, own1[j], batchTokens));
      return seq;
    });
    say(`8 conversations x ${batchTokens} tokens ${i + 1}/${p.warmup + p.batchReps}: batched`);
    const s0 = { ...model.engine.stats };
    const own2 = await Promise.all(prompts8.map(() => clone(model, cache8)));
    const [bat, ms2] = await timed(() => Promise.all(prompts8.map((pr, j) => answerIds(b, image, pr, own2[j], batchTokens))));
    if (i < p.warmup) continue;
    out.sequentialMs.push(ms1);
    out.batchedMs.push(ms2);
    out.sequentialIds = a;
    out.batchedIds = bat;
    out.meanRows = (model.engine.stats.rows - s0.rows) / Math.max(1, model.engine.stats.steps - s0.steps);
  }
  cache8.dispose();
  return out;
}

export interface ColdBatch8Samples {
  sequentialMs: number[];
  batchedMs: number[];
}

/**
 * Eight first turns about one new image: one after another (a full prefill each) / arriving together (decoded in
 * batches; the first prefill's rows of the image lent to the seven waiting behind it).
 */
export async function batch8FirstTurns(b: BenchContext, image: Float32Array): Promise<ColdBatch8Samples> {
  const { profile: p, say, ask } = b;
  say('8 first turns about one image: one after another / together');
  const cold = QUESTIONS.map((q) => ask([{ user: q }]));
  const out: ColdBatch8Samples = { sequentialMs: [], batchedMs: [] };
  for (let i = 0; i < p.warmup + p.batchReps; i++) {
    const [, ms1] = await timed(async () => {
      for (const pr of cold) await answerIds(b, image, pr, undefined, p.batchTokens);
    });
    const [, ms2] = await timed(() => Promise.all(cold.map((pr) => answerIds(b, image, pr, undefined, p.batchTokens))));
    if (i < p.warmup) continue;
    out.sequentialMs.push(ms1);
    out.batchedMs.push(ms2);
  }
  return out;
}
