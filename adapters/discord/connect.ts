// Connecting the Discord adapter: the discord.js client (intents, partials, no pings), the wait for READY, and
// the login and gateway failures that no retry can fix, told as one sentence without the token.
import { Client, Events, GatewayIntentBits, Partials } from 'discord.js';
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

/**
 * Connects to Discord and answers until `close()`. Resolves when the gateway says READY; rejects (and
 * disconnects) when login fails or READY does not come in time.
 */
export async function startDiscordAdapter(opts: DiscordAdapterOptions): Promise<DiscordAdapter> {
  if (!opts.token?.trim()) throw new Error('Discord: no bot token (DISCORD_TOKEN)');
  const token = opts.token.trim();
  const sink = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const log = (line: string) => sink(redact(line, [token]));
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
    ...(opts.shards ? { shards: [...opts.shards.ids], shardCount: opts.shards.count } : { shards: 'auto' as const }),
    // DM channels are not cached before their first message: without this their messages would be dropped.
    partials: [Partials.Channel],
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
    throw new Error(redact(fatalDiscordError(err) ?? `Discord: could not connect: ${describeError(err)}`, [token]));
  } finally {
    clearTimeout(timer);
  }
  connected = true;
  const app = client.application?.id;
  if (opts.appId && app && opts.appId !== app)
    log(`discord: DISCORD_APP_ID=${opts.appId} but the token belongs to application ${app}; using ${app}`);
  const shards = opts.shards ? `, shards ${opts.shards.ids.join(',')} of ${opts.shards.count}` : '';
  log(`discord: connected as ${client.user?.tag ?? '?'} (id ${client.user?.id}, ${client.guilds.cache.size} servers${shards})`);
  if (opts.shards && !opts.shards.ids.includes(0) && opts.allowDMs !== false)
    log('discord: direct messages come to shard 0 only: the front end connecting shard 0 answers them, not this one');
  return adapter;
}
