// `minigpt eval` on a tiny split with models/demo, answers forced through the generator test hook, so the
// accuracies are known exactly; and `minigpt demo-data` / `minigpt eval` through the real binary.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeDemoData, type Scene } from '../../src/demo-data/index.js';
import { runEval, type EvalOptions } from '../../src/eval/run.js';
import { computeIoU } from '../../src/eval/metrics.js';
import { minigpt, ROOT } from '../helpers/cli.js';

const DEMO = join(ROOT, 'models', 'demo');

let work: string;
let data: string;
let sizes: { image: string; width: number; height: number }[];

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-eval-'));
  data = join(work, 'split');
  await writeDemoData(data, { seed: 2, count: 3 });
  const scenes = JSON.parse(await readFile(join(data, 'scenes.json'), 'utf8')) as (Scene & { image: string })[];
  sizes = scenes.map((s) => ({ image: s.image, width: s.width, height: s.height }));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function evalFile(
  task: EvalOptions['task'],
  name: string,
  entries: unknown[],
  forcedAnswer: string,
  extra: Partial<EvalOptions> = {},
) {
  const file = join(data, name);
  await writeFile(file, JSON.stringify(entries));
  return runEval({ model: DEMO, data: file, task, provider: 'cpu', forcedAnswer, progress: null, ...extra });
}

/** A box at grid (20,30)-(60,60) of image k, in pixels [x, y, w, h]: exactly what {<20><30><60><60>} scales to. */
const boxOf = (k: number, dx = 0) => {
  const { width: W, height: H } = sizes[k];
  return [(0.2 + dx) * W, 0.3 * H, 0.4 * W, 0.3 * H];
};
const referEntry = (k: number, bbox: number[], sents = 'the red circle') => ({
  img_id: `e${k}`,
  sents,
  bbox,
  width: sizes[k].width,
  height: sizes[k].height,
  image: sizes[k].image,
});
const FORCED_BOX = '{<20><30><60><60>}';

describe('minigpt eval --task refer', () => {
  it('a correct box scores 1.0', async () => {
    const r = await evalFile(
      'refer',
      'refer-right.json',
      [referEntry(0, boxOf(0)), referEntry(1, boxOf(1)), referEntry(2, boxOf(2))],
      FORCED_BOX,
    );
    expect(r).toMatchObject({ task: 'refer', n: 3, accuracy: 1 });
    expect(r.forced_answer).toBe(true); // the report says the answers were the test hook's
    for (const d of r.details) expect(d.iou as number).toBeCloseTo(1, 9);
    expect(r.details[0]).toMatchObject({ answer: FORCED_BOX, format_ok: true, correct: true });
  });

  it('a box shifted below IoU 0.5 scores 0.0', async () => {
    const r = await evalFile('refer', 'refer-shifted.json', [referEntry(0, boxOf(0, 0.25)), referEntry(1, boxOf(1, 0.3))], FORCED_BOX);
    expect(r).toMatchObject({ n: 2, accuracy: 0 });
    for (const d of r.details) expect(d.iou as number).toBeLessThan(0.5);
  });

  it('mixed entries: hits / entries, with eval_ref.py IoU', async () => {
    const entries = [referEntry(0, boxOf(0)), referEntry(1, boxOf(1, 0.05)), referEntry(2, boxOf(2, 0.3)), referEntry(0, boxOf(0, -0.1))];
    const r = await evalFile('refer', 'refer-mixed.json', entries, FORCED_BOX);
    const expected = entries.map((e) => {
      const { width: W, height: H } = e;
      const pred = [0.2 * W, 0.3 * H, 0.6 * W, 0.6 * H];
      return computeIoU(pred, [e.bbox[0], e.bbox[1], e.bbox[0] + e.bbox[2], e.bbox[1] + e.bbox[3]]);
    });
    expect(r.details.map((d) => d.iou)).toEqual(expected);
    expect(expected.map((v) => v > 0.5)).toEqual([true, true, false, true]);
    expect(r.accuracy).toBe(0.75);
  });

  it('an answer that is not a bare box is not counted, as eval_ref.py (our parser still reports the box)', async () => {
    const r = await evalFile('refer', 'refer-phrase.json', [referEntry(0, boxOf(0))], `<p>circle</p> ${FORCED_BOX}`);
    expect(r.accuracy).toBe(0);
    expect(r.details[0]).toMatchObject({ format_ok: false, pred_box: null, parsed_box: { x1: 20, y1: 30, x2: 60, y2: 60 } });
  });
});

describe('minigpt eval --task vqa / identify / caption', () => {
  const q = (k: number, answers: string[], type = 'count') => ({
    question_id: k,
    image: sizes[k % 3].image,
    question: 'how many circles are there?',
    answers,
    question_type: type,
    answer_type: 'number',
  });

  it('vqa: min(matches/3, 1) after normalisation, averaged; per question type', async () => {
    const r = await evalFile(
      'vqa',
      'vqa-t.json',
      [q(0, Array(10).fill('2')), q(1, ['2', '2', ...Array(8).fill('3')]), q(2, Array(10).fill('3'), 'other')],
      'Two.',
    );
    expect(r.n).toBe(3);
    expect(r.accuracy).toBeCloseTo(5 / 9, 12);
    expect(r.details.map((d) => d.accuracy)).toEqual([1, 2 / 3, 0]);
    expect(r.details[0]).toMatchObject({ answer: 'two.', normalized: '2' });
    expect(Object.keys(r.by_type!)).toEqual(['count', 'other']);
    expect(r.by_type!.count.n).toBe(2);
    expect(r.by_type!.count.accuracy).toBeCloseTo(5 / 6, 12);
    expect(r.by_type!.other).toEqual({ n: 1, accuracy: 0 });
  });

  it('identify: the answer names the object; the prompt holds the box on the 0..100 grid', async () => {
    const e = (k: number, answers: string[]) => ({
      img_id: `i${k}`,
      image: sizes[k].image,
      bbox: boxOf(k),
      width: sizes[k].width,
      height: sizes[k].height,
      answers,
    });
    const r = await evalFile(
      'identify',
      'identify-t.json',
      [e(0, ['red circle']), e(1, ['blue square']), e(2, ['gray circle', 'red circle'])],
      'a red circle.',
    );
    expect(r.accuracy).toBeCloseTo(2 / 3, 12);
    expect(r.details.map((d) => d.correct)).toEqual([true, false, true]);
    expect(r.details[0].prompt).toBe('[identify] what is this {<20><30><60><60>}');
  });

  it('caption: recall of the object names', async () => {
    const c = (k: number, objects: string[]) => ({ image_id: `c${k}`, image: sizes[k].image, caption: '', objects });
    const r = await evalFile(
      'caption',
      'caption-t.json',
      [c(0, ['red circle', 'gray square', 'green star']), c(1, ['red circle'])],
      'a red circle and a grey square on a light plain background',
    );
    expect(r.accuracy).toBeCloseTo((2 / 3 + 1) / 2, 12);
    expect(r).not.toHaveProperty('background'); // the data does not name the backgrounds
    // demo-data's caption.json names each background: the report scores the caption's
    const b = (k: number, background: string) => ({ ...c(k, ['red circle']), background });
    const rb = await evalFile(
      'caption',
      'caption-b.json',
      [b(0, 'light plain'), b(1, 'dark plain'), b(1, 'light noisy')],
      'a red circle and a grey square on a light plain background',
    );
    expect(rb.background).toEqual({ n: 3, accuracy: 1 / 3, kind_accuracy: 2 / 3 });
    expect(rb.details.map((d) => d.background_named)).toEqual([true, false, false]);
  });

  it('the generated split evaluates on every task; --batch gives the same answers as one at a time', async () => {
    for (const task of ['refer', 'vqa', 'identify', 'caption'] as const) {
      const one = await runEval({ model: DEMO, data, task, provider: 'cpu', progress: null, limit: 5 });
      expect(one.n).toBe(task === 'caption' ? 3 : 5);
      expect(one.accuracy).toBeGreaterThanOrEqual(0);
      const three = await runEval({ model: DEMO, data, task, provider: 'cpu', progress: null, limit: 5, batch: 3 });
      expect(three.details.map((d) => d.answer)).toEqual(one.details.map((d) => d.answer));
      expect(one.forced_answer).toBeUndefined(); // the model's own answers
    }
  });

  it('reports a missing file or a malformed entry clearly', async () => {
    await expect(runEval({ model: DEMO, data: join(work, 'nope'), task: 'refer', progress: null })).rejects.toThrow(
      /no such file or folder/,
    );
    await writeFile(join(work, 'bad.json'), JSON.stringify([{ img_id: 'x', sents: 'a', bbox: [1, 2, 3], width: 10, height: 10 }]));
    await expect(runEval({ model: DEMO, data: join(work, 'bad.json'), task: 'refer', progress: null })).rejects.toThrow(
      /entry 0: "bbox" must be \[x, y, w, h\]/,
    );
  });
});

describe('the minigpt binary', () => {
  it('demo-data writes a split; eval --json prints {task, n, accuracy} with a progress report on stderr', async () => {
    const out = join(work, 'cli-split');
    const d = await minigpt(['demo-data', '--seed', '9', '--count', '2', '--out', out]);
    expect(d.code, d.stderr).toBe(0);
    expect(d.stderr).toMatch(/demo-data: 2 images, refer \d+, vqa 6, identify \d+, caption 2, train \d+ samples/);
    for (const f of ['refer.json', 'vqa.json', 'identify.json', 'caption.json', 'train.jsonl', 'images/s9_000001.png'])
      expect((await stat(join(out, f))).size).toBeGreaterThan(0);

    // the shape set is always recorded (the default, aspect-safe, here)
    expect(JSON.parse(await readFile(join(out, 'manifest.json'), 'utf8'))).toMatchObject({ scene: { shapes: 'aspect-safe' } });
    const classic = await minigpt(['demo-data', '--seed', '9', '--count', '2', '--shapes', 'classic', '--out', join(work, 'cli-classic')]);
    expect(classic.code, classic.stderr).toBe(0);
    expect(JSON.parse(await readFile(join(work, 'cli-classic', 'manifest.json'), 'utf8'))).toMatchObject({ scene: { shapes: 'classic' } });
    const oval = await minigpt(['demo-data', '--seed', '9', '--count', '2', '--shapes', 'ovals', '--out', join(work, 'cli-oval')]);
    expect(oval.code).not.toBe(0);
    expect(oval.stderr).toMatch(/--shapes.*'ovals' is invalid.*classic, aspect-safe/s);

    const vqa = JSON.parse(await readFile(join(out, 'vqa.json'), 'utf8')) as { answers: string[] }[];
    const forced = vqa[0].answers[0];
    const r = await minigpt(['eval', '--model', DEMO, '--data', out, '--task', 'vqa', '--json', '--batch', '2', '--provider', 'cpu'], {
      MINIGPT_TEST_FORCED_ANSWER: forced,
    });
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report).toMatchObject({ task: 'vqa', n: 6, forced_answer: true }); // the env hook, said in the report
    const expected = vqa.map((x) => (x.answers.includes(forced) ? 1 : 0) as number).reduce((a, b) => a + b, 0) / 6;
    expect(report.accuracy).toBeCloseTo(expected, 12);
    expect(report.details).toHaveLength(6);
    expect(r.stderr).toMatch(/eval vqa 100% 6\/6/);

    const text = await minigpt([
      'eval',
      '--model',
      DEMO,
      '--data',
      join(out, 'refer.json'),
      '--task',
      'refer',
      '--limit',
      '2',
      '--provider',
      'cpu',
    ]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/^refer: \d+\.\d\d% on 2 items \(Acc@0\.5/);

    const bad = await minigpt(['eval', '--model', DEMO, '--data', out, '--task', 'nope']);
    expect(bad.code).not.toBe(0);
  });
});
