#!/usr/bin/env node
// Short generations on each execution provider, for each package, each in its own process so device
// memory can be attributed: time to first token, decode tokens/s, peak GPU memory, where the KV cache lives.
//   node scripts/provider-bench.mjs --model DIR [--model DIR...] --providers cpu,webgpu,cuda --image F [--new-tokens N] [--json OUT]
import { execFileSync, spawn } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(fileURLToPath(import.meta.url), '..', '..');
const args = process.argv.slice(2);
const many = (flag) => args.flatMap((a, i) => (a === flag ? [args[i + 1]] : []));
const one = (flag, d) => many(flag)[0] ?? d;

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Child: load one package on one provider and time a few answers. */
async function runOne(modelDir, provider, imagePath, newTokens) {
  const { MiniGPT } = await import(join(ROOT, 'dist/src/inference/model.js'));
  const { conversationPrompt } = await import(join(ROOT, 'dist/src/inference/prompt.js'));
  const t0 = performance.now();
  const model = await MiniGPT.load(modelDir, { provider });
  const loadMs = performance.now() - t0;
  const image = await readFile(imagePath);
  const prompt = conversationPrompt(model.meta.prompt, [
    { user: '[grounding] describe this image in detail, naming every object you can see and where it is' },
  ]);
  const runs = [];
  let kvLocation = 'unknown';
  const origForward = model.decoder.forward.bind(model.decoder);
  model.decoder.forward = async (...a) => {
    const r = await origForward(...a);
    kvLocation = r.state.feeds()['past_key_values.0.key'].location;
    return r;
  };
  for (let i = 0; i < 3; i++) {
    const img = await model.encodeImage(image);
    let timings = null;
    let tokens = 0;
    for await (const ev of model.answer(prompt, [img.embeds], { temperature: 0, maxNewTokens: newTokens, stopIds: [], stopStrings: [] })) {
      if (ev.type === 'timings') timings = ev.timings;
      if (ev.type === 'done') tokens = ev.tokenIds.length;
    }
    runs.push({ ...timings, visionMs: img.preprocessMs + img.visionMs, tokens });
    if (i === 0) process.stdout.write('WARM\n'); // the parent samples device memory from here on
  }
  await model.close();
  const measured = runs.slice(1); // first run is warm-up
  return {
    model: modelDir,
    provider: model.provider,
    load_ms: loadMs,
    prompt_tokens: runs[0].promptTokens,
    new_tokens: runs[0].tokens,
    vision_ms: median(measured.map((r) => r.visionMs)),
    prefill_ms: median(measured.map((r) => r.prefillMs)),
    ttft_ms: median(measured.map((r) => r.visionMs + r.firstTokenMs)),
    decode_tok_s: median(measured.map((r) => ((r.tokens - 1) * 1000) / Math.max(1e-9, r.decodeMs - (r.firstTokenMs - r.prefillMs)))),
    kv_cache_location: kvLocation,
  };
}

function gpuMemoryMiB(pid) {
  try {
    const rows = execFileSync('nvidia-smi', ['--query-compute-apps=pid,used_memory', '--format=csv,noheader,nounits'], {
      encoding: 'utf8',
    });
    for (const line of rows.trim().split('\n')) {
      const [p, mem] = line.split(',').map((s) => s.trim());
      if (Number(p) === pid) return Number(mem);
    }
  } catch {
    return null;
  }
  return 0;
}

async function parent() {
  const models = many('--model');
  const providers = one('--providers', 'cpu').split(',');
  const image = one('--image', join(ROOT, 'test/fixtures/minigptv2-tiny/input.png'));
  const newTokens = Number(one('--new-tokens', '32'));
  const results = [];
  for (const model of models) {
    for (const provider of providers) {
      const child = spawn(process.execPath, [fileURLToPath(import.meta.url), '--child', model, provider, image, String(newTokens)], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      let err = '';
      let peak = 0;
      let warm = false;
      const timer = setInterval(() => {
        if (!warm) return;
        const m = gpuMemoryMiB(child.pid);
        if (m !== null) peak = Math.max(peak, m);
      }, 200);
      child.stdout.on('data', (d) => {
        out += d;
        if (out.includes('WARM\n')) warm = true;
      });
      child.stderr.on('data', (d) => (err += d));
      const code = await new Promise((r) => child.on('close', r));
      clearInterval(timer);
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (code === 0 && line) results.push({ ...JSON.parse(line), gpu_memory_mib: provider === 'cpu' ? 0 : peak });
      else results.push({ model, provider, error: err.trim().split('\n').slice(-3).join(' | ') || `exit ${code}` });
    }
  }
  const fmt = (x, d = 1) => (typeof x === 'number' ? x.toFixed(d) : String(x ?? ''));
  console.log('| model | provider | prompt tok | vision ms | prefill ms | TTFT ms | decode tok/s | GPU MiB | KV cache |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of results) {
    if (r.error) console.log(`| ${r.model} | ${r.provider} | failed: ${r.error} |`);
    else
      console.log(
        `| ${r.model} | ${r.provider} | ${r.prompt_tokens} | ${fmt(r.vision_ms)} | ${fmt(r.prefill_ms)} | ${fmt(r.ttft_ms)} | ${fmt(r.decode_tok_s)} | ${r.gpu_memory_mib} | ${r.kv_cache_location} |`,
      );
  }
  const json = one('--json');
  if (json) await writeFile(json, `${JSON.stringify(results, null, 2)}\n`);
}

if (args[0] === '--child') {
  const [, model, provider, image, n] = args;
  runOne(model, provider, image, Number(n)).then(
    (r) => process.stdout.write(`${JSON.stringify(r)}\n`),
    (e) => {
      process.stderr.write(`${e instanceof Error ? e.message : e}\n`);
      process.exit(1);
    },
  );
} else {
  parent();
}
