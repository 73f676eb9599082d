// `minigpt register-commands`: sends the Discord application commands (/describe and the "Describe image"
// message context menu) to Discord, globally or for one guild (DISCORD_GUILD_ID: instant, for testing;
// global commands can take a while to appear).
import { REST, Routes } from 'discord.js';
import { commandDefinitions } from './commands.js';
import { apiUrlFromEnv, DiscordConfigError } from './index.js';
import { redact } from './limits.js';

export interface RegisterOptions {
  token: string;
  /** default: asked from Discord (`GET /applications/@me`) */
  appId?: string;
  /** register for this guild only */
  guildId?: string;
  /** DISCORD_API_URL */
  apiUrl?: string;
}

export interface RegisterResult {
  appId: string;
  scope: 'global' | { guild: string };
  /** the names Discord now has */
  commands: string[];
}

export async function registerCommands(opts: RegisterOptions): Promise<RegisterResult> {
  const token = opts.token.trim();
  const rest = new REST(opts.apiUrl ? { api: opts.apiUrl } : {}).setToken(token);
  try {
    const appId = opts.appId ?? ((await rest.get(Routes.currentApplication())) as { id: string }).id;
    const route = opts.guildId ? Routes.applicationGuildCommands(appId, opts.guildId) : Routes.applicationCommands(appId);
    const saved = (await rest.put(route, { body: commandDefinitions() })) as Array<{ name: string }>;
    return { appId, scope: opts.guildId ? { guild: opts.guildId } : 'global', commands: saved.map((c) => c.name) };
  } catch (err) {
    throw new Error(redact(`registering the Discord commands failed: ${(err as Error).message}`, [token]));
  }
}

/** The CLI action: options from the environment (DISCORD_TOKEN, DISCORD_APP_ID, DISCORD_GUILD_ID, DISCORD_API_URL). */
export async function registerCommandsFromEnv(
  env: NodeJS.ProcessEnv,
  o: { guild?: string; global?: boolean },
  log: (line: string) => void,
): Promise<RegisterResult> {
  const token = env.DISCORD_TOKEN?.trim();
  if (!token) throw new DiscordConfigError('DISCORD_TOKEN is not set (the bot token from the Discord developer portal, Bot page)');
  const appId = env.DISCORD_APP_ID?.trim() || undefined;
  const guildId = o.global ? undefined : o.guild?.trim() || env.DISCORD_GUILD_ID?.trim() || undefined;
  for (const [name, v] of [
    ['DISCORD_APP_ID', appId],
    ['guild id', guildId],
  ] as const) {
    if (v && !/^\d{5,25}$/.test(v)) throw new DiscordConfigError(`${name} ${v}: not a Discord id (digits)`);
  }
  const apiUrl = apiUrlFromEnv(env);
  const r = await registerCommands({ token, appId, guildId, apiUrl });
  log(
    `registered ${r.commands.map((c) => (c.includes(' ') ? `"${c}"` : `/${c}`)).join(', ')} for application ${r.appId} ` +
      (r.scope === 'global' ? 'globally (may take up to an hour to show everywhere)' : `in guild ${r.scope.guild}`),
  );
  return r;
}
