// Shared by the Slack tests: the whole stack (fake Slack <- real Bolt adapter -> real ConversationManager -> the demo
// model package), images, pixels, and the bot's messages in the fake.
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import sharp from 'sharp';
import { MiniGPT } from '../../src/inference/model.js';
import { ConversationManager } from '../../src/conversation/index.js';
import type { GenerationOptions } from '../../src/inference/generation/index.js';
import {
  startSlackAdapter,
  type SlackAdapter,
  type SlackAdapterOptions,
  type SlackConversationManager,
} from '../../adapters/slack/index.js';
import { FakeSlack, type FakeMessage } from './fake-slack.js';
import { useShared, type WithLogs } from '../helpers/shared.js';

export { squarePng } from '../helpers/images.js';

const DEMO = join(import.meta.dirname, '..', '..', 'models', 'demo');

/** The answer every test model gives: one grounded phrase with one box (20..70 % of each side). */
export const FORCED = '<p>green square</p> {<20><20><70><70>} on a grey background';
export const FORCED_BOX = { x1: 20, y1: 20, x2: 70, y2: 70 };

/** The real Slack adapter over HTTP against `fake` on loopback (the fake sends its events to it); `extra` over that. */
export async function startSlack(
  fake: FakeSlack,
  manager: SlackConversationManager,
  extra: Partial<SlackAdapterOptions> = {},
): Promise<SlackAdapter> {
  const adapter = await startSlackAdapter({
    manager,
    botToken: fake.botToken,
    signingSecret: fake.signingSecret,
    port: 0,
    host: '127.0.0.1',
    apiUrl: fake.apiUrl,
    log: () => {},
    // (the tests ask far more often than a user may; test/slack/rate-limit.test.ts tests the limit)
    rateLimit: false,
    ...extra,
  });
  fake.appUrl = adapter.url;
  return adapter;
}

/** The real Slack adapter in Socket Mode against `fake` (set `fake.transport = 'socket'` first); `extra` over that. */
export function startSlackSocket(
  fake: FakeSlack,
  manager: SlackConversationManager,
  extra: Partial<SlackAdapterOptions> = {},
): Promise<SlackAdapter> {
  return startSlackAdapter({
    manager,
    botToken: fake.botToken,
    appToken: fake.appToken,
    apiUrl: fake.apiUrl,
    log: () => {},
    rateLimit: false,
    ...extra,
  });
}

/** The fake Slack and an adapter on it that the tests of a file (or describe block) share. */
export type SharedSlackAdapter = WithLogs<{ fake: FakeSlack; adapter: SlackAdapter }>;

/**
 * The fake Slack and startSlack's adapter over `manager()` (read when the adapter starts, so a manager that the
 * file's own beforeAll makes will do) with `options`, started before the tests of the file or describe block it is
 * called in and closed after them.
 */
export function useSlackAdapter(manager: () => SlackConversationManager, options: Partial<SlackAdapterOptions>): SharedSlackAdapter {
  const logs: string[] = [];
  return useShared<SharedSlackAdapter>(
    async (s) => {
      s.fake = await FakeSlack.start();
      s.adapter = await startSlack(s.fake, manager(), { log: (l) => logs.push(l), ...options });
    },
    closeSlack,
    { logs },
  );
}

/** Closes what a Slack stack has started: the adapter, the fake Slack, then the manager and the model if any. */
async function closeSlack(s: Partial<SlackStack>): Promise<void> {
  await s.adapter?.close();
  await s.fake?.close();
  await s.manager?.close();
  await s.model?.close();
}

export type SlackStack = WithLogs<{ model: MiniGPT; manager: ConversationManager; fake: FakeSlack; adapter: SlackAdapter }>;

export interface SlackStackOptions {
  /** the manager's generation defaults */
  defaults?: Partial<GenerationOptions>;
  /** the model's inference threads (onnxruntime's own choice where not given) */
  threads?: number;
  /** starts the adapter against the fake, logging with `log`; startSlack's HTTP mode with only `log` where not given */
  adapter?(fake: FakeSlack, manager: ConversationManager, log: (line: string) => void): Promise<SlackAdapter>;
}

/**
 * The demo model with its answer forced to `forcedAnswer`, a manager, the fake Slack and the adapter, started before
 * the tests of the file or describe block it is called in and closed after them (see useShared for when its
 * fields are there).
 */
export function useSlackStack(forcedAnswer: string, opts: SlackStackOptions = {}): SlackStack {
  const logs: string[] = [];
  const log = (line: string) => logs.push(line);
  const start = opts.adapter ?? ((fake, manager) => startSlack(fake, manager, { log }));
  return useShared<SlackStack>(
    async (s) => {
      s.model = await MiniGPT.load(DEMO, { provider: 'cpu', threads: opts.threads, forcedAnswer });
      s.manager = new ConversationManager({ model: s.model, defaults: opts.defaults });
      s.fake = await FakeSlack.start();
      s.adapter = await start(s.fake, s.manager, log);
    },
    closeSlack,
    { logs },
  );
}

/** A plain PNG of one colour. */
export function solidPng(width: number, height: number, hex: string): Promise<Buffer> {
  return sharp({ create: { width, height, channels: 3, background: hex } })
    .png()
    .toBuffer();
}

/** Noise, so that the PNG does not compress (for size-limit tests). */
export function noisePng(width: number, height: number): Promise<Buffer> {
  const raw = Buffer.alloc(width * height * 3);
  let x = 12345;
  for (let i = 0; i < raw.length; i++) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    raw[i] = x >> 16;
  }
  return sharp(raw, { raw: { width, height, channels: 3 } })
    .png({ compressionLevel: 0 })
    .toBuffer();
}

export function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

export interface Pixels {
  width: number;
  height: number;
  at(x: number, y: number): [number, number, number];
}

export async function pixels(encoded: Buffer): Promise<Pixels> {
  const { data, info } = await sharp(encoded).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return {
    width: info.width,
    height: info.height,
    at: (x, y) => {
      const i = (y * info.width + x) * info.channels;
      return [data[i], data[i + 1], data[i + 2]];
    },
  };
}

/** The bot's text messages (not file shares) in a thread, the thread's root included when the bot posted it. */
export function textReplies(fake: FakeSlack, channel: string, thread?: string): FakeMessage[] {
  return fake.botMessages(channel, thread).filter((m) => !m.files);
}

/** The bot's file shares in a thread. */
export function fileReplies(fake: FakeSlack, channel: string, thread?: string): FakeMessage[] {
  return fake.botMessages(channel, thread).filter((m) => m.files && m.files.length > 0);
}

/** Waits until the bot has posted `n` annotated images in the thread (each full answer ends with one). */
export function waitForAnswers(fake: FakeSlack, channel: string, thread: string | undefined, n: number): Promise<FakeMessage[]> {
  return fake.waitFor(
    () => {
      const f = fileReplies(fake, channel, thread);
      return f.length >= n ? f : undefined;
    },
    20_000,
    `${n} answer(s) in ${channel}${thread ? ` thread ${thread}` : ''}`,
  );
}

/** Waits until one of the bot's text messages in the thread matches. */
export function waitForText(fake: FakeSlack, channel: string, thread: string | undefined, re: RegExp): Promise<FakeMessage> {
  return fake.waitFor(
    () => textReplies(fake, channel, thread).find((m) => re.test(m.text)),
    20_000,
    `a reply matching ${re} in ${channel}`,
  );
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
