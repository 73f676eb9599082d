// The decoder's limit on positions per run (DecoderOptions.maxRunPositions), set where a provider's fused
// attention is inexact on long runs, and the load-time check that measures it (attention-check.ts), on the
// CPU provider: a prompt run in chunks gives the logits of one run, in both KV modes, for the last position
// and for every position, and the states it leaves decode the same; the check passes the CPU's kernel and
// falls back to shorter runs when its bound is not met.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as ort from 'onnxruntime-node';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MiniGPT } from '../../src/inference/model.js';
import { LlamaDecoder, type KeepLogits } from '../../src/inference/decoder.js';
import { conversationPrompt } from '../../src/inference/prompt.js';
import {
  ATTENTION_TOLERANCE,
  attentionGraph,
  checkAttention,
  describeAttentionCheck,
  referenceAttention,
} from '../../src/inference/attention-check.js';
import { maxAbsDiff } from '../helpers/golden.js';
import { greedySteps } from '../helpers/greedy.js';
import { convertTinyV2, GOLDEN_V2 } from '../helpers/tiny-package.js';

let work: string;
let model: MiniGPT;
let session: ort.InferenceSession;
let embeds: Float32Array;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-run-positions-'));
  await convertTinyV2(join(work, 'fused'), { fused: true });
  model = await MiniGPT.load(join(work, 'fused'), { provider: 'cpu', threads: 1 });
  session = await ort.InferenceSession.create(join(work, 'fused', 'decoder.onnx'), { executionProviders: ['cpu'], intraOpNumThreads: 1 });
  const image = (await model.encodeImage(await readFile(join(GOLDEN_V2, 'input.png')))).embeds;
  const question = 'describe every object in this picture, its colour, its size and where it is, one by one';
  embeds = (await model.context(conversationPrompt(model.meta.prompt, [{ user: question }]), [image])).embeds;
}, 120_000);

afterAll(async () => {
  await model?.close();
  await session?.release();
  await rm(work, { recursive: true, force: true });
});

describe('DecoderOptions.maxRunPositions', () => {
  const decoder = (mode: 'append' | 'present', maxRunPositions?: number) =>
    new LlamaDecoder(session, model.embedder, model.meta.llm, { mode, maxRunPositions });

  it.each(['append', 'present'] as const)('%s mode: a prompt in runs of 5 positions gives one run’s logits and states', async (mode) => {
    const rows = embeds.length / model.meta.llm.hidden;
    expect(rows).toBeGreaterThan(32);
    const whole = decoder(mode);
    const chunked = decoder(mode, 5);
    expect(chunked.maxRunPositions).toBe(5);
    expect(whole.maxRunPositions).toBe(Number.POSITIVE_INFINITY);
    for (const keep of ['all', 'last'] as KeepLogits[]) {
      const a = await whole.forward(embeds, null, undefined, keep);
      const runs = chunked.stats.runs;
      const b = await chunked.forward(embeds, null, undefined, keep);
      expect(chunked.stats.runs - runs, keep).toBe(Math.ceil(rows / 5));
      expect(b.logits.length, keep).toBe(a.logits.length);
      expect(b.state.length).toBe(rows);
      expect(maxAbsDiff(a.logits, b.logits), keep).toBeLessThan(1e-4);
      const V = model.meta.llm.vocabSize;
      const sa = await greedySteps(whole, a.state, a.logits.slice(a.logits.length - V), 4);
      const sb = await greedySteps(chunked, b.state, b.logits.slice(b.logits.length - V), 4);
      expect(sb.ids).toEqual(sa.ids);
      for (let t = 0; t < 4; t++) expect(maxAbsDiff(sa.stepLogits[t], sb.stepLogits[t])).toBeLessThan(1e-4);
    }
  });

  it('a run after a cached prefix is chunked too, and the prefix stays valid', async () => {
    const hidden = model.meta.llm.hidden;
    const rows = embeds.length / hidden;
    for (const mode of ['append', 'present'] as const) {
      const whole = decoder(mode);
      const chunked = decoder(mode, 7);
      const cut = 9;
      const head = await chunked.forward(embeds.subarray(0, cut * hidden), null);
      const a = await whole.forward(embeds, null, undefined, 'all');
      const b = await chunked.forward(embeds.subarray(cut * hidden), head.state, undefined, 'all');
      expect(b.state.length).toBe(rows);
      expect(maxAbsDiff(a.logits.subarray(cut * model.meta.llm.vocabSize), b.logits), mode).toBeLessThan(1e-4);
      // the prefix was not consumed: run from it again
      const again = await chunked.forward(embeds.subarray(cut * hidden), head.state, undefined, 'last');
      expect(maxAbsDiff(again.logits, b.logits.subarray(b.logits.length - model.meta.llm.vocabSize))).toBeLessThan(1e-6);
      for (const s of [head.state, a.state, b.state, again.state]) s.dispose();
    }
  });

  it('an abort between the runs of a chunked prefill ends it', async () => {
    const chunked = decoder('present', 4);
    const ac = new AbortController();
    const done = chunked.forward(embeds, null, ac.signal);
    ac.abort();
    await expect(done).rejects.toThrow(/abort/i);
    // the run under way when it came finished; none of the other ceil(rows / 4) - 1 started
    expect(chunked.stats.runs).toBe(1);
    expect(embeds.length / model.meta.llm.hidden).toBeGreaterThan(8);
  });
});

describe('the fused attention check (attention-check.ts)', () => {
  const shape = { heads: 4, headDim: 16 };

  it('the float64 reference is causal softmax attention over past then new positions', () => {
    // one head of width 1: softmax weights over the keys each query sees, applied to the values
    const x = {
      S: 2,
      P: 1,
      q: Float32Array.of(1, 2),
      k: Float32Array.of(0.5, -1),
      v: Float32Array.of(3, 5),
      pastK: Float32Array.of(2),
      pastV: Float32Array.of(7),
    };
    const out = referenceAttention(x, { heads: 1, headDim: 1 });
    const softmax = (s: number[]) => s.map((v) => Math.exp(v) / s.reduce((a, b) => a + Math.exp(b), 0));
    const w0 = softmax([1 * 2, 1 * 0.5]);
    const w1 = softmax([2 * 2, 2 * 0.5, 2 * -1]);
    expect(out[0]).toBeCloseTo(w0[0] * 7 + w0[1] * 3, 12);
    expect(out[1]).toBeCloseTo(w1[0] * 7 + w1[1] * 3 + w1[2] * 5, 12);
  });

  it('passes the CPU kernel with no limit, and falls back to shorter runs when the bound is not met', async () => {
    const s = await ort.InferenceSession.create(attentionGraph(shape), { executionProviders: ['cpu'], intraOpNumThreads: 1 });
    try {
      const cpu = await checkAttention(s, shape);
      expect(cpu.maxRunPositions).toBeNull();
      expect(cpu.exact).toBe(true);
      expect(cpu.probes.map((p) => [p.positions, p.past])).toEqual([
        [64, 0],
        [32, 40],
      ]);
      for (const p of cpu.probes) expect(p.error).toBeLessThan(ATTENTION_TOLERANCE.float32 / 100);
      expect(cpu.tolerance).toBe(ATTENTION_TOLERANCE.float32);
      expect(describeAttentionCheck(cpu, 'cpu')).toMatch(/exact on this adapter/);
      // a bound below float32 rounding: no length meets it, down to single positions
      const strict = await checkAttention(s, shape, 1e-12);
      expect(strict.exact).toBe(false);
      expect(strict.maxRunPositions).toBe(1);
      expect(strict.probes.map((p) => p.positions)).toEqual([64, 32, 31, 31, 16, 16, 8, 8, 4, 4, 2, 2, 1, 1]);
      expect(describeAttentionCheck(strict, 'cpu')).toMatch(/even single positions are off/);
    } finally {
      await s.release();
    }
  });

  it('in float16 (packages converted with --compute fp16): inputs rounded, the bound float16 rounding allows', async () => {
    const half = { ...shape, dtype: 'float16' as const };
    const s = await ort.InferenceSession.create(attentionGraph(half), { executionProviders: ['cpu'], intraOpNumThreads: 1 });
    try {
      const check = await checkAttention(s, half);
      expect(check.tolerance).toBe(ATTENTION_TOLERANCE.float16);
      expect(check.maxRunPositions).toBeNull();
      // float16 outputs: off by their rounding (~1e-4), not by float32's ~1e-7, and well within the bound
      for (const p of check.probes) {
        expect(p.error).toBeGreaterThan(1e-6);
        expect(p.error).toBeLessThan(ATTENTION_TOLERANCE.float16 / 4);
      }
    } finally {
      await s.release();
    }
  });

  it('MiniGPT.load checks only fused packages off the CPU provider', async () => {
    // (the CPU's kernel is the reference; test/inference/webgpu.test.ts runs the check on WebGPU)
    expect(model.attentionCheck).toBeNull();
    expect(model.decoder.maxRunPositions).toBe(Number.POSITIVE_INFINITY);
    const limited = await MiniGPT.load(join(work, 'fused'), { provider: 'cpu', threads: 1, maxRunPositions: 12 });
    try {
      expect(limited.decoder.maxRunPositions).toBe(12);
    } finally {
      await limited.close();
    }
  });
});
