// One answer about a new image, and its decoding with and without the KV cache: the scenarios of a single
// conversation's first turn (TTFT, decode speed, the JavaScript share of a step, the KV cache's speedup).
import type { ContextEmbeds } from '../../../inference/context.js';
import { generate } from '../../../inference/generation/index.js';
import { GREEDY } from '../common.js';
import { QUESTIONS, timed, type BenchContext } from './context.js';

export interface NewImageSamples {
  preprocessMs: number[];
  visionMs: number[];
  prefillMs: number[];
  /** preprocessing + vision + the answer's first token */
  ttftMs: number[];
  promptTokens: number;
  /** the image's embeddings, from the last run: the later scenarios' image */
  image: Float32Array;
}

/** Preprocessing, vision, prefill and time to first token of one answer about a new image. */
export async function newImageAnswer(b: BenchContext): Promise<NewImageSamples> {
  const { model, profile: p, say } = b;
  const out: NewImageSamples = { preprocessMs: [], visionMs: [], prefillMs: [], ttftMs: [], promptTokens: 0, image: new Float32Array(0) };
  for (let i = 0; i < p.warmup + p.reps; i++) {
    say(`answer ${i + 1}/${p.warmup + p.reps}${i < p.warmup ? ' (warm-up)' : ''}`);
    const img = await model.encodeImage(b.bytes);
    out.image = img.embeds;
    let t: { prefillMs: number; firstTokenMs: number; totalMs: number; promptTokens: number } | undefined;
    for await (const ev of model.answer(b.ask([{ user: QUESTIONS[0] }]), [img.embeds], { ...GREEDY, maxNewTokens: 8 }))
      if (ev.type === 'timings') t = ev.timings;
    if (i < p.warmup || !t) continue;
    out.preprocessMs.push(img.preprocessMs);
    out.visionMs.push(img.visionMs);
    out.prefillMs.push(t.prefillMs);
    out.ttftMs.push(img.preprocessMs + img.visionMs + t.firstTokenMs);
    out.promptTokens = t.promptTokens;
  }
  return out;
}

export interface DecodeSamples {
  /** tokens per run: the profile's, or as many as the model's positions leave */
  tokens: number;
  stepMs: number[];
  /** of each run's wall time, the share spent outside session.run, and that time per step in µs */
  jsShare: number[];
  jsUsPerStep: number[];
  /** prefill + decoding loop */
  answerMs: number[];
  /** the greedy tokens of the last run (the KV-cache-off scenario must give the same) */
  ids: number[];
}

/** Decoding with the KV cache, consumed as a stream would be: tokens/s and the share of each step outside session.run. */
export async function decodeWithCache(b: BenchContext, ctx0: ContextEmbeds): Promise<DecodeSamples> {
  const { model, profile: p, say } = b;
  const tokens = Math.min(p.decodeTokens, model.meta.llm.maxPositions - ctx0.length);
  const out: DecodeSamples = { tokens, stepMs: [], jsShare: [], jsUsPerStep: [], answerMs: [], ids: [] };
  const textDecoder = {
    decode: (ids: readonly number[]) => model.tokenizer.decode(ids, { skipSpecialTokens: true }),
    incremental: () => model.tokenizer.incrementalDecoder?.({ skipSpecialTokens: true }),
  };
  for (let i = 0; i < p.warmup + p.reps; i++) {
    say(`decode ${tokens} tokens ${i + 1}/${p.warmup + p.reps}${i < p.warmup ? ' (warm-up)' : ''}`);
    const [first, prefillMs] = await timed(() => model.prefill(ctx0));
    const opts = model.generationOptions({ ...GREEDY, maxNewTokens: tokens });
    const run0 = model.decoder.stats.runMs;
    const runs0 = model.decoder.stats.runs;
    const t0 = performance.now();
    let ids: number[] = [];
    let pieces = 0;
    for await (const ev of generate(model.engine, { state: first.state, logits: first.logits }, textDecoder, opts)) {
      if (ev.type === 'text')
        pieces += ev.text.length; // consumed as a stream would be
      else ids = ev.tokenIds;
    }
    const wall = performance.now() - t0;
    const steps = model.decoder.stats.runs - runs0;
    const inRun = model.decoder.stats.runMs - run0;
    if (i < p.warmup || steps === 0) continue;
    if (pieces === 0 && ids.length > 1) say('(no text streamed: the tokens decode to nothing)');
    out.ids = ids;
    out.stepMs.push(wall / steps);
    out.jsShare.push((wall - inRun) / wall);
    out.jsUsPerStep.push(((wall - inRun) / steps) * 1000);
    out.answerMs.push(prefillMs + wall);
  }
  return out;
}

export interface KvOffSamples {
  stepMs: number[];
  ids: number[];
}

/** Without the KV cache: every token recomputes the whole sequence (the same greedy tokens as with it). */
export async function decodeWithoutCache(b: BenchContext, ctx0: ContextEmbeds, decodeTokens: number): Promise<KvOffSamples> {
  const { model, profile: p, say } = b;
  const V = model.meta.llm.vocabSize;
  const out: KvOffSamples = { stepMs: [], ids: [] };
  const n = Math.min(p.kvOffTokens, decodeTokens);
  say(`KV cache off: ${n} tokens, each a full forward`);
  const first = await model.prefill(ctx0);
  first.state.dispose();
  let logits: Float32Array = first.logits;
  let embeds = ctx0.embeds;
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let v = 1; v < V; v++) if (logits[v] > logits[best]) best = v;
    out.ids.push(best);
    if (i === n - 1) break;
    const row = await model.embedder.embed([best]);
    const next = new Float32Array(embeds.length + row.length);
    next.set(embeds);
    next.set(row, embeds.length);
    embeds = next;
    const [r, ms] = await timed(() => model.decoder.forward(embeds, null));
    r.state.dispose();
    out.stepMs.push(ms);
    logits = r.logits.subarray(r.logits.length - V);
  }
  return out;
}
