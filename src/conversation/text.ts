// User text -> the user turn of the prompt: template markers neutralised, task tag resolved.
import { isTask, parseTask, taskPrompt } from '../grounding/tasks.js';
import type { PromptSpec } from '../inference/prompt.js';
import type { TaskTag } from './types.js';

/**
 * Strings that structure the prompt templates (Llama-2 chat, MiniGPT-v2, MiniGPT-4 Vicuna v0): typed by a
 * user they would close the user turn, open a fake assistant turn or claim an image slot.
 */
export const TEMPLATE_MARKERS: readonly string[] = [
  '[INST]',
  '[/INST]',
  '<<SYS>>',
  '<</SYS>>',
  '<s>',
  '</s>',
  '<unk>',
  '<Img>',
  '</Img>',
  '<ImageHere>',
  '###',
];

/** Used when a request has an image but no text. */
export const DEFAULT_PROMPT = 'Describe this image.';

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** How a model's user turns are made (userTurn's options): task tags (MiniGPT-v2), and the markers taken out. */
export interface TurnRules {
  tasks: boolean;
  markers: string[];
}

/** A model's TurnRules, from its package's metadata. */
export function turnRulesOf(meta: { architecture: string; prompt?: PromptSpec }): TurnRules {
  return { tasks: meta.architecture === 'minigpt-v2', markers: markersFor(meta.prompt) };
}

/** The markers to neutralise for a package: the fixed list plus its own template strings. */
export function markersFor(spec: PromptSpec | undefined): string[] {
  const extra = spec
    ? [spec.imageToken, spec.imagePlaceholder, spec.separator, ...spec.stopStrings, ...spec.roles.map((r) => r.trim())]
    : [];
  // Role names like "Human:" are ordinary words; only bracketed/special-looking role strings are markers.
  const special = extra.map((s) => s.trim()).filter((s) => s.length > 0 && /[<>[\]#]/.test(s));
  return [...new Set([...TEMPLATE_MARKERS, ...special])];
}

/**
 * Removes template markers (case-insensitively, until none is left, so `<s<s>>` cannot reassemble one),
 * each replaced by a space; then tidies spaces. Grounding syntax (`<p>`, `{<x><y><x><y>}`, `<delim>`) stays.
 */
export function neutralizeMarkers(text: string, markers: readonly string[] = TEMPLATE_MARKERS): string {
  const s0 = typeof text === 'string' ? text : '';
  const list = [...markers].filter((m) => m.length > 0).sort((a, b) => b.length - a.length);
  if (list.length === 0) return s0.trim();
  const re = new RegExp(list.map(escapeRe).join('|'), 'gi');
  let s = s0;
  for (let prev = ''; prev !== s; ) {
    prev = s;
    s = s.replace(re, ' ');
  }
  return s
    .replace(/[ \t]{2,}/g, ' ')
    .replace(/ *\n */g, '\n')
    .trim();
}

export interface UserTurn {
  task: TaskTag | 'chat';
  /** the text of the user turn as it goes into the prompt */
  prompt: string;
}

/**
 * The task of a message sent with a task selector that always has a value (the web page's): a tag typed at the
 * start of the message wins, the selector applies to untagged text. (A request's own `task` overrides a typed
 * tag: see userTurn.)
 */
export function selectorTask(text: string, selected: TaskTag | 'chat'): TaskTag | 'chat' {
  const typed = parseTask(text).task;
  return typed !== 'chat' ? typed : selected;
}

/**
 * The user turn for a request. MiniGPT-v2: `task` (when given) or a leading `[tag]` in the text selects the
 * task, and the canonical prompt is built as the upstream demo's task buttons do. Other architectures have
 * no task tags: the text goes in as written. Empty text becomes DEFAULT_PROMPT.
 */
export function userTurn(text: string, task: TaskTag | 'chat' | undefined, opts: { tasks: boolean; markers: readonly string[] }): UserTurn {
  const clean = neutralizeMarkers(text, opts.markers);
  if (!opts.tasks) return { task: 'chat', prompt: clean || DEFAULT_PROMPT };
  const chosen: TaskTag | 'chat' = task !== undefined && (task === 'chat' || isTask(task)) ? task : parseTask(clean).task;
  const prompt = taskPrompt(chosen, clean);
  return { task: chosen, prompt: prompt || DEFAULT_PROMPT };
}
