#!/usr/bin/env node
// Writes a random MiniGPT-v2 checkpoint set in the published formats, with the exact tensor names and shapes of
// the real downloads: eva_vit_g.pth (EVA ViT-g, torch.save zip), llama/ (Hugging Face Llama-2-7B folder with
// sharded safetensors + index, config, tokenizer.json) and minigptv2_checkpoint.pth ({'model': llama_proj + LoRA}).
// Values are seeded and deterministic. Data streams to disk tensor by tensor (memory: one 16 MB chunk).
//
//   npm run build && node scripts/random-checkpoint.mjs --preset llama2-7b --llm-layers 2 --vit-depth 2 --out DIR
//
// Options: --preset llama2-7b|tiny (default llama2-7b), --llm-layers N, --vit-depth N, --dtype fp16|fp32 (ViT and
// Llama, default fp16 as published), --ckpt-dtype fp32|fp16 (default fp32), --shards N (default: 10 GB shards like
// transformers), --seed N (default 0), --zip64 (ZIP64 records in the .pth files even when small), --json (print
// the result as JSON). Prints the `minigpt convert` command that converts it.
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { eachArg, fieldArg, intArg, shapeArg } from './args.mjs';

const ROOT = join(fileURLToPath(import.meta.url), '..', '..');

function parseArgs(argv) {
  const o = { preset: 'llama2-7b', dtype: 'fp16', ckptDtype: 'fp32', seed: 0 };
  const fields = {
    values: { '--preset': 'preset', '--ckpt-dtype': 'ckptDtype', '--out': 'out' },
    switches: { '--json': 'json', '-h': 'help', '--help': 'help' },
  };
  eachArg(argv, (a, next) => {
    if (shapeArg(o, a, next) || fieldArg(o, a, next, fields)) return;
    switch (a) {
      case '--shards':
        o.shards = intArg(a, next());
        break;
      case '--seed':
        o.seed = intArg(a, next(), 0);
        break;
      case '--zip64':
        o.zip64 = 'always';
        break;
      default:
        throw new Error(`unknown option ${a}`);
    }
  });
  for (const [k, v] of [
    ['--dtype', o.dtype],
    ['--ckpt-dtype', o.ckptDtype],
  ]) {
    if (v !== 'fp16' && v !== 'fp32') throw new Error(`${k} must be fp16 or fp32, got ${v}`);
  }
  if (!o.help && !o.out) throw new Error('--out DIR is required');
  return o;
}

async function main() {
  const o = parseArgs(process.argv);
  if (o.help) {
    const text = (await import('node:fs')).readFileSync(fileURLToPath(import.meta.url), 'utf8');
    process.stdout.write(
      `${text
        .split('\n')
        .slice(1)
        .filter((l) => l.startsWith('//'))
        .map((l) => l.slice(3))
        .join('\n')}\n`,
    );
    return;
  }
  const rc = await import(pathToFileURL(join(ROOT, 'dist', 'src', 'convert', 'random-checkpoints.js')).href);
  const shape = rc.randomShape(o.preset, { llmLayers: o.llmLayers, vitDepth: o.vitDepth });
  const t0 = performance.now();
  const r = await rc.writeRandomMiniGPTv2(o.out, shape, {
    seed: o.seed,
    dtype: o.dtype,
    ckptDtype: o.ckptDtype,
    shards: o.shards,
    zip64: o.zip64,
    log: (l) => console.error(l),
  });
  const seconds = (performance.now() - t0) / 1000;
  const a = r.convertArgs;
  const command = `minigpt convert --arch ${a.arch} --vit ${r.vit} --llm ${r.llm} --ckpt ${r.ckpt} --vit-heads ${a.vitHeads} --image-size ${a.imageSize} --lora-r ${a.loraR} --lora-alpha ${a.loraAlpha} --out OUT`;
  if (o.json) {
    process.stdout.write(
      `${JSON.stringify({ shape, seed: r.seed, files: r.files, bytes: r.bytes, seconds, convertArgs: a, command }, null, 2)}\n`,
    );
    return;
  }
  for (const f of r.files) console.log(`${String(f.bytes).padStart(14)}  ${f.path}`);
  console.log(`${String(r.bytes).padStart(14)}  total (${(r.bytes / 1e9).toFixed(2)} GB in ${seconds.toFixed(1)} s)`);
  console.log(`convert with:\n  ${command}`);
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
