// The conversation manager with KV-cache reuse across turns and batched decoding across conversations, on
// the committed demo package: the same answers as without either, less work.
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { ConversationManager, type AnswerEvent, type ConversationManagerOptions } from '../../src/conversation/index.js';
import type { MiniGPT } from '../../src/inference/model.js';
import { collect, demoModelPerFile, errorOf, finalOf, goldenImage, key, solidPng, timingsOf } from './helpers.js';

let model: MiniGPT;
let image: Buffer;
let image2: Buffer;
let image3: Buffer;

demoModelPerFile((m) => (model = m));
beforeAll(async () => {
  image = await goldenImage();
  image2 = await solidPng(64, 48, [200, 30, 30]);
  image3 = await solidPng(48, 64, [30, 160, 60]);
});

afterEach(() => {
  vi.restoreAllMocks();
});

// fixed-length answers (the trained demo often stops after a word or two): the cache sizes and batch shapes below count on them
const GREEDY = { temperature: 0, repetitionPenalty: 1, maxNewTokens: 12, minNewTokens: 12 };
const QUESTIONS = [
  '[grounding] describe this image',
  'where is the red square',
  '[vqa] how many shapes',
  'what colour is it',
  'and the circle',
];

function manager(opts: Partial<ConversationManagerOptions> = {}): ConversationManager {
  return new ConversationManager({ model, defaults: GREEDY, annotate: false, maxQueue: 64, ...opts });
}

/** Runs `turns` turns in each of `threads` conversations, all conversations at once; final texts by thread. */
async function threads(
  m: ConversationManager,
  names: string[],
  turns: number,
  img = image,
): Promise<{ texts: string[][]; timings: Record<string, number>[][] }> {
  const texts = names.map(() => [] as string[]);
  const timings = names.map(() => [] as Record<string, number>[]);
  await Promise.all(
    names.map(async (name, c) => {
      for (let t = 0; t < turns; t++) {
        const events = await collect(
          m.handle({ key: key(name), user: 'u', text: QUESTIONS[(c + t) % QUESTIONS.length], ...(t === 0 ? { image: img } : {}) }),
        );
        expect(errorOf(events)).toBeUndefined();
        texts[c].push(finalOf(events).text);
        timings[c].push(timingsOf(events));
      }
    }),
  );
  return { texts, timings };
}

describe('conversation manager: KV cache reuse across turns', () => {
  it('a follow-up prefills only its own new tokens and answers as a full re-prefill does', async () => {
    const plain = manager({ kvCacheBytes: 0 });
    const cached = manager();
    const a = await threads(plain, ['t'], 4);
    const b = await threads(cached, ['t'], 4);
    expect(b.texts).toEqual(a.texts);
    expect(a.timings[0].every((t) => t.reusedTokens === 0)).toBe(true);
    expect(b.timings[0][0].reusedTokens).toBe(0);
    for (let t = 1; t < 4; t++) {
      const tm = b.timings[0][t];
      const own = model.tokenizer.encode(` ${QUESTIONS[t]} [/INST]`, { addBos: false }).length;
      expect(tm.reusedTokens).toBeGreaterThan(b.timings[0][t - 1].promptTokens - 2);
      expect(tm.promptTokens - tm.reusedTokens).toBeLessThanOrEqual(own + 1);
    }
    expect(cached.contextCacheStats).toMatchObject({ hits: 3, evictions: 0 });
    await plain.close();
    await cached.close();
  });

  it('keeps caches within the byte budget (LRU); evicted ones are recomputed with the same answers', async () => {
    const names = ['e1', 'e2', 'e3'];
    // an image each: no conversation can start from another's rows past the prompt's opening text
    const images = [image, image2, image3];
    /** turns round-robin over the conversations, one request at a time */
    const rounds = async (m: ConversationManager) => {
      const texts: string[] = [];
      const reused: number[] = [];
      const turn = [0, 0, 0];
      // e1 stays recently used; e2 and e3 push each other out
      for (const c of [0, 1, 0, 2, 0, 1, 0, 2, 1]) {
        const t = turn[c]++;
        const events = await collect(
          m.handle({
            key: key(names[c]),
            user: 'u',
            text: QUESTIONS[(c + t) % QUESTIONS.length],
            ...(t === 0 ? { image: images[c] } : {}),
          }),
        );
        texts.push(finalOf(events).text);
        reused.push(timingsOf(events).reusedTokens);
      }
      return { texts, reused };
    };
    const plain = await rounds(manager({ kvCacheBytes: 0 }));
    // room for about two conversations' caches
    const perToken = model.meta.llm.layers * 2 * model.meta.llm.kvHeads * model.meta.llm.headDim * 4;
    const m = manager({ kvCacheBytes: perToken * 300 });
    const small = await rounds(m);
    expect(small.texts).toEqual(plain.texts);
    const stats = m.contextCacheStats;
    expect(stats.evictions).toBeGreaterThan(0);
    expect(stats.bytes).toBeLessThanOrEqual(stats.budget);
    // some follow-ups found their cache, others (evicted in between) were recomputed from the image on (the
    // opening text before it may come from another conversation's cache)
    const followUps = small.reused.filter((_, i) => i !== 0 && i !== 1 && i !== 3);
    const imageRows = model.meta.vision.imageTokens;
    expect(followUps.some((n) => n > imageRows)).toBe(true);
    expect(followUps.some((n) => n < imageRows)).toBe(true);
    for (const name of names) await m.reset(key(name));
    expect(m.contextCacheStats.entries).toBe(0);
    await m.close();
  });

  it("a new conversation about an image another conversation's cache holds starts from its rows; both answer as full prefills do", async () => {
    /** one turn; its final text and timings */
    const ask = async (m: ConversationManager, thread: string, text: string, img?: Buffer) => {
      const events = await collect(m.handle({ key: key(thread), user: 'u', text, ...(img ? { image: img } : {}) }));
      expect(errorOf(events)).toBeUndefined();
      // its cache kept (after the stream's end) before the next conversation asks
      await m.cachesKept();
      return { text: finalOf(events).text, t: timingsOf(events) };
    };
    // A answers twice; B asks about A's image; A follows up after B borrowed its rows; C brings another image
    const script = async (m: ConversationManager) => [
      await ask(m, 'A', QUESTIONS[0], image),
      await ask(m, 'A', QUESTIONS[1]),
      await ask(m, 'B', QUESTIONS[2], image),
      await ask(m, 'A', QUESTIONS[3]),
      await ask(m, 'B', QUESTIONS[4]),
      await ask(m, 'C', QUESTIONS[2], image2),
    ];
    const plain = await script(manager({ kvCacheBytes: 0 }));
    const m = manager();
    const cached = await script(m);
    expect(cached.map((r) => r.text)).toEqual(plain.map((r) => r.text));
    expect(plain.every((r) => r.t.reusedTokens === 0)).toBe(true);

    const [, a2, b1, a3, b2, c1] = cached;
    // B's first turn: everything up to its question came from A's cache (the opening text, the image's rows, and
    // the question's leading tokens that A's first question shares)
    const question = model.tokenizer.encode(` ${QUESTIONS[2]} [/INST]`, { addBos: false }).length;
    expect(b1.t.reusedTokens).toBeGreaterThan(model.meta.vision.imageTokens);
    expect(b1.t.promptTokens - b1.t.reusedTokens).toBeLessThanOrEqual(question);
    // the lender kept its cache as it was: A's follow-up prefills only its own tokens, as before B asked
    expect(a3.t.reusedTokens).toBeGreaterThan(a2.t.promptTokens - 2);
    expect(b2.t.reusedTokens).toBeGreaterThan(b1.t.promptTokens - 2);
    // another image: at most the text before it is shared
    expect(c1.t.reusedTokens).toBeLessThan(model.meta.vision.imageTokens);
    expect(m.contextCacheStats).toMatchObject({ hits: 3, evictions: 0 });
    // lent twice: to B's first turn, and the opening text to C's
    expect(m.contextCacheStats.lent).toBe(2);
    await m.close();
  });
});

describe('conversation manager: batched decoding across conversations', () => {
  it('answers 8 concurrent conversations in batched steps, each exactly as when served alone', async () => {
    const names = Array.from({ length: 8 }, (_, i) => `b${i}`);
    const one = manager({ maxBatch: 1 });
    const alone = await threads(one, names, 2);
    const before = { ...model.engine.stats };
    const batched = manager({ maxBatch: 8 });
    const together = await threads(batched, names, 2);
    expect(together.texts).toEqual(alone.texts);
    const steps = model.engine.stats.steps - before.steps;
    const rows = model.engine.stats.rows - before.rows;
    expect(rows / steps).toBeGreaterThan(3);
    expect(model.engine.stats.maxRows).toBe(8);
    await one.close();
    await batched.close();
  });

  it('cancelling one conversation of a batch leaves the others untouched', async () => {
    const names = ['x0', 'x1', 'x2', 'x3'];
    const opts = { defaults: { ...GREEDY, maxNewTokens: 40, minNewTokens: 40 } };
    const ref = await threads(manager(opts), names, 1);
    const m = manager({ ...opts, maxBatch: 4 });
    const ctl = new AbortController();
    const results = await Promise.all(
      names.map(async (name, c) => {
        const events: AnswerEvent[] = [];
        let texts = 0;
        for await (const ev of m.handle({
          key: key(name),
          user: 'u',
          text: QUESTIONS[c % QUESTIONS.length],
          image,
          ...(c === 1 ? { signal: ctl.signal } : {}),
        })) {
          events.push(ev);
          if (ev.type === 'text' && c === 1 && ++texts === 3) ctl.abort();
        }
        return events;
      }),
    );
    expect(errorOf(results[1])).toMatchObject({ code: 'cancelled' });
    for (const c of [0, 2, 3]) expect(finalOf(results[c]).text).toBe(ref.texts[c][0]);
    expect((await m.history(key('x1')))?.turns).toEqual([]); // (its image kept, not the turn)
    await m.close();
  });

  it('never runs the vision encoder twice for the same image, even for concurrent requests', async () => {
    const m = manager({ maxBatch: 4 });
    const vision = vi.spyOn(model.vision, 'encode');
    await threads(m, ['v0', 'v1', 'v2', 'v3'], 2);
    expect(vision).toHaveBeenCalledTimes(1);
    // a later conversation with the same image, and one with another image
    await threads(m, ['v4'], 1);
    expect(vision).toHaveBeenCalledTimes(1);
    await threads(m, ['v5'], 2, image2);
    expect(vision).toHaveBeenCalledTimes(2);
    await m.close();
  });
});
