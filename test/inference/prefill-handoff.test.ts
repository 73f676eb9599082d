// Prompts that arrive together and start alike share one prefill of their common rows (src/inference/prefill-handoff.ts),
// on the committed demo package: the same tokens as each answered alone, fewer rows prefilled, nothing held after.
import { describe, expect, it } from 'vitest';
import type { MiniGPT, ModelEvent, Timings } from '../../src/inference/model.js';
import { conversationPrompt, type Turn } from '../../src/inference/prompt.js';
import { GREEDY } from '../../src/cli/bench/common.js';
import { FILLER, QUESTIONS } from '../../src/cli/bench/scenarios/context.js';
import { CachedContext } from '../../src/inference/kv-reuse.js';
import { promptSegmentIds } from '../../src/inference/context.js';
import { demoModelAndImagesPerFile } from '../conversation/helpers.js';

let model: MiniGPT;
let image: Float32Array;
let other: Float32Array;

demoModelAndImagesPerFile((d) => ({ model, image, other } = d));

const prompt = (turns: Turn[]) => conversationPrompt(model.meta.prompt, turns);
/** The prompt of `turns` up to where the next user message would start (what a kept cache is brought up to). */
const prefixOf = (turns: Turn[]) => {
  const s = prompt([...turns, { user: '\u0000' }]);
  return s.slice(0, s.lastIndexOf('\u0000')).trimEnd();
};
const opts = { ...GREEDY, maxNewTokens: 12 };

interface Asked {
  question: string;
  img: Float32Array;
  key: string;
  signal?: AbortSignal;
}

/** Answers the prompts; `together`: all started in the same tick (each registered before the first prefill ends). */
async function answers(asked: Asked[], together: boolean): Promise<{ ids: number[]; timings?: Timings; aborted: boolean }[]> {
  const run = async (gen: AsyncGenerator<ModelEvent>, first: Promise<IteratorResult<ModelEvent>>) => {
    let ids: number[] = [];
    let timings: Timings | undefined;
    let aborted = false;
    for (let r = await first; !r.done; r = await gen.next()) {
      const ev = r.value;
      if (ev.type === 'done') {
        ids = ev.tokenIds;
        aborted = ev.finishReason === 'aborted';
      }
      if (ev.type === 'timings') timings = ev.timings;
    }
    return { ids, timings, aborted };
  };
  const start = (a: Asked) => {
    const gen = model.answer(prompt([{ user: a.question }]), [a.img], opts, a.signal, { imageKeys: [a.key] });
    return { gen, first: gen.next() };
  };
  if (together) {
    const started = asked.map(start);
    return Promise.all(started.map((s) => run(s.gen, s.first)));
  }
  const out = [];
  for (const a of asked) {
    const s = start(a);
    out.push(await run(s.gen, s.first));
  }
  return out;
}

describe('prefills shared by prompts that arrive together', () => {
  it('lends a finished prefill to the waiting prompts that start alike: the same tokens, fewer rows prefilled', async () => {
    const asked: Asked[] = [
      { question: QUESTIONS[0], img: image, key: 'img' },
      // the same prompt (as the `n` choices of one request)
      { question: QUESTIONS[0], img: image, key: 'img' },
      // the same image, another question
      { question: QUESTIONS[3], img: image, key: 'img' },
      // another image: only the opening text in common, too little to hold a prefill for
      { question: QUESTIONS[3], img: other, key: 'other' },
    ];
    const alone = await answers(asked, false);
    expect(alone.every((a) => a.timings?.reusedTokens === 0)).toBe(true);
    const before = { holds: model.handoff.holds, lent: model.handoff.lent };
    const together = await answers(asked, true);
    expect(together.map((a) => a.ids)).toEqual(alone.map((a) => a.ids));
    const [first, same, sameImage, otherImage] = together.map((a) => a.timings!);
    expect(first.reusedTokens).toBe(0);
    expect(same.reusedTokens).toBe(same.promptTokens - 1);
    expect(sameImage.reusedTokens).toBeGreaterThan(model.meta.vision.imageTokens);
    expect(otherImage.reusedTokens).toBe(0);
    // the first prefill held (once) for the two that share its image, lent to each
    expect(model.handoff.holds - before.holds).toBe(1);
    expect(model.handoff.lent - before.lent).toBe(2);
    expect(model.handoff.holding).toBe(0);
  });

  it('holds no prefill for prompts whose own caches have those rows (follow-ups in threads about the image)', async () => {
    const history: Turn[] = [{ user: QUESTIONS[0], assistant: FILLER }];
    const base = await model.extendContext(null, prefixOf(history), [image], ['img']);
    const followUps = [QUESTIONS[1], QUESTIONS[3], QUESTIONS[4]].map((q) => prompt([...history, { user: q }]));
    const ask = async (p: string) => {
      let ids: number[] = [];
      let timings: Timings | undefined;
      const reuse = new CachedContext(await model.decoder.clone(base.kv), base.layout);
      for await (const ev of model.answer(p, [image], opts, undefined, { imageKeys: ['img'], reuse })) {
        if (ev.type === 'done') ids = ev.tokenIds;
        if (ev.type === 'timings') timings = ev.timings;
      }
      return { ids, reused: timings!.reusedTokens };
    };
    const alone = [];
    for (const p of followUps) alone.push(await ask(p));
    const holds = model.handoff.holds;
    const together = await Promise.all(followUps.map(ask));
    expect(together).toEqual(alone);
    expect(together.every((a) => a.reused >= base.length)).toBe(true);
    expect(model.handoff.holds).toBe(holds);
    base.dispose();
  });

  it('holds a copy of just the shared rows when they are less than half of the prefill (text-only prompts)', async () => {
    const start = 'describe every object in this picture, its colour, its size and where it is, one by one, then';
    const prompts = [
      `${start} say which of them is the largest and which is the smallest, and how far apart the two are from each other`,
      `${start} count them`,
    ].map((q) => conversationPrompt(model.meta.prompt, [{ user: q }], { image: false }));
    const run = async (p: string) => {
      let ids: number[] = [];
      let timings: Timings | undefined;
      for await (const ev of model.answer(p, [], opts)) {
        if (ev.type === 'done') ids = ev.tokenIds;
        if (ev.type === 'timings') timings = ev.timings;
      }
      return { ids, timings: timings! };
    };
    const alone = [await run(prompts[0]), await run(prompts[1])];
    const holds = model.handoff.holds;
    const together = await Promise.all(prompts.map(run));
    expect(together.map((t) => t.ids)).toEqual(alone.map((a) => a.ids));
    const [a, b] = prompts.map((p) => promptSegmentIds(p, model.meta.prompt.imageToken, 0, model.tokenizer)[0]);
    let common = 0;
    while (a[common] === b[common]) common++;
    const shared = together[1].timings.reusedTokens;
    expect(shared).toBe(common);
    expect(shared).toBeGreaterThanOrEqual(16);
    expect(shared * 2).toBeLessThan(together[0].timings.promptTokens);
    expect(model.handoff.holds).toBe(holds + 1);
    expect(model.handoff.holding).toBe(0);
  });

  it('holds nothing once the prompts it was held for are answered or cancelled', async () => {
    const ctl = new AbortController();
    ctl.abort();
    const [first, cancelled] = await answers(
      [
        { question: QUESTIONS[1], img: image, key: 'img' },
        { question: QUESTIONS[1], img: image, key: 'img', signal: ctl.signal },
      ],
      true,
    );
    expect(first.ids.length).toBeGreaterThan(0);
    expect(cancelled.aborted).toBe(true);
    expect(model.handoff.holding).toBe(0);
  });
});
