#!/usr/bin/env node
// Builds the tiny RANDOM-weight package of the tests (test/web/helpers.ts): the MiniGPT-v2 checkpoints of
// test/fixtures/minigptv2-tiny (in the published formats) converted by our own converter, with the demo model's
// SentencePiece-style (Unigram) tokenizer.json of exactly 512 pieces (src/convert/unigram-tokenizer.ts), so text
// round-trips exactly (box syntax included). Its answers are nonsense. Until the trained demo existed this was
// models/demo; models/demo is now built by models/demo/train (publish.mjs), so --out is required.
//
//   npm run build && node scripts/build-demo-model.mjs --out DIR
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = join(fileURLToPath(import.meta.url), '..', '..');
const FIXTURE = join(ROOT, 'test', 'fixtures', 'minigptv2-tiny');
const dist = (p) => import(pathToFileURL(join(ROOT, 'dist', 'src', p)).href);

/** The demo model's tokenizer.json (as an object). */
export const { demoTokenizerJson } = await dist('convert/unigram-tokenizer.js');

/** Builds the demo package into `out` (replacing its package files, keeping anything else there); `log` gets the converter's progress. */
export async function buildDemoModel(out, log) {
  const { convert } = await dist('convert/convert.js');
  const llm = await mkdtemp(join(tmpdir(), 'minigpt-demo-llm-'));
  try {
    for (const f of ['config.json', 'generation_config.json', 'model.safetensors']) await copyFile(join(FIXTURE, 'llama', f), join(llm, f));
    await writeFile(join(llm, 'tokenizer.json'), `${JSON.stringify(demoTokenizerJson())}\n`);
    // Replace only the package files: models/demo/train (the training recipe) lives beside them.
    for (const f of [
      'model.json',
      'tokenizer.json',
      'vision.onnx',
      'vision.onnx.data',
      'embed.onnx',
      'embed.onnx.data',
      'decoder.onnx',
      'decoder.onnx.data',
    ]) {
      await rm(join(out, f), { force: true });
    }
    await convert({
      arch: 'minigpt-v2',
      vit: join(FIXTURE, 'eva_vit.pth'),
      llm,
      ckpt: join(FIXTURE, 'minigptv2_ckpt.pth'),
      vitHeads: 4,
      imageSize: 112,
      loraR: 8,
      loraAlpha: 16,
      out,
      log,
    });
  } finally {
    await rm(llm, { recursive: true, force: true });
  }
  return out;
}

async function main() {
  const outArg = process.argv.indexOf('--out');
  const out = outArg > 0 ? process.argv[outArg + 1] : undefined;
  if (!out)
    throw new Error('usage: node scripts/build-demo-model.mjs --out DIR (models/demo is the trained package: models/demo/train/README.md)');
  await buildDemoModel(out, (l) => console.error(l));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}
