// `minigpt eval`: a model package on an evaluation file, scored like the original eval scripts.
//
// Prompts (upstream, wrapped by prepare_texts in CONV_VISION_minigptv2 with an empty system):
//   refer     '[refer] give me the location of {sents}'                                  (RefCOCOEvalData)
//   vqa       '[vqa] Based on the image, respond to this question with a short answer: {question}'
//                                                                           (OKVQAEvalData / GQAEvalData)
//   identify  '[identify] what is this {<x1><y1><x2><y2>}'   (the demo's identify button; the box is the
//             ground truth on the 0..100 grid, int() as the training data writes it)
//   caption   '[caption] please describe this image?'                           (coco_caption.py eval)
// Decoding as MiniGPTBase.generate: greedy, min_length 1, repetition_penalty 1, stop at </s>,
// max_new_tokens 20 (the benchmark config; 60 for caption); the answer is cut at '</s>', '<s>' removed,
// the text after the last '[/INST]' kept and stripped.
import { readFile, stat } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import { MiniGPT } from '../inference/model.js';
import { conversationPrompt } from '../inference/prompt.js';
import type { ProviderChoice } from '../inference/providers.js';
import { EVAL_PROMPTS, TASK_BUTTON_PROMPTS } from '../grounding/tasks.js';
import { formatBox, parseGrounding } from '../grounding/parse.js';
import {
  captionBackground,
  captionRecall,
  identifyCorrect,
  scoreRefer,
  vqaAccuracy,
  cleanVqaAnswer,
  normalizeVqaAnswer,
} from './metrics.js';
import { Progress, type ProgressStream } from './progress.js';

export const EVAL_TASKS = ['refer', 'vqa', 'identify', 'caption'] as const;
export type EvalTask = (typeof EVAL_TASKS)[number];

export const DEFAULT_MAX_NEW_TOKENS: Record<EvalTask, number> = { refer: 20, vqa: 20, identify: 20, caption: 60 };

export const VQA_EVAL_PROMPT = (question: string) => `[vqa] Based on the image, respond to this question with a short answer: ${question}`;

export interface EvalOptions {
  model: string;
  /** a folder with `<task>.json`, or the JSON file itself */
  data: string;
  task: EvalTask;
  /** images folder (default: the data file's folder); refer entries without `image` use `<img_id[:27]>.jpg` as eval_ref.py */
  images?: string;
  /** items run concurrently (default 1) */
  batch?: number;
  /** only the first N items */
  limit?: number;
  maxNewTokens?: number;
  /** refer: the grid size of the answers (eval_ref.py --res, default 100) */
  res?: number;
  provider?: ProviderChoice;
  threads?: number;
  /** test hook, see MiniGPT.load */
  forcedAnswer?: string;
  log?: (line: string) => void;
  /** where the progress bar goes (default stderr); null for none */
  progress?: ProgressStream | null;
}

export interface EvalReport {
  task: EvalTask;
  n: number;
  /** 0..1 */
  accuracy: number;
  metric: string;
  model: string;
  data: string;
  max_new_tokens: number;
  seconds: number;
  /** present (true) when the test hook forced the answers (MINIGPT_TEST_FORCED_ANSWER): the accuracy is not the model's */
  forced_answer?: true;
  /** accuracy per question type (vqa) */
  by_type?: Record<string, { n: number; accuracy: number }>;
  /** caption, where the data names each image's background (demo-data): the share of captions naming it with
   * its tone and kind ("light gradient background"), and with its kind at least */
  background?: { n: number; accuracy: number; kind_accuracy: number };
  details: Record<string, unknown>[];
}

interface Item {
  image: string;
  prompt: string;
  raw: Record<string, unknown>;
}

class DataError extends Error {}

function field<T>(raw: Record<string, unknown>, key: string, check: (v: unknown) => boolean, what: string, where: string): T {
  const v = raw[key];
  if (!check(v)) throw new DataError(`${where}: "${key}" must be ${what}`);
  return v as T;
}
const isStr = (v: unknown) => typeof v === 'string';
const isNum = (v: unknown) => typeof v === 'number' && Number.isFinite(v);
const isBox = (v: unknown) => Array.isArray(v) && v.length === 4 && v.every(isNum);
const isStrList = (v: unknown) => Array.isArray(v) && v.length > 0 && v.every(isStr);

/** The identify prompt's box: the ground truth on the grid, int() as the training data writes it. */
export function gridOfBox(bbox: readonly number[], width: number, height: number, grid = 100) {
  const f = (v: number, size: number) => Math.min(grid, Math.max(0, Math.trunc((v / size) * grid)));
  return { x1: f(bbox[0], width), y1: f(bbox[1], height), x2: f(bbox[0] + bbox[2], width), y2: f(bbox[1] + bbox[3], height) };
}

function toItems(task: EvalTask, entries: unknown[], file: string, imagesDir: string): Item[] {
  const img = (p: string) => (isAbsolute(p) ? p : join(imagesDir, p));
  return entries.map((e, i) => {
    const where = `${file} entry ${i}`;
    if (typeof e !== 'object' || e === null || Array.isArray(e)) throw new DataError(`${where}: not an object`);
    const raw = e as Record<string, unknown>;
    switch (task) {
      case 'refer': {
        const imgId = field<string>(raw, 'img_id', isStr, 'a string', where);
        const sent = raw.sents;
        const sents =
          Array.isArray(sent) && sent.length > 0 && isStr(sent[0])
            ? (sent[0] as string)
            : field<string>(raw, 'sents', isStr, 'a string', where);
        field(raw, 'bbox', isBox, '[x, y, w, h]', where);
        field(raw, 'width', isNum, 'a number', where);
        field(raw, 'height', isNum, 'a number', where);
        const image = typeof raw.image === 'string' ? raw.image : `${imgId.slice(0, 27)}.jpg`;
        return { image: img(image), prompt: EVAL_PROMPTS.refer(sents), raw: { ...raw, sents } };
      }
      case 'vqa': {
        const question = field<string>(raw, 'question', isStr, 'a string', where);
        field(
          raw,
          'answers',
          (v) =>
            Array.isArray(v) &&
            v.length > 0 &&
            v.every((a) => isStr(a) || (typeof a === 'object' && a !== null && isStr((a as { answer?: unknown }).answer))),
          'a list of answers',
          where,
        );
        const answers = (raw.answers as unknown[]).map((a) => (typeof a === 'string' ? a : (a as { answer: string }).answer));
        return {
          image: img(field<string>(raw, 'image', isStr, 'a string', where)),
          prompt: VQA_EVAL_PROMPT(question),
          raw: { ...raw, answers },
        };
      }
      case 'identify': {
        const bbox = field<number[]>(raw, 'bbox', isBox, '[x, y, w, h]', where);
        const width = field<number>(raw, 'width', isNum, 'a number', where);
        const height = field<number>(raw, 'height', isNum, 'a number', where);
        field(raw, 'answers', isStrList, 'a list of strings', where);
        const prompt = `${TASK_BUTTON_PROMPTS.identify}${formatBox(gridOfBox(bbox, width, height))}`;
        return { image: img(field<string>(raw, 'image', isStr, 'a string', where)), prompt, raw };
      }
      case 'caption': {
        field(raw, 'objects', isStrList, 'a list of strings', where);
        return { image: img(field<string>(raw, 'image', isStr, 'a string', where)), prompt: EVAL_PROMPTS.caption(), raw };
      }
    }
  });
}

/** Reads the evaluation file of `task` (a folder holding `<task>.json`, or the file). */
export async function loadEvalData(data: string, task: EvalTask, images?: string): Promise<{ file: string; items: Item[] }> {
  let file = data;
  try {
    if ((await stat(data)).isDirectory()) file = join(data, `${task}.json`);
  } catch {
    throw new DataError(`--data ${data}: no such file or folder`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(file, 'utf8'));
  } catch (e) {
    throw new DataError(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (!Array.isArray(parsed)) throw new DataError(`${file}: expected a JSON array of entries`);
  return { file, items: toItems(task, parsed, file, images ?? dirname(file)) };
}

/** MiniGPTBase.generate's clean-up of a decoded answer. */
export function upstreamAnswer(text: string): string {
  return (text.split('</s>')[0].split('<s>').join('').split('[/INST]').pop() ?? '').trim();
}

const mean = (xs: readonly number[]) => (xs.length ? xs.reduce((s, x) => s + x, 0) / xs.length : 0);

export async function runEval(opts: EvalOptions): Promise<EvalReport> {
  const t0 = performance.now();
  const { task } = opts;
  const batch = opts.batch ?? 1;
  if (!Number.isInteger(batch) || batch < 1) throw new RangeError('--batch must be a positive integer');
  const { file, items: all } = await loadEvalData(opts.data, task, opts.images);
  const items = opts.limit !== undefined ? all.slice(0, opts.limit) : all;
  const maxNewTokens = opts.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS[task];
  const model = await MiniGPT.load(opts.model, {
    provider: opts.provider ?? 'cpu',
    threads: opts.threads,
    log: opts.log,
    forcedAnswer: opts.forcedAnswer,
  });
  try {
    const cache = new Map<string, Promise<{ embeds: Float32Array; width: number; height: number }>>();
    const encode = (path: string) => {
      let p = cache.get(path);
      if (!p) {
        p = readFile(path).then(
          (bytes) => model.encodeImage(bytes),
          (e: NodeJS.ErrnoException) => {
            throw new DataError(`cannot read image ${path}: ${e.code ?? e.message}`);
          },
        );
        cache.set(path, p);
        while (cache.size > 64) cache.delete(cache.keys().next().value as string);
      }
      return p;
    };
    const ask = async (item: Item): Promise<string> => {
      const img = await encode(item.image);
      const prompt = conversationPrompt(model.meta.prompt, [{ user: item.prompt }]);
      let text = '';
      for await (const ev of model.answer(prompt, [img.embeds], {
        maxNewTokens,
        minNewTokens: 1,
        doSample: false,
        repetitionPenalty: 1,
        numBeams: 1,
      })) {
        if (ev.type === 'done') text = ev.text;
      }
      return upstreamAnswer(text);
    };

    const details: Record<string, unknown>[] = [];
    const scores: number[] = [];
    const types: Record<string, number[]> = {};
    const backgrounds: { named: boolean; kind: boolean }[] = [];
    const progress = opts.progress === null ? null : new Progress(items.length, `eval ${task}`, opts.progress ?? process.stderr);
    for (let start = 0; start < items.length; start += batch) {
      const chunk = items.slice(start, start + batch);
      const answers = await Promise.all(chunk.map(ask));
      chunk.forEach((item, k) => {
        const answer = answers[k];
        const r = item.raw;
        let score: number;
        let detail: Record<string, unknown>;
        switch (task) {
          case 'refer': {
            const s = scoreRefer(answer, r.bbox as number[], r.width as number, r.height as number, opts.res ?? 100);
            score = s.correct ? 1 : 0;
            // What our own parser (the one the bot uses) reads, for answers eval_ref.py's strict format rejects.
            const parsed = s.formatOk ? undefined : parseGrounding(answer).entities.flatMap((e) => e.boxes)[0];
            detail = {
              img_id: r.img_id,
              sents: r.sents,
              answer,
              format_ok: s.formatOk,
              pred_box: s.pred,
              gt_box: s.gt,
              iou: s.iou,
              correct: s.correct,
              ...(parsed ? { parsed_box: parsed } : {}),
            };
            break;
          }
          case 'vqa': {
            score = vqaAccuracy(answer, r.answers as string[]);
            detail = {
              question_id: r.question_id,
              question: r.question,
              answer: cleanVqaAnswer(answer),
              normalized: normalizeVqaAnswer(cleanVqaAnswer(answer)),
              answers: [...new Set(r.answers as string[])],
              accuracy: score,
            };
            const t = typeof r.question_type === 'string' ? r.question_type : 'all';
            (types[t] ??= []).push(score);
            break;
          }
          case 'identify': {
            const ok = identifyCorrect(answer, r.answers as string[]);
            score = ok ? 1 : 0;
            detail = { img_id: r.img_id, prompt: item.prompt, answer, answers: r.answers, correct: ok };
            break;
          }
          case 'caption': {
            const c = captionRecall(answer, r.objects as string[]);
            score = c.recall;
            detail = { image_id: r.image_id, answer, recall: c.recall, found: c.found, missed: c.missed };
            if (typeof r.background === 'string') {
              const b = captionBackground(answer, r.background);
              backgrounds.push(b);
              detail = { ...detail, background: r.background, background_named: b.named, background_kind: b.kind };
            }
            break;
          }
        }
        scores.push(score);
        details.push(detail);
      });
      progress?.tick(chunk.length, `acc ${(mean(scores) * 100).toFixed(1)}%`);
    }
    const report: EvalReport = {
      task,
      n: items.length,
      accuracy: mean(scores),
      metric: {
        refer: 'Acc@0.5: predicted box IoU > 0.5 (eval_ref.py)',
        vqa: 'VQA accuracy: min(#matching answers / 3, 1) after the VQA answer normalisation',
        identify: 'the answer names the object (one of the accepted names, whole words)',
        caption: 'recall of the object names in the caption',
      }[task],
      model: opts.model,
      data: file,
      max_new_tokens: maxNewTokens,
      seconds: (performance.now() - t0) / 1000,
      ...(model.forcedAnswer ? { forced_answer: true as const } : {}),
      ...(backgrounds.length
        ? {
            background: {
              n: backgrounds.length,
              accuracy: mean(backgrounds.map((b) => (b.named ? 1 : 0))),
              kind_accuracy: mean(backgrounds.map((b) => (b.kind ? 1 : 0))),
            },
          }
        : {}),
      ...(task === 'vqa'
        ? { by_type: Object.fromEntries(Object.entries(types).map(([k, v]) => [k, { n: v.length, accuracy: mean(v) }])) }
        : {}),
      details,
    };
    return report;
  } finally {
    await model.close();
  }
}

export { DataError as EvalDataError };
