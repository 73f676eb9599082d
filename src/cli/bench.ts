// `minigpt bench` (`npm run bench`): latency and throughput of a package on this machine, and every
// optimisation of the runtime as a ratio against its baseline measured in the same run:
//   KV cache on / off (off: the whole sequence recomputed for every token), a follow-up with / without the
//   previous turn's KV cache, 8 conversations batched / one after another, image cache hit / miss, and the
//   share of each decoding step spent outside session.run (JavaScript).
// Each package runs in a child process of its own (peak RSS is that process's); progress goes to stderr,
// the table (or, with --json, one JSON object) to stdout.
import { apiMarkdown, benchApi } from './bench-api.js';
import { benchCluster, clusterMarkdown } from './bench-cluster.js';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MiniGPT } from '../inference/model.js';
import { conversationPrompt, type Turn } from '../inference/prompt.js';
import { generate } from '../inference/generation/index.js';
import { CachedContext } from '../inference/kv-reuse.js';
import { promptSegmentIds } from '../inference/context.js';
import { ConversationManager } from '../conversation/manager.js';
import { imageData, renderScene } from '../demo-data/index.js';
import { Option, type Command } from 'commander';
import { fmt, GREEDY, round, roundAll, stat, type Stat } from './bench-common.js';
import {
  BENCH_VARIANTS,
  benchThread,
  benchWeights,
  isCurrentPackage,
  medianResult,
  parseDtypes,
  parseVariant,
  threadMarkdown,
  variantDir,
  WEIGHTS_PROFILE,
  WEIGHTS_ROUNDS,
  weightRatios,
  weightsMarkdown,
  type WeightsResult,
  type WeightVariant,
} from './bench-weights.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const IMAGE = join(ROOT, 'test', 'fixtures', 'minigptv2-tiny', 'input.png');
export const DEFAULT_LARGE_DIR = join(process.env.XDG_CACHE_HOME ?? join(os.homedir(), '.cache'), 'minigpt', 'bench', 'llama2-7b-2l');
/** Llama-2-7B / EVA ViT-g shapes at these depths (src/convert/random-checkpoints.ts) */
export const LARGE_LAYERS = { llm: 2, vit: 2 };

interface Profile {
  /** warm-up runs (not measured), then measured repetitions */
  warmup: number;
  reps: number;
  /** new tokens of the single-answer runs (TTFT, decode speed, JS overhead) */
  decodeTokens: number;
  /**
   * tokens generated with the KV cache off (each recomputes the whole sequence, keeping the last position's
   * logits only, as a real re-run would); the first comes from the prefill, so N - 1 steps are timed (at least 3)
   */
  kvOffTokens: number;
  /** history length of the follow-up scenario (tokens), and the answer length before it */
  history: number;
  prevAnswer: number;
  /** new tokens per conversation in the 8-conversation scenario, and its repetitions */
  batchTokens: number;
  batchReps: number;
  /** also time 8 first turns (full prefill each) batched / sequential */
  coldBatch: boolean;
}

export const PROFILES: Record<'quick' | 'full' | 'large', Profile> = {
  quick: { warmup: 1, reps: 5, decodeTokens: 48, kvOffTokens: 12, history: 200, prevAnswer: 16, batchTokens: 32, batchReps: 2, coldBatch: false },
  full: { warmup: 2, reps: 15, decodeTokens: 128, kvOffTokens: 32, history: 200, prevAnswer: 32, batchTokens: 64, batchReps: 5, coldBatch: true },
  large: { warmup: 1, reps: 3, decodeTokens: 24, kvOffTokens: 4, history: 500, prevAnswer: 24, batchTokens: 24, batchReps: 2, coldBatch: false },
};

/** What one package measured (medians in the flat keys, distributions in `stats`). */
export interface PackageResult {
  package: string;
  profile: string;
  shape: Record<string, number | string>;
  threads: number;
  load_ms: number;
  preprocess_ms: number;
  vision_ms: number;
  prefill_ms: number;
  prompt_tokens: number;
  ttft_ms: number;
  decode_tok_s: number;
  e2e_ms: number;
  answer_tokens: number;
  peak_rss_mb: number;
  decode_step_ms: number;
  kv_off_step_ms: number;
  kv_cache_speedup: number;
  kv_cache_identical: boolean;
  followup_history_tokens: number;
  followup_prefill_tokens: number;
  followup_ttft_ms: number;
  full_prefill_ttft_ms: number;
  followup_ttft_ratio: number;
  followup_extend_ms: number;
  followup_identical: boolean;
  image_cache_hit_ttft_ms: number;
  image_cache_miss_ttft_ms: number;
  image_cache_ttft_ratio: number;
  batch8_tokens: number;
  batch8_sequential_ms: number;
  batch8_batched_ms: number;
  batch8_speedup: number;
  batch8_mean_rows: number;
  batch8_identical: boolean;
  batch8_cold_speedup?: number;
  js_overhead_share: number;
  js_overhead_us_per_step: number;
  /** a grounding answer about a demo scene, image bytes to last token, the package's stop words */
  grounding_answer_ms: number;
  grounding_answer_tokens: number;
  grounding_answer_text: string;
  stats: Record<string, Stat>;
}

const QUESTIONS = [
  '[grounding] describe this image in detail',
  '[refer] where is the red square',
  '[detection] circle',
  'what colour is the star',
  '[vqa] how many shapes are there',
  '[caption] give a short description',
  '[identify] {<10><20><30><40>}',
  'where is the blue triangle',
];
const GROUNDING_PROMPT = '[grounding] describe this image in detail';
/** The web demo's first example scene (adapters/web/examples.ts: seed 4242, used by no training or evaluation split). */
const DEMO_SCENE = { seed: 4242, index: 0 };
const FILLER = 'the red square is left of the blue circle and above a small green triangle near the middle of the picture';

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const r = await fn();
  return [r, performance.now() - t0];
}

/** Runs every measurement on one package, in this process. */
export async function benchPackage(dir: string, profileName: keyof typeof PROFILES, threads: number, log: (s: string) => void): Promise<PackageResult> {
  const p = PROFILES[profileName];
  const name = !relative(ROOT, dir).startsWith('..') ? relative(ROOT, dir) : dir.startsWith(os.homedir()) ? `~${dir.slice(os.homedir().length)}` : dir;
  const say = (s: string) => log(`[bench ${name}] ${s}`);
  const [model, loadMs] = await timed(() => MiniGPT.load(dir, { provider: 'cpu', threads, maxBatch: 8 }));
  try {
    const spec = model.meta.prompt;
    const V = model.meta.llm.vocabSize;
    const bytes = await readFile(IMAGE);
    const ask = (turns: Turn[]) => conversationPrompt(spec, turns);
    const stats: Record<string, Stat> = {};
    const keep = (key: string, xs: number[]) => (stats[key] = stat(xs)).median;
    say(`loaded in ${(loadMs / 1000).toFixed(1)} s (${model.meta.llm.layers} layers of hidden ${model.meta.llm.hidden}, vocab ${V}, ${threads} threads)`);

    // 1. One answer about a new image: preprocessing, vision, prefill, time to first token, end to end.
    const pre: number[] = [];
    const vis: number[] = [];
    const prefill: number[] = [];
    const ttft: number[] = [];
    const e2e: number[] = [];
    let promptTokens = 0;
    let image: Float32Array = new Float32Array(0);
    for (let i = 0; i < p.warmup + p.reps; i++) {
      say(`answer ${i + 1}/${p.warmup + p.reps}${i < p.warmup ? ' (warm-up)' : ''}`);
      const img = await model.encodeImage(bytes);
      image = img.embeds;
      let t: { prefillMs: number; firstTokenMs: number; totalMs: number; promptTokens: number } | undefined;
      for await (const ev of model.answer(ask([{ user: QUESTIONS[0] }]), [img.embeds], { ...GREEDY, maxNewTokens: 8 })) if (ev.type === 'timings') t = ev.timings;
      if (i < p.warmup || !t) continue;
      pre.push(img.preprocessMs);
      vis.push(img.visionMs);
      prefill.push(t.prefillMs);
      ttft.push(img.preprocessMs + img.visionMs + t.firstTokenMs);
      promptTokens = t.promptTokens;
    }

    // 2. Decoding with the KV cache: tokens/s and the share of each step outside session.run.
    const prompt0 = ask([{ user: QUESTIONS[0] }]);
    const ctx0 = await model.context(prompt0, [image]);
    const decodeTokens = Math.min(p.decodeTokens, model.meta.llm.maxPositions - ctx0.length);
    const stepMs: number[] = [];
    const jsShare: number[] = [];
    const jsUs: number[] = [];
    const answerMs: number[] = [];
    let cachedIds: number[] = [];
    const textDecoder = {
      decode: (ids: readonly number[]) => model.tokenizer.decode(ids, { skipSpecialTokens: true }),
      incremental: () => model.tokenizer.incrementalDecoder?.({ skipSpecialTokens: true }),
    };
    for (let i = 0; i < p.warmup + p.reps; i++) {
      say(`decode ${decodeTokens} tokens ${i + 1}/${p.warmup + p.reps}${i < p.warmup ? ' (warm-up)' : ''}`);
      const [first, prefillMs] = await timed(() => model.prefill(ctx0));
      const opts = model.generationOptions({ ...GREEDY, maxNewTokens: decodeTokens });
      const run0 = model.decoder.stats.runMs;
      const runs0 = model.decoder.stats.runs;
      const t0 = performance.now();
      let ids: number[] = [];
      let pieces = 0;
      for await (const ev of generate(model.engine, { state: first.state, logits: first.logits }, textDecoder, opts)) {
        if (ev.type === 'text') pieces += ev.text.length; // consumed as a stream would be
        else ids = ev.tokenIds;
      }
      const wall = performance.now() - t0;
      const steps = model.decoder.stats.runs - runs0;
      const inRun = model.decoder.stats.runMs - run0;
      if (i < p.warmup || steps === 0) continue;
      if (pieces === 0 && ids.length > 1) say('(no text streamed: the tokens decode to nothing)');
      cachedIds = ids;
      stepMs.push(wall / steps);
      jsShare.push((wall - inRun) / wall);
      jsUs.push(((wall - inRun) / steps) * 1000);
      answerMs.push(prefillMs + wall);
    }
    const decodeStep = keep('decode_step_ms', stepMs);
    const visionMs = keep('vision_ms', vis);
    const preprocessMs = keep('preprocess_ms', pre);
    keep('answer_ms', answerMs);
    for (let i = 0; i < answerMs.length; i++) e2e.push(preprocessMs + visionMs + answerMs[i]);

    // 3. Without the KV cache: every token recomputes the whole sequence (the same greedy tokens).
    const kvOff: number[] = [];
    const kvOffIds: number[] = [];
    {
      const n = Math.min(p.kvOffTokens, decodeTokens);
      say(`KV cache off: ${n} tokens, each a full forward`);
      const first = await model.prefill(ctx0);
      first.state.dispose();
      let logits: Float32Array = first.logits;
      let embeds = ctx0.embeds;
      for (let i = 0; i < n; i++) {
        let best = 0;
        for (let v = 1; v < V; v++) if (logits[v] > logits[best]) best = v;
        kvOffIds.push(best);
        if (i === n - 1) break;
        const row = await model.embedder.embed([best]);
        const next = new Float32Array(embeds.length + row.length);
        next.set(embeds);
        next.set(row, embeds.length);
        embeds = next;
        const [r, ms] = await timed(() => model.decoder.forward(embeds, null));
        r.state.dispose();
        kvOff.push(ms);
        logits = r.logits.subarray(r.logits.length - V);
      }
    }
    const kvOffStep = keep('kv_off_step_ms', kvOff);

    // 4. A follow-up in a thread with a long history: with the previous turn's KV cache / full re-prefill.
    say(`follow-up with a ~${p.history}-token history`);
    const room = model.meta.llm.maxPositions - 16;
    const history: Turn[] = [];
    const tokens = (turns: Turn[]) =>
      promptSegmentIds(ask(turns), spec.imageToken, 1, model.tokenizer).reduce((n, seg) => n + seg.length, 0) + model.meta.vision.imageTokens;
    // earlier turns until the follow-up's prompt has at least `history` tokens (as far as the model allows)
    const followUp = (h: Turn[]) => [...h, { user: QUESTIONS[1], assistant: 'x '.repeat(p.prevAnswer) }, { user: QUESTIONS[2] }];
    for (let k = 0; tokens(followUp(history)) < p.history; k++) {
      const turn = { user: QUESTIONS[k % QUESTIONS.length], assistant: `${FILLER} ${k}` };
      if (tokens(followUp([...history, turn])) > room) break;
      history.push(turn);
    }
    const MARK = '\u0000';
    const prefixOf = (turns: Turn[]) => {
      const s = ask([...turns, { user: MARK }]);
      return s.slice(0, s.lastIndexOf(MARK)).trimEnd();
    };
    // the thread's cache as the conversation manager keeps it after the earlier turns
    let base = await model.extendContext(null, prefixOf(history), [image], ['img']);
    // the previous turn, answered from that cache and kept, then extended to the next prompt's start
    let prevKept: CachedContext | undefined;
    let prevText = '';
    for await (const ev of model.answer(ask([...history, { user: QUESTIONS[1] }]), [image], { ...GREEDY, maxNewTokens: p.prevAnswer }, undefined, {
      imageKeys: ['img'],
      reuse: base,
      keep: (c) => (prevKept = c),
    })) {
      if (ev.type === 'done') prevText = ev.text.trim();
    }
    const turns: Turn[] = [...history, { user: QUESTIONS[1], assistant: prevText }];
    const [extended, extendMs] = await timed(() => model.extendContext(prevKept!, prefixOf(turns), [image], ['img']));
    base = extended;
    const followPrompt = ask([...turns, { user: QUESTIONS[2] }]);
    const withReuse: number[] = [];
    const without: number[] = [];
    let followTokens = 0;
    let followPrefill = 0;
    let reuseIds: number[] = [];
    let fullIds: number[] = [];
    // a conversation's own cache (the manager's are never shared), copied before the clock starts
    const clone = (c: CachedContext) => new CachedContext(c.kv.clone(), c.layout);
    for (let i = 0; i < p.warmup + p.reps; i++) {
      for (const reuse of [true, false]) {
        let t: { firstTokenMs: number; promptTokens: number; prefillTokens: number } | undefined;
        let ids: number[] = [];
        const more = reuse ? { imageKeys: ['img'], reuse: clone(base) } : {};
        await new Promise((r) => setImmediate(r));
        for await (const ev of model.answer(followPrompt, [image], { ...GREEDY, maxNewTokens: 4 }, undefined, more)) {
          if (ev.type === 'timings') t = ev.timings;
          if (ev.type === 'done') ids = ev.tokenIds;
        }
        if (i < p.warmup || !t) continue;
        (reuse ? withReuse : without).push(t.firstTokenMs);
        if (reuse) {
          followPrefill = t.prefillTokens;
          reuseIds = ids;
        } else {
          fullIds = ids;
        }
        followTokens = t.promptTokens;
      }
      say(`follow-up ${i + 1}/${p.warmup + p.reps}`);
    }
    const followMs = keep('followup_ttft_ms', withReuse);
    const fullMs = keep('full_prefill_ttft_ms', without);

    // 5. Image cache: time to first token of a conversation's first turn, image cached / not.
    say('image cache hit / miss');
    const hit: number[] = [];
    const miss: number[] = [];
    for (let i = 0; i < p.warmup + Math.max(2, Math.ceil(p.reps / 2)); i++) {
      const m = new ConversationManager({ model, defaults: { ...GREEDY, maxNewTokens: 1 }, annotate: false });
      for (const thread of ['a', 'b']) {
        const t0 = performance.now();
        let first = 0;
        for await (const ev of m.handle({ key: { platform: 'cli', workspace: 'bench', channel: 'c', thread }, user: 'bench', text: QUESTIONS[3], image: bytes })) {
          if ((ev.type === 'text' || ev.type === 'final') && !first) first = performance.now() - t0;
        }
        if (i >= p.warmup) (thread === 'a' ? miss : hit).push(first);
      }
      await m.close();
    }
    const hitMs = keep('image_cache_hit_ttft_ms', hit);
    const missMs = keep('image_cache_miss_ttft_ms', miss);

    // 6. Eight conversations, each asking a follow-up about the image (the thread's cache kept, as the
    //    manager does): one after another / all at once (their decoding steps batched).
    const batchTokens = p.batchTokens;
    const turn1: Turn[] = [{ user: QUESTIONS[0], assistant: FILLER }];
    const cache8 = await model.extendContext(null, prefixOf(turn1), [image], ['img']);
    const prompts8 = QUESTIONS.map((q) => ask([...turn1, { user: q }]));
    const one = async (prompt: string, reuse: CachedContext | undefined) => {
      let ids: number[] = [];
      const more = reuse ? { imageKeys: ['img'], reuse } : {};
      for await (const ev of model.answer(prompt, [image], { ...GREEDY, maxNewTokens: batchTokens }, undefined, more)) if (ev.type === 'done') ids = ev.tokenIds;
      return ids;
    };
    const seq: number[] = [];
    const bat: number[] = [];
    let seqIds: number[][] = [];
    let batIds: number[][] = [];
    let meanRows = 0;
    for (let i = 0; i < p.warmup + p.batchReps; i++) {
      say(`8 conversations x ${batchTokens} tokens ${i + 1}/${p.warmup + p.batchReps}: one after another`);
      const own1 = prompts8.map(() => clone(cache8));
      const [a, ms1] = await timed(async () => {
        const out: number[][] = [];
        for (const [j, pr] of prompts8.entries()) out.push(await one(pr, own1[j]));
        return out;
      });
      say(`8 conversations x ${batchTokens} tokens ${i + 1}/${p.warmup + p.batchReps}: batched`);
      const s0 = { ...model.engine.stats };
      const own2 = prompts8.map(() => clone(cache8));
      const [b, ms2] = await timed(() => Promise.all(prompts8.map((pr, j) => one(pr, own2[j]))));
      if (i < p.warmup) continue;
      seq.push(ms1);
      bat.push(ms2);
      seqIds = a;
      batIds = b;
      meanRows = (model.engine.stats.rows - s0.rows) / Math.max(1, model.engine.stats.steps - s0.steps);
    }
    cache8.dispose();
    base.dispose();
    const seqMs = keep('batch8_sequential_ms', seq);
    const batMs = keep('batch8_batched_ms', bat);
    let coldSpeedup: number | undefined;
    if (p.coldBatch) {
      say('8 first turns (full prefill each): one after another / batched');
      const cold = QUESTIONS.map((q) => ask([{ user: q }]));
      const cs: number[] = [];
      const cb: number[] = [];
      for (let i = 0; i < p.warmup + p.batchReps; i++) {
        const [, ms1] = await timed(async () => {
          for (const pr of cold) await one(pr, undefined);
        });
        const [, ms2] = await timed(() => Promise.all(cold.map((pr) => one(pr, undefined))));
        if (i < p.warmup) continue;
        cs.push(ms1);
        cb.push(ms2);
      }
      coldSpeedup = keep('batch8_cold_sequential_ms', cs) / keep('batch8_cold_batched_ms', cb);
    }

    // 7. What a user waits for: a grounding answer about a demo scene (the web demo's first example scene), from the
    //    image's bytes to the last token, with the package's own stop words (so a trained model stops by itself).
    say('grounding answer about a demo scene');
    const sceneBytes = await renderScene(imageData({ seed: DEMO_SCENE.seed, count: 1 }, DEMO_SCENE.index).scene, 'png');
    const grounding: number[] = [];
    let groundingText = '';
    let groundingTokens = 0;
    for (let i = 0; i < p.warmup + p.reps; i++) {
      const t0 = performance.now();
      const img = await model.encodeImage(sceneBytes);
      for await (const ev of model.answer(ask([{ user: GROUNDING_PROMPT }]), [img.embeds], { temperature: 0, maxNewTokens: 300 })) {
        if (ev.type === 'done') [groundingText, groundingTokens] = [ev.text, ev.tokenIds.length];
      }
      if (i >= p.warmup) grounding.push(performance.now() - t0);
    }
    const groundingMs = keep('grounding_answer_ms', grounding);

    const ttftMs = keep('ttft_ms', ttft);
    const e2eMs = keep('e2e_ms', e2e);
    const prefillMs = keep('prefill_ms', prefill);
    const jsShareMed = keep('js_overhead_share', jsShare);
    const jsUsMed = keep('js_overhead_us_per_step', jsUs);
    const peak = process.resourceUsage().maxRSS / 1024;
    const L = model.meta.llm;
    const sameIds = (a: number[], b: number[]) => a.length === b.length && a.every((x, i) => x === b[i]);
    return {
      package: name,
      profile: profileName,
      shape: {
        llm: `${L.layers} layers, hidden ${L.hidden}, ${L.heads} heads, intermediate ${L.intermediate}, vocab ${L.vocabSize}`,
        vision: `${model.meta.vision.layers} blocks of width ${model.meta.vision.width}, ${model.meta.vision.imageSize}px, ${model.meta.vision.imageTokens} image tokens`,
        dtype: model.meta.dtype,
      },
      threads,
      load_ms: loadMs,
      preprocess_ms: preprocessMs,
      vision_ms: visionMs,
      prefill_ms: prefillMs,
      prompt_tokens: promptTokens,
      ttft_ms: ttftMs,
      decode_tok_s: 1000 / decodeStep,
      e2e_ms: e2eMs,
      answer_tokens: decodeTokens,
      peak_rss_mb: peak,
      decode_step_ms: decodeStep,
      kv_off_step_ms: kvOffStep,
      kv_cache_speedup: kvOffStep / decodeStep,
      kv_cache_identical: sameIds(kvOffIds, cachedIds.slice(0, kvOffIds.length)),
      followup_history_tokens: followTokens,
      followup_prefill_tokens: followPrefill,
      followup_ttft_ms: followMs,
      full_prefill_ttft_ms: fullMs,
      followup_ttft_ratio: followMs / fullMs,
      followup_extend_ms: extendMs,
      followup_identical: sameIds(reuseIds, fullIds),
      image_cache_hit_ttft_ms: hitMs,
      image_cache_miss_ttft_ms: missMs,
      image_cache_ttft_ratio: hitMs / missMs,
      batch8_tokens: batchTokens,
      batch8_sequential_ms: seqMs,
      batch8_batched_ms: batMs,
      batch8_speedup: seqMs / batMs,
      batch8_mean_rows: meanRows,
      batch8_identical: seqIds.length === 8 && seqIds.every((ids, i) => sameIds(ids, batIds[i])),
      ...(coldSpeedup !== undefined ? { batch8_cold_speedup: coldSpeedup } : {}),
      js_overhead_share: jsShareMed,
      js_overhead_us_per_step: jsUsMed,
      grounding_answer_ms: groundingMs,
      grounding_answer_tokens: groundingTokens,
      grounding_answer_text: groundingText.length > 300 ? `${groundingText.slice(0, 300)}...` : groundingText,
      stats,
    };
  } finally {
    await model.close();
  }
}

/**
 * Writes the 7B-layer-shaped random package in each of `variants` (random checkpoints in the published
 * formats, written once and converted to each; fp32 in `dir`, the others beside it: variantDir).
 */
export async function ensureLargePackage(dir: string, log: (s: string) => void, variants: readonly WeightVariant[] = [parseVariant('fp32')]): Promise<void> {
  const missing: WeightVariant[] = [];
  for (const v of variants) {
    const out = variantDir(dir, v);
    if (await isCurrentPackage(out)) continue;
    // A package from an older converter would measure the older graph: written again.
    if (existsSync(out)) log(`[bench] ${out} is from an older converter (no cache or logits_to_keep input): converting it again`);
    await rm(out, { recursive: true, force: true });
    missing.push(v);
  }
  if (missing.length === 0) return;
  const { randomShape, writeRandomMiniGPTv2 } = await import('../convert/random-checkpoints.js');
  const { convert } = await import('../convert/convert.js');
  const src = `${dir}-checkpoints`;
  log(`[bench] writing random Llama-2-7B / EVA ViT-g checkpoints (${LARGE_LAYERS.llm} LLM layers, ${LARGE_LAYERS.vit} ViT blocks) to ${src}`);
  await mkdir(dirname(dir), { recursive: true });
  const shape = randomShape('llama2-7b', { llmLayers: LARGE_LAYERS.llm, vitDepth: LARGE_LAYERS.vit });
  try {
    const r = await writeRandomMiniGPTv2(src, shape, { seed: 0, log });
    for (const v of missing) {
      log(`[bench] converting to ${variantDir(dir, v)} (${v.name})`);
      await convert({ ...r.convertArgs, vit: r.vit, llm: r.llm, ckpt: r.ckpt, dtype: v.dtype, blockSize: v.blockSize, out: variantDir(dir, v), log });
    }
  } finally {
    await rm(src, { recursive: true, force: true });
  }
}

function machine() {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model ?? 'unknown',
    cores: os.availableParallelism(),
    memory_gb: Math.round(os.totalmem() / 2 ** 30),
    load_average: os.loadavg().map((x) => Math.round(x * 100) / 100),
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    node: process.version,
  };
}

export interface BenchOptions {
  model: string;
  /** the 7B-layer-shaped package folder (built when missing), or false to skip it */
  large: string | false;
  /** weight types of the 7B-layer-shaped package to compare (none: no weight-type table) */
  dtypes: WeightVariant[];
  quick: boolean;
  json: boolean;
  threads?: number;
  /** also write the readable report (markdown, with the JSON) here */
  report?: string;
  log: (s: string) => void;
  write: (s: string) => void;
}

async function child(dir: string, profile: string, threads: number): Promise<PackageResult> {
  return runChild<PackageResult>(dir, ['--child', dir, '--profile', profile, '--threads', String(threads)]);
}

/** One package's bench in a child process of its own (its peak RSS is that package's); the JSON it prints. */
async function runChild<T>(dir: string, args: string[]): Promise<T> {
  const cli = join(ROOT, 'bin', 'minigpt.js');
  const proc = spawn(process.execPath, [cli, 'bench', ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number | null>((r) => proc.on('close', r));
  if (code !== 0) throw new Error(`bench of ${dir} failed (exit ${code})`);
  return JSON.parse(out.trim().split('\n').at(-1)!) as T;
}

/** The weight-type table: the 7B-layer-shaped package (converted) in each of `variants`, ratios against fp32 (bench-weights.ts). */
async function weightTable(dir: string, variants: readonly WeightVariant[], threads: number, log: (s: string) => void) {
  // Rounds over all variants, interleaved, so that a slow minute of this shared machine falls on every
  // variant alike rather than on one; each figure is the median over the rounds.
  const runs: WeightsResult[][] = variants.map(() => []);
  for (let round = 0; round < WEIGHTS_ROUNDS; round++) {
    for (const [i, v] of variants.entries()) {
      log(`[bench] weight types, round ${round + 1}/${WEIGHTS_ROUNDS}: ${v.name}`);
      runs[i].push(await runChild<WeightsResult>(variantDir(dir, v), ['--child-weights', variantDir(dir, v), '--threads', String(threads)]));
    }
  }
  const results = runs.map((rs, i) => ({ ...medianResult(rs), variant: variants[i].name }));
  const ratios = weightRatios(results);
  const at = (name: string) => ratios.find((r) => r.variant === name);
  const quantPrefill = ratios.filter((r) => /^int[48]/.test(r.variant)).map((r) => r.prefill_ratio);
  const target = (value: number | undefined, t: number, atLeast: boolean) =>
    value === undefined || !Number.isFinite(value) ? undefined : { value: round(value), target: t, met: atLeast ? value >= t : value <= t };
  return {
    results: results.map(roundAll),
    ratios: ratios.map(roundAll),
    targets: {
      int4_decode_speedup: target(at('int4')?.decode_speedup, 3.5, true),
      int8_decode_speedup: target(at('int8')?.decode_speedup, 2, true),
      quantised_prefill_ratio: target(quantPrefill.length ? Math.max(...quantPrefill) : undefined, 1.1, false),
    },
  };
}

const TOP_KEYS = [
  'ttft_ms',
  'decode_tok_s',
  'vision_ms',
  'peak_rss_mb',
  'kv_cache_speedup',
  'followup_ttft_ratio',
  'batch8_speedup',
  'js_overhead_share',
  'preprocess_ms',
  'prefill_ms',
  'e2e_ms',
  'image_cache_ttft_ratio',
  'grounding_answer_ms',
] as const;

export async function runBench(o: BenchOptions): Promise<Record<string, unknown>> {
  const threads = o.threads ?? os.availableParallelism();
  const t0 = performance.now();
  const results: PackageResult[] = [];
  results.push(await child(resolve(o.model), o.quick ? 'quick' : 'full', threads));
  let weights: Awaited<ReturnType<typeof weightTable>> | undefined;
  if (o.large !== false && !o.quick) {
    // fp32 and every weight type at once: the random checkpoints are written once for all of them
    await ensureLargePackage(o.large, o.log, o.dtypes.length > 0 ? o.dtypes : undefined);
    results.push(await child(o.large, 'large', threads));
    if (o.dtypes.length > 0) weights = await weightTable(o.large, o.dtypes, threads, o.log);
  }
  const primary = results[0];
  const large = results[1];
  const target = large ?? primary;
  const report: Record<string, unknown> = {
    ...Object.fromEntries(TOP_KEYS.map((k) => [k, round(primary[k])])),
    package: primary.package,
    profile: o.quick ? 'quick' : 'full',
    machine: machine(),
    seconds: Math.round((performance.now() - t0) / 100) / 10,
    targets: {
      followup_ttft_ratio: { package: target.package, history_tokens: target.followup_history_tokens, value: round(target.followup_ttft_ratio), target: 0.2, met: target.followup_ttft_ratio <= 0.2 },
      batch8_speedup: { package: target.package, value: round(target.batch8_speedup), target: 3, met: target.batch8_speedup >= 3 },
      js_overhead_share: { package: primary.package, value: round(primary.js_overhead_share), target: 0.05, met: primary.js_overhead_share <= 0.05 },
      grounding_answer_ms: { package: primary.package, value: round(primary.grounding_answer_ms), target: 1000, met: primary.grounding_answer_ms < 1000 },
      identical_greedy_tokens: results.every((r) => r.kv_cache_identical && r.followup_identical && r.batch8_identical),
      ...(weights ? Object.fromEntries(Object.entries(weights.targets).filter(([, v]) => v).map(([k, v]) => [k, { package: 'weight types', ...v }])) : {}),
    },
    ...(weights ? { weights: { results: weights.results, ratios: weights.ratios } } : {}),
    packages: Object.fromEntries(results.map((r, i) => [i === 0 ? 'primary' : 'large', roundAll(r)])),
  };
  if (large) (report.packages as Record<string, unknown>).large_description = `random Llama-2-7B-shaped package, ${LARGE_LAYERS.llm} LLM layers and ${LARGE_LAYERS.vit} EVA ViT-g blocks (src/convert/random-checkpoints.ts, fp32): per-layer cost at real width`;
  const md = markdown(report, results);
  if (o.report) {
    // Hand-written notes below the marker survive a new run.
    const old = existsSync(o.report) ? await readFile(o.report, 'utf8') : '';
    const at = old.indexOf(NOTES_MARKER);
    await writeFile(o.report, `${DOC_HEAD}${md}${at >= 0 ? `\n${old.slice(at)}` : ''}`);
  }
  o.write(o.json ? `${JSON.stringify(report)}\n` : md);
  return report;
}

const NOTES_MARKER = '<!-- notes: kept by minigpt bench -->';

const DOC_HEAD = `# Benchmarks

Produced by \`npm run bench -- --report docs/benchmarks.md\` (\`minigpt bench\`, src/cli/bench.ts); \`--json\` prints
the same JSON object alone, \`--quick\` a short profile of the demo package. Each package runs in a child
process of its own (its peak RSS is that process's), greedy decoding throughout; times are medians with the
p95 in brackets, after warm-up runs; every optimisation is a ratio against its baseline measured in the same
process right before or after it:

- **KV cache on / off**: a decoding step with the cache vs the whole sequence recomputed for the token.
- **follow-up with / without the last turn's cache**: time to first token of a follow-up in a thread whose
  prompt has the given number of tokens (image included), when the conversation kept its KV cache (as the
  conversation manager does: after each answer the cache is brought up to the next prompt's start, timed
  separately) vs a full prefill of the re-tokenised prompt.
- **8 conversations batched / one after another**: 8 threads about the same image each ask a follow-up
  (the first turn's cache kept, as above) and get a fixed-length greedy answer; all 8 at once through the
  model's engine (continuous batching: one session run per step for every conversation decoding) vs one
  after another. Both sides give the same tokens (checked).
- **image cache hit / miss**: time to first token of a conversation's first turn when the image's vision
  embeddings are cached (same image seen before, by hash) vs encoded.
- **JavaScript share**: of the wall time of a decoding loop (sampling, incremental detokenisation, streaming,
  KV bookkeeping, batching), the part spent outside \`session.run\`.

`;

function markdown(report: Record<string, unknown>, results: PackageResult[]): string {
  const m = report.machine as ReturnType<typeof machine>;
  const lines: string[] = [];
  lines.push(`Machine: ${m.cpu}, ${m.cores} cores, ${m.memory_gb} GB, ${m.platform}, Node ${m.node}; load average at the end ${m.load_average.join(' / ')}.`);
  lines.push(`Profile: ${report.profile}; ${report.seconds} s in all. Times are medians (p95) after warm-up; each ratio's two sides ran in the same process.`);
  if (results.length > 1) {
    lines.push('');
    lines.push(
      `\`${results[1].package}\` is the 7B-layer-shaped package: ${LARGE_LAYERS.llm} decoder layers of Llama-2-7B (hidden 4096, 32 heads, MLP 11008) with its ` +
        `32000-token embedding and head, and ${LARGE_LAYERS.vit} EVA ViT-g blocks at 448 px, random weights written in the published formats by ` +
        'src/convert/random-checkpoints.ts and converted to fp32 by `minigpt convert`: per-layer cost at real width on this CPU. A full 7B model ' +
        `has 32 layers: its steps and prefills would take roughly ${Math.round(32 / LARGE_LAYERS.llm)} times the layer part of these.`,
    );
  }
  lines.push('');
  const head = ['', ...results.map((r) => `\`${r.package}\``)];
  lines.push(`| ${head.join(' | ')} |`);
  lines.push(`| ${head.map(() => '---').join(' | ')} |`);
  const row = (label: string, f: (r: PackageResult) => string) => lines.push(`| ${label} | ${results.map(f).join(' | ')} |`);
  const dist = (r: PackageResult, k: string, unit = ' ms') => (r.stats[k] ? `${fmt(r.stats[k].median, unit)} (${fmt(r.stats[k].p95, unit)})` : '-');
  row('model', (r) => `${r.shape.llm}; vision ${r.shape.vision}; ${r.shape.dtype}`);
  row('threads', (r) => String(r.threads));
  row('load', (r) => fmt(r.load_ms, ' ms'));
  row('image preprocessing', (r) => dist(r, 'preprocess_ms'));
  row('vision encoder', (r) => dist(r, 'vision_ms'));
  row('prefill (prompt tokens)', (r) => `${dist(r, 'prefill_ms')} (${r.prompt_tokens} tokens)`);
  row('time to first token (new image)', (r) => dist(r, 'ttft_ms'));
  row('decode', (r) => `${fmt(r.decode_tok_s)} tok/s; ${dist(r, 'decode_step_ms')} per step`);
  row('end-to-end answer', (r) => `${dist(r, 'e2e_ms')} (${r.answer_tokens} tokens)`);
  row('peak RSS', (r) => fmt(r.peak_rss_mb, ' MB'));
  row('**KV cache** on / off (per token)', (r) => `**${fmt(r.kv_cache_speedup, 'x')}** faster: ${dist(r, 'decode_step_ms')} vs ${dist(r, 'kv_off_step_ms')}; same tokens: ${r.kv_cache_identical}`);
  row('**follow-up** TTFT with / without the last turn\'s cache', (r) => `**${fmt(r.followup_ttft_ratio)}**: ${dist(r, 'followup_ttft_ms')} vs ${dist(r, 'full_prefill_ttft_ms')}; ${r.followup_history_tokens}-token prompt, ${r.followup_prefill_tokens} prefilled; cache brought up to date after the previous answer in ${fmt(r.followup_extend_ms, ' ms')}; same tokens: ${r.followup_identical}`);
  row('**8 conversations** batched / one after another', (r) => `**${fmt(r.batch8_speedup, 'x')}** faster: ${dist(r, 'batch8_batched_ms')} vs ${dist(r, 'batch8_sequential_ms')} (follow-ups, ${r.batch8_tokens} tokens each; ${fmt(r.batch8_mean_rows)} rows per step); same tokens: ${r.batch8_identical}${r.batch8_cold_speedup ? `; first turns (8 full prefills): ${fmt(r.batch8_cold_speedup, 'x')}` : ''}`);
  row('**image cache** hit / miss (TTFT of a first turn)', (r) => `**${fmt(r.image_cache_ttft_ratio)}**: ${dist(r, 'image_cache_hit_ttft_ms')} vs ${dist(r, 'image_cache_miss_ttft_ms')}`);
  row('**grounding answer** about a demo scene (image bytes to last token)', (r) => `**${dist(r, 'grounding_answer_ms')}** (${r.grounding_answer_tokens} tokens${r.grounding_answer_tokens ? `: \`${r.grounding_answer_text.replace(/`/g, "'").replace(/\|/g, '\\|').slice(0, 160)}\`` : ''})`);
  row('**JavaScript** share of a decoding step', (r) => `**${fmt(r.js_overhead_share * 100, '%')}** (${fmt(r.js_overhead_us_per_step, ' µs')} of ${fmt(r.decode_step_ms * 1000, ' µs')})`);
  lines.push('');
  const t = report.targets as Record<string, { package: string; value: number; target: number; met: boolean; history_tokens?: number } | boolean>;
  lines.push('Targets:');
  for (const [k, v] of Object.entries(t)) {
    if (typeof v === 'boolean') lines.push(`- ${k}: ${v ? 'yes' : 'NO'}`);
    else lines.push(`- ${k} on \`${v.package}\`${v.history_tokens ? ` (${v.history_tokens}-token prompt)` : ''}: ${v.value} (target ${k.endsWith('speedup') ? '>=' : '<='} ${v.target}): ${v.met ? 'met' : 'NOT met'}`);
  }
  const w = report.weights as { results: WeightsResult[]; ratios: ReturnType<typeof weightRatios> } | undefined;
  if (w) lines.push('', ...weightsMarkdown(w.results, w.ratios, LARGE_LAYERS));
  lines.push('');
  lines.push('```json');
  lines.push(JSON.stringify(report));
  lines.push('```');
  return `${lines.join('\n')}\n`;
}

/** `minigpt bench`: see the top of this file and docs/benchmarks.md. */
export function registerBenchCommand(program: Command, log: (line: string) => void): void {
  program
    .command('bench')
    .description('latency, throughput and memory of a package, and each runtime optimisation against its baseline (docs/benchmarks.md)')
    .option('--model <dir>', 'model package', join(ROOT, 'models', 'demo'))
    .option('--large <dir>', 'the 7B-layer-shaped random package (written there when missing)', DEFAULT_LARGE_DIR)
    .option('--no-large', 'skip the 7B-layer-shaped package')
    .option('--quick', 'a short profile of --model only (under a minute on the demo package)')
    .option('--json', 'print one JSON object instead of the table')
    .option('--threads <n>', 'intra-op threads (default: the number of cores)', (v) => Number.parseInt(v, 10))
    .option('--report <file>', 'also write the table and the JSON to this markdown file')
    .option('--dtypes <list>', `weight types of the 7B-layer-shaped package to compare (comma-separated, int8 / int4 with -b<block size>, or "none"; default ${BENCH_VARIANTS.join(',')})`)
    .addOption(new Option('--child <dir>').hideHelp())
    .option('--thread <dir>', 'only this package, as a bot user meets it: a thread with a new image, then a follow-up (TTFT, decode tok/s, peak RSS; for a full-size package)')
    .option('--cluster <dir>', 'only this package, served by 1 then 2 worker processes behind a front end on Redis (REDIS_URL, else a redis-server started here): 16 conversations at once, aggregate tok/s, p50 / p95 latency')
    .option('--api <dir>', 'only this package, behind the OpenAI-compatible API: time to first token of a new image, and of a follow-up with and without the kept KV cache')
    .option('--rounds <n>', 'with --thread / --api: rounds to run, the first a warm-up (default 2 / 4)', (v) => Number.parseInt(v, 10))
    .option('--kv-cache-mb <n>', "with --thread / --api: the conversation manager's KV cache budget, as runtime.kv_cache_mb (default 256)", (v) => Number.parseInt(v, 10))
    .addOption(new Option('--child-weights <dir>').hideHelp())
    .addOption(new Option('--profile <name>').choices(Object.keys(PROFILES)).hideHelp())
    .action(async (o) => {
      if (o.cluster) {
        const r = await benchCluster(resolve(o.cluster), { workers: [1, 2], conversations: 16, maxNewTokens: 32, maxBatch: 4 }, log);
        process.stdout.write(o.json ? `${JSON.stringify(roundAll(r))}\n` : `${clusterMarkdown(r)}\n`);
        return;
      }
      if (o.api) {
        const r = await benchApi(resolve(o.api), await readFile(IMAGE), o.threads ?? os.availableParallelism(), { rounds: o.rounds ?? 4, tokens: 32, kvCacheMb: o.kvCacheMb ?? 256 }, log);
        process.stdout.write(o.json ? `${JSON.stringify(roundAll(r))}\n` : `${apiMarkdown(r)}\n`);
        return;
      }
      if (o.thread) {
        const r = await benchThread(resolve(o.thread), await readFile(IMAGE), o.threads ?? os.availableParallelism(), { rounds: o.rounds ?? 2, tokens: 32, kvCacheMb: o.kvCacheMb ?? 256 }, log);
        process.stdout.write(o.json ? `${JSON.stringify(roundAll(r))}\n` : `${threadMarkdown(r)}\n`);
        return;
      }
      if (o.childWeights) {
        const r = await benchWeights(resolve(o.childWeights), await readFile(IMAGE), o.threads ?? os.availableParallelism(), WEIGHTS_PROFILE, log);
        process.stdout.write(`${JSON.stringify(r)}\n`);
        return;
      }
      if (o.child) {
        const r = await benchPackage(resolve(o.child), o.profile ?? 'quick', o.threads ?? os.availableParallelism(), log);
        process.stdout.write(`${JSON.stringify(r)}\n`);
        return;
      }
      await runBench({
        model: o.model,
        large: o.large === false ? false : resolve(o.large),
        dtypes: parseDtypes(o.dtypes),
        quick: Boolean(o.quick),
        json: Boolean(o.json),
        threads: o.threads,
        report: o.report,
        log,
        write: (s) => process.stdout.write(s),
      });
    });
}
