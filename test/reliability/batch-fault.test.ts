// A failing batched decoding step (issue 9, "the inference session throws mid-answer: that conversation gets an
// error reply, others go on"): when several conversations decode in one batched session run and the run throws,
// the engine runs the members' steps again one by one, so only the conversation whose own row fails gets the
// error; the others answer exactly as when each is served alone. Real ConversationManager, the demo package
// (greedy, not forced: the answers are the model's own tokens), faults injected into the decoder's session.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { ConversationManager, type AnswerEvent } from '../../src/conversation/index.js';
import { MiniGPT } from '../../src/inference/model.js';
import { collect, errorOf, finalOf, goldenImage, key, timingsOf } from '../conversation/helpers.js';

const ROOT = join(import.meta.dirname, '..', '..');
const NEW_TOKENS = 16;
const GREEDY = { temperature: 0, repetitionPenalty: 1, maxNewTokens: NEW_TOKENS, minNewTokens: NEW_TOKENS };
const QUESTIONS = ['[grounding] describe this image', 'where is the red square', '[vqa] how many shapes', 'what colour is it'];
/** conversation 2's question: much longer than the others, so its rows have positions none of theirs reach */
const LONG = `${QUESTIONS[2]} ${'and tell me about every other shape you can see in this picture as well '.repeat(4)}`.trim();

type SessionRun = (feeds: Record<string, { dims: readonly number[]; data: unknown }>, ...rest: unknown[]) => Promise<unknown>;

let model: MiniGPT;
let image: Buffer;
let session: { run: SessionRun };
let originalRun: SessionRun;
/** returns true to make this session run throw */
let fault: ((feeds: Record<string, { dims: readonly number[]; data: unknown }>) => boolean) | undefined;
/** per failed run: how many conversations' rows it had */
const failed: number[] = [];

beforeAll(async () => {
  model = await MiniGPT.load(join(ROOT, 'models', 'demo'), { provider: 'cpu', threads: 1 });
  image = await goldenImage();
  session = (model.decoder as unknown as { session: { run: SessionRun } }).session;
  originalRun = session.run;
  session.run = function (this: unknown, feeds, ...rest) {
    if (fault?.(feeds)) {
      // the conversations' rows in the run (a single step may be fed with empty dummy rows around it)
      failed.push(stepPositions(feeds)?.filter((p) => p > 0).length ?? 1);
      return Promise.reject(new Error('injected session.run failure'));
    }
    return originalRun.call(this, feeds, ...rest);
  };
});

afterAll(async () => {
  if (session) session.run = originalRun;
  await model?.close();
});

/**
 * A decoding step (one new token per row): each row's position, read from its attention mask (the positions it
 * sees, itself included); 0 for an unused row fed along (it sees only itself, its position_ids are stale).
 */
function stepPositions(feeds: Record<string, { dims: readonly number[]; data: unknown }>): number[] | undefined {
  const x = feeds.inputs_embeds;
  if (x?.dims[1] !== 1) return undefined; // a prefill
  const [rows, width] = feeds.attention_mask.dims;
  const mask = feeds.attention_mask.data as BigInt64Array;
  return Array.from({ length: rows }, (_, r) => {
    let seen = 0;
    for (let i = r * width; i < (r + 1) * width; i++) seen += Number(mask[i]);
    return seen - 1;
  });
}

async function answerAll(m: ConversationManager, names: string[], texts: string[]): Promise<AnswerEvent[][]> {
  return Promise.all(names.map((name, c) => collect(m.handle({ key: key(name), user: 'u', text: texts[c], image }))));
}

describe('a failing batched decoding step', () => {
  const names = ['bf0', 'bf1', 'bf2', 'bf3'];
  const texts = [QUESTIONS[0], QUESTIONS[1], LONG, QUESTIONS[3]];
  let alone: AnswerEvent[][];

  beforeAll(async () => {
    // The reference: each conversation served alone (no batching, no fault).
    const one = new ConversationManager({ model, defaults: GREEDY, annotate: false, maxQueue: 64, maxBatch: 1 });
    alone = await answerAll(
      one,
      names.map((n) => `${n}-alone`),
      texts,
    );
    await one.close();
    for (const events of alone) expect(errorOf(events)).toBeUndefined();
  });

  it("a fault in ONE conversation's row fails that conversation only; the others answer as when served alone", async () => {
    const prompt = alone.map((events) => timingsOf(events).promptTokens);
    // Conversation 2's rows fail from its third decoding step on, batched or alone (a row that breaks the run).
    const from = prompt[2] + 2;
    const others = [0, 1, 3].map((c) => prompt[c] + NEW_TOKENS);
    expect(Math.max(...others), 'the other conversations never reach the failing positions').toBeLessThan(from);
    const before = { ...model.engine.stats };
    failed.length = 0;
    fault = (feeds) => stepPositions(feeds)?.some((p) => p >= from) ?? false;
    let together: AnswerEvent[][];
    const m = new ConversationManager({ model, defaults: GREEDY, annotate: false, maxQueue: 64, maxBatch: 4 });
    try {
      together = await answerAll(m, names, texts);
    } finally {
      fault = undefined;
    }
    // It did fail inside a batch (with other conversations' rows), and then on its own.
    expect(
      failed.some((rows) => rows > 1),
      `failed runs' rows: ${failed.join(', ')}`,
    ).toBe(true);
    expect(failed.at(-1)).toBe(1);
    expect(model.engine.stats.isolated - before.isolated).toBeGreaterThanOrEqual(1);
    expect(model.engine.stats.maxRows).toBeGreaterThanOrEqual(3);

    expect(errorOf(together[2])).toMatchObject({ code: 'internal' });
    expect(await m.history(key('bf2'))).toBeNull();
    for (const c of [0, 1, 3]) {
      expect(errorOf(together[c]), `conversation ${c}`).toBeUndefined();
      expect(finalOf(together[c]).text, `conversation ${c}`).toBe(finalOf(alone[c]).text);
      expect((await m.history(key(names[c])))?.turns.map((t) => t.assistant)).toEqual([finalOf(alone[c]).text.trim()]);
    }

    // The failed conversation's next request works (the fault is gone) and answers as it would have.
    const again = await collect(m.handle({ key: key('bf2'), user: 'u', text: LONG, image }));
    expect(finalOf(again).text).toBe(finalOf(alone[2]).text);
    await m.close();
  });

  it('a batched step that fails once (a transient fault) costs no conversation its answer', async () => {
    const before = { ...model.engine.stats };
    failed.length = 0;
    let armed = true;
    // The first batched decoding step of three or more rows fails, once.
    fault = (feeds) => {
      const pos = stepPositions(feeds);
      if (!armed || !pos || pos.filter((p) => p > 0).length < 3) return false;
      armed = false;
      return true;
    };
    const m = new ConversationManager({ model, defaults: GREEDY, annotate: false, maxQueue: 64, maxBatch: 4 });
    let together: AnswerEvent[][];
    try {
      together = await answerAll(
        m,
        names.map((n) => `${n}-t`),
        texts,
      );
    } finally {
      fault = undefined;
    }
    expect(failed).toHaveLength(1);
    expect(failed[0]).toBeGreaterThanOrEqual(3);
    expect(model.engine.stats.isolated - before.isolated).toBe(1);
    for (let c = 0; c < names.length; c++) {
      expect(errorOf(together[c]), `conversation ${c}`).toBeUndefined();
      expect(finalOf(together[c]).text, `conversation ${c}`).toBe(finalOf(alone[c]).text);
    }
    await m.close();
  });
});
