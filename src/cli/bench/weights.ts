// `minigpt bench`'s weight-type table: the 7B-layer-shaped random package converted to each weight type
// (fp32, fp16, int8, int4) from the same checkpoints, each measured in a child process of its own (its peak
// RSS is that package's), and every number a ratio against fp32's from the same run:
//   vision (EVA ViT-g blocks at 448 px), prefill of a ~270-token image prompt, one decoding step, peak RSS.
// docs/quantisation.md and docs/benchmarks.md carry the table.
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { MiniGPT } from '../../inference/model.js';
import { loadPackage } from '../../inference/package.js';
import { conversationPrompt } from '../../inference/prompt.js';
import { generate } from '../../inference/generation/index.js';
import { WEIGHT_DTYPES, type WeightDType } from '../../convert/quantize.js';
import { type ConversationBench, fmt, GREEDY, roundAll, stat as stats } from './common.js';

/** A row of the table: a weight type, for int8 / int4 optionally with its block size ("int4-b128"). */
export interface WeightVariant {
  name: string;
  dtype: WeightDType;
  blockSize?: number;
}

/** fp32 (every ratio's baseline), fp16, int8, int4 at the default block of 32, and int4 at 128 (the full-size CPU package). */
export const BENCH_VARIANTS: readonly string[] = ['fp32', 'fp16', 'int8', 'int4', 'int4-b128'];

export function parseVariant(name: string): WeightVariant {
  const m = /^(fp32|fp16|int8|int4)(?:-b(\d+))?$/.exec(name);
  if (!m || !WEIGHT_DTYPES.includes(m[1] as WeightDType))
    throw new Error(`${name} is not a weight type (${WEIGHT_DTYPES.join(', ')}, int8 / int4 with -b<block size>, e.g. int4-b128)`);
  const dtype = m[1] as WeightDType;
  if (m[2] && !dtype.startsWith('int')) throw new Error(`${name}: a block size is for int8 / int4`);
  return { name, dtype, ...(m[2] ? { blockSize: Number(m[2]) } : {}) };
}

export interface WeightsProfile {
  warmup: number;
  reps: number;
  /** greedy tokens per decoding run (the step time is their median) */
  decodeTokens: number;
}

export const WEIGHTS_PROFILE: WeightsProfile = { warmup: 1, reps: 3, decodeTokens: 16 };
/** child processes per variant, interleaved (`minigpt bench`'s weight-type table) */
export const WEIGHTS_ROUNDS = 3;

/** What one package measured; times are medians in ms. */
export interface WeightsResult {
  package: string;
  /** the table's row name ("int4-b128"), set by the parent */
  variant?: string;
  dtype: string;
  block_size: number | null;
  accuracy_level: number | null;
  /** package files on disk (graphs and weights) */
  bytes: number;
  load_ms: number;
  vision_ms: number;
  prefill_ms: number;
  prompt_tokens: number;
  decode_step_ms: number;
  peak_rss_mb: number;
  /** processes whose medians these are (medianResult) */
  runs?: number;
}

const PROMPT = '[grounding] describe this image in detail';

const median = (xs: readonly number[]) => stats(xs).median;

/** Vision, prefill and decoding of one package, in this process. */
export async function benchWeights(
  dir: string,
  image: Uint8Array,
  threads: number,
  profile: WeightsProfile,
  log: (s: string) => void,
): Promise<WeightsResult> {
  const t0 = performance.now();
  const model = await MiniGPT.load(dir, { provider: 'cpu', threads });
  const loadMs = performance.now() - t0;
  try {
    const { meta } = model;
    const say = (s: string) => log(`[bench ${meta.dtype} ${dir}] ${s}`);
    const vision: number[] = [];
    const prefill: number[] = [];
    const steps: number[] = [];
    let promptTokens = 0;
    const textDecoder = { decode: () => '', incremental: () => undefined };
    for (let i = 0; i < profile.warmup + profile.reps; i++) {
      say(`run ${i + 1}/${profile.warmup + profile.reps}${i < profile.warmup ? ' (warm-up)' : ''}`);
      const img = await model.encodeImage(image);
      const ctx = await model.context(conversationPrompt(meta.prompt, [{ user: PROMPT }]), [img.embeds]);
      const p0 = performance.now();
      const first = await model.prefill(ctx);
      const prefillMs = performance.now() - p0;
      const runs0 = model.decoder.stats.runs;
      const d0 = performance.now();
      const opts = model.generationOptions({ ...GREEDY, maxNewTokens: profile.decodeTokens });
      for await (const ev of generate(model.engine, { state: first.state, logits: first.logits }, textDecoder, opts)) void ev;
      const stepMs = (performance.now() - d0) / Math.max(1, model.decoder.stats.runs - runs0);
      if (i < profile.warmup) continue;
      vision.push(img.visionMs);
      prefill.push(prefillMs);
      steps.push(stepMs);
      promptTokens = ctx.length;
    }
    let bytes = 0;
    for (const g of Object.values(meta.graphs)) for (const f of [g.file, ...g.data]) bytes += (await stat(join(dir, f))).size;
    return {
      package: dir,
      dtype: meta.dtype,
      block_size: meta.weights?.quantization?.blockSize ?? null,
      accuracy_level: meta.weights?.quantization ? (meta.weights.quantization.accuracyLevel ?? 0) : null,
      bytes,
      load_ms: loadMs,
      vision_ms: median(vision),
      prefill_ms: median(prefill),
      prompt_tokens: promptTokens,
      decode_step_ms: median(steps),
      peak_rss_mb: process.resourceUsage().maxRSS / 1024,
    };
  } finally {
    await model.close();
  }
}

/** The 7B-layer-shaped package of a variant: fp32 in `fp32Dir`, the others beside it (`<fp32Dir>-int4-b128`). */
export function variantDir(fp32Dir: string, variant: WeightVariant): string {
  return variant.name === 'fp32' ? fp32Dir : `${fp32Dir}-${variant.name}`;
}

/** True when `dir` holds a package of today's converter (a decoder with the cache and logits_to_keep inputs). */
export async function isCurrentPackage(dir: string): Promise<boolean> {
  if (!existsSync(join(dir, 'model.json'))) return false;
  const { meta } = await loadPackage(dir);
  const inputs = meta.graphs.decoder.inputs.map((io) => io.name);
  return inputs.includes('cache_key_values.0.key') && inputs.includes('logits_to_keep');
}

/** One package's runs in several processes: the median of each time, the largest peak RSS. */
export function medianResult(runs: readonly WeightsResult[]): WeightsResult {
  const med = (k: 'load_ms' | 'vision_ms' | 'prefill_ms' | 'decode_step_ms') => median(runs.map((r) => r[k]));
  return {
    ...runs[0],
    load_ms: med('load_ms'),
    vision_ms: med('vision_ms'),
    prefill_ms: med('prefill_ms'),
    decode_step_ms: med('decode_step_ms'),
    peak_rss_mb: Math.max(...runs.map((r) => r.peak_rss_mb)),
    runs: runs.length,
  };
}

/** A row's ratios against fp32 (of the same run): what the table and the targets read. */
export interface WeightRatio {
  variant: string;
  decode_speedup: number;
  prefill_ratio: number;
  vision_ratio: number;
  rss_ratio: number;
  size_ratio: number;
}

export function weightRatios(results: readonly WeightsResult[]): WeightRatio[] {
  const base = results.find((r) => r.dtype === 'fp32');
  return results.map((r) => ({
    variant: r.variant ?? r.dtype,
    decode_speedup: base ? base.decode_step_ms / r.decode_step_ms : NaN,
    prefill_ratio: base ? r.prefill_ms / base.prefill_ms : NaN,
    vision_ratio: base ? r.vision_ms / base.vision_ms : NaN,
    rss_ratio: base ? r.peak_rss_mb / base.peak_rss_mb : NaN,
    size_ratio: base ? r.bytes / base.bytes : NaN,
  }));
}

/** A package as a bot user meets it (`minigpt bench --thread DIR`): one thread, a new image, then a follow-up. */
export interface ThreadResult {
  package: string;
  dtype: string;
  layers: number;
  vision_layers: number;
  load_ms: number;
  /** first turn: image bytes in, first token out (preprocessing, vision, prefill) */
  ttft_new_image_ms: number;
  vision_ms: number;
  prefill_ms: number;
  prompt_tokens: number;
  decode_tok_s: number;
  /** a follow-up in the same thread: its own tokens prefilled after the kept KV cache */
  followup_ttft_ms: number;
  followup_prompt_tokens: number;
  followup_prefilled_tokens: number;
  /** a first turn in another thread about the same image: from the first thread's kept rows */
  other_thread_ttft_ms: number;
  other_thread_prompt_tokens: number;
  other_thread_prefilled_tokens: number;
  /** the conversation manager's KV cache budget (runtime.kv_cache_mb) */
  kv_cache_mb: number;
  peak_rss_mb: number;
}

const FOLLOW_UP = 'what colour is the star';
const OTHER_THREAD = '[refer] the red square';

/**
 * One conversation through the conversation manager, as the adapters drive it: a grounding request with a
 * new image, `tokens` greedy tokens (no stop words, so a random model answers as long as a real one), then a
 * follow-up in the same thread, then another thread's first question about the same image (which starts from
 * the first thread's kept rows). `rounds` rounds, each with a fresh manager (no image or KV cache across rounds);
 * the first round warms up.
 */
export const benchThread: ConversationBench<ThreadResult> = async (dir, image, threads, o, log) => {
  const { ConversationManager } = await import('../../conversation/manager.js');
  const t0 = performance.now();
  const model = await MiniGPT.load(dir, { provider: 'cpu', threads, log });
  const loadMs = performance.now() - t0;
  const { meta } = model;
  const say = (s: string) => log(`[bench ${meta.dtype} ${dir}] ${s}`);
  say(`loaded in ${(loadMs / 1000).toFixed(1)} s; RSS ${Math.round(process.memoryUsage().rss / 2 ** 20)} MB`);
  const rows: {
    first: Record<string, number>;
    follow: Record<string, number>;
    other: Record<string, number>;
    steps: number;
    stepMs: number;
  }[] = [];
  try {
    for (let round = 0; round < o.rounds; round++) {
      const defaults = { ...GREEDY, maxNewTokens: o.tokens };
      const m = new ConversationManager({ model, defaults, annotate: false, kvCacheBytes: o.kvCacheMb * 2 ** 20 });
      try {
        const key = { platform: 'cli' as const, workspace: 'bench', channel: 'c', thread: `t${round}` };
        const turn = async (text: string, img?: Uint8Array, thread = key) => {
          const runs0 = model.decoder.stats.runs;
          let timings: Record<string, number> | undefined;
          for await (const ev of m.handle({ key: thread, user: 'bench', text, ...(img ? { image: img } : {}) })) {
            if (ev.type === 'timings') timings = ev.timings;
            if (ev.type === 'error') throw new Error(ev.message);
          }
          if (!timings) throw new Error('no timings from the conversation manager');
          say(
            `  ${Math.round(timings.totalMs)} ms; RSS ${Math.round(process.memoryUsage().rss / 2 ** 20)} MB, peak ${Math.round(process.resourceUsage().maxRSS / 1024)} MB`,
          );
          return { timings, runs: model.decoder.stats.runs - runs0 };
        };
        say(`round ${round + 1}/${o.rounds}${round === 0 ? ' (warm-up)' : ''}: a new image`);
        const first = await turn(PROMPT, image);
        say(`round ${round + 1}/${o.rounds}: a follow-up`);
        const follow = await turn(FOLLOW_UP);
        say(`round ${round + 1}/${o.rounds}: another thread about the image`);
        // (the follow-up's cache is kept after its answer's end)
        await m.cachesKept();
        const other = await turn(OTHER_THREAD, image, { ...key, thread: `t${round}b` });
        // runs of the first turn: its prefill, then one per decoding step
        const steps = first.runs - 1;
        rows.push({
          first: first.timings,
          follow: follow.timings,
          other: other.timings,
          steps,
          stepMs: (first.timings.decodeMs ?? 0) / Math.max(1, steps),
        });
      } finally {
        await m.close();
      }
    }
    const measured = rows.length > 1 ? rows.slice(1) : rows;
    const med = (f: (r: (typeof rows)[number]) => number) => median(measured.map(f));
    const last = measured[measured.length - 1];
    return {
      package: dir,
      dtype: meta.dtype,
      layers: meta.llm.layers,
      vision_layers: meta.vision.layers,
      load_ms: loadMs,
      ttft_new_image_ms: med((r) => r.first.firstTokenMs),
      vision_ms: med((r) => r.first.visionMs),
      prefill_ms: med((r) => r.first.prefillMs),
      prompt_tokens: last.first.promptTokens,
      decode_tok_s: 1000 / med((r) => r.stepMs),
      followup_ttft_ms: med((r) => r.follow.firstTokenMs),
      followup_prompt_tokens: last.follow.promptTokens,
      followup_prefilled_tokens: last.follow.promptTokens - last.follow.reusedTokens,
      other_thread_ttft_ms: med((r) => r.other.firstTokenMs),
      other_thread_prompt_tokens: last.other.promptTokens,
      other_thread_prefilled_tokens: last.other.promptTokens - last.other.reusedTokens,
      kv_cache_mb: o.kvCacheMb,
      peak_rss_mb: process.resourceUsage().maxRSS / 1024,
    };
  } finally {
    await model.close();
  }
};

export function parseDtypes(v: string | undefined): WeightVariant[] {
  if (v === 'none') return [];
  const list =
    v === undefined
      ? BENCH_VARIANTS
      : v
          .split(',')
          .map((x) => x.trim())
          .filter(Boolean);
  const parse = (name: string) => {
    try {
      return parseVariant(name);
    } catch (e) {
      throw new Error(`--dtypes: ${(e as Error).message}`);
    }
  };
  // fp32 is every ratio's baseline
  return [...new Set(['fp32', ...list])].map(parse);
}

/** The weight-type table: one row per package, each figure with its ratio to fp32's. */
export function weightsMarkdown(
  results: readonly WeightsResult[],
  ratios: readonly WeightRatio[],
  layers: { llm: number; vit: number },
): string[] {
  const x = (v: number) => (Number.isFinite(v) ? ` (${fmt(v, 'x')})` : '');
  return [
    `Weight types of the 7B-layer-shaped package (${layers.llm} Llama-2-7B layers with the 32000-token head, ${layers.vit} EVA ViT-g blocks at 448 px; the same random checkpoints converted to each; ${WEIGHTS_ROUNDS} child processes each, the variants interleaved; in each, ${WEIGHTS_PROFILE.reps} runs after ${WEIGHTS_PROFILE.warmup} warm-up, ${WEIGHTS_PROFILE.decodeTokens} greedy tokens a run; each figure the median of the processes' medians, peak RSS the largest). In brackets: the ratio to fp32 (decode: speed-up; the others: time or size over fp32's).`,
    '',
    '| weights | block, accuracy level | package size | vision | prefill | decode step | decode speed-up | peak RSS |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
    ...results.map((r, i) => {
      const q = ratios[i];
      return `| ${r.variant ?? r.dtype} | ${r.block_size ? `${r.block_size}, ${r.accuracy_level}` : '-'} | ${fmt(r.bytes / 2 ** 20, ' MiB')}${x(q.size_ratio)} | ${fmt(r.vision_ms, ' ms')}${x(q.vision_ratio)} | ${fmt(r.prefill_ms, ' ms')}${x(q.prefill_ratio)} (${r.prompt_tokens} tokens) | ${fmt(r.decode_step_ms, ' ms')} | **${fmt(q.decode_speedup, 'x')}** | ${fmt(r.peak_rss_mb, ' MB')}${x(q.rss_ratio)} |`;
    }),
  ];
}

/** `minigpt bench --thread`: the package as a bot user meets it, as a table. */
export function threadMarkdown(r: ThreadResult): string {
  return [
    `\`${r.package}\`: ${r.dtype}, ${r.layers} decoder layers, ${r.vision_layers} ViT blocks; loaded in ${fmt(r.load_ms / 1000, ' s')}.`,
    '',
    '| new image: time to first token | vision | prefill | decode | follow-up: time to first token | another thread, same image: time to first token | peak RSS |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    `| ${fmt(r.ttft_new_image_ms / 1000, ' s')} | ${fmt(r.vision_ms / 1000, ' s')} | ${fmt(r.prefill_ms / 1000, ' s')} (${r.prompt_tokens} tokens) | ${fmt(r.decode_tok_s)} tok/s | ${fmt(r.followup_ttft_ms / 1000, ' s')} (${r.followup_prefilled_tokens} of ${r.followup_prompt_tokens} tokens prefilled; KV cache budget ${r.kv_cache_mb} MB) | ${fmt(r.other_thread_ttft_ms / 1000, ' s')} (${r.other_thread_prefilled_tokens} of ${r.other_thread_prompt_tokens} tokens prefilled) | ${fmt(r.peak_rss_mb / 1024, ' GiB')} |`,
    '',
    '```json',
    JSON.stringify(roundAll(r)),
    '```',
  ].join('\n');
}
