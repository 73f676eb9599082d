// What every scenario of `minigpt bench` works with: the loaded package, its profile, the questions asked, and
// the few helpers two or more scenarios share (a timer, a conversation's own copy of a cache, a prompt's prefix).
import type { MiniGPT } from '../../../inference/model.js';
import { CachedContext } from '../../../inference/kv-reuse.js';
import type { Turn } from '../../../inference/prompt.js';
import type { Profile } from '../profiles.js';

export interface BenchContext {
  model: MiniGPT;
  profile: Profile;
  /** progress, to stderr */
  say: (s: string) => void;
  /** the package's prompt for a conversation */
  ask: (turns: Turn[]) => string;
  /** the scenarios' image file (profiles.ts: IMAGE) */
  bytes: Uint8Array;
}

/** Eight questions of the tasks MiniGPT-v2 was trained on: the 8 conversations ask one each. */
export const QUESTIONS: readonly string[] = [
  '[grounding] describe this image in detail',
  '[refer] where is the red square',
  '[detection] circle',
  'what colour is the star',
  '[vqa] how many shapes are there',
  '[caption] give a short description',
  '[identify] {<10><20><30><40>}',
  'where is the blue triangle',
];
/** An earlier answer, repeated to build a long history. */
export const FILLER = 'the red square is left of the blue circle and above a small green triangle near the middle of the picture';

export async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const r = await fn();
  return [r, performance.now() - t0];
}

/** A conversation's own cache (the manager's are never shared), copied before the clock starts. */
export async function clone(model: MiniGPT, c: CachedContext): Promise<CachedContext> {
  return new CachedContext(await model.decoder.clone(c.kv), c.layout);
}

/** The prompt of `turns` up to where the next user message would start: what a kept cache is brought up to. */
export function prefixOf(b: BenchContext, turns: Turn[]): string {
  const MARK = '\u0000';
  const s = b.ask([...turns, { user: MARK }]);
  return s.slice(0, s.lastIndexOf(MARK)).trimEnd();
}

export function sameIds(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
