// Starting the Slack adapter: the bot token checked (auth.test) before any event is taken, Bolt's App in HTTP
// mode (HTTPReceiver on /slack/events, signatures verified) or Socket Mode, and Bolt's log lines through the
// adapter's redacting log.
import { App, LogLevel, webApi, type Logger } from '@slack/bolt';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { redactingLog } from '../shared/errors.js';
import { SlackBot } from './bot.js';
import { redact } from './format.js';
import {
  DEFAULT_SLACK_PORT,
  normaliseApiUrl,
  SLACK_EVENTS_PATH,
  SlackConfigError,
  type SlackAdapter,
  type SlackAdapterOptions,
} from './options.js';
import { describeSlackError, type RefusedToken, refusedTokenLine, slackErrorCode, watchTokens } from './errors.js';

type BoltApp = InstanceType<typeof App>;

function boltLogger(log: (line: string) => void, secrets: string[]): Logger {
  let level = LogLevel.INFO;
  const rank = { debug: 0, info: 1, warn: 2, error: 3 } as const;
  const write = (lvl: 'debug' | 'info' | 'warn' | 'error', msg: unknown[]) => {
    if (rank[lvl] < rank[level]) return;
    const text = msg.map((m) => (m instanceof Error ? m.message : typeof m === 'string' ? m : safeJson(m))).join(' ');
    log(redact(`slack: [bolt ${lvl}] ${text}`, secrets));
  };
  return {
    debug: (...m: unknown[]) => write('debug', m),
    info: (...m: unknown[]) => write('info', m),
    warn: (...m: unknown[]) => write('warn', m),
    error: (...m: unknown[]) => write('error', m),
    setLevel: (l) => {
      level = l;
    },
    getLevel: () => level,
    setName: () => {},
  };
}

function safeJson(v: unknown): string {
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

/**
 * Starts the Slack adapter. Resolves once the app is reachable (HTTP server listening or socket connected);
 * rejects on a refused bot token or missing settings.
 */
export async function startSlackAdapter(opts: SlackAdapterOptions): Promise<SlackAdapter> {
  const botToken = opts.botToken?.trim();
  if (!botToken) throw new SlackConfigError('SLACK_BOT_TOKEN is empty');
  const appToken = opts.appToken?.trim() || undefined;
  const signingSecret = opts.signingSecret?.trim() || undefined;
  if (!appToken && !signingSecret) {
    throw new SlackConfigError(
      'SLACK_BOT_TOKEN is set but neither SLACK_SIGNING_SECRET (HTTP mode, events on /slack/events) nor SLACK_APP_TOKEN (Socket Mode) is: set one of them',
    );
  }
  const secrets = [botToken, appToken ?? '', signingSecret ?? ''];
  const log = redactingLog(opts.log, (line) => redact(line, secrets));
  const apiUrl = normaliseApiUrl(opts.apiUrl);
  const logger = boltLogger(log, secrets);
  // (a token refused later, while the bot runs, stops the adapter: `fatal`)
  let refused: (r: RefusedToken) => void = () => {};
  const clientOptions: webApi.WebClientOptions = {
    ...(apiUrl ? { slackApiUrl: apiUrl } : {}),
    adapter: watchTokens({ bot: botToken, ...(appToken ? { app: appToken } : {}) }, (r) => refused(r)),
    logger,
    retryConfig: { retries: 2, factor: 2, minTimeout: 500, maxTimeout: 4000 },
    timeout: 30_000,
  };

  // Who the bot is (and whether the token works) before taking events.
  const probe = new webApi.WebClient(botToken, clientOptions);
  let auth: webApi.AuthTestResponse;
  try {
    auth = await probe.auth.test();
  } catch (err) {
    throw new SlackConfigError(`Slack refused SLACK_BOT_TOKEN (auth.test: ${describeSlackError(err)})`, { cause: err });
  }
  const botUserId = auth.user_id ?? '';
  const botId = auth.bot_id;

  const mode: 'http' | 'socket' = appToken ? 'socket' : 'http';
  const app: BoltApp = new App({
    token: botToken,
    botId,
    botUserId,
    tokenVerificationEnabled: false,
    logger,
    logLevel: LogLevel.INFO,
    clientOptions,
    ...(mode === 'socket'
      ? // a copy: the Socket Mode client changes its options' retry settings for its own reconnects
        { socketMode: true, appToken, installerOptions: { clientOptions: { ...clientOptions } } }
      : { signingSecret, endpoints: SLACK_EVENTS_PATH }),
  });
  const adapter = new SlackBot(app, opts, { botToken, botUserId, botName: auth.user ?? 'minigpt', apiUrl, log });
  refused = (r) => adapter.fail(refusedTokenLine(r));
  adapter.register();
  await adapter.serveStops();

  let url: string | undefined;
  let port: number | undefined;
  try {
    if (mode === 'http') {
      const wanted = opts.port ?? DEFAULT_SLACK_PORT;
      const server = (await app.start(opts.host ? { port: wanted, host: opts.host } : { port: wanted })) as unknown as Server;
      port = (server.address() as AddressInfo).port;
      const host = opts.host && opts.host !== '0.0.0.0' && opts.host !== '::' ? opts.host : 'localhost';
      url = `http://${host.includes(':') ? `[${host}]` : host}:${port}${SLACK_EVENTS_PATH}`;
      log(`slack: HTTP mode, events on ${url} (bot <@${botUserId}>)`);
    } else {
      await app.start();
      log(`slack: Socket Mode connected (bot <@${botUserId}>)`);
    }
  } catch (err) {
    await app.stop().catch(() => {});
    await opts.sharedStops?.close().catch(() => {});
    // A refused app token says which variable is wrong (Bolt's own error names neither).
    const code = mode === 'socket' ? slackErrorCode(err) : undefined;
    if (code && ['invalid_auth', 'not_authed', 'token_revoked', 'account_inactive', 'not_allowed_token_type'].includes(code)) {
      throw new SlackConfigError(`Slack refused SLACK_APP_TOKEN (apps.connections.open: ${code})`, { cause: err });
    }
    throw err;
  }
  return {
    name: 'slack',
    mode,
    ...(url ? { url } : {}),
    ...(port !== undefined ? { port } : {}),
    botUserId,
    fatal: adapter.fatal,
    close: () => adapter.close(),
  };
}
