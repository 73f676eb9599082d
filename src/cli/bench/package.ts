// One package's bench, run in a child process of its own (`minigpt bench --child DIR`): the scenarios in the
// order they have always run (each warms caches and allocators for the next, and peak RSS is the process's),
// their samples reduced to medians, and each optimisation a ratio against its baseline from the same process.
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import { relative } from 'node:path';
import { MiniGPT } from '../../inference/model.js';
import { conversationPrompt, type Turn } from '../../inference/prompt.js';
import { stat, type Stat } from './common.js';
import { IMAGE, PROFILES, ROOT, type ProfileName } from './profiles.js';
import { decodeWithCache, decodeWithoutCache, newImageAnswer } from './scenarios/answer.js';
import { batch8FirstTurns, batch8FollowUps } from './scenarios/batch.js';
import { QUESTIONS, sameIds, timed, type BenchContext } from './scenarios/context.js';
import { followUp, imageCache } from './scenarios/conversation.js';
import { groundingAnswer } from './scenarios/grounding.js';

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
  /** a new conversation's first turn about an image another conversation's kept cache has: with its rows lent */
  shared_prefix_ttft_ms: number;
  /** shared_prefix_ttft_ms / image_cache_hit_ttft_ms (the image's embeddings cached on both sides) */
  shared_prefix_ttft_ratio: number;
  shared_prefix_identical: boolean;
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

/** How a package is named in the report: relative to the repository, else with ~ for the home folder. */
function packageName(dir: string): string {
  return !relative(ROOT, dir).startsWith('..')
    ? relative(ROOT, dir)
    : dir.startsWith(os.homedir())
      ? `~${dir.slice(os.homedir().length)}`
      : dir;
}

/** Runs every measurement on one package, in this process. */
export async function benchPackage(
  dir: string,
  profileName: ProfileName,
  threads: number,
  log: (s: string) => void,
): Promise<PackageResult> {
  const p = PROFILES[profileName];
  const name = packageName(dir);
  const say = (s: string) => log(`[bench ${name}] ${s}`);
  const [model, loadMs] = await timed(() => MiniGPT.load(dir, { provider: 'cpu', threads, maxBatch: 8 }));
  try {
    const spec = model.meta.prompt;
    const b: BenchContext = {
      model,
      profile: p,
      say,
      ask: (turns: Turn[]) => conversationPrompt(spec, turns),
      bytes: await readFile(IMAGE),
    };
    // `stats` keeps the order in which the medians were taken: the report's JSON has always listed them so
    const stats: Record<string, Stat> = {};
    const keep = (key: string, xs: number[]) => (stats[key] = stat(xs)).median;
    say(
      `loaded in ${(loadMs / 1000).toFixed(1)} s (${model.meta.llm.layers} layers of hidden ${model.meta.llm.hidden}, vocab ${model.meta.llm.vocabSize}, ${threads} threads)`,
    );

    const first = await newImageAnswer(b);
    const image = first.image;
    const ctx0 = await model.context(b.ask([{ user: QUESTIONS[0] }]), [image]);
    const decode = await decodeWithCache(b, ctx0);
    const decodeStep = keep('decode_step_ms', decode.stepMs);
    const visionMs = keep('vision_ms', first.visionMs);
    const preprocessMs = keep('preprocess_ms', first.preprocessMs);
    keep('answer_ms', decode.answerMs);
    const e2e = decode.answerMs.map((ms) => preprocessMs + visionMs + ms);

    const kvOff = await decodeWithoutCache(b, ctx0, decode.tokens);
    const kvOffStep = keep('kv_off_step_ms', kvOff.stepMs);

    const follow = await followUp(b, image);
    const followMs = keep('followup_ttft_ms', follow.withCacheMs);
    const fullMs = keep('full_prefill_ttft_ms', follow.fullPrefillMs);

    const cached = await imageCache(b);
    const hitMs = keep('image_cache_hit_ttft_ms', cached.hitMs);
    const missMs = keep('image_cache_miss_ttft_ms', cached.missMs);
    const sharedMs = keep('shared_prefix_ttft_ms', cached.sharedMs);

    const batch = await batch8FollowUps(b, image);
    follow.base.dispose();
    const seqMs = keep('batch8_sequential_ms', batch.sequentialMs);
    const batMs = keep('batch8_batched_ms', batch.batchedMs);
    let coldSpeedup: number | undefined;
    if (p.coldBatch) {
      const cold = await batch8FirstTurns(b, image);
      coldSpeedup = keep('batch8_cold_sequential_ms', cold.sequentialMs) / keep('batch8_cold_batched_ms', cold.batchedMs);
    }

    const grounding = await groundingAnswer(b);
    const groundingMs = keep('grounding_answer_ms', grounding.ms);

    const ttftMs = keep('ttft_ms', first.ttftMs);
    const e2eMs = keep('e2e_ms', e2e);
    const prefillMs = keep('prefill_ms', first.prefillMs);
    const jsShareMed = keep('js_overhead_share', decode.jsShare);
    const jsUsMed = keep('js_overhead_us_per_step', decode.jsUsPerStep);
    const peak = process.resourceUsage().maxRSS / 1024;
    const L = model.meta.llm;
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
      prompt_tokens: first.promptTokens,
      ttft_ms: ttftMs,
      decode_tok_s: 1000 / decodeStep,
      e2e_ms: e2eMs,
      answer_tokens: decode.tokens,
      peak_rss_mb: peak,
      decode_step_ms: decodeStep,
      kv_off_step_ms: kvOffStep,
      kv_cache_speedup: kvOffStep / decodeStep,
      kv_cache_identical: sameIds(kvOff.ids, decode.ids.slice(0, kvOff.ids.length)),
      followup_history_tokens: follow.promptTokens,
      followup_prefill_tokens: follow.prefillTokens,
      followup_ttft_ms: followMs,
      full_prefill_ttft_ms: fullMs,
      followup_ttft_ratio: followMs / fullMs,
      followup_extend_ms: follow.extendMs,
      followup_identical: sameIds(follow.withCacheIds, follow.fullPrefillIds),
      image_cache_hit_ttft_ms: hitMs,
      image_cache_miss_ttft_ms: missMs,
      image_cache_ttft_ratio: hitMs / missMs,
      shared_prefix_ttft_ms: sharedMs,
      shared_prefix_ttft_ratio: sharedMs / hitMs,
      shared_prefix_identical: cached.sharedIdentical,
      batch8_tokens: p.batchTokens,
      batch8_sequential_ms: seqMs,
      batch8_batched_ms: batMs,
      batch8_speedup: seqMs / batMs,
      batch8_mean_rows: batch.meanRows,
      batch8_identical: batch.sequentialIds.length === 8 && batch.sequentialIds.every((ids, i) => sameIds(ids, batch.batchedIds[i])),
      ...(coldSpeedup !== undefined ? { batch8_cold_speedup: coldSpeedup } : {}),
      js_overhead_share: jsShareMed,
      js_overhead_us_per_step: jsUsMed,
      grounding_answer_ms: groundingMs,
      grounding_answer_tokens: grounding.tokens,
      grounding_answer_text: grounding.text.length > 300 ? `${grounding.text.slice(0, 300)}...` : grounding.text,
      stats,
    };
  } finally {
    await model.close();
  }
}
