// `minigpt demo-data`: a synthetic split, deterministic from a seed.
//
//   DIR/images/<stem>.png       the scenes (PNG, or JPEG with format 'jpg')
//   DIR/refer.json              RefCOCO eval style: [{img_id, sents, bbox [x,y,w,h] px, width, height, image}]
//   DIR/vqa.json                [{question_id, image, question, answers (10), question_type, answer_type}]
//   DIR/identify.json           [{img_id, image, bbox [x,y,w,h] px, width, height, answers, colour, shape}]
//   DIR/caption.json            [{image_id, image, caption, objects (the "colour shape" names), background ("light gradient")}]
//   DIR/train.jsonl             training samples of all six tasks + multi-turn: {id, image, width, height, task, turns}
//   DIR/scenes.json             the full ground truth of every image
//   DIR/manifest.json           seed, count, options and entry counts
//
// Image i of seed N is the same whatever the count, so a split of M images is a prefix of a longer one.
// Paths in the files are relative to DIR.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Rng } from './rng.js';
import { DEFAULT_SHAPE_SET, sampleScene, sceneShapes, type Scene, type SceneOptions } from './scene.js';
import { renderScene, type ImageFormat } from './render.js';
import {
  answerList,
  backgroundName,
  caption,
  expressions,
  identifyAnswers,
  name,
  trainSamples,
  vqaQuestions,
  type TrainSample,
} from './language.js';

export { Rng } from './rng.js';
export * from './scene.js';
export { renderScene, renderSceneRaw, renderBackground, sceneSvg, type ImageFormat } from './render.js';
export * from './language.js';

export const DEMO_DATA_VERSION = 1;

const STREAM_SCENE = 1;
const STREAM_TRAIN = 2;
const STREAM_EVAL = 3;

export interface ReferEntry {
  img_id: string;
  sents: string;
  bbox: [number, number, number, number];
  width: number;
  height: number;
  image: string;
}

export interface VqaEntry {
  question_id: number;
  image: string;
  question: string;
  answers: string[];
  question_type: string;
  answer_type: string;
}

export interface IdentifyEntry {
  img_id: string;
  image: string;
  bbox: [number, number, number, number];
  width: number;
  height: number;
  answers: string[];
  colour: string;
  shape: string;
}

export interface CaptionEntry {
  image_id: string;
  image: string;
  caption: string;
  objects: string[];
  /** the background's tone and kind as the caption names it ("light gradient"), for eval's background score */
  background: string;
}

export interface SceneEntry extends Scene {
  image: string;
  image_id: string;
}

export interface ImageData {
  stem: string;
  image: string;
  scene: Scene;
  refer: ReferEntry[];
  vqa: Omit<VqaEntry, 'question_id'>[];
  identify: IdentifyEntry[];
  caption: CaptionEntry;
  train: TrainSample[];
}

export interface DemoDataOptions {
  seed: number;
  count: number;
  format?: ImageFormat;
  scene?: SceneOptions;
  /** VQA questions per image in vqa.json (default 3) */
  vqaPerImage?: number;
  /** referring expressions per object in refer.json (default 2) */
  sentsPerObject?: number;
}

export const stemOf = (seed: number, index: number) => `s${seed}_${String(index).padStart(6, '0')}`;

/** Everything about image `index` of `seed`, without rendering it. */
export function imageData(opts: DemoDataOptions, index: number): ImageData {
  const { seed } = opts;
  const ext = opts.format === 'jpg' ? 'jpg' : 'png';
  const stem = stemOf(seed, index);
  const image = `images/${stem}.${ext}`;
  const scene = sampleScene(new Rng(seed, index, STREAM_SCENE), opts.scene);
  const shapes = sceneShapes(opts.scene);
  const train = trainSamples(scene, new Rng(seed, index, STREAM_TRAIN), image, stem, shapes);
  const rng = new Rng(seed, index, STREAM_EVAL);
  const { width, height } = scene;
  const refer: ReferEntry[] = [];
  const identify: IdentifyEntry[] = [];
  for (const o of scene.objects) {
    const ex = rng.shuffle(expressions(o, scene)).slice(0, opts.sentsPerObject ?? 2);
    for (const e of ex)
      refer.push({ img_id: `${stem}_${o.index}`, sents: rng.chance(0.8) ? `the ${e.text}` : e.text, bbox: o.bbox, width, height, image });
    identify.push({
      img_id: `${stem}_${o.index}`,
      image,
      bbox: o.bbox,
      width,
      height,
      answers: identifyAnswers(o),
      colour: o.colour,
      shape: o.shape,
    });
  }
  const vqa = rng
    .shuffle(vqaQuestions(scene, rng, shapes))
    .slice(0, opts.vqaPerImage ?? 3)
    .map((q) => ({ image, question: q.question, answers: answerList(q.answer), question_type: q.questionType, answer_type: q.answerType }));
  const cap: CaptionEntry = {
    image_id: stem,
    image,
    caption: caption(scene),
    objects: [...new Set(scene.objects.map(name))],
    background: backgroundName(scene),
  };
  return { stem, image, scene, refer, vqa, identify, caption: cap, train };
}

const jsonArray = (items: readonly unknown[]) => (items.length ? `[\n${items.map((x) => JSON.stringify(x)).join(',\n')}\n]\n` : '[]\n');

export interface DemoDataSummary {
  out: string;
  images: number;
  refer: number;
  vqa: number;
  identify: number;
  caption: number;
  train: number;
  trainByTask: Record<string, number>;
}

/** Writes a split to `out` (created if needed). */
export async function writeDemoData(out: string, opts: DemoDataOptions, log?: (line: string) => void): Promise<DemoDataSummary> {
  if (!Number.isSafeInteger(opts.seed) || opts.seed < 0) throw new RangeError(`--seed must be a non-negative integer, got ${opts.seed}`);
  if (!Number.isInteger(opts.count) || opts.count < 1) throw new RangeError(`--count must be a positive integer, got ${opts.count}`);
  await mkdir(join(out, 'images'), { recursive: true });
  const refer: ReferEntry[] = [];
  const vqa: VqaEntry[] = [];
  const identify: IdentifyEntry[] = [];
  const captions: CaptionEntry[] = [];
  const scenes: SceneEntry[] = [];
  const train: string[] = [];
  const trainByTask: Record<string, number> = {};
  let nextReport = 0.1;
  for (let i = 0; i < opts.count; i++) {
    const d = imageData(opts, i);
    await writeFile(join(out, d.image), await renderScene(d.scene, opts.format ?? 'png'));
    refer.push(...d.refer);
    for (const q of d.vqa) vqa.push({ question_id: opts.seed * 1_000_000 + vqa.length, ...q });
    identify.push(...d.identify);
    captions.push(d.caption);
    scenes.push({ image: d.image, image_id: d.stem, ...d.scene });
    for (const s of d.train) {
      train.push(JSON.stringify(s));
      trainByTask[s.task] = (trainByTask[s.task] ?? 0) + 1;
    }
    if (log && (i + 1) / opts.count >= nextReport) {
      log(`demo-data: ${i + 1}/${opts.count} images`);
      while ((i + 1) / opts.count >= nextReport) nextReport += 0.1;
    }
  }
  await writeFile(join(out, 'refer.json'), jsonArray(refer));
  await writeFile(join(out, 'vqa.json'), jsonArray(vqa));
  await writeFile(join(out, 'identify.json'), jsonArray(identify));
  await writeFile(join(out, 'caption.json'), jsonArray(captions));
  await writeFile(join(out, 'scenes.json'), jsonArray(scenes));
  await writeFile(join(out, 'train.jsonl'), train.length ? `${train.join('\n')}\n` : '');
  // the summary and the manifest count the same entries
  const entries = {
    refer: refer.length,
    vqa: vqa.length,
    identify: identify.length,
    caption: captions.length,
    train: train.length,
    trainByTask,
  };
  const summary: DemoDataSummary = { out, images: opts.count, ...entries };
  const manifest = {
    generator: 'minigpt demo-data',
    version: DEMO_DATA_VERSION,
    seed: opts.seed,
    count: opts.count,
    format: opts.format ?? 'png',
    // the shape set always: a reader cannot tell the default of the generator that wrote the split
    scene: { ...opts.scene, shapes: opts.scene?.shapes ?? DEFAULT_SHAPE_SET },
    vqaPerImage: opts.vqaPerImage ?? 3,
    sentsPerObject: opts.sentsPerObject ?? 2,
    entries,
  };
  await writeFile(join(out, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
  return summary;
}
