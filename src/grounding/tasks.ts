/**
 * MiniGPT-v2 task tags and the canonical prompts the upstream demo builds for them.
 *
 * Upstream `demo_v2.py` (`gradio_taskselect`) fills the text box with, per task button:
 *   No Tag -> ''                      Grounding -> '[grounding] describe this image in detail'
 *   Refer  -> '[refer] '              Detection -> '[detection] '
 *   Identify -> '[identify] what is this '    VQA -> '[vqa] '
 * and the user types the rest (examples: '[refer] the world cup', '[detection] sofas',
 * '[vqa] where should I hide ...'). For `[identify]`, `gradio_ask` appends the box drawn on the image
 * (`mask2bbox` -> '{<x1><y1><x2><y2>}') when the message does not already hold four integers, giving
 * e.g. '[identify] what is this {<4><50><30><65>}'.
 * The demo has no `[caption]` button; the training instruction pool starts with
 * 'Briefly describe this image.' (caption_datasets.py) and the COCO caption eval asks
 * '[caption] please describe this image?'. We use '[caption] briefly describe this image'.
 */
import { formatBox, parseUserBox, type GridBox } from './parse.js';

export const TASKS = ['grounding', 'refer', 'detection', 'identify', 'vqa', 'caption'] as const;
export type Task = (typeof TASKS)[number];

/** What the upstream demo's task buttons put in the text box (caption: ours, see above). */
export const TASK_BUTTON_PROMPTS: Readonly<Record<Task | 'chat', string>> = {
  chat: '',
  grounding: '[grounding] describe this image in detail',
  refer: '[refer] ',
  detection: '[detection] ',
  identify: '[identify] what is this ',
  vqa: '[vqa] ',
  caption: '[caption] briefly describe this image',
};

/** The upstream demo's hint per task (caption: ours). */
export const TASK_HINTS: Readonly<Record<Task | 'chat', string>> = {
  chat: 'Type in whatever you want',
  grounding: 'Send the command to generate a grounded image description',
  refer: 'Type in a phrase about an object in the image and send the command',
  detection: 'Type in a caption or phrase, and see object locations in the image',
  identify: 'Draw a bounding box on the uploaded image then send the command',
  vqa: 'Send a question to get a short answer',
  caption: 'Send the command to get a short caption of the image',
};

/** Default text for tasks that need none from the user. */
const DEFAULT_TEXT: Partial<Record<Task, string>> = {
  grounding: 'describe this image in detail',
  identify: 'what is this',
  caption: 'briefly describe this image',
};

/** Prompts the upstream evaluation scripts use (for `minigpt eval`). */
export const EVAL_PROMPTS = {
  /** eval_ref.py via RefCOCOEvalData */
  refer: (phrase: string) => `[refer] give me the location of ${phrase}`,
  /** coco_caption.py EvalCaptionData */
  caption: () => '[caption] please describe this image?',
} as const;

const TAG_RE = /^\s*\[(grounding|refer|detection|identify|vqa|caption)\]/i;

export function isTask(s: string): s is Task {
  return (TASKS as readonly string[]).includes(s);
}

/**
 * Splits a leading task tag off a message: `'[refer] the cat'` -> `{ task: 'refer', rest: 'the cat' }`.
 * No (or an unknown) tag -> `{ task: 'chat', rest: <trimmed text> }`. Tags are case-insensitive.
 */
export function parseTask(text: string): { task: Task | 'chat'; rest: string } {
  const s = typeof text === 'string' ? text : '';
  const m = TAG_RE.exec(s);
  if (!m) return { task: 'chat', rest: s.trim() };
  return { task: m[1].toLowerCase() as Task, rest: s.slice(m[0].length).trim() };
}

const BOX_SYNTAX_RE = /\{\s*(?:<[^<>{}\n]*>\s*)+\}/g;

/**
 * The canonical prompt for a task, as the upstream demo's buttons build it: the tag, a space and the
 * user's text (a leading task tag in `text` is replaced by `task`'s). Empty text falls back to
 * 'describe this image in detail' (grounding), 'briefly describe this image' (caption) and
 * 'what is this' (identify). For `identify`, `opts.box` (the box drawn by the user) replaces any box
 * in the text and is appended, like upstream's `user_message + mask2bbox(mask)`; without it, a box
 * already in the text is kept where it is.
 */
export function taskPrompt(task: Task | 'chat', text = '', opts: { box?: GridBox } = {}): string {
  const raw = typeof text === 'string' ? text : '';
  if (task === 'chat' || !isTask(task)) return raw.trim();
  const rest = parseTask(raw).rest;
  const tag = `[${task}]`;
  if (task === 'identify') {
    if (opts.box) {
      const question = rest.replace(BOX_SYNTAX_RE, ' ').replace(/\s+/g, ' ').trim() || DEFAULT_TEXT.identify!;
      return `${tag} ${question} ${formatBox(opts.box)}`;
    }
    if (parseUserBox(rest) !== null) {
      // A box in the text. If the text is only the box, ask the demo's question.
      const question = rest.replace(BOX_SYNTAX_RE, '').trim();
      return question === '' ? `${tag} ${DEFAULT_TEXT.identify} ${rest.trim()}` : `${tag} ${rest}`;
    }
    return `${tag} ${rest || DEFAULT_TEXT.identify}`;
  }
  const body = rest || DEFAULT_TEXT[task] || '';
  return body ? `${tag} ${body}` : tag;
}
