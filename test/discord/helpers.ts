// Shared by the Discord tests: the whole stack (fake Discord <- real discord.js adapter -> real
// ConversationManager -> the demo model package), test images and small waiting helpers.
import type { ConversationKey } from '../../src/conversation/index.js';
import { join } from 'node:path';
import sharp from 'sharp';
import { MiniGPT } from '../../src/inference/model.js';
import { ConversationManager } from '../../src/conversation/index.js';
import type { GenerationOptions } from '../../src/inference/generation/index.js';
import {
  startDiscordAdapter,
  type DiscordAdapter,
  type DiscordAdapterOptions,
  type DiscordConversations,
} from '../../adapters/discord/index.js';
import { FakeDiscord, type ApiAttachment, type ApiMessage, type ApiUser } from './fake-discord.js';
import { useShared, type WithLogs } from '../helpers/shared.js';

export { testPng } from '../helpers/images.js';

/** A Discord conversation's key (a server's, or '@me' for a DM). */
export function discordKey(workspace: string, channel: string, thread: string): ConversationKey {
  return { platform: 'discord', workspace, channel, thread };
}

export const ROOT = join(import.meta.dirname, '..', '..');
export const DEMO = join(ROOT, 'models', 'demo');

/** The RGB of one pixel of an encoded image. */
export async function pixel(image: Buffer, x: number, y: number): Promise<[number, number, number]> {
  const { data, info } = await sharp(image).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const i = (y * info.width + x) * info.channels;
  return [data[i], data[i + 1], data[i + 2]];
}

export interface World {
  fake: FakeDiscord;
  guildId: string;
  general: string;
  other: string;
  alice: ApiUser;
  bob: ApiUser;
}

export async function startFake(): Promise<World> {
  const fake = await new FakeDiscord().start();
  const { guildId, channelIds } = fake.addGuild('Test server', ['general', 'other']);
  return { fake, guildId, general: channelIds[0], other: channelIds[1], alice: fake.user('alice'), bob: fake.user('bob') };
}

/** The fake Discord (startFake's world), started before the tests of the file or describe block it is called in. */
export function useFakeDiscord(): World {
  return useShared<World>(
    async (s) => {
      Object.assign(s, await startFake());
    },
    async (s) => {
      await s.fake?.close();
    },
  );
}

export interface Stack {
  w: World;
  fake: FakeDiscord;
  model: MiniGPT;
  manager: ConversationManager;
  adapter: DiscordAdapter;
}

export interface StackOptions {
  /** adapter options over startAdapter's */
  adapter?: Partial<DiscordAdapterOptions>;
  /** the manager's generation defaults, over 120 new tokens at temperature 0 */
  defaults?: Partial<GenerationOptions>;
  /** runs on the model before the manager and the adapter start (to inject faults) */
  prepare?(model: MiniGPT): void;
}

/**
 * The whole stack: the fake Discord, the demo model with its answer forced to `forcedAnswer`, a manager and the
 * adapter, whose log lines go to `logs`. Close it with closeStack (what started is closed if a later part fails).
 */
export async function startStack(forcedAnswer: string, logs: string[], opts: StackOptions = {}): Promise<Stack> {
  const s: Partial<Stack> = {};
  try {
    s.w = await startFake();
    s.fake = s.w.fake;
    s.model = await MiniGPT.load(DEMO, { provider: 'cpu', threads: 1, forcedAnswer });
    opts.prepare?.(s.model);
    s.manager = new ConversationManager({ model: s.model, defaults: { maxNewTokens: 120, temperature: 0, ...opts.defaults } });
    s.adapter = await startAdapter(s.fake, s.manager, logs, opts.adapter);
    return s as Stack;
  } catch (err) {
    await closeStack(s);
    throw err;
  }
}

/** Closes what a stack has started: the adapter, the manager, the model, the fake Discord. */
export async function closeStack(s: Partial<Stack> | undefined): Promise<void> {
  await s?.adapter?.close();
  await s?.manager?.close();
  await s?.model?.close();
  await s?.fake?.close();
}

/** A stack that the tests of a file (or describe block) share. */
export type SharedStack = WithLogs<Stack>;

/** startStack's stack, started before the tests of the file or describe block it is called in and closed after them. */
export function useStack(forcedAnswer: string, opts: StackOptions = {}): SharedStack {
  const logs: string[] = [];
  const start = async (s: Partial<SharedStack>) => {
    Object.assign(s, await startStack(forcedAnswer, logs, opts));
  };
  return useShared<SharedStack>(start, closeStack, { logs });
}

/** The fake Discord and an adapter on it that the tests of a file (or describe block) share. */
export type SharedAdapter = WithLogs<{ w: World; adapter: DiscordAdapter }>;

/**
 * The fake Discord and the adapter over `manager()` (read when the adapter starts, so a manager that the file's own
 * beforeAll makes will do), with `options` alone over the connection (not startAdapter's test defaults), started
 * before the tests of the file or describe block it is called in and closed after them.
 */
export function useDiscordAdapter(manager: () => DiscordConversations, options: Partial<DiscordAdapterOptions>): SharedAdapter {
  const logs: string[] = [];
  return useShared<SharedAdapter>(
    async (s) => {
      s.w = await startFake();
      const { fake } = s.w;
      s.adapter = await startDiscordAdapter({
        manager: manager(),
        token: fake.token,
        apiUrl: fake.apiUrl,
        log: (l) => logs.push(l),
        ...options,
      });
    },
    async (s) => {
      await s.adapter?.close();
      await s.w?.fake.close();
    },
    { logs },
  );
}

export async function startAdapter(
  fake: FakeDiscord,
  manager: DiscordConversations,
  logs: string[],
  extra: Partial<DiscordAdapterOptions> = {},
): Promise<DiscordAdapter> {
  return startDiscordAdapter({
    manager,
    token: fake.token,
    appId: fake.appId,
    apiUrl: fake.apiUrl,
    log: (l) => logs.push(l),
    editIntervalMs: 150,
    // the tests watch streaming at test speed; the wait before the first text has its own test
    firstTextWaitMs: 0,
    rateLimit: false,
    ...extra,
  });
}

/**
 * The message a start that must fail fails with. One that succeeds is closed and fails the test with one line:
 * `expect(start).rejects` would print the adapter it resolved to, a whole discord.js client (cached guilds,
 * image bytes), which took vitest's worker past its heap instead of reporting the failure.
 */
export async function startError(start: Promise<DiscordAdapter>): Promise<string> {
  const outcome = await start.then(
    async (adapter) => {
      await adapter.close();
      return undefined;
    },
    (err: unknown) => (err instanceof Error ? err.message : String(err)),
  );
  if (outcome === undefined) throw new Error('the adapter started, though this start had to fail');
  return outcome;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `cond` every 20 ms until it holds; rejects with `what` after `timeoutMs`. */
export async function until(cond: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** The adapter's log line saying how the request `id` (message or interaction id) ended. */
export function outcome(logs: readonly string[], id: string): string | undefined {
  return logs.find((l) => l.includes(` ${id} (`) && /: (answered|error|stopped by) /.test(l));
}

/** Waits until the adapter has finished answering request `id`; returns its log line. */
export async function answered(logs: readonly string[], id: string, timeoutMs = 30_000): Promise<string> {
  await until(() => outcome(logs, id) !== undefined, `the answer to ${id}; log:\n${logs.join('\n')}`, timeoutMs);
  return outcome(logs, id)!;
}

/** The data of the "Describe image" message command used on `target`. */
export function describeImageCommand(target: ApiMessage) {
  return { id: '2', name: 'Describe image', type: 3, target_id: target.id, resolved: { messages: { [target.id]: target } } };
}

/** The data of a /describe slash command with the options given (in Discord's order); an image is also resolved. */
export function describeCommand(opts: { image?: ApiAttachment; prompt?: string; task?: string; temperature?: number }) {
  const options: { name: string; type: number; value: string | number }[] = [];
  if (opts.image) options.push({ name: 'image', type: 11, value: opts.image.id });
  if (opts.prompt !== undefined) options.push({ name: 'prompt', type: 3, value: opts.prompt });
  if (opts.task !== undefined) options.push({ name: 'task', type: 3, value: opts.task });
  if (opts.temperature !== undefined) options.push({ name: 'temperature', type: 10, value: opts.temperature });
  return {
    id: '1',
    name: 'describe',
    type: 1,
    options,
    ...(opts.image ? { resolved: { attachments: { [opts.image.id]: opts.image } } } : {}),
  };
}

/** Dispatches a /describe from alice in #general whose `token` Discord does not know (an expired interaction). */
export function dispatchUnknownInteraction(w: World, token: string): void {
  w.fake.dispatch('INTERACTION_CREATE', {
    id: w.fake.snowflake(),
    application_id: w.fake.appId,
    type: 2,
    token,
    version: 1,
    app_permissions: '0',
    locale: 'en-US',
    entitlements: [],
    authorizing_integration_owners: {},
    channel: w.fake.channel(w.general),
    channel_id: w.general,
    guild_id: w.guildId,
    member: { user: w.alice, roles: [], joined_at: new Date().toISOString(), deaf: false, mute: false, flags: 0, permissions: '0' },
    data: { id: '1', name: 'describe', type: 1, options: [] },
  });
}

/** The bot's messages in a channel that everyone sees (not the ephemeral replies to one user). */
export function publicBotMessages(fake: FakeDiscord, channelId: string): ApiMessage[] {
  return fake.messagesIn(channelId).filter((m) => m.author.id === fake.bot.id && !((m.flags ?? 0) & 64));
}

/** A message's first button (Stop while an answer is written, Regenerate once it was given in full). */
export function firstButton(m: ApiMessage | undefined) {
  return (m?.components as any[] | undefined)?.[0]?.components?.[0];
}
