// `minigpt ask`: one answer about one image, streamed to the terminal or printed as JSON.
import { writeFile } from 'node:fs/promises';
import { MiniGPT } from '../inference/model.js';
import { conversationPrompt } from '../inference/prompt.js';
import type { ProviderChoice } from '../inference/providers.js';
import type { GenerationOptions, TokenLogprob } from '../inference/generation/index.js';
import { answerLogprobs } from '../conversation/generate.js';
import { checkLogitBias } from './options.js';
import type { AnswerLogprob } from '../conversation/types.js';
import { entitiesToPixels, parseGrounding, parseUserBox, type Entity } from '../grounding/parse.js';
import { parseTask } from '../grounding/tasks.js';
import { annotateImage } from '../image/annotate.js';
import { formatProfile, summariseProfiles, type ProfileSummary } from '../inference/profile.js';

export interface AskRequest {
  modelDir: string;
  image: Uint8Array;
  prompt: string;
  json: boolean;
  /** write the image with the answer's boxes drawn here (PNG, or JPEG for .jpg/.jpeg) */
  annotate?: string;
  provider: ProviderChoice;
  threads?: number;
  /** write onnxruntime's profiles here and report where the time went (profile.ts) */
  profileDir?: string;
  generation: Partial<GenerationOptions>;
  signal?: AbortSignal;
  log: (line: string) => void;
  write: (text: string) => void;
}

export interface AskResult {
  text: string;
  token_ids: number[];
  finish_reason: string;
  /** the answer with box syntax removed */
  plain_text: string;
  /** phrases with their boxes on the 0..100 grid and in pixels of the original (EXIF-oriented) image */
  entities: ReturnType<typeof entitiesToPixels>;
  annotated?: string;
  prompt: string;
  image: { width: number; height: number };
  provider: string;
  /** present (true) when the test hook forced the answer (MINIGPT_TEST_FORCED_ANSWER) */
  forced_answer?: true;
  /**
   * with --logprobs: each answer token's log-probability under the model (log-softmax of its logits) and the likeliest
   * tokens at its place, best first
   */
  logprobs?: AnswerLogprob[];
  /** with --profile: each graph's runs, per kind of run (profile.ts; times are of the profiled run) */
  profile?: ProfileSummary;
  timings: {
    load_ms: number;
    preprocess_ms: number;
    vision_ms: number;
    prefill_ms: number;
    first_token_ms: number;
    decode_ms: number;
    total_ms: number;
    prompt_tokens: number;
    new_tokens: number;
    decode_tokens_per_s: number;
  };
}

export async function runAsk(req: AskRequest): Promise<AskResult> {
  const t0 = performance.now();
  const profileSince = Date.now();
  const model = await MiniGPT.load(req.modelDir, {
    provider: req.provider,
    threads: req.threads,
    profileDir: req.profileDir,
    log: req.log,
  });
  const loadMs = performance.now() - t0;
  let result: AskResult;
  try {
    checkLogitBias(req.generation.logitBias, model.meta.llm.vocabSize);
    const img = await model.encodeImage(req.image);
    const prompt = conversationPrompt(model.meta.prompt, [{ user: req.prompt }]);
    let text = '';
    let tokenIds: number[] = [];
    let finish = 'stop';
    let timings: AskResult['timings'] | null = null;
    const logprobs: TokenLogprob[] = [];
    for await (const ev of model.answer(prompt, [img.embeds], req.generation, req.signal)) {
      if (ev.type === 'text') {
        if (ev.logprobs) logprobs.push(...ev.logprobs);
        if (!req.json) req.write(ev.text);
      } else if (ev.type === 'done') {
        text = ev.text;
        tokenIds = ev.tokenIds;
        finish = ev.finishReason;
      } else {
        const t = ev.timings;
        const decodeTokens = Math.max(0, t.newTokens - 1);
        timings = {
          load_ms: loadMs,
          preprocess_ms: img.preprocessMs,
          vision_ms: img.visionMs,
          prefill_ms: t.prefillMs,
          first_token_ms: img.preprocessMs + img.visionMs + t.firstTokenMs,
          decode_ms: t.decodeMs,
          total_ms: img.preprocessMs + img.visionMs + t.totalMs,
          prompt_tokens: t.promptTokens,
          new_tokens: t.newTokens,
          decode_tokens_per_s: t.decodeMs > 0 ? (decodeTokens * 1000) / t.decodeMs : 0,
        };
      }
    }
    // (the streamed answer's line ends before anything else is logged: the profile report below)
    if (!req.json) req.write('\n');
    const grounding = parseGrounding(text);
    const entities = answerEntities(req.prompt, grounding.entities, grounding.plainText);
    let annotated: string | undefined;
    if (req.annotate) {
      if (entities.length === 0) {
        req.log(`--annotate: the answer has no boxes, ${req.annotate} not written`);
      } else {
        const format = /\.jpe?g$/i.test(req.annotate) ? 'jpeg' : 'png';
        const out = await annotateImage(req.image, entities, { format });
        await writeFile(req.annotate, out.data);
        annotated = req.annotate;
        req.log(`annotated image written to ${req.annotate} (${out.width}x${out.height})`);
      }
    }
    result = {
      text,
      token_ids: tokenIds,
      finish_reason: finish,
      plain_text: grounding.plainText,
      entities: entitiesToPixels(entities, img.width, img.height),
      ...(annotated ? { annotated } : {}),
      ...(req.generation.logprobs !== undefined
        ? {
            logprobs: answerLogprobs(logprobs, model.tokenizer),
          }
        : {}),
      prompt,
      image: { width: img.width, height: img.height },
      provider: model.provider,
      ...(model.forcedAnswer ? { forced_answer: true as const } : {}),
      timings: timings!,
    };
  } finally {
    // (the profiles are written as the sessions are released)
    await model.close();
  }
  if (req.profileDir) {
    result.profile = await summariseProfiles(req.profileDir, { since: profileSince });
    req.log(`where the time went (onnxruntime's profiles in ${req.profileDir}):\n${formatProfile(result.profile)}`);
  }
  if (req.json) req.write(`${JSON.stringify(result, null, 2)}\n`);
  return result;
}

/** The answer's grounded phrases; for `[identify]`, the user's box labelled with the answer, as the upstream demo draws it. */
function answerEntities(prompt: string, parsed: Entity[], plainText: string): Entity[] {
  if (parseTask(prompt).task !== 'identify') return parsed;
  const box = parseUserBox(prompt);
  if (!box) return parsed;
  const label = plainText.trim().slice(0, 60) || null;
  return [{ phrase: label, boxes: [box], start: 0, end: 0 }, ...parsed];
}
