// The decoder graph's `logits_to_keep` input: a prefill computes the head (the widest matrix of the model)
// for the positions asked for only, and the runtime asks for the last one unless it needs them all.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as ort from 'onnxruntime-node';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MiniGPT } from '../../src/inference/model.js';
import { loadPackage } from '../../src/inference/package.js';
import { maxAbsDiff } from '../helpers/golden.js';
import { rng } from '../helpers/rng.js';
import { convertTinyV2 } from '../helpers/tiny-package.js';

let work: string;
let dir: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-keep-'));
  dir = join(work, 'pkg');
  await convertTinyV2(dir);
}, 120_000);
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('logits_to_keep', () => {
  it('is a decoder input; the graph returns the last n positions, or all for 0', async () => {
    const { meta } = await loadPackage(dir);
    expect(meta.graphs.decoder.inputs.find((io) => io.name === 'logits_to_keep')).toEqual({
      name: 'logits_to_keep',
      dtype: 'int64',
      dims: [1],
    });
    const { hidden, vocabSize: V, layers, kvHeads, headDim } = meta.llm;
    const session = await ort.InferenceSession.create(join(dir, 'decoder.onnx'), { executionProviders: ['cpu'] });
    try {
      const S = 9;
      const r = rng(7);
      const feeds: Record<string, ort.Tensor> = {
        inputs_embeds: new ort.Tensor(
          'float32',
          Float32Array.from({ length: S * hidden }, () => r() - 0.5),
          [1, S, hidden],
        ),
        attention_mask: new ort.Tensor('int64', new BigInt64Array(S + 1).fill(1n).fill(0n, 0, 1), [1, S + 1]),
        position_ids: new ort.Tensor(
          'int64',
          BigInt64Array.from({ length: S }, (_, i) => BigInt(i)),
          [1, S],
        ),
      };
      for (let i = 0; i < layers; i++) {
        for (const kv of ['key', 'value']) {
          feeds[`past_key_values.${i}.${kv}`] = new ort.Tensor('float32', new Float32Array(0), [1, kvHeads, 0, headDim]);
          feeds[`cache_key_values.${i}.${kv}`] = new ort.Tensor('float32', new Float32Array(kvHeads * headDim), [1, kvHeads, 1, headDim]);
        }
      }
      const run = async (n: number) =>
        (await session.run({ ...feeds, logits_to_keep: new ort.Tensor('int64', BigInt64Array.of(BigInt(n)), [1]) })).logits;
      const all = await run(0);
      expect(all.dims).toEqual([1, S, V]);
      for (const n of [1, 3]) {
        const kept = await run(n);
        expect(kept.dims).toEqual([1, n, V]);
        const tail = (all.data as Float32Array).subarray((S - n) * V);
        expect(maxAbsDiff(kept.data as Float32Array, tail)).toBeLessThan(1e-5);
      }
      // more than there are: every position
      expect((await run(S + 4)).dims).toEqual([1, S, V]);
    } finally {
      await session.release();
    }
  });

  it("a prefill returns the last position's logits, equal to the last row of all of them", async () => {
    const model = await MiniGPT.load(dir, { provider: 'cpu', threads: 1 });
    try {
      const V = model.meta.llm.vocabSize;
      const ctx = await model.context('<s>[INST] a red square and a blue circle [/INST]', []);
      const last = await model.prefill(ctx);
      const every = await model.prefillAll(ctx);
      try {
        expect(last.logits).toHaveLength(V);
        expect(every.all).toHaveLength(ctx.length * V);
        expect(maxAbsDiff(last.logits, every.all.subarray((ctx.length - 1) * V))).toBeLessThan(1e-5);
        expect(maxAbsDiff(every.logits, last.logits)).toBeLessThan(1e-5);
      } finally {
        last.state.dispose();
        every.state.dispose();
      }
    } finally {
      await model.close();
    }
  });
});

describe('chunked prefill', () => {
  it('a prompt run in chunks of 5 gives the logits and KV cache of one run: the same next steps', async () => {
    const one = await MiniGPT.load(dir, { provider: 'cpu', threads: 1, prefillChunk: 10_000 });
    const chunked = await MiniGPT.load(dir, { provider: 'cpu', threads: 1, prefillChunk: 5 });
    try {
      const ctx = await one.context('<s>[INST] where is the red square, and what is left of the blue circle? [/INST]', []);
      expect(ctx.length).toBeGreaterThan(12); // at least three chunks
      const runs0 = chunked.decoder.stats.runs;
      const a = await one.prefill(ctx);
      const b = await chunked.prefill(ctx);
      expect(chunked.decoder.stats.runs - runs0).toBe(Math.ceil(ctx.length / 5));
      let [sa, sb] = [a.state, b.state];
      try {
        expect(maxAbsDiff(a.logits, b.logits)).toBeLessThan(1e-5);
        for (const token of [5, 17, 29]) {
          const [na, nb] = [await one.decoder.step([sa], [token]), await chunked.decoder.step([sb], [token])];
          sa.dispose();
          sb.dispose();
          [sa, sb] = [na.states[0], nb.states[0]];
          expect(maxAbsDiff(na.logits[0], nb.logits[0])).toBeLessThan(1e-5);
        }
      } finally {
        sa.dispose();
        sb.dispose();
      }
      // a follow-up after a kept prefix, in chunks too
      const kept = await one.prefill(ctx);
      const tail = ctx.embeds.subarray((ctx.length - 11) * one.meta.llm.hidden);
      const prefix = kept.state.prefix(ctx.length - 11);
      kept.state.dispose();
      try {
        const ra = await one.decoder.forward(tail, prefix);
        const rb = await chunked.decoder.forward(tail, prefix);
        expect(maxAbsDiff(ra.logits, a.logits)).toBeLessThan(1e-5);
        expect(maxAbsDiff(rb.logits, a.logits)).toBeLessThan(1e-5);
        ra.state.dispose();
        rb.state.dispose();
      } finally {
        prefix.dispose();
      }
    } finally {
      await one.close();
      await chunked.close();
    }
  });
});
