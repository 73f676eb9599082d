#!/usr/bin/env node
// Runs a converted package (`minigpt convert` of a training run) on the samples check.py computed with
// PyTorch, and compares image embeddings, first-step logits and greedy ids. Exit 1 over tolerance.
//
//   node models/demo/train/check.mjs --model PKG --data PREPARED --expected expected.json [--tolerance 1e-3]
import { readFile, open } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';

const ROOT = join(fileURLToPath(import.meta.url), '..', '..', '..', '..');
const arg = (name, def) => {
  const i = process.argv.indexOf(name);
  if (i < 0 && def === undefined) throw new Error(`${name} is required`);
  return i < 0 ? def : process.argv[i + 1];
};

const maxAbs = (a, b) => {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
};
const argmax = (v) => {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i] > v[best]) best = i;
  return best;
};

async function main() {
  const { MiniGPT } = await import(join(ROOT, 'dist/src/inference/model.js'));
  const { spliceContext } = await import(join(ROOT, 'dist/src/inference/context.js'));
  const data = arg('--data');
  const tol = Number(arg('--tolerance', '1e-3'));
  const expected = JSON.parse(await readFile(arg('--expected'), 'utf8'));
  const meta = JSON.parse(await readFile(join(data, 'meta.json'), 'utf8'));
  const S = meta.imageSize;
  const model = await MiniGPT.load(arg('--model'), { provider: 'cpu' });
  const fh = await open(join(data, 'images.u8'), 'r');
  const report = [];
  let ok = true;
  try {
    if (model.meta.vision.imageSize !== S) throw new Error(`the package takes ${model.meta.vision.imageSize} px images, the data ${S} px`);
    for (const e of expected) {
      const raw = Buffer.alloc(S * S * 3);
      await fh.read(raw, 0, raw.length, e.image * raw.length);
      // already at the input size: the runtime's resize is then the identity, as in training
      const png = await sharp(raw, { raw: { width: S, height: S, channels: 3 } })
        .png()
        .toBuffer();
      const { embeds } = await model.encodeImage(png);
      const ctx = await spliceContext(e.segments, [embeds], model.embedder);
      let { state, logits } = await model.prefill(ctx);
      const firstErr = maxAbs(logits, e.first_logits);
      const ids = [];
      for (let t = 0; t < e.greedy_ids.length; t++) {
        const id = argmax(logits);
        ids.push(id);
        if (id === 2 || t + 1 === e.greedy_ids.length) break;
        const r = await model.decoder.step([state], [id]);
        state.dispose();
        state = r.states[0];
        logits = r.logits[0];
      }
      state.dispose();
      const r = {
        sample: e.sample,
        image_embeds_max_abs_err: maxAbs(embeds, e.image_embeds),
        first_logits_max_abs_err: firstErr,
        greedy_ids: ids,
        expected_ids: e.greedy_ids,
      };
      r.ok = r.image_embeds_max_abs_err <= tol && firstErr <= tol && ids.join() === e.greedy_ids.join();
      ok &&= r.ok;
      report.push(r);
    }
  } finally {
    await fh.close();
    await model.close();
  }
  console.log(JSON.stringify({ ok, tolerance: tol, samples: report }, null, 2));
  if (!ok) process.exitCode = 1;
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
