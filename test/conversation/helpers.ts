// Shared by the conversation tests: a real tiny MiniGPT-v2 package converted from the golden fixture
// (random weights: answers are nonsense, so tests assert structure, order and storage, not wording).
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll } from 'vitest';
import type Keyv from 'keyv';
import { MiniGPT } from '../../src/inference/model.js';
import type { AnswerEvent, ConversationKey } from '../../src/conversation/index.js';
import { convertTinyV2, GOLDEN_V2 as GOLDEN } from '../helpers/tiny-package.js';

export interface TinyModel {
  work: string;
  model: MiniGPT;
  dispose(): Promise<void>;
}

export async function loadTinyModel(): Promise<TinyModel> {
  const work = await mkdtemp(join(tmpdir(), 'minigpt-conv-'));
  const pkg = join(work, 'pkg');
  await convertTinyV2(pkg);
  const model = await MiniGPT.load(pkg, { provider: 'cpu' });
  return {
    work,
    model,
    dispose: async () => {
      await model.close();
      await rm(work, { recursive: true, force: true });
    },
  };
}

/**
 * The committed demo package (trained weights), loaded before the tests of one file on one thread and closed after
 * them; `use` gets the model.
 */
export function demoModelPerFile(use: (model: MiniGPT) => void): void {
  let model: MiniGPT | undefined;
  beforeAll(async () => {
    model = await MiniGPT.load(join(import.meta.dirname, '..', '..', 'models', 'demo'), { provider: 'cpu', threads: 1 });
    use(model);
  });
  afterAll(async () => {
    await model?.close();
  });
}

/**
 * The committed demo package (per file, as demoModelPerFile) with two images' embeddings: the golden image's, and
 * another made from them.
 */
export function demoModelAndImagesPerFile(use: (d: { model: MiniGPT; image: Float32Array; other: Float32Array }) => void): void {
  let model: MiniGPT;
  demoModelPerFile((m) => (model = m));
  beforeAll(async () => {
    const image = (await model.encodeImage(await goldenImage())).embeds;
    use({ model, image, other: image.map((x, i) => x * 0.5 + Math.sin(i)) });
  });
}

/** The golden test image (120x90 PNG). */
export function goldenImage(): Promise<Buffer> {
  return readFile(join(GOLDEN, 'input.png'));
}

/** A plain PNG of one colour. */
export function solidPng(width: number, height: number, rgb: [number, number, number]): Promise<Buffer> {
  return sharp({ create: { width, height, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } } })
    .png()
    .toBuffer();
}

export function key(thread: string, channel = 'c1'): ConversationKey {
  return { platform: 'web', workspace: 'local', channel, thread };
}

export async function collect(stream: AsyncIterable<AnswerEvent>): Promise<AnswerEvent[]> {
  const out: AnswerEvent[] = [];
  for await (const ev of stream) out.push(ev);
  return out;
}

export function types(events: AnswerEvent[]): string[] {
  return events.map((e) => e.type);
}

export function finalOf(events: AnswerEvent[]): Extract<AnswerEvent, { type: 'final' }> {
  const f = events.find((e) => e.type === 'final');
  if (f?.type !== 'final') throw new Error(`no final event in ${JSON.stringify(events)}`);
  return f;
}

export function errorOf(events: AnswerEvent[]): Extract<AnswerEvent, { type: 'error' }> | undefined {
  const e = events.find((ev) => ev.type === 'error');
  return e?.type === 'error' ? e : undefined;
}

export function timingsOf(events: AnswerEvent[]): Record<string, number> {
  const t = events.find((e) => e.type === 'timings');
  if (t?.type !== 'timings') throw new Error('no timings event');
  return t.timings;
}

/** Every key in a keyv store (namespace prefix removed by keyv's iterator). */
export async function storeKeys(kv: Keyv): Promise<string[]> {
  const keys: string[] = [];
  if (!kv.iterator) throw new Error('store has no iterator');
  for await (const [k] of kv.iterator(undefined)) keys.push(String(k));
  return keys.sort();
}
