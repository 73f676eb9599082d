// The Discord adapter's entry points: `startDiscordAdapter(options)` and, for `minigpt serve`,
// `startDiscordFromEnv({ manager, env, log })`, which reads the DISCORD_* variables (.env.example).
import { rateLimitFromEnv, type RateLimiterFactory } from '../shared/rate-limit.js';
import type { ShardLeases } from '../shared/shard-lease.js';
import type { DiscordAdapter, DiscordAdapterOptions, DiscordConversations } from './adapter.js';
import { startDiscordAdapter } from './connect.js';

export { DEFAULT_EDIT_INTERVAL_MS, DEFAULT_RATE_LIMIT } from './adapter.js';
export { startDiscordAdapter, fatalDiscordError } from './connect.js';
export { stripBotMention } from './replies.js';
export { describeError } from '../shared/errors.js';
export type { DiscordAdapter, DiscordAdapterOptions, DiscordConversations } from './adapter.js';
export { commandDefinitions, DESCRIBE_COMMAND, DESCRIBE_IMAGE_MENU } from './commands.js';
export { answerMarkdown, splitMessage, threadName, DISCORD_MESSAGE_LIMIT } from './format.js';
export { DISCORD_CDN_HOSTS, downloadImage, downloadPolicy, allowedUrl, findImage, sniffImage, ImageInputProblem } from './images.js';
export { redact, UserRateLimiter } from './limits.js';
export { ShardsTakenError, type ShardClaim, type ShardLease, type ShardLeases } from '../shared/shard-lease.js';

export class DiscordConfigError extends Error {}

function ids(name: string, value: string | undefined): string[] {
  const list = (value ?? '')
    .split(/[\s,]+/)
    .map((s) => s.trim())
    .filter(Boolean);
  for (const id of list) if (!/^\d{5,25}$/.test(id)) throw new DiscordConfigError(`${name}: "${id}" is not a Discord id (digits)`);
  return list;
}

function flag(name: string, value: string | undefined, dflt: boolean): boolean {
  const v = value?.trim().toLowerCase();
  if (!v) return dflt;
  if (['1', 'true', 'yes', 'on'].includes(v)) return true;
  if (['0', 'false', 'no', 'off'].includes(v)) return false;
  throw new DiscordConfigError(`${name}=${value}: expected true or false`);
}

/** Discord's limit on a bot's shard count is far below this; it bounds what a typo can ask for. */
const MAX_SHARDS = 65_536;

/**
 * `DISCORD_SHARDS` (ids and ranges: `0,1,4-7`) and `DISCORD_SHARD_COUNT`, both or neither, checked: this front
 * end's shards of the bot's count. Undefined when neither is set.
 */
export function shardsFromEnv(env: NodeJS.ProcessEnv): { ids: number[]; count: number } | undefined {
  const list = env.DISCORD_SHARDS?.trim();
  const countRaw = env.DISCORD_SHARD_COUNT?.trim();
  if (!list && !countRaw) return undefined;
  if (!list || !countRaw)
    throw new DiscordConfigError(
      'DISCORD_SHARDS and DISCORD_SHARD_COUNT go together: the shards this front end connects (e.g. 0-3) of how many in all (e.g. 8)',
    );
  if (!/^\d+$/.test(countRaw) || Number(countRaw) < 1 || Number(countRaw) > MAX_SHARDS)
    throw new DiscordConfigError(`DISCORD_SHARD_COUNT=${countRaw}: expected a whole number of shards, 1 to ${MAX_SHARDS}`);
  const count = Number(countRaw);
  const ids = new Set<number>();
  for (const part of list.split(/[\s,]+/).filter(Boolean)) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) throw new DiscordConfigError(`DISCORD_SHARDS=${list}: "${part}" is not a shard id or a range (e.g. 0,1,4-7)`);
    const from = Number(m[1]);
    const to = Number(m[2] ?? m[1]);
    if (to < from) throw new DiscordConfigError(`DISCORD_SHARDS=${list}: the range ${part} runs backwards`);
    if (to >= count)
      throw new DiscordConfigError(
        `DISCORD_SHARDS=${list}: shard ${to} does not exist with DISCORD_SHARD_COUNT=${count} (ids 0 to ${count - 1})`,
      );
    for (let id = from; id <= to; id++) ids.add(id);
  }
  return { ids: [...ids].sort((a, b) => a - b), count };
}

/** `DISCORD_API_URL`, checked: an http(s) URL without query. */
export function apiUrlFromEnv(env: NodeJS.ProcessEnv): string | undefined {
  const raw = env.DISCORD_API_URL?.trim();
  if (!raw) return undefined;
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new DiscordConfigError(`DISCORD_API_URL=${raw}: not a URL (expected e.g. https://discord.com/api)`);
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:') throw new DiscordConfigError(`DISCORD_API_URL=${raw}: expected an http(s) URL`);
  if (u.search || u.hash) throw new DiscordConfigError(`DISCORD_API_URL=${raw}: no query or fragment expected`);
  return raw.replace(/\/+$/, '');
}

/**
 * Adapter options from the environment:
 *   DISCORD_TOKEN (required), DISCORD_APP_ID, DISCORD_API_URL,
 *   DISCORD_ALLOWED_GUILDS, DISCORD_ALLOWED_CHANNELS (comma-separated ids; unset: everywhere),
 *   DISCORD_ALLOW_DMS (default true), DISCORD_RATE_LIMIT (`N/SECONDS` per user, default 6/60; `0`: none),
 *   DISCORD_SHARDS with DISCORD_SHARD_COUNT (this front end's shards; unset: all, as Discord recommends).
 */
export function discordOptionsFromEnv(env: NodeJS.ProcessEnv): Omit<DiscordAdapterOptions, 'manager' | 'log'> {
  const token = env.DISCORD_TOKEN?.trim();
  if (!token) throw new DiscordConfigError('DISCORD_TOKEN is not set');
  const rateLimit = rateLimitFromEnv('DISCORD_RATE_LIMIT', env.DISCORD_RATE_LIMIT, (m) => new DiscordConfigError(m));
  const appId = env.DISCORD_APP_ID?.trim();
  if (appId && !/^\d{5,25}$/.test(appId)) throw new DiscordConfigError(`DISCORD_APP_ID=${appId}: not a Discord id (digits)`);
  const apiUrl = apiUrlFromEnv(env);
  const shards = shardsFromEnv(env);
  return {
    token,
    ...(appId ? { appId } : {}),
    ...(apiUrl ? { apiUrl } : {}),
    allowedGuilds: ids('DISCORD_ALLOWED_GUILDS', env.DISCORD_ALLOWED_GUILDS),
    allowedChannels: ids('DISCORD_ALLOWED_CHANNELS', env.DISCORD_ALLOWED_CHANNELS),
    allowDMs: flag('DISCORD_ALLOW_DMS', env.DISCORD_ALLOW_DMS, true),
    ...(rateLimit !== undefined ? { rateLimit } : {}),
    ...(shards ? { shards } : {}),
  };
}

/**
 * For `minigpt serve`'s adapter list: starts the adapter from the environment. A refused token fails the start
 * with one sentence (no token in it); `fatal` tells serve when Discord disconnects the bot for good later.
 */
export async function startDiscordFromEnv(ctx: {
  manager: DiscordConversations;
  env: NodeJS.ProcessEnv;
  log: (line: string) => void;
  rateLimiter?: RateLimiterFactory;
  shardLeases?: ShardLeases;
}): Promise<{ name: string; close(): Promise<void>; fatal: Promise<Error>; adapter: DiscordAdapter }> {
  const adapter = await startDiscordAdapter({
    ...discordOptionsFromEnv(ctx.env),
    manager: ctx.manager,
    log: ctx.log,
    ...(ctx.rateLimiter ? { rateLimiter: ctx.rateLimiter } : {}),
    ...(ctx.shardLeases ? { shardLeases: ctx.shardLeases } : {}),
  });
  return { name: 'discord', adapter, fatal: adapter.fatal, close: () => adapter.close() };
}
