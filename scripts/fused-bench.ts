// Fused against plain decoder speed on a Llama-2-7B-layer-shaped random package (hidden 4096, 32 heads, MLP
// 11008, vocabulary 32000; 2 decoder layers), both graphs loaded in the same process and timed alternately.
// A benchmark, not a test (minutes, GBs of disk): `npm run bench:fused`
// (MINIGPT_FUSED_BENCH_DIR: where the checkpoints and packages go, default a temporary folder; kept when set).
// Exits 1 when the two graphs disagree on the greedy ids.
// The table it prints is the one in docs/quantisation.md ("Fused decoder graph").
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { convert } from '../src/convert/convert.js';
import { randomShape, writeRandomMiniGPTv2 } from '../src/convert/random-checkpoints.js';
import { MiniGPT } from '../src/inference/model.js';
import { argmax } from '../src/inference/generation/index.js';
import type { WeightDType } from '../src/convert/quantize.js';
import { rng } from '../test/helpers/rng.js';

const PROMPT = 256;
const DECODE = 32;
const REPS = 5;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

interface Timing {
  prefillMs: number;
  decodeTokS: number;
  ids: number[];
  logits: Float32Array;
}

/** A PROMPT-row prefill, then DECODE greedy steps with the KV cache; decode speed over the steps alone. */
async function time(model: MiniGPT, embeds: Float32Array): Promise<Timing> {
  const d = model.decoder;
  const t0 = performance.now();
  const pre = await d.forward(embeds, null);
  const prefillMs = performance.now() - t0;
  const V = model.meta.llm.vocabSize;
  let state = pre.state;
  let logits = pre.logits.slice(pre.logits.length - V) as Float32Array;
  const ids: number[] = [];
  const t1 = performance.now();
  for (let t = 0; t < DECODE; t++) {
    ids.push(argmax(logits));
    const next = await d.step([state], [ids[t]]);
    state.dispose();
    state = next.states[0];
    logits = next.logits[0];
  }
  const decodeMs = performance.now() - t1;
  state.dispose();
  return { prefillMs, decodeTokS: (DECODE * 1000) / decodeMs, ids, logits: logits.slice() };
}

async function main(): Promise<void> {
  const keep = Boolean(process.env.MINIGPT_FUSED_BENCH_DIR);
  const work = process.env.MINIGPT_FUSED_BENCH_DIR ?? (await mkdtemp(join(os.tmpdir(), 'minigpt-fused-bench-')));
  try {
    const src = join(work, 'checkpoints');
    const shape = randomShape('llama2-7b', { llmLayers: 2, vitDepth: 1 });
    const ckpt = await writeRandomMiniGPTv2(src, shape, { seed: 0 });
    const r = rng(7);
    const embeds = Float32Array.from({ length: PROMPT * shape.llm.hidden }, () => (r() - 0.5) * 0.1);
    const lines: string[] = [];
    for (const dtype of ['fp32', 'int4'] as WeightDType[]) {
      const dirs = { plain: join(work, `${dtype}-plain`), fused: join(work, `${dtype}-fused`) };
      for (const [kind, out] of Object.entries(dirs)) {
        if (!existsSync(join(out, 'model.json')))
          await convert({ ...ckpt.convertArgs, vit: ckpt.vit, llm: ckpt.llm, ckpt: ckpt.ckpt, dtype, out, fused: kind === 'fused' });
      }
      const plain = await MiniGPT.load(dirs.plain, { provider: 'cpu' });
      const fused = await MiniGPT.load(dirs.fused, { provider: 'cpu' });
      try {
        const runs: { plain: Timing[]; fused: Timing[] } = { plain: [], fused: [] };
        await time(plain, embeds); // warm-up
        await time(fused, embeds);
        for (let i = 0; i < REPS; i++) {
          runs.plain.push(await time(plain, embeds));
          runs.fused.push(await time(fused, embeds));
        }
        const p = runs.plain[0];
        const f = runs.fused[0];
        if (f.ids.join() !== p.ids.join()) throw new Error(`${dtype}: the fused graph's greedy ids differ from the plain graph's`);
        let err = 0;
        for (let i = 0; i < p.logits.length; i++) err = Math.max(err, Math.abs(p.logits[i] - f.logits[i]));
        const tokP = median(runs.plain.map((t) => t.decodeTokS));
        const tokF = median(runs.fused.map((t) => t.decodeTokS));
        const preP = median(runs.plain.map((t) => t.prefillMs));
        const preF = median(runs.fused.map((t) => t.prefillMs));
        lines.push(
          `| ${dtype} | ${preP.toFixed(0)} | ${preF.toFixed(0)} | ${(preP / preF).toFixed(2)} | ${tokP.toFixed(2)} | ${tokF.toFixed(2)} | ${(tokF / tokP).toFixed(2)} | ${(1000 / tokP - 1000 / tokF).toFixed(1)} | ${err.toExponential(1)} |`,
        );
      } finally {
        await plain.close();
        await fused.close();
      }
    }
    const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
    console.log(
      [
        `fused vs plain decoder, Llama-2-7B-layer-shaped random package (2 layers, vocab 32000), ${PROMPT}-row prefill then ${DECODE} decoding steps, median of ${REPS} alternating runs; ${cpu}, ${os.availableParallelism()} threads, load average ${os.loadavg()[0].toFixed(1)}`,
        '| dtype | prefill ms plain | prefill ms fused | prefill speed-up | decode tok/s plain | decode tok/s fused | decode ratio fused/plain | ms saved per token | last-step logits max diff |',
        '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
        ...lines,
      ].join('\n'),
    );
  } finally {
    if (!keep) await rm(work, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
