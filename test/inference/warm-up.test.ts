// The warm-up before the first request (src/inference/warm-up.ts): which providers it runs on, what work it runs
// (read from onnxruntime's own profile of it: every kind of run a request has, once or more), and that it leaves
// the model as it found it (the same greedy answer as a model never warmed up). The demo package.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MiniGPT } from '../../src/inference/model.js';
import { conversationPrompt } from '../../src/inference/prompt.js';
import { summariseProfiles } from '../../src/inference/profile.js';
import { shouldWarmUp, warmUp } from '../../src/inference/warm-up.js';

const DEMO = join(import.meta.dirname, '..', '..', 'models', 'demo');
const IMAGE = join(import.meta.dirname, '..', 'fixtures', 'minigptv2-tiny', 'input.png');

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-warm-up-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function greedyIds(m: MiniGPT): Promise<number[]> {
  const img = await m.encodeImage(await readFile(IMAGE));
  const prompt = conversationPrompt(m.meta.prompt, [{ user: '[grounding] describe this image' }]);
  let ids: number[] = [];
  const greedy = { temperature: 0, maxNewTokens: 12, stopIds: [], stopStrings: [] };
  for await (const ev of m.answer(prompt, [img.embeds], greedy)) if (ev.type === 'done') ids = ev.tokenIds;
  return ids;
}

describe('warm-up', () => {
  it('runs by default on GPU providers only; true / false say so for any', () => {
    expect(shouldWarmUp('auto', 'webgpu')).toBe(true);
    expect(shouldWarmUp('auto', 'cuda')).toBe(true);
    expect(shouldWarmUp('auto', 'cpu')).toBe(false);
    expect(shouldWarmUp(true, 'cpu')).toBe(true);
    expect(shouldWarmUp(false, 'webgpu')).toBe(false);
  });

  it("runs an image, an answer's prefill and steps, and the engine's widest batch; then answers as before", async () => {
    const cold = await MiniGPT.load(DEMO, { provider: 'cpu', threads: 1 });
    const expected = await greedyIds(cold).finally(() => cold.close());

    const dir = join(work, 'profile');
    const m = await MiniGPT.load(DEMO, { provider: 'cpu', threads: 1, maxBatch: 3, profileDir: dir });
    let ids: number[];
    try {
      const t = await warmUp(m);
      expect(t.visionMs).toBeGreaterThan(0);
      expect(t.answerMs).toBeGreaterThan(0);
      expect(t.batchMs).toBeGreaterThan(0);
      // the batch's three prompts decoded together; the image and the four prefills had the model to themselves
      expect(m.engine.stats.maxRows).toBe(3);
      expect(m.engine.stats.tasks).toBe(1 + 1 + 3);
      ids = await greedyIds(m);
    } finally {
      await m.close();
    }
    expect(ids).toEqual(expected);
    // what ran, from onnxruntime's profile: the warm-up's image (then the answer's own), a prefill for the warm-up's
    // answer, one per prompt of the batch and one for the real answer; steps of 1 row and of 3
    const s = await summariseProfiles(dir);
    const runs = (graph: string, rows: number) => s.classes.find((c) => c.graph === graph && c.rows === rows)?.runs ?? 0;
    expect(runs('vision', 65)).toBe(2);
    const prompts = s.classes.filter((c) => c.graph === 'decoder' && c.rows! > 3);
    expect(prompts.reduce((n, c) => n + c.runs, 0)).toBe(1 + 3 + 1);
    // decoding steps: 3 of the warm-up's answer and 11 of the real answer, of one row; 2 of the batch's three rows
    expect(runs('decoder', 1)).toBe(3 + 11);
    expect(runs('decoder', 3)).toBe(2);
    expect(s.classes.filter((c) => c.graph === 'decoder' && c.rows === 2)).toEqual([]);
  }, 60_000);

  it('on WebGPU (lavapipe), where it is on by default: then answers as the CPU does', async () => {
    const cpu = await MiniGPT.load(DEMO, { provider: 'cpu', threads: 1 });
    const expected = await greedyIds(cpu).finally(() => cpu.close());
    const gpu = await MiniGPT.load(DEMO, { provider: 'webgpu', maxBatch: 2 });
    try {
      expect(shouldWarmUp('auto', gpu.provider)).toBe(true);
      expect((await warmUp(gpu)).batchMs).toBeGreaterThan(0);
      expect(gpu.engine.stats.maxRows).toBe(2);
      expect(await greedyIds(gpu)).toEqual(expected);
    } finally {
      await gpu.close();
    }
  }, 120_000);

  it('with one answer at a time there is no batch to warm up', async () => {
    const m = await MiniGPT.load(DEMO, { provider: 'cpu', threads: 1, maxBatch: 1 });
    try {
      expect((await warmUp(m)).batchMs).toBeNull();
    } finally {
      await m.close();
    }
  });
});
