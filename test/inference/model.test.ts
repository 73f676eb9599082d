// The runtime on a real converted package: streaming, cancellation freeing every KV cache, beam search.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MiniGPT, type ModelEvent } from '../../src/inference/model.js';
import { conversationPrompt } from '../../src/inference/prompt.js';
import type { KvCache } from '../../src/inference/kv-cache.js';
import type { GenerationOptions } from '../../src/inference/generation/index.js';
import { convertTinyV2, GOLDEN_V2 as GOLDEN } from '../helpers/tiny-package.js';

let work: string;
let model: MiniGPT;
let image: Float32Array;
let prompt: string;
const created: KvCache[] = [];

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-model-'));
  await convertTinyV2(join(work, 'pkg'));
  model = await MiniGPT.load(join(work, 'pkg'), { provider: 'cpu' });
  // Record every KV cache the decoder hands out, to check that each one is freed.
  const forward = model.decoder.forward.bind(model.decoder);
  model.decoder.forward = async (...args) => {
    const r = await forward(...args);
    created.push(r.state);
    return r;
  };
  image = (await model.encodeImage(await readFile(join(GOLDEN, 'input.png')))).embeds;
  prompt = conversationPrompt(model.meta.prompt, [{ user: '[grounding] describe this image' }]);
});

afterAll(async () => {
  await model?.close();
  await rm(work, { recursive: true, force: true });
});

async function collect(opts: Partial<GenerationOptions>, signal?: AbortSignal, onText?: (n: number) => void) {
  const events: ModelEvent[] = [];
  for await (const ev of model.answer(prompt, [image], opts, signal)) {
    events.push(ev);
    if (ev.type === 'text') onText?.(events.filter((e) => e.type === 'text').length);
  }
  const done = events.find((e) => e.type === 'done');
  if (done?.type !== 'done') throw new Error('no done event');
  return { events, done, texts: events.flatMap((e) => (e.type === 'text' ? [e.text] : [])) };
}

describe('MiniGPT.answer on the tiny package', () => {
  it('streams text pieces that add up to the final answer, then reports timings', async () => {
    created.length = 0;
    const { events, done, texts } = await collect({ temperature: 0, repetitionPenalty: 1, maxNewTokens: 12 });
    expect(texts.length).toBeGreaterThan(1);
    expect(texts.join('')).toBe(done.text);
    expect(done.finishReason).toBe('length');
    expect(events.at(-1)?.type).toBe('timings');
    expect(created.every((s) => s.disposed)).toBe(true);
  });

  it('aborting mid-answer stops at once and frees every KV cache', async () => {
    created.length = 0;
    const controller = new AbortController();
    const { done } = await collect({ temperature: 0, maxNewTokens: 200 }, controller.signal, (n) => {
      if (n === 2) controller.abort();
    });
    expect(done.finishReason).toBe('aborted');
    expect(done.tokenIds.length).toBeLessThan(10);
    expect(created.length).toBeGreaterThan(0);
    expect(created.every((s) => s.disposed)).toBe(true);
  });

  it('an already-aborted signal produces no tokens and leaves no cache alive', async () => {
    created.length = 0;
    const controller = new AbortController();
    controller.abort();
    const { done, texts } = await collect({ temperature: 0, maxNewTokens: 20 }, controller.signal);
    expect(done.finishReason).toBe('aborted');
    expect(done.tokenIds).toEqual([]);
    expect(texts).toEqual([]);
    expect(created.every((s) => s.disposed)).toBe(true);
  });

  it('beam search with one beam equals greedy; wider beams find an answer at least as likely', async () => {
    const greedy = await collect({ temperature: 0, repetitionPenalty: 1, maxNewTokens: 8, stopIds: [] });
    const oneBeam = await collect({ numBeams: 1, temperature: 0, repetitionPenalty: 1, maxNewTokens: 8, stopIds: [] });
    expect(oneBeam.done.tokenIds).toEqual(greedy.done.tokenIds);
    created.length = 0;
    const beams = await collect({ numBeams: 3, temperature: 0, repetitionPenalty: 1, maxNewTokens: 8, stopIds: [] });
    expect(beams.done.tokenIds.length).toBe(8);
    expect(created.every((s) => s.disposed)).toBe(true);

    // Score both sequences with the model itself: the beam answer's log-probability is not lower.
    const logProb = async (ids: number[]) => {
      const ctx = await model.context(prompt, [image]);
      const pre = await model.prefill(ctx);
      let state = pre.state;
      let logits = pre.logits;
      let total = 0;
      for (const id of ids) {
        const max = Math.max(...logits);
        const lse = max + Math.log(logits.reduce((s, x) => s + Math.exp(x - max), 0));
        total += logits[id] - lse;
        const next = await model.decoder.step([state], [id]);
        state.dispose();
        state = next.states[0];
        logits = next.logits[0];
      }
      state.dispose();
      return total;
    };
    expect(await logProb(beams.done.tokenIds)).toBeGreaterThanOrEqual((await logProb(greedy.done.tokenIds)) - 1e-4);
  });

  it('seeded sampling is reproducible', async () => {
    const a = await collect({ temperature: 1, topP: 0.9, seed: 7, maxNewTokens: 10 });
    const b = await collect({ temperature: 1, topP: 0.9, seed: 7, maxNewTokens: 10 });
    expect(a.done.tokenIds).toEqual(b.done.tokenIds);
  });
});
