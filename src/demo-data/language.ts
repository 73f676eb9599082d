// Words for scenes: referring expressions that pick out exactly one object, captions, grounded captions,
// VQA questions with their answers, and the MiniGPT-v2 task samples in the original prompt forms.
import { EVAL_PROMPTS, TASK_BUTTON_PROMPTS } from '../grounding/tasks.js';
import type { Rng } from './rng.js';
import {
  formatGridBox,
  gridBox,
  plural,
  SHAPES,
  COLOUR_NAMES,
  type ColourName,
  type Scene,
  type SceneObject,
  type ShapeName,
} from './scene.js';

/** A noun phrase that refers to exactly one object of the scene ("red circle", "circle on the left"). */
export interface Expression {
  text: string;
  /** the phrase names the object's colour / shape */
  mentionsColour: boolean;
  mentionsShape: boolean;
}

export const name = (o: SceneObject) => `${o.colour} ${o.shape}`;

/** 'a red circle', 'an orange square' */
export const withArticle = (phrase: string) => `${/^[aeiou]/i.test(phrase) ? 'an' : 'a'} ${phrase}`;

/** Upstream instruction pools (minigpt4/datasets/datasets/*.py) plus the demo's and the eval scripts' forms. */
export const PROMPT_FORMS = {
  refer: [
    EVAL_PROMPTS.refer('{}'),
    '[refer] {}',
    '[refer] where is {} ?',
    '[refer] from this image, tell me the location of {}',
    '[refer] the location of {} is',
    '[refer] could you tell me the location for {} ?',
  ],
  identify: [
    `${TASK_BUTTON_PROMPTS.identify}{}`,
    '[identify] {}',
    '[identify] what object is in this location {}',
    '[identify] identify the object present at this location {}',
    '[identify] what is it in {}',
    '[identify] describe this object in {}',
    '[identify] the object in {} is',
  ],
  vqa: ['[vqa] {}', '[vqa] Based on the image, respond to this question with a short answer: {}'],
  caption: [
    TASK_BUTTON_PROMPTS.caption,
    EVAL_PROMPTS.caption(),
    '[caption] Briefly describe this image.',
    '[caption] Provide a concise depiction of this image.',
    '[caption] Summarize this image in a few words.',
    '[caption] A short image description:',
  ],
  grounding: [
    TASK_BUTTON_PROMPTS.grounding,
    '[grounding] please describe this image in details',
    '[grounding] describe this image as detailed as possible',
    '[grounding] summarize this image in details',
    '[grounding] give a thorough description of what you see in this image',
  ],
  detection: [`${TASK_BUTTON_PROMPTS.detection}{}`],
} as const;

/** The first form of each list is the one the demo buttons / eval scripts use; it is drawn most often. */
function form(rng: Rng, forms: readonly string[], fill = ''): string {
  const f = rng.chance(0.5) ? forms[0] : rng.pick(forms);
  return f.replace('{}', fill);
}

const area = (o: SceneObject) => o.w * o.h;

/** Spatial / size phrases that single out `o` inside `group` (which contains it), e.g. ['on the left', 'leftmost']. */
function distinguishers(o: SceneObject, group: readonly SceneObject[], scene: Scene): { pre: string[]; post: string[] } {
  const pre: string[] = [];
  const post: string[] = [];
  if (group.length < 2) return { pre, post };
  const others = group.filter((g) => g !== o);
  const gapX = 0.12 * scene.width;
  const gapY = 0.12 * scene.height;
  // the sides on which `o` stands apart from every other object of the group, in the order their words are output
  const sides: [apart: (g: SceneObject) => boolean, adjectives: string[], phrase: string][] = [
    [(g) => g.cx - o.cx >= gapX, ['leftmost', 'left'], 'on the left'],
    [(g) => o.cx - g.cx >= gapX, ['rightmost', 'right'], 'on the right'],
    [(g) => g.cy - o.cy >= gapY, ['top', 'upper'], 'at the top'],
    [(g) => o.cy - g.cy >= gapY, ['bottom', 'lower'], 'at the bottom'],
  ];
  for (const [apart, adjectives, phrase] of sides) {
    if (!others.every(apart)) continue;
    pre.push(...adjectives);
    post.push(phrase);
  }
  if (others.every((g) => area(o) >= 1.6 * area(g))) pre.push('largest', 'biggest');
  if (others.every((g) => area(g) >= 1.6 * area(o))) pre.push('smallest');
  return { pre, post };
}

/** Every expression that refers to `o` and to no other object of the scene. */
export function expressions(o: SceneObject, scene: Scene): Expression[] {
  const objs = scene.objects;
  const sameShape = objs.filter((g) => g.shape === o.shape);
  const sameColour = objs.filter((g) => g.colour === o.colour);
  const same = sameShape.filter((g) => g.colour === o.colour);
  const out: Expression[] = [];
  const add = (text: string, mentionsColour: boolean, mentionsShape: boolean) => out.push({ text, mentionsColour, mentionsShape });
  if (sameShape.length === 1) add(o.shape, false, true);
  if (same.length === 1) add(name(o), true, true);
  if (sameColour.length === 1) {
    add(`${o.colour} object`, true, false);
    add(`${o.colour} shape`, true, false);
  }
  const byShape = distinguishers(o, sameShape, scene);
  for (const p of byShape.pre) add(`${p} ${o.shape}`, false, true);
  for (const p of byShape.post) add(`${o.shape} ${p}`, false, true);
  if (same.length > 1) {
    const bySame = distinguishers(o, same, scene);
    for (const p of bySame.pre) add(`${p} ${name(o)}`, true, true);
    for (const p of bySame.post) add(`${name(o)} ${p}`, true, true);
  }
  const all = distinguishers(o, objs, scene);
  for (const p of all.pre) add(`${p} object`, false, false);
  for (const p of all.post) add(`object ${p}`, false, false);
  return out;
}

/** 'left' / 'right' when the object's centre is clearly in that side of the image, else null. */
export function sideOf(o: SceneObject, scene: Scene): 'left' | 'right' | null {
  if (o.cx < 0.38 * scene.width) return 'left';
  if (o.cx > 0.62 * scene.width) return 'right';
  return null;
}

/** Objects from left to right. */
const leftToRight = (objs: readonly SceneObject[]) => objs.slice().sort((a, b) => a.cx - b.cx || a.cy - b.cy);

function joinList(items: string[]): string {
  if (items.length <= 1) return items.join('');
  return `${items.slice(0, -1).join(', ')} and ${items[items.length - 1]}`;
}

/** The background as captions name it: its tone and kind ("light gradient"). */
export function backgroundName(scene: Scene): string {
  const tone = scene.background.tones[0];
  const light = tone[0] + tone[1] + tone[2] > 3 * 128;
  return `${light ? 'light' : 'dark'} ${scene.background.kind}`;
}

export function backgroundPhrase(scene: Scene): string {
  return `on a ${backgroundName(scene)} background`;
}

export function caption(scene: Scene): string {
  const objs = leftToRight(scene.objects);
  return `${joinList(objs.map((o) => withArticle(name(o))))} ${backgroundPhrase(scene)}`;
}

export function groundedCaption(scene: Scene): string {
  const objs = leftToRight(scene.objects);
  const parts = objs.map((o) => `<p>${withArticle(name(o))}</p> ${formatGridBox(gridBox(o.bbox, scene.width, scene.height))}`);
  return `${joinList(parts)} ${backgroundPhrase(scene)}`;
}

export const boxText = (o: SceneObject, scene: Scene) => formatGridBox(gridBox(o.bbox, scene.width, scene.height));

export interface VqaQuestion {
  question: string;
  answer: string;
  questionType: 'count' | 'colour' | 'shape' | 'exist' | 'relation' | 'side';
  answerType: 'number' | 'yes/no' | 'other';
  /** the object the question is about, when there is one (for follow-ups) */
  about?: SceneObject;
}

/** Candidate questions about a scene (every answer is determined by the scene); questions about absent shapes
 * name shapes of `shapes`, the set the scene was drawn from. */
export function vqaQuestions(scene: Scene, rng: Rng, shapes: readonly ShapeName[] = SHAPES): VqaQuestion[] {
  const objs = scene.objects;
  const qs: VqaQuestion[] = [];
  const n = objs.length;
  qs.push({
    question: rng.pick(['how many objects are there?', 'how many shapes are in the image?', 'how many objects are in this image?']),
    answer: String(n),
    questionType: 'count',
    answerType: 'number',
  });
  const shape = rng.chance(0.75) && n > 0 ? rng.pick(objs).shape : rng.pick(shapes);
  qs.push({
    question: `how many ${plural(shape)} are there?`,
    answer: String(objs.filter((o) => o.shape === shape).length),
    questionType: 'count',
    answerType: 'number',
  });
  const colour = rng.chance(0.75) && n > 0 ? rng.pick(objs).colour : rng.pick(COLOUR_NAMES);
  qs.push({
    question: `how many ${colour} objects are there?`,
    answer: String(objs.filter((o) => o.colour === colour).length),
    questionType: 'count',
    answerType: 'number',
  });
  for (const o of objs) {
    const ex = expressions(o, scene);
    const noColour = ex.filter((e) => !e.mentionsColour);
    if (noColour.length) {
      const e = rng.pick(noColour);
      qs.push({
        question: rng.pick([`what color is the ${e.text}?`, `what is the color of the ${e.text}?`]),
        answer: o.colour,
        questionType: 'colour',
        answerType: 'other',
        about: o,
      });
    }
    const noShape = ex.filter((e) => !e.mentionsShape);
    if (noShape.length) {
      const e = rng.pick(noShape);
      qs.push({ question: `what shape is the ${e.text}?`, answer: o.shape, questionType: 'shape', answerType: 'other', about: o });
    }
    const side = sideOf(o, scene);
    if (side && ex.length) {
      const e = rng.pick(ex);
      qs.push({
        question: `which side of the image is the ${e.text} on?`,
        answer: side,
        questionType: 'side',
        answerType: 'other',
        about: o,
      });
    }
  }
  // existence, balanced yes / no
  if (n > 0 && rng.chance(0.5)) {
    const o = rng.pick(objs);
    qs.push({
      question: rng.pick([`is there ${withArticle(name(o))}?`, `is there ${withArticle(name(o))} in the image?`]),
      answer: 'yes',
      questionType: 'exist',
      answerType: 'yes/no',
      about: o,
    });
  } else {
    for (let k = 0; k < 20; k++) {
      const c = rng.pick(COLOUR_NAMES);
      const s = rng.pick(shapes);
      if (objs.some((o) => o.colour === c && o.shape === s)) continue;
      qs.push({
        question: rng.pick([`is there ${withArticle(`${c} ${s}`)}?`, `is there ${withArticle(`${c} ${s}`)} in the image?`]),
        answer: 'no',
        questionType: 'exist',
        answerType: 'yes/no',
      });
      break;
    }
  }
  // relative position of two uniquely named objects
  const named = objs.map((o) => ({ o, ex: expressions(o, scene) })).filter((x) => x.ex.length > 0);
  if (named.length >= 2) {
    const [a, b] = rng.shuffle(named).slice(0, 2);
    const ta = rng.pick(a.ex).text;
    const tb = rng.pick(b.ex).text;
    const dx = a.o.cx - b.o.cx;
    const dy = a.o.cy - b.o.cy;
    const relations: VqaQuestion[] = [];
    if (Math.abs(dx) >= 0.1 * scene.width) {
      relations.push({
        question: `is the ${ta} to the left of the ${tb}?`,
        answer: dx < 0 ? 'yes' : 'no',
        questionType: 'relation',
        answerType: 'yes/no',
      });
      relations.push({
        question: `is the ${ta} on the right of the ${tb}?`,
        answer: dx > 0 ? 'yes' : 'no',
        questionType: 'relation',
        answerType: 'yes/no',
      });
    }
    if (Math.abs(dy) >= 0.1 * scene.height) {
      relations.push({
        question: `is the ${ta} above the ${tb}?`,
        answer: dy < 0 ? 'yes' : 'no',
        questionType: 'relation',
        answerType: 'yes/no',
      });
      relations.push({
        question: `is the ${ta} below the ${tb}?`,
        answer: dy > 0 ? 'yes' : 'no',
        questionType: 'relation',
        answerType: 'yes/no',
      });
    }
    if (relations.length) qs.push(rng.pick(relations));
  }
  return qs;
}

/** The 10 answers of a VQA entry (VQA v2 style); 'gray' is also answered 'grey' by some "annotators". */
export function answerList(answer: string): string[] {
  if (answer === 'gray') return [...Array(7).fill('gray'), ...Array(3).fill('grey')];
  return Array(10).fill(answer);
}

/** Acceptable names for an object in `[identify]` answers. */
export function identifyAnswers(o: SceneObject): string[] {
  const out = [name(o)];
  if (o.colour === 'gray') out.push(`grey ${o.shape}`);
  return out;
}

export type TaskName = 'caption' | 'grounding' | 'refer' | 'detection' | 'identify' | 'vqa' | 'multi';

export interface SampleTurn {
  user: string;
  assistant: string;
}

/** A training sample: the image and the conversation (the first turn carries the image). */
export interface TrainSample {
  id: string;
  image: string;
  width: number;
  height: number;
  task: TaskName;
  turns: SampleTurn[];
  /** index in the scene's objects of the one object that the last answer is about (refer, identify, the VQA
   * questions about one object, follow-ups); absent when it is about the scene or several objects. Training
   * only (train.py's attention and name targets); no prompt mentions it. */
  about?: number;
}

/** Detection queries present in the scene: shapes (plural) and colour + shape names, with their objects. */
function detectionQueries(scene: Scene): { query: string; objects: SceneObject[] }[] {
  const out: { query: string; objects: SceneObject[] }[] = [];
  for (const s of new Set(scene.objects.map((o) => o.shape))) {
    out.push({ query: plural(s as ShapeName), objects: scene.objects.filter((o) => o.shape === s) });
  }
  for (const c of new Set(scene.objects.map((o) => o.colour))) {
    out.push({ query: `${c as ColourName} objects`, objects: scene.objects.filter((o) => o.colour === c) });
  }
  return out;
}

export function detectionAnswer(query: string, objects: readonly SceneObject[], scene: Scene): string {
  return `<p>${query}</p> ${leftToRight(objects)
    .map((o) => boxText(o, scene))
    .join('<delim>')}`;
}

/** All training samples for one image. */
export function trainSamples(scene: Scene, rng: Rng, image: string, stem: string, shapes: readonly ShapeName[] = SHAPES): TrainSample[] {
  const out: TrainSample[] = [];
  const base = { image, width: scene.width, height: scene.height };
  let k = 0;
  const objs = scene.objects;
  const push = (task: TaskName, turns: SampleTurn[], about?: SceneObject) =>
    out.push({ id: `${stem}:${task}:${k++}`, ...base, task, turns, ...(about ? { about: objs.indexOf(about) } : {}) });
  if (objs.length === 0) return out;

  push('caption', [{ user: form(rng, PROMPT_FORMS.caption), assistant: caption(scene) }]);
  push('grounding', [{ user: form(rng, PROMPT_FORMS.grounding), assistant: groundedCaption(scene) }]);
  const referTurn = (o: SceneObject): SampleTurn | null => {
    const ex = expressions(o, scene);
    if (!ex.length) return null;
    const e = rng.pick(ex).text;
    return { user: form(rng, PROMPT_FORMS.refer, rng.chance(0.8) ? `the ${e}` : e), assistant: boxText(o, scene) };
  };
  const identifyTurn = (o: SceneObject): SampleTurn => ({ user: form(rng, PROMPT_FORMS.identify, boxText(o, scene)), assistant: name(o) });
  for (const o of objs) {
    const r = referTurn(o);
    if (r) push('refer', [r], o);
    push('identify', [identifyTurn(o)], o);
  }
  const dq = detectionQueries(scene);
  for (const d of rng.shuffle(dq).slice(0, 2)) {
    push('detection', [{ user: form(rng, PROMPT_FORMS.detection, d.query), assistant: detectionAnswer(d.query, d.objects, scene) }]);
  }
  const qs = rng.shuffle(vqaQuestions(scene, rng, shapes));
  for (const q of qs.slice(0, 4)) push('vqa', [{ user: form(rng, PROMPT_FORMS.vqa, q.question), assistant: q.answer }], q.about);

  // Multi-turn: a refer / identify turn, then follow-ups about the same object ("it"), then another task.
  const o = rng.pick(objs);
  const first = rng.chance(0.5) ? (referTurn(o) ?? identifyTurn(o)) : identifyTurn(o);
  const turns: SampleTurn[] = [first];
  const followUps: SampleTurn[] = [
    { user: form(rng, PROMPT_FORMS.vqa, 'what color is it?'), assistant: o.colour },
    { user: form(rng, PROMPT_FORMS.vqa, 'what shape is it?'), assistant: o.shape },
  ];
  const side = sideOf(o, scene);
  if (side) followUps.push({ user: form(rng, PROMPT_FORMS.vqa, 'which side of the image is it on?'), assistant: side });
  turns.push(rng.pick(followUps));
  // (the random draws in the order they have always been made: a seed's samples stay what they were)
  const thirds = qs
    .slice(4, 6)
    .map((q) => ({ turn: { user: form(rng, PROMPT_FORMS.vqa, q.question), assistant: q.answer }, about: q.about }));
  const other = rng.pick(objs);
  thirds.push({ turn: identifyTurn(other), about: other });
  const third = rng.pick(thirds);
  const withThird = rng.chance(0.6);
  if (withThird) turns.push(third.turn);
  push('multi', turns, withThird ? third.about : o);
  return out;
}
