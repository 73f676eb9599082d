// Batched decoding (left-padded KV rows in one session run, continuous batching across answers) and reuse
// of a conversation's KV cache across turns, on the committed demo package: every path gives the same
// greedy tokens as plain, one-at-a-time generation.
import { describe, expect, it, vi } from 'vitest';
import type { MiniGPT, ModelEvent, Timings } from '../../src/inference/model.js';
import { conversationPrompt, type Turn } from '../../src/inference/prompt.js';
import { generate, type GenerationOptions } from '../../src/inference/generation/index.js';
import { BufferPool } from '../../src/inference/kv-blocks.js';
import type { KvCache } from '../../src/inference/kv-cache.js';
import { CachedContext, KvCacheLru, commonPrefixRows } from '../../src/inference/kv-reuse.js';
import { GREEDY } from '../../src/cli/bench/common.js';
import { QUESTIONS } from '../../src/cli/bench/scenarios/context.js';
import { demoModelAndImagesPerFile } from '../conversation/helpers.js';

let model: MiniGPT;
let image: Float32Array;
let other: Float32Array;

demoModelAndImagesPerFile((d) => ({ model, image, other } = d));

const prompt = (turns: Turn[]) => conversationPrompt(model.meta.prompt, turns);

/** Plain generation: one prefill of the whole prompt, then model.decoder stepped alone (no engine). */
async function plain(text: string, images: Float32Array[], opts: Partial<GenerationOptions>): Promise<number[]> {
  const ctx = await model.context(text, images);
  const pre = await model.prefill(ctx);
  const decoder = { decode: (ids: readonly number[]) => model.tokenizer.decode(ids, { skipSpecialTokens: true }) };
  const genOpts = model.generationOptions({
    ...opts,
    maxNewTokens: Math.min(opts.maxNewTokens ?? 300, model.meta.llm.maxPositions - ctx.length),
  });
  for await (const ev of generate(model.decoder, { state: pre.state, logits: pre.logits }, decoder, genOpts)) {
    if (ev.type === 'done') return ev.tokenIds;
  }
  throw new Error('no done event');
}

interface Answered {
  ids: number[];
  text: string;
  finishReason: string;
  timings: Timings;
  events: ModelEvent[];
}

async function answer(
  text: string,
  images: Float32Array[],
  opts: Partial<GenerationOptions>,
  more: Parameters<MiniGPT['answer']>[4] = {},
  signal?: AbortSignal,
  onText?: (n: number) => void,
): Promise<Answered> {
  const events: ModelEvent[] = [];
  let texts = 0;
  for await (const ev of model.answer(text, images, opts, signal, more)) {
    events.push(ev);
    if (ev.type === 'text') onText?.(++texts);
  }
  const done = events.find((e) => e.type === 'done');
  const timings = events.find((e) => e.type === 'timings');
  if (done?.type !== 'done' || timings?.type !== 'timings') throw new Error('incomplete answer');
  return { ids: done.tokenIds, text: done.text, finishReason: done.finishReason, timings: timings.timings, events };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

describe('LlamaDecoder.step with a batch', () => {
  it('gives each left-padded row the logits of its unpadded run (within 1e-5), packed or fed as is', async () => {
    const ctxs = await Promise.all(
      [QUESTIONS[0], 'hi', QUESTIONS[4]].map((q, i) => model.context(prompt([{ user: q }]), [i === 1 ? other : image])),
    );
    const lengths = ctxs.map((c) => c.length);
    expect(new Set(lengths).size).toBe(3); // really ragged
    const pres = await Promise.all(ctxs.map((c) => model.prefill(c)));
    const states = pres.map((p) => p.state);
    const tokens = [17, 42, 99];
    const owned: KvCache[] = [...states];
    try {
      // one row at a time, unpadded
      const alone = [];
      for (let b = 0; b < 3; b++) alone.push(await model.decoder.step([states[b]], [tokens[b]]));
      owned.push(...alone.flatMap((r) => r.states));
      // the three together: packed (left padding), one run
      const runs = model.decoder.stats.runs;
      const together = await model.decoder.step(states, tokens);
      owned.push(...together.states);
      expect(model.decoder.stats.runs).toBe(runs + 1);
      for (let b = 0; b < 3; b++) {
        expect(together.states[b].length).toBe(lengths[b] + 1);
        expect(maxAbsDiff(together.logits[b], alone[b].logits[0])).toBeLessThan(1e-5);
      }
      // next step on the batch's own tensors (no re-pack), against the unpadded rows' next step
      const repacks = model.decoder.stats.repacks;
      const second = await model.decoder.step(together.states, [5, 6, 7]);
      owned.push(...second.states);
      expect(model.decoder.stats.repacks).toBe(repacks);
      for (let b = 0; b < 3; b++) {
        const ref = await model.decoder.step([alone[b].states[0]], [[5, 6, 7][b]]);
        owned.push(...ref.states);
        expect(maxAbsDiff(second.logits[b], ref.logits[0])).toBeLessThan(1e-5);
        // a row copied out of the batch is exactly that row's cache
        const row = second.states[b].prefix();
        owned.push(row);
        expect(row.standalone).toBe(true);
        expect(row.length).toBe(lengths[b] + 2);
        const a = await model.decoder.step([row], [3]);
        const r = await model.decoder.step([ref.states[0]], [3]);
        owned.push(...a.states, ...r.states);
        expect(maxAbsDiff(a.logits[0], r.logits[0])).toBeLessThan(1e-5);
      }
      // a member leaves: the others stay in their rows (nothing copied), with the same logits as alone
      const before = model.decoder.stats.repacks;
      const sub = await model.decoder.step([second.states[2], second.states[0]], [8, 9]);
      owned.push(...sub.states);
      expect(model.decoder.stats.repacks).toBe(before);
      expect(sub.states.map((s) => s.length)).toEqual([lengths[2] + 3, lengths[0] + 3]);
      for (const [i, b] of [2, 0].entries()) {
        const row = second.states[b].prefix();
        owned.push(row);
        const ref = await model.decoder.step([row], [[8, 9][i]]);
        owned.push(...ref.states);
        expect(maxAbsDiff(sub.logits[i], ref.logits[0])).toBeLessThan(1e-5);
      }
    } finally {
      for (const s of owned) s.dispose();
    }
  });

  it("frees a batch's storage only when its last row is disposed", async () => {
    const ctx = await model.context(prompt([{ user: 'hi' }]), [image]);
    const pre = await model.prefill(ctx);
    const r = await model.decoder.step([pre.state, pre.state], [4, 5]);
    pre.state.dispose();
    const [a, b] = r.states;
    a.dispose();
    expect(() => b.feeds()).not.toThrow();
    b.dispose();
    expect(b.disposed).toBe(true);
    expect(() => b.feeds()).toThrow(/disposed/);
  });
});

describe('BufferPool', () => {
  it('hands freed buffers out again (best fit, at most twice the size) within its budget', () => {
    const pool = new BufferPool(100 * 4);
    const a = pool.take(40);
    expect(a.length).toBe(40);
    pool.give(a);
    expect(pool.pooledBytes).toBe(160);
    const b = pool.take(30);
    expect(b.buffer).toBe(a.buffer); // reused: already-touched memory
    expect(b.length).toBe(30);
    expect(pool.pooledBytes).toBe(0);
    pool.give(b); // the whole allocation goes back
    expect(pool.pooledBytes).toBe(160);
    expect(pool.take(10).buffer).not.toBe(a.buffer); // more than twice too large: a new one
    pool.give(new Float32Array(50));
    pool.give(new Float32Array(30)); // over budget: the oldest goes
    expect(pool.pooledBytes).toBe(320);
    pool.give(new Float32Array(200)); // larger than the budget: not kept
    expect(pool.pooledBytes).toBe(320);
  });
});

describe('continuous batching through the engine', () => {
  it('answers 8 concurrent prompts with the same greedy tokens as one at a time, in batched steps', async () => {
    const texts = QUESTIONS.map((q) => prompt([{ user: q }]));
    // different lengths, so conversations leave the batch at different steps
    const opts = texts.map((_, i) => ({ ...GREEDY, maxNewTokens: 12 + 5 * i }));
    const expected: number[][] = [];
    for (let i = 0; i < texts.length; i++) expected.push(await plain(texts[i], [image], opts[i]));
    const before = { ...model.engine.stats };
    const rowsBefore = model.decoder.stats.stepRows;
    const stepsBefore = model.decoder.stats.steps;
    // the last two join late, while the others are decoding
    const results = await Promise.all(
      texts.map(async (t, i) => {
        if (i >= 6) await new Promise((r) => setTimeout(r, 5));
        return answer(t, [image], opts[i]);
      }),
    );
    expect(results.map((r) => r.ids)).toEqual(expected);
    const steps = model.engine.stats.steps - before.steps;
    const rows = model.engine.stats.rows - before.rows;
    expect(rows).toBe(expected.reduce((n, ids) => n + ids.length - 1, 0));
    expect(steps).toBeLessThan(rows / 2); // really batched
    expect(model.engine.stats.maxRows).toBeGreaterThanOrEqual(6);
    expect(model.decoder.stats.stepRows - rowsBefore).toBeGreaterThan(model.decoder.stats.steps - stepsBefore);
  });

  it("cancelling one conversation mid-answer leaves the others' answers unchanged", async () => {
    const texts = QUESTIONS.slice(0, 4).map((q) => prompt([{ user: q }]));
    const opts = { ...GREEDY, maxNewTokens: 30 };
    const expected: number[][] = [];
    for (const t of texts) expected.push(await plain(t, [image], opts));
    const ctl = new AbortController();
    const results = await Promise.all(
      texts.map((t, i) => answer(t, [image], opts, {}, i === 1 ? ctl.signal : undefined, (n) => i === 1 && n === 3 && ctl.abort())),
    );
    expect(results[1].finishReason).toBe('aborted');
    expect(results[1].ids.length).toBeLessThan(10);
    for (const i of [0, 2, 3]) expect(results[i].ids).toEqual(expected[i]);
  });

  it("a conversation at the model's length limit fails alone", async () => {
    const long = prompt([{ user: 'red '.repeat(200) }]);
    const ctx = await model.context(long, [image]);
    expect(ctx.length).toBeLessThan(model.meta.llm.maxPositions);
    const short = prompt([{ user: QUESTIONS[0] }]);
    const expected = await plain(short, [image], { ...GREEDY, maxNewTokens: 20 });
    const [a, b] = await Promise.all([
      answer(long, [image], { ...GREEDY, maxNewTokens: 300 }),
      answer(short, [image], { ...GREEDY, maxNewTokens: 20 }),
    ]);
    expect(a.ids.length).toBe(model.meta.llm.maxPositions - ctx.length);
    expect(a.finishReason).toBe('length');
    expect(b.ids).toEqual(expected);
  });
});

describe('KV cache reuse across turns', () => {
  it('a follow-up prefills only what differs from the last turn, and answers exactly as a full prefill does', async () => {
    const opts = { ...GREEDY, maxNewTokens: 16 };
    let kept: CachedContext | undefined;
    const first = await answer(prompt([{ user: QUESTIONS[0] }]), [image], opts, { imageKeys: ['img'], keep: (c) => (kept = c) });
    expect(kept).toBeDefined();
    const c1 = kept!;
    expect(c1.length).toBe(first.timings.promptTokens + first.ids.length - 1); // 'length': the last token is not fed
    const turns = [{ user: QUESTIONS[0], assistant: first.text.trim() }, { user: QUESTIONS[1] }];
    const text2 = prompt(turns);
    const full = await answer(text2, [image], opts);
    expect(full.timings.reusedTokens).toBe(0);
    kept = undefined;
    const reused = await answer(text2, [image], opts, { imageKeys: ['img'], reuse: c1, keep: (c) => (kept = c) });
    expect(c1.kv.disposed).toBe(true); // answer() took it over
    expect(reused.ids).toEqual(full.ids);
    expect(reused.ids).toEqual(await plain(text2, [image], opts));
    // the re-tokenised answer differs from the generated tokens from its first token on (the template
    // glues it to "[/INST]"), so the previous prompt is what is reused here
    expect(reused.timings.reusedTokens).toBeGreaterThanOrEqual(first.timings.promptTokens);
    expect(reused.timings.reusedTokens + reused.timings.prefillTokens).toBe(full.timings.promptTokens);

    // extendContext() brings the cache to the next prompt's start (this answer re-tokenised) beforehand:
    // then the follow-up prefills only its own new tokens
    const turns3 = [turns[0], { user: QUESTIONS[1], assistant: reused.text.trim() }];
    const mark = '\u0000';
    const next = prompt([...turns3, { user: mark }]);
    const extended = await model.extendContext(kept!, next.slice(0, next.indexOf(mark)).trimEnd(), [image], ['img']);
    expect(kept!.kv.disposed).toBe(true);
    const text3 = prompt([...turns3, { user: QUESTIONS[2] }]);
    const own = model.tokenizer.encode(` ${QUESTIONS[2]}${model.meta.prompt.roles[1]}`, { addBos: false }).length;
    const third = await answer(text3, [image], opts, { imageKeys: ['img'], reuse: extended });
    expect(third.timings.prefillTokens).toBeLessThanOrEqual(own + 1);
    expect(third.timings.reusedTokens).toBeGreaterThan(full.timings.promptTokens);
    expect(third.ids).toEqual(await plain(text3, [image], opts));
  });

  it('falls back to the common prefix only when the context diverges (another image, trimmed history)', async () => {
    const opts = { ...GREEDY, maxNewTokens: 8 };
    const keep = async (key: string) => {
      let kept: CachedContext | undefined;
      await answer(prompt([{ user: QUESTIONS[3] }]), [image], opts, { imageKeys: [key], keep: (c) => (kept = c) });
      return kept!;
    };
    const text = prompt([{ user: QUESTIONS[3] }]);
    const ctx = await model.context(text, [image]);
    const beforeImage = ctx.segmentIds[0].length;
    // same text, another image: only the rows before the image are reused
    const diffImage = await answer(text, [other], opts, { imageKeys: ['other'], reuse: await keep('img') });
    expect(diffImage.timings.reusedTokens).toBe(beforeImage);
    expect(diffImage.ids).toEqual(await plain(text, [other], opts));
    // an image without a key never matches
    const noKey = await answer(text, [image], opts, { reuse: await keep('img') });
    expect(noKey.timings.reusedTokens).toBe(beforeImage);
    // the very same prompt: everything but the last row is reused
    const same = await answer(text, [image], opts, { imageKeys: ['img'], reuse: await keep('img') });
    expect(same.timings.prefillTokens).toBe(1);
    expect(same.ids).toEqual(await plain(text, [image], opts));
  });

  it('matches rows per segment and image identity', () => {
    const a = {
      segments: [
        [1, 5, 6],
        [7, 8, 9],
      ],
      images: [{ key: 'x', rows: 4 }],
    };
    expect(commonPrefixRows(a, a)).toBe(10);
    // commonPrefixRows of `a` and a context of `segments` around one 4-row image `key`
    const against = (key: string | undefined, ...segments: number[][]) => commonPrefixRows(a, { segments, images: [{ key, rows: 4 }] });
    expect(against('x', [1, 5, 6], [7, 8, 9, 10])).toBe(10);
    expect(against('x', [1, 5, 6], [7, 2])).toBe(8);
    expect(against('y', [1, 5, 6], [7, 8, 9])).toBe(3);
    expect(against('x', [1, 5], [7, 8, 9])).toBe(2);
    expect(against('x', [1, 5, 6, 3], [7, 8, 9])).toBe(3);
    expect(against(undefined, [1, 5, 6], [7, 8, 9])).toBe(3);
    expect(commonPrefixRows(a, { segments: [[2]], images: [] })).toBe(0);
  });

  it('keeps caches in an LRU by bytes: evicted ones are freed and simply recomputed, with identical answers', async () => {
    const opts = { ...GREEDY, maxNewTokens: 10 };
    const contexts: CachedContext[] = [];
    for (const q of QUESTIONS.slice(0, 3)) {
      await answer(prompt([{ user: q }]), [image], opts, { imageKeys: ['img'], keep: (c) => contexts.push(c) });
    }
    const sizes = contexts.map((c) => c.bytes);
    expect(sizes.every((b) => b > 0)).toBe(true);
    const lru = new KvCacheLru<string>(sizes[0] + sizes[1] + 1);
    lru.put('a', contexts[0]);
    lru.put('b', contexts[1]);
    expect(lru.stats).toMatchObject({ entries: 2, bytes: sizes[0] + sizes[1], evictions: 0 });
    lru.put('c', contexts[2]); // over budget: 'a', the least recently used, goes
    expect(contexts[0].kv.disposed).toBe(true);
    expect(lru.stats).toMatchObject({ entries: 2, evictions: 1 });
    expect(lru.take('a')).toBeUndefined();
    const b = lru.take('b')!;
    expect(b).toBe(contexts[1]);
    expect(lru.stats.bytes).toBe(sizes[2]);
    // a miss is a full prefill, a hit reuses: the same tokens either way
    const follow = prompt([{ user: QUESTIONS[1], assistant: 'red' }, { user: 'and the circle' }]);
    const hit = await answer(follow, [image], opts, { imageKeys: ['img'], reuse: b });
    const miss = await answer(follow, [image], opts, { imageKeys: ['img'], reuse: lru.take('a') });
    expect(hit.timings.reusedTokens).toBeGreaterThan(0);
    expect(miss.timings.reusedTokens).toBe(0);
    expect(hit.ids).toEqual(miss.ids);
    // too large for the budget at all: not kept
    const tiny = new KvCacheLru<string>(10);
    const c = lru.take('c')!;
    tiny.put('c', c);
    expect(c.kv.disposed).toBe(true);
    expect(tiny.stats.entries).toBe(0);
    lru.clear();
  });

  it("lends the kept context with the longest common prefix to another prompt: the same tokens, the lender's rows untouched", async () => {
    const opts = { ...GREEDY, maxNewTokens: 10 };
    const kept: CachedContext[] = [];
    const keep = (c: CachedContext) => kept.push(c);
    const first = prompt([{ user: QUESTIONS[0] }]);
    const firstIds = (await answer(first, [image], opts, { imageKeys: ['img'], keep })).ids;
    await answer(prompt([{ user: QUESTIONS[1] }]), [other], opts, { imageKeys: ['other'], keep });
    const [withImage, withOther] = kept;
    const lru = new KvCacheLru<string>(withImage.bytes + withOther.bytes + 1);
    lru.put('image', withImage);
    lru.put('other', withOther);

    const q = prompt([{ user: QUESTIONS[3] }]);
    const ctx = await model.context(q, [image]);
    const layout = { segments: ctx.segmentIds, images: [{ key: 'img', rows: image.length / model.meta.llm.hidden }] };
    const common = commonPrefixRows(withImage.layout, layout);
    expect(common).toBeGreaterThan(layout.images[0].rows);
    // the longest common prefix, capped at `most`; none longer than `above`: nothing lent
    const lent = lru.lend(layout, 0, common - 1)!;
    expect(lent.rows).toBe(common - 1);
    lent.kv.dispose();
    expect(lru.lend(layout, common, 1000)).toBeUndefined();
    expect(lru.stats).toMatchObject({ entries: 2, lent: 1 });

    const shared = await answer(q, [image], opts, { imageKeys: ['img'], shared: lru });
    const full = await answer(q, [image], opts);
    expect(shared.timings.reusedTokens).toBe(common);
    expect(full.timings.reusedTokens).toBe(0);
    expect(shared.ids).toEqual(full.ids);
    expect(lru.stats.lent).toBe(2);

    // the lender is the most recently used now: a new entry over the budget evicts 'other'
    const held = lru.lend(layout, 0, common)!;
    lru.put('big', new CachedContext(await model.decoder.clone(withOther.kv), withOther.layout));
    expect(withOther.kv.disposed).toBe(true);
    expect(withImage.kv.disposed).toBe(false);
    // a lent reference outlives the lender, whose rows the borrowers left as they were: its own prompt asked
    // again from them gives its first answer
    lru.clear();
    expect(withImage.kv.disposed).toBe(true);
    const again = await answer(first, [image], opts, { imageKeys: ['img'], reuse: new CachedContext(held.kv, withImage.layout) });
    expect(again.timings.reusedTokens).toBe(again.timings.promptTokens - 1);
    expect(again.ids).toEqual(firstIds);
  });

  it('drops the caches kept past the retention time by when they were put, lent since or not', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      const lru = new KvCacheLru<string>(2 ** 30);
      vi.setSystemTime(1000);
      const a = await model.extendContext(null, prompt([{ user: QUESTIONS[0] }]), [image], ['img']);
      lru.put('a', a);
      vi.setSystemTime(2000);
      const b = await model.extendContext(null, prompt([{ user: QUESTIONS[1] }]), [other], ['other']);
      lru.put('b', b);
      vi.setSystemTime(3000);
      // lent: the most recently used for the budget, not for retention (its conversation did not go on)
      lru.lend(a.layout, 0, a.length)!.kv.dispose();
      expect(lru.dropUnusedSince(1500)).toBe(1);
      expect(a.kv.disposed).toBe(true);
      expect(b.kv.disposed).toBe(false);
      expect(lru.stats.entries).toBe(1);
      lru.clear();
    } finally {
      vi.useRealTimers();
    }
  });

  it('frees the kept cache when the consumer leaves early, and keeps nothing for a cancelled answer', async () => {
    let kept: CachedContext | undefined;
    const ctl = new AbortController();
    const r = await answer(
      prompt([{ user: QUESTIONS[0] }]),
      [image],
      { ...GREEDY, maxNewTokens: 40 },
      { keep: (c) => (kept = c) },
      ctl.signal,
      (n) => n === 2 && ctl.abort(),
    );
    expect(r.finishReason).toBe('aborted');
    expect(kept).toBeUndefined();
  });
});
