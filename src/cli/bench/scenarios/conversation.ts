// The scenarios of a conversation's later turns: a follow-up in a thread with a long history, with the
// previous turn's KV cache kept (as the conversation manager keeps it) or re-prefilled; and a first turn whose
// image the manager's image cache has seen or not.
import { promptSegmentIds } from '../../../inference/context.js';
import type { CachedContext } from '../../../inference/kv-reuse.js';
import type { Turn } from '../../../inference/prompt.js';
import { ConversationManager } from '../../../conversation/manager.js';
import { GREEDY } from '../common.js';
import { clone, FILLER, prefixOf, QUESTIONS, timed, type BenchContext } from './context.js';

export interface FollowUpSamples {
  /** time to first token with the kept cache / with a full prefill */
  withCacheMs: number[];
  fullPrefillMs: number[];
  /** the follow-up's prompt (image included), and the tokens prefilled with the kept cache */
  promptTokens: number;
  prefillTokens: number;
  /** bringing the kept cache up to the follow-up's start after the previous answer */
  extendMs: number;
  /** the greedy tokens of either side (the same, checked by the caller) */
  withCacheIds: number[];
  fullPrefillIds: number[];
  /** the thread's cache; the caller disposes of it when the later scenarios are done (peak RSS counts it) */
  base: CachedContext;
}

/** A follow-up in a thread with a ~profile.history-token history: with the previous turn's KV cache / full re-prefill. */
export async function followUp(b: BenchContext, image: Float32Array): Promise<FollowUpSamples> {
  const { model, profile: p, say, ask } = b;
  const spec = model.meta.prompt;
  say(`follow-up with a ~${p.history}-token history`);
  const room = model.meta.llm.maxPositions - 16;
  const history: Turn[] = [];
  const tokens = (turns: Turn[]) =>
    promptSegmentIds(ask(turns), spec.imageToken, 1, model.tokenizer).reduce((n, seg) => n + seg.length, 0) + model.meta.vision.imageTokens;
  // earlier turns until the follow-up's prompt has at least `history` tokens (as far as the model allows)
  const withFollowUp = (h: Turn[]) => [...h, { user: QUESTIONS[1], assistant: 'x '.repeat(p.prevAnswer) }, { user: QUESTIONS[2] }];
  for (let k = 0; tokens(withFollowUp(history)) < p.history; k++) {
    const turn = { user: QUESTIONS[k % QUESTIONS.length], assistant: `${FILLER} ${k}` };
    if (tokens(withFollowUp([...history, turn])) > room) break;
    history.push(turn);
  }
  // the thread's cache as the conversation manager keeps it after the earlier turns
  let base = await model.extendContext(null, prefixOf(b, history), [image], ['img']);
  // the previous turn, answered from that cache and kept, then extended to the next prompt's start
  let prevKept: CachedContext | undefined;
  let prevText = '';
  for await (const ev of model.answer(
    ask([...history, { user: QUESTIONS[1] }]),
    [image],
    { ...GREEDY, maxNewTokens: p.prevAnswer },
    undefined,
    {
      imageKeys: ['img'],
      reuse: base,
      keep: (c) => (prevKept = c),
    },
  )) {
    if (ev.type === 'done') prevText = ev.text.trim();
  }
  const turns: Turn[] = [...history, { user: QUESTIONS[1], assistant: prevText }];
  const [extended, extendMs] = await timed(() => model.extendContext(prevKept!, prefixOf(b, turns), [image], ['img']));
  base = extended;
  const followPrompt = ask([...turns, { user: QUESTIONS[2] }]);
  const out: FollowUpSamples = {
    withCacheMs: [],
    fullPrefillMs: [],
    promptTokens: 0,
    prefillTokens: 0,
    extendMs,
    withCacheIds: [],
    fullPrefillIds: [],
    base,
  };
  for (let i = 0; i < p.warmup + p.reps; i++) {
    for (const reuse of [true, false]) {
      let t: { firstTokenMs: number; promptTokens: number; prefillTokens: number } | undefined;
      let ids: number[] = [];
      const more = reuse ? { imageKeys: ['img'], reuse: await clone(model, base) } : {};
      await new Promise((r) => setImmediate(r));
      for await (const ev of model.answer(followPrompt, [image], { ...GREEDY, maxNewTokens: 4 }, undefined, more)) {
        if (ev.type === 'timings') t = ev.timings;
        if (ev.type === 'done') ids = ev.tokenIds;
      }
      if (i < p.warmup || !t) continue;
      (reuse ? out.withCacheMs : out.fullPrefillMs).push(t.firstTokenMs);
      if (reuse) {
        out.prefillTokens = t.prefillTokens;
        out.withCacheIds = ids;
      } else {
        out.fullPrefillIds = ids;
      }
      out.promptTokens = t.promptTokens;
    }
    say(`follow-up ${i + 1}/${p.warmup + p.reps}`);
  }
  return out;
}

export interface ImageCacheSamples {
  hitMs: number[];
  missMs: number[];
  /** the image-cache hit again, on a manager that keeps KV caches: the first conversation's rows lent */
  sharedMs: number[];
  /** the hit's answer without / with the lent rows were the same */
  sharedIdentical: boolean;
}

/**
 * Time to first token of conversations' first turns through the manager: thread a brings a new image (a miss),
 * then thread b asks another question about it (its embeddings cached: a hit), on a manager that keeps no KV
 * caches; then the same on one that does, where b starts from the rows a's kept cache shares with its prompt
 * (the text before the image, the image, the question's first tokens).
 */
export async function imageCache(b: BenchContext): Promise<ImageCacheSamples> {
  const { model, profile: p, say } = b;
  say('image cache hit / miss; a cached prefix lent to another conversation');
  const out: ImageCacheSamples = { hitMs: [], missMs: [], sharedMs: [], sharedIdentical: true };
  for (let i = 0; i < p.warmup + Math.max(2, Math.ceil(p.reps / 2)); i++) {
    const answers: string[] = [];
    for (const kvCacheBytes of [0, 256 * 2 ** 20]) {
      const m = new ConversationManager({ model, defaults: { ...GREEDY, maxNewTokens: 1 }, annotate: false, kvCacheBytes });
      for (const thread of ['a', 'b']) {
        const t0 = performance.now();
        let first = 0;
        for await (const ev of m.handle({
          key: { platform: 'cli', workspace: 'bench', channel: 'c', thread },
          user: 'bench',
          text: QUESTIONS[thread === 'a' ? 3 : 4],
          image: b.bytes,
        })) {
          if ((ev.type === 'text' || ev.type === 'final') && !first) first = performance.now() - t0;
          if (ev.type === 'final' && thread === 'b') answers.push(ev.text);
        }
        // a's cache is kept after its answer's end: b starts once it is
        await m.cachesKept();
        if (i < p.warmup) continue;
        if (thread === 'a') {
          if (kvCacheBytes === 0) out.missMs.push(first);
        } else {
          (kvCacheBytes === 0 ? out.hitMs : out.sharedMs).push(first);
        }
      }
      await m.close();
    }
    out.sharedIdentical &&= answers[0] === answers[1];
  }
  return out;
}
