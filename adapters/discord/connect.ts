// Connecting the Discord adapter: the discord.js client (intents, partials, no pings), the wait for READY, and
// the login and gateway failures that no retry can fix, told as one sentence without the token.
import { createHash } from 'node:crypto';
import { Client, Events, GatewayIntentBits, Partials, REST, RESTEvents, Routes } from 'discord.js';
import { ShardsTakenError, type ShardLease } from '../shared/shard-lease.js';
import { describeError } from '../shared/errors.js';
import { DiscordBot, type DiscordAdapter, type DiscordAdapterOptions } from './adapter.js';
import { redact } from './limits.js';

/** Gateway close codes after which discord.js gives up (no reconnect): authentication failed, invalid shard,
 * sharding required, invalid API version, invalid intents, disallowed intents. */
const FATAL_CLOSE_CODES = new Set([4004, 4010, 4011, 4012, 4013, 4014]);
const TOKEN_HELP = 'check the bot token (Discord Developer Portal > your application > Bot > Reset Token)';
const INTENTS_HELP = 'enable the Message Content intent (Discord Developer Portal > your application > Bot > Privileged Gateway Intents)';

/**
 * A login or gateway failure that no retry can fix, as one sentence for whoever runs the bot (no token in
 * it); undefined for other errors. `closeCode`: the gateway's close code, when that is what is known.
 */
export function fatalDiscordError(err: unknown, closeCode?: number): string | undefined {
  const e = (err ?? {}) as { code?: unknown; status?: unknown; message?: unknown };
  const message = typeof e.message === 'string' ? e.message : '';
  if (e.code === 'TokenInvalid' || e.status === 401) return `Discord refused DISCORD_TOKEN (HTTP 401 Unauthorized): ${TOKEN_HELP}`;
  if (closeCode === 4004 || /^Authentication failed/i.test(message))
    return `Discord refused DISCORD_TOKEN (gateway close 4004: authentication failed): ${TOKEN_HELP}`;
  if (closeCode === 4014 || /disallowed intents/i.test(message))
    return `Discord refused the bot's gateway intents (close 4014: disallowed intents): ${INTENTS_HELP}`;
  if (closeCode !== undefined && FATAL_CLOSE_CODES.has(closeCode))
    return `Discord closed the bot's gateway connection for good (close ${closeCode}${message ? `: ${message}` : ''})`;
  if (/^(Invalid shard|Sharding is required|Used an invalid API version|Used invalid intents)/.test(message))
    return `Discord closed the bot's gateway connection for good (${message})`;
  return undefined;
}

/** The shards Discord recommends for the bot (GET /gateway/bot), all of them: what discord.js's `'auto'` connects. */
async function recommendedShards(token: string, apiUrl: string | undefined): Promise<{ ids: number[]; count: number }> {
  const rest = new REST(apiUrl ? { api: apiUrl.replace(/\/+$/, '') } : {}).setToken(token);
  try {
    const { shards } = (await rest.get(Routes.gatewayBot())) as { shards?: unknown };
    const count = typeof shards === 'number' && Number.isInteger(shards) && shards >= 1 ? shards : 1;
    return { ids: Array.from({ length: count }, (_, i) => i), count };
  } finally {
    rest.clearHashSweeper();
    rest.clearHandlerSweeper();
  }
}

/**
 * With `opts.shardLeases` (front ends on Redis): holds this front end's shards before it connects them (the
 * recommended ones when DISCORD_SHARDS is unset, as discord.js's 'auto' would connect), so that a second front end
 * connecting any of them is refused instead of answering every message a second time.
 */
async function holdShards(
  opts: DiscordAdapterOptions,
  token: string,
): Promise<{ shards: { ids: readonly number[]; count: number } | undefined; lease: ShardLease | undefined }> {
  if (!opts.shardLeases) return { shards: opts.shards, lease: undefined };
  let shards = opts.shards;
  try {
    shards ??= await recommendedShards(token, opts.apiUrl);
  } catch (err) {
    throw new Error(redact(fatalDiscordError(err) ?? `Discord: could not ask for the bot's shard count: ${describeError(err)}`, [token]));
  }
  const bot = createHash('sha256').update(token).digest('hex').slice(0, 16);
  try {
    return { shards, lease: await opts.shardLeases.claim({ bot, ids: shards.ids, count: shards.count }) };
  } catch (err) {
    if (!(err instanceof ShardsTakenError) || opts.shards) throw err;
    // DISCORD_SHARDS unset: this front end connects every shard, so the advice differs.
    const { kind, shard, count, holder } = err.why;
    const every = shards.count === 1 ? "the bot's only shard" : `all ${shards.count} of the bot's shards`;
    const advice = `DISCORD_SHARDS is unset, so this front end connects ${every}: run Discord on one front end, or split the bot's shards between front ends with DISCORD_SHARDS and DISCORD_SHARD_COUNT`;
    throw new ShardsTakenError(
      kind === 'count'
        ? `another front end splits this Discord bot into ${count} shards (${holder}), this one into the ${shards.count} Discord recommends; ${advice}`
        : `Discord shard ${shard} of ${count} is connected by another front end (${holder}): each shard must be connected by one front end only, or both answer every message; ${advice}`,
      err.why,
    );
  }
}

/**
 * Connects to Discord and answers until `close()`. Resolves when the gateway says READY; rejects (and
 * disconnects) when login fails or READY does not come in time.
 */
export async function startDiscordAdapter(opts: DiscordAdapterOptions): Promise<DiscordAdapter> {
  if (!opts.token?.trim()) throw new Error('Discord: no bot token (DISCORD_TOKEN)');
  const token = opts.token.trim();
  const sink = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const log = (line: string) => sink(redact(line, [token]));
  const { shards, lease } = await holdShards(opts, token);
  const client = new Client({
    intents: [
      GatewayIntentBits.Guilds,
      GatewayIntentBits.GuildMessages,
      GatewayIntentBits.MessageContent,
      GatewayIntentBits.DirectMessages,
    ],
    // As many shards as Discord recommends (GET /gateway/bot): one for most bots; a bot in over 2500 guilds must
    // shard, or Discord closes its connection (4011). Or the ones given of a given count, the rest on other
    // front ends.
    ...(shards ? { shards: [...shards.ids], shardCount: shards.count } : { shards: 'auto' as const }),
    // DM channels are not cached before their first message: without this their messages would be dropped. A message
    // not in the cache (sent before the bot connected) is edited all the same: its MESSAGE_UPDATE is kept (edits.ts).
    partials: [Partials.Channel, Partials.Message],
    // Model output never pings anyone.
    allowedMentions: { parse: [], repliedUser: false },
    ...(opts.apiUrl ? { rest: { api: opts.apiUrl.replace(/\/+$/, '') } } : {}),
  });
  client.on(Events.Error, (err) => log(`discord: client error: ${describeError(err)}`));
  // A fatal one (a refused token) is reported once, by the failed login or by `fatal`, not here as well.
  client.on(Events.ShardError, (err) => {
    if (!fatalDiscordError(err)) log(`discord: gateway error: ${describeError(err)}`);
  });
  client.on(Events.Warn, (w) => log(`discord: ${w}`));
  const adapter = new DiscordBot(client as Client<true>, opts, log);
  let connected = false;
  client.on(Events.ShardDisconnect, (ev) => {
    if (connected && FATAL_CLOSE_CODES.has(ev.code)) adapter.fail(redact(fatalDiscordError(undefined, ev.code)!, [token]));
  });
  // A token reset while the bot runs shows on REST first (the gateway stays up until its next IDENTIFY); discord.js then
  // drops the token and fails every call: the bot stops and says why, instead of running on unable to answer.
  // (Interaction webhooks are sent without it: their 401 is an expired interaction, not the token.)
  client.rest.on(RESTEvents.Response, (request, response) => {
    if (connected && response.status === 401 && request.data.auth !== false)
      adapter.fail(`Discord refused DISCORD_TOKEN (HTTP 401 on ${request.method.toUpperCase()} ${request.route}): ${TOKEN_HELP}`);
  });
  const timeoutMs = opts.readyTimeoutMs ?? 30_000;
  let timer: NodeJS.Timeout | undefined;
  try {
    const ready = new Promise<void>((resolve) => client.once(Events.ClientReady, () => resolve()));
    await Promise.race([
      client.login(token).then(() => ready),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`Discord: no READY from the gateway within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
  } catch (err) {
    await client.destroy();
    await lease?.release();
    throw new Error(redact(fatalDiscordError(err) ?? `Discord: could not connect: ${describeError(err)}`, [token]));
  } finally {
    clearTimeout(timer);
  }
  connected = true;
  if (lease) {
    const hold = lease;
    adapter.onClosed(() => hold.release());
    // Disconnected at once, not when the owner gets to it: meanwhile both front ends would answer.
    void hold.lost.then((reason) => {
      log(`discord: ${reason}`);
      adapter.fail(reason);
      void adapter.close();
    });
  }
  // (with every shard Discord recommends: the ids and count it connected with)
  const ids = shards?.ids ?? client.options.shards;
  const count = shards?.count ?? client.options.shardCount;
  if (Array.isArray(ids) && typeof count === 'number') adapter.sweep({ ids, count });
  else log('discord: the shards are not known; servers the bot was removed from while offline go after the retention time');
  const app = client.application?.id;
  if (opts.appId && app && opts.appId !== app)
    log(`discord: DISCORD_APP_ID=${opts.appId} but the token belongs to application ${app}; using ${app}`);
  const which = shards && (opts.shards || shards.count > 1) ? `, shards ${shards.ids.join(',')} of ${shards.count}` : '';
  const held = lease ? ', held in Redis' : '';
  log(`discord: connected as ${client.user?.tag ?? '?'} (id ${client.user?.id}, ${client.guilds.cache.size} servers${which}${held})`);
  if (shards && !shards.ids.includes(0) && opts.allowDMs !== false)
    log('discord: direct messages come to shard 0 only: the front end connecting shard 0 answers them, not this one');
  return adapter;
}
