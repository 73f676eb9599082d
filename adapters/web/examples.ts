// Example scenes for the web demo: a few synthetic scenes from the demo-data generator (a seed that no
// training or evaluation split uses), each with a suggested prompt for one MiniGPT-v2 task, built from the
// scene's real objects in the same prompt forms as the training samples. Rendered on first request and
// kept in memory; nothing is written to disk.
//
//   GET /examples            [{id, task, prompt, width, height, alt}]
//   GET /examples/<id>.png   the scene (PNG)
import {
  boxText,
  caption,
  expressions,
  imageData,
  plural,
  PROMPT_FORMS,
  renderScene,
  Rng,
  stemOf,
  vqaQuestions,
  type Scene,
  type SceneObject,
} from '../../src/demo-data/index.js';

/** Training uses seeds 1..16, the held-out loss 999 and the held-out evaluation 1000: this is none of them. */
export const EXAMPLE_SEED = 4242;
/** One example per task, in this order. */
export const EXAMPLE_TASKS = ['grounding', 'refer', 'detection', 'identify', 'vqa', 'caption'] as const;
export type ExampleTask = (typeof EXAMPLE_TASKS)[number];

/** Mixed into the picks' Rng, apart from the generator's own streams (scene 1, train 2, eval 3). */
const STREAM_EXAMPLE = 7;
/** Scenes tried per example before giving up on a task (a scene with no usable object is skipped). */
const MAX_TRIES = 50;

export interface Example {
  /** the generator's image stem, `s<seed>_<index>` */
  id: string;
  /** the task of the suggested prompt; `chat` for models without task tags (MiniGPT-4) */
  task: ExampleTask | 'chat';
  /** the suggested prompt, with its task tag (none for `chat`) */
  prompt: string;
  width: number;
  height: number;
  /** the scene in words (the generator's caption), for the thumbnail's alt text */
  alt: string;
}

export interface ExampleScene extends Example {
  /** image index within the seed */
  index: number;
  scene: Scene;
}

const fill = (form: string, text = '') => form.replace('{}', text);

/** The suggested `task` prompt for `scene`, or null when the scene has nothing to ask it about. */
function promptFor(task: ExampleTask, scene: Scene, rng: Rng): string | null {
  const objs = scene.objects;
  if (objs.length === 0) return null;
  switch (task) {
    case 'grounding':
      return objs.length >= 2 ? PROMPT_FORMS.grounding[0] : null;
    case 'caption':
      return PROMPT_FORMS.caption[0];
    case 'refer': {
      // An expression that picks out exactly one object; a colour + shape one reads best.
      const all = objs.flatMap((o) => expressions(o, scene));
      if (all.length === 0) return null;
      const named = all.filter((e) => e.mentionsColour && e.mentionsShape);
      return fill(PROMPT_FORMS.refer[0], `the ${rng.pick(named.length ? named : all).text}`);
    }
    case 'detection': {
      // A shape of the scene (plural), preferably one with several instances.
      const counts = new Map<SceneObject['shape'], number>();
      for (const o of objs) counts.set(o.shape, (counts.get(o.shape) ?? 0) + 1);
      const most = Math.max(...counts.values());
      const shapes = [...counts].filter(([, n]) => n === most).map(([s]) => s);
      return fill(PROMPT_FORMS.detection[0], plural(rng.pick(shapes)));
    }
    case 'identify':
      return fill(PROMPT_FORMS.identify[0], boxText(rng.pick(objs), scene));
    case 'vqa': {
      // A colour or shape question about one object, named without giving the answer away.
      const qs = vqaQuestions(scene, rng).filter((q) => q.about && (q.questionType === 'colour' || q.questionType === 'shape'));
      if (qs.length === 0) return null;
      return fill(PROMPT_FORMS.vqa[0], rng.pick(qs).question);
    }
  }
}

/** The same example for a model without task tags: a question in plain words. */
function chatPrompt(task: ExampleTask, tagged: string): string {
  const rest = tagged.replace(/^\[[a-z]+\]\s*/, '');
  switch (task) {
    case 'refer':
      return `where is ${rest.replace(/^give me the location of /, '')}?`;
    case 'detection':
      return `how many ${rest} are there?`;
    case 'identify':
      return 'what objects are in this image?';
    default:
      return rest;
  }
}

/**
 * The example scenes of `seed`: example k has task EXAMPLE_TASKS[k % 6] and the first scene after the
 * previous example's that suits it. Deterministic: the same seed and count give the same scenes and prompts.
 */
export function exampleScenes(opts: { seed?: number; count?: number; tags?: boolean } = {}): ExampleScene[] {
  const seed = opts.seed ?? EXAMPLE_SEED;
  const count = opts.count ?? EXAMPLE_TASKS.length;
  const out: ExampleScene[] = [];
  let index = 0;
  for (let k = 0; k < count; k++) {
    const task = EXAMPLE_TASKS[k % EXAMPLE_TASKS.length];
    for (let tries = 0; tries < MAX_TRIES; tries++, index++) {
      const { scene } = imageData({ seed, count: index + 1 }, index);
      const prompt = promptFor(task, scene, new Rng(seed, index, STREAM_EXAMPLE));
      if (prompt === null) continue;
      out.push({
        id: stemOf(seed, index),
        index,
        task: opts.tags === false ? 'chat' : task,
        prompt: opts.tags === false ? chatPrompt(task, prompt) : prompt,
        width: scene.width,
        height: scene.height,
        alt: `Example scene: ${caption(scene)}`,
        scene,
      });
      index++;
      break;
    }
  }
  return out;
}

export interface ExampleSet {
  list: Example[];
  /** the PNG of example `id`, or undefined for an unknown id */
  png(id: string): Buffer | undefined;
}

/** Builds and renders the examples (a few hundred ms for six scenes). */
export async function renderExamples(opts: { seed?: number; count?: number; tags?: boolean } = {}): Promise<ExampleSet> {
  const scenes = exampleScenes(opts);
  const pngs = new Map<string, Buffer>();
  for (const s of scenes) pngs.set(s.id, await renderScene(s.scene, 'png'));
  const list = scenes.map(({ id, task, prompt, width, height, alt }) => ({ id, task, prompt, width, height, alt }));
  return { list, png: (id) => pngs.get(id) };
}
