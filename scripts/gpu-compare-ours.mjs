#!/usr/bin/env node
// Our side of scripts/gpu-compare.sh: one package on one execution provider, measured the way
// scripts/gpu-compare-baseline.py measures PyTorch (medians of --reps runs, greedy, no stop words):
//   vision_ms      the image encoder (448 px for MiniGPT-v2)
//   ttft_ms        image bytes in -> first token (vision + prefill of image rows and text + one step)
//   decode_tok_s   batch 1: the N - 1 steps after the prefill, per second
//   batch8_tok_s   8 answers at once (the engine batches their steps): all their steps after the last prefill
//   gpu_mem_mb     peak device memory of this process (nvidia-smi), or null; rss_mb otherwise
//   attention_check  fused packages off the CPU: the load-time MultiHeadAttention check (null otherwise)
// With --dump PREFIX it also writes the image embeddings and the prompt's last-position logits as raw float32
// (PREFIX.image.f32, PREFIX.logits.f32), for gpu-compare.sh to hold each configuration against fp32's.
// With --profile DIR it measures nothing: it runs the same work once (an image, an answer, --batch answers at once)
// with onnxruntime's profiling on, its traces in DIR, and reports where the time went instead (src/inference/profile.ts:
// per graph and kind of run, wall / CPU kernel / GPU time a run and the costliest ops; the text on stderr).
// Prints one JSON object.
//   node scripts/gpu-compare-ours.mjs --model DIR --provider webgpu [--new-tokens 32] [--batch 8] [--reps 3] [--dump PREFIX] [--profile DIR]
import { execFileSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(fileURLToPath(import.meta.url), '..', '..');
const args = process.argv.slice(2);
const opt = (flag, d) => {
  const i = args.indexOf(flag);
  return i >= 0 ? args[i + 1] : d;
};
const model = opt('--model');
const provider = opt('--provider', 'cpu');
const newTokens = Number(opt('--new-tokens', '32'));
const batch = Number(opt('--batch', '8'));
const reps = Number(opt('--reps', '3'));
const dump = opt('--dump');
const profileDir = opt('--profile');
if (!model) throw new Error('--model DIR is required');

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

let peakGpuMb = null;
function sampleGpu() {
  try {
    const out = execFileSync('nvidia-smi', ['--query-compute-apps=pid,used_memory', '--format=csv,noheader,nounits'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    for (const line of out.trim().split('\n')) {
      const [pid, mb] = line.split(',').map((s) => s.trim());
      if (Number(pid) === process.pid) peakGpuMb = Math.max(peakGpuMb ?? 0, Number(mb));
    }
  } catch {
    // no nvidia-smi: CPU run
  }
}

const { MiniGPT } = await import(join(ROOT, 'dist/src/inference/model.js'));
const { conversationPrompt } = await import(join(ROOT, 'dist/src/inference/prompt.js'));
const m = await MiniGPT.load(model, { provider, maxBatch: batch, profileDir });
const sampler = setInterval(sampleGpu, 250);
// what was run, at the head of either report
const describe = () => ({
  provider: m.provider,
  dtype: m.meta.dtype,
  graph: m.meta.graph ?? 'plain',
  compute: m.meta.compute ?? 'float32',
  webgpu_validation: m.provider === 'webgpu' ? (process.env.MINIGPT_WEBGPU_VALIDATION ?? 'basic (default)') : null,
});
let report;
try {
  const image = await readFile(join(ROOT, 'test/fixtures/minigptv2-tiny/input.png'));
  // about 44 text tokens around the image, as the baseline's prompt
  const prompt = conversationPrompt(m.meta.prompt, [
    {
      user: '[grounding] describe this image in detail, naming every object you can see, its colour, its size and where it is in the picture',
    },
  ]);
  const greedy = { temperature: 0, stopIds: [], stopStrings: [], repetitionPenalty: 1 };
  const run = async (embeds, n) => {
    let t = null;
    for await (const ev of m.answer(prompt, [embeds], { ...greedy, maxNewTokens: n })) if (ev.type === 'timings') t = ev.timings;
    return t;
  };
  const warm = await m.encodeImage(image);
  await run(warm.embeds, 2);
  if (dump) {
    const pre = await m.prefill(await m.context(prompt, [warm.embeds]));
    pre.state.dispose();
    const bytes = (a) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    await writeFile(`${dump}.image.f32`, bytes(warm.embeds));
    await writeFile(`${dump}.logits.f32`, bytes(pre.logits));
  }

  if (profileDir) {
    // (the traces are written when the sessions are released: summed after the finally below)
    await m.encodeImage(image);
    await run(warm.embeds, newTokens);
    await Promise.all(Array.from({ length: batch }, () => run(warm.embeds, newTokens)));
  } else {
    report = await measure(run, warm, image);
  }
} finally {
  clearInterval(sampler);
  await m.close();
}
if (profileDir) {
  const { summariseProfiles, formatProfile } = await import(join(ROOT, 'dist/src/inference/profile.js'));
  const summary = await summariseProfiles(profileDir, { top: 6 });
  process.stderr.write(`${formatProfile(summary)}\n`);
  report = { ...describe(), classes: summary.classes, unmatched_programs: summary.unmatched_programs };
}
process.stdout.write(`${JSON.stringify(report)}\n`);

/** The figures of the header, medians of --reps. */
async function measure(run, warm, image) {
  const vision = [];
  const ttft = [];
  let promptTokens = 0;
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    const img = await m.encodeImage(image);
    vision.push(img.visionMs);
    const t = await run(img.embeds, 1);
    ttft.push(performance.now() - t0);
    promptTokens = t.promptTokens;
  }
  // Decoding, from the answers' own timings: the steps after the prefill. With k answers at once, the decoding
  // phase runs from the last prefill's end (prefills take the engine one at a time) to the last answer's end.
  const decode = async (k) => {
    const t0 = performance.now();
    const timings = await Promise.all(Array.from({ length: k }, () => run(warm.embeds, newTokens)));
    const end = performance.now() - t0;
    const lastPrefill = Math.max(...timings.map((t) => t.prefillMs));
    const steps = timings.reduce((n, t) => n + Math.max(0, t.newTokens - 1), 0);
    return steps / ((end - lastPrefill) / 1000);
  };
  const single = [];
  const batched = [];
  for (let i = 0; i < reps; i++) {
    single.push(await decode(1));
    batched.push(await decode(batch));
  }
  sampleGpu();
  const out = {
    ...describe(),
    vision_ms: Math.round(median(vision) * 100) / 100,
    ttft_ms: Math.round(median(ttft) * 100) / 100,
    prompt_tokens: promptTokens,
    decode_tok_s: Math.round(median(single) * 100) / 100,
    batch8_tok_s: Math.round(median(batched) * 100) / 100,
    gpu_mem_mb: peakGpuMb,
    // fused packages off the CPU: MultiHeadAttention checked at load (src/inference/attention-check.ts); a
    // max_run_positions below the prompt's length means its prefill ran in that many positions at a time
    attention_check: m.attentionCheck && {
      max_run_positions: m.attentionCheck.maxRunPositions,
      exact: m.attentionCheck.exact,
      probes: m.attentionCheck.probes.map((p) => [p.positions, p.past, Number(p.error.toExponential(2))]),
    },
    rss_mb: Math.round(process.resourceUsage().maxRSS / 1024),
  };
  return out;
}
