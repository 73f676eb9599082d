// The Slack adapter (docs/architecture.md): @slack/bolt events in, ConversationRequest out; AnswerEvents in,
// Slack messages out. It translates and nothing more: conversations, images and history are the manager's.
//
//   app_mention (+ files)      -> a request keyed by the mention's thread; the answer goes into that thread
//   message in a bot thread    -> a follow-up (no mention needed); a new image replaces the conversation's
//   /describe [task] prompt    -> the channel's newest image (or a linked file); the answer starts a thread
//   "Describe image" shortcut  -> the message's image; the answer goes into the message's thread
//
// HTTP mode (Bolt's HTTPReceiver on `/slack/events`, signatures verified) when a signing secret is given,
// Socket Mode when an app token is given. Every event is acknowledged at once and claimed by its event id
// (and its message by channel + ts) in the store, so a retried event is answered once.
import { App, LogLevel, webApi, type Logger } from '@slack/bolt';
import type Keyv from 'keyv';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import type {
  AnswerEvent,
  ConversationKey,
  ConversationRequest,
  ConversationState,
  TaskTag,
} from '../../src/conversation/index.js';
import { escapeMrkdwn, parseDescribe, redact, slackTextToPlain, DEFAULT_MAX_MESSAGE_CHARS } from './format.js';
import {
  FileInputError,
  SCOPE_MESSAGE,
  downloadSlackFile,
  eventFiles,
  fileLabel,
  isImageFile,
  notAnImage,
  tooLarge,
  type SlackFile,
} from './files.js';
import { SeenSet } from './dedupe.js';
import { ArrivalOrder, type ArrivalTurn } from '../shared/arrival-order.js';
import { ThreadReply, describeError, slackErrorCode } from './reply.js';
import { LIMITS } from '../../src/conversation/limits.js';

type WebClient = webApi.WebClient;
type BoltApp = InstanceType<typeof App>;

export { answerChunks, answerMrkdwn, parseDescribe, slackTextToPlain } from './format.js';
export { isAllowedFileUrl } from './files.js';

/** What the adapter needs from the conversation manager. */
export interface SlackConversationManager {
  handle(req: ConversationRequest): AsyncIterable<AnswerEvent>;
  history(key: ConversationKey): Promise<ConversationState | null>;
  /** the manager's keyv store (STORE_URL): the adapter keeps its "seen" marks there unless given `store` */
  readonly store?: Keyv;
}

export interface SlackAdapterOptions {
  manager: SlackConversationManager;
  /** SLACK_BOT_TOKEN (xoxb-…) */
  botToken: string;
  /** SLACK_SIGNING_SECRET: HTTP mode */
  signingSecret?: string;
  /** SLACK_APP_TOKEN (xapp-…): Socket Mode (wins over HTTP mode) */
  appToken?: string;
  /** SLACK_PORT: HTTP mode's port (default 3000; 0 picks a free one) */
  port?: number;
  /** HTTP mode's listen address (default: every interface, as Slack must reach it) */
  host?: string;
  /** SLACK_API_URL: Web API base URL (default Slack's); its origin may also serve files */
  apiUrl?: string;
  /** where event ids are remembered (default the manager's store; in memory when neither) */
  store?: Keyv;
  log?: (line: string) => void;
  /** largest image downloaded (default 20 MiB) */
  maxFileBytes?: number;
  /** download timeout (default 30 s) */
  downloadTimeoutMs?: number;
  /** least time between two edits of an answer (default 1200 ms; Slack allows about one a second) */
  updateIntervalMs?: number;
  /** most characters per message (default 3500); longer answers continue in more messages */
  maxMessageChars?: number;
  /** the slash command (default /describe) */
  command?: string;
  /** the message shortcut's callback id (default describe_image) */
  shortcutCallbackId?: string;
  /** messages of the channel searched for /describe's image (default 100) */
  historyLimit?: number;
  /** how long event ids are remembered (default 24 h) */
  dedupeTtlMs?: number;
  /** how long close() lets running answers finish before cancelling them (default 10 s) */
  closeTimeoutMs?: number;
}

export interface SlackAdapter {
  name: 'slack';
  mode: 'http' | 'socket';
  /** HTTP mode: the events URL (http://host:port/slack/events) */
  url?: string;
  port?: number;
  botUserId: string;
  close(): Promise<void>;
}

export const SLACK_EVENTS_PATH = '/slack/events';
export const DEFAULT_SLACK_PORT = 3000;
export const DEFAULT_COMMAND = '/describe';
export const DEFAULT_SHORTCUT = 'describe_image';

export class SlackConfigError extends Error {}

const DAY = 24 * 60 * 60 * 1000;

interface MessageLike {
  type?: string;
  subtype?: string;
  user?: string;
  bot_id?: string;
  text?: string;
  ts?: string;
  thread_ts?: string;
  channel?: string;
  channel_type?: string;
  files?: unknown;
  edited?: unknown;
}

interface Ask {
  client: WebClient;
  team: string;
  channel: string;
  /** undefined: the answer starts a new thread in the channel */
  thread?: string;
  user: string;
  text: string;
  task?: TaskTag;
  /** the image's file (already known to be an image or to be checked) */
  file?: SlackFile;
  header?: string;
  requestId: string;
  what: string;
  /** the conversation's turn (arrival order): released once the request is handed to the manager */
  turn?: ArrivalTurn;
}

/** Where a listener finds the arrival-order turn the middleware took for its event. */
const TURN = 'minigptTurn';

/** A Slack API base URL with the trailing slash the WebClient needs. */
export function normaliseApiUrl(url: string | undefined): string | undefined {
  const u = url?.trim();
  if (!u) return undefined;
  let parsed: URL;
  try {
    parsed = new URL(u);
  } catch {
    throw new SlackConfigError(`SLACK_API_URL=${u}: not a URL (expected e.g. https://slack.com/api/)`);
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') throw new SlackConfigError(`SLACK_API_URL=${u}: expected an http(s) URL`);
  return u.endsWith('/') ? u : `${u}/`;
}

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
  const rawLog = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const log = (line: string) => rawLog(redact(line, secrets));
  const apiUrl = normaliseApiUrl(opts.apiUrl);
  const logger = boltLogger(log, secrets);
  const clientOptions: webApi.WebClientOptions = {
    ...(apiUrl ? { slackApiUrl: apiUrl } : {}),
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
    throw new SlackConfigError(`Slack refused SLACK_BOT_TOKEN (auth.test: ${describeError(err)})`, { cause: err });
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
  adapter.register();

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
    close: () => adapter.close(),
  };
}

class SlackBot {
  private readonly manager: SlackConversationManager;
  private readonly events: SeenSet;
  private readonly messages: SeenSet;
  private readonly threads: SeenSet;
  private readonly tasks = new Set<Promise<void>>();
  private readonly abort = new AbortController();
  private closing: Promise<void> | undefined;
  private readonly log: (line: string) => void;
  private readonly botToken: string;
  private readonly botUserId: string;
  private readonly botName: string;
  private readonly apiUrl: string | undefined;
  private readonly maxFileBytes: number;
  private readonly downloadTimeoutMs: number;
  private readonly updateIntervalMs: number;
  private readonly maxMessageChars: number;
  private readonly historyLimit: number;
  /** per-thread arrival order of requests, up to the manager (see adapters/shared/arrival-order.ts) */
  private readonly order: ArrivalOrder;
  private nextId = 1;

  constructor(
    private readonly app: BoltApp,
    private readonly opts: SlackAdapterOptions,
    ids: { botToken: string; botUserId: string; botName: string; apiUrl: string | undefined; log: (line: string) => void },
  ) {
    this.manager = opts.manager;
    this.log = ids.log;
    this.botToken = ids.botToken;
    this.botUserId = ids.botUserId;
    this.botName = ids.botName;
    this.apiUrl = ids.apiUrl;
    const store = opts.store ?? opts.manager.store;
    const ttl = opts.dedupeTtlMs ?? DAY;
    this.events = new SeenSet(store, 'slack:event:', ttl, this.log);
    this.messages = new SeenSet(store, 'slack:message:', ttl, this.log);
    this.threads = new SeenSet(store, 'slack:thread:', 90 * DAY, this.log);
    this.maxFileBytes = opts.maxFileBytes ?? LIMITS.imageBytes;
    this.downloadTimeoutMs = opts.downloadTimeoutMs ?? 30_000;
    this.updateIntervalMs = opts.updateIntervalMs ?? 1200;
    this.maxMessageChars = Math.max(20, opts.maxMessageChars ?? DEFAULT_MAX_MESSAGE_CHARS);
    this.historyLimit = Math.min(1000, Math.max(1, opts.historyLimit ?? 100));
    // A request waits for the one before it in its thread at most this long (that one's download has its own
    // timeout; Web API calls before it are retried for a while).
    this.order = new ArrivalOrder(this.downloadTimeoutMs + 60_000, (k) =>
      this.log(`slack: a request in ${k} waited too long for the one before it in its thread; answering it now`),
    );
  }

  /** Requests of one thread keep the order in which Slack delivered their events. */
  private orderKey(team: string, channel: string, thread: string): string {
    return `${team}:${channel}:${thread}`;
  }

  register(): void {
    const app = this.app;

    // De-duplication by event id, before any listener (events are acknowledged by Bolt before this runs).
    app.use(async ({ body, context, next }) => {
      const b = body as { type?: string; event_id?: string; event?: MessageLike };
      // Only events that may become requests are remembered (not every message of every channel).
      const candidate = b.event?.type === 'app_mention' || (b.event?.type === 'message' && !!b.event.thread_ts && !ignorable(b.event, this.botUserId));
      // The event's turn in its thread is taken now, before anything is awaited: the order of delivery.
      const ev = b.event;
      const turn = candidate && ev?.channel && (ev.thread_ts ?? ev.ts) ? this.order.take(this.orderKey(teamOf(body), ev.channel, (ev.thread_ts ?? ev.ts)!)) : undefined;
      if (turn) context[TURN] = turn;
      try {
        if (b.type === 'event_callback' && typeof b.event_id === 'string' && candidate) {
          if (this.closing) return;
          if (!(await this.events.claim(b.event_id))) {
            const retry = context.retryNum !== undefined ? ` (retry ${context.retryNum}${context.retryReason ? `, ${context.retryReason}` : ''})` : '';
            this.log(`slack: event ${b.event_id} (${b.event?.type ?? '?'}) already handled${retry}; ignored`);
            return;
          }
        }
        await next();
      } finally {
        // Not taken by a listener (a duplicate, or no listener for it): the thread's next request goes on.
        (context[TURN] as ArrivalTurn | undefined)?.release();
      }
    });

    app.event('app_mention', async ({ event, body, client, context }) => {
      const turn = takeTurn(context);
      this.spawn('app_mention', () => this.onMention(event as MessageLike, teamOf(body), client, turn), turn);
    });

    app.event('message', async ({ event, body, client, context }) => {
      const turn = takeTurn(context);
      this.spawn('message', () => this.onMessage(event as MessageLike, teamOf(body), client, turn), turn);
    });

    app.command(this.opts.command ?? DEFAULT_COMMAND, async ({ command, ack, client, respond }) => {
      await ack();
      this.spawn('command', () =>
        this.onDescribe(
          { team: command.team_id, channel: command.channel_id, user: command.user_id, text: command.text ?? '' },
          client,
          (text) => respond({ response_type: 'ephemeral', text }).then(() => {}),
        ),
      );
    });

    app.shortcut({ callback_id: this.opts.shortcutCallbackId ?? DEFAULT_SHORTCUT, type: 'message_action' }, async ({ shortcut, ack, client, respond }) => {
      // The answer goes into the message's thread: its turn there is taken on arrival, like a message's.
      const s = shortcut as unknown as ShortcutPayload;
      const thread = s.message?.thread_ts ?? s.message?.ts;
      const turn = s.channel?.id && thread ? this.order.take(this.orderKey(s.team?.id ?? s.user?.team_id ?? '', s.channel.id, thread)) : undefined;
      try {
        await ack();
      } catch (err) {
        turn?.release();
        throw err;
      }
      this.spawn('shortcut', () => this.onShortcut(s, client, (text) => respond({ response_type: 'ephemeral', text }).then(() => {}), turn), turn);
    });

    app.error(async (err) => {
      this.log(`slack: error while handling a request: ${describeError(err)}`);
    });
  }

  /**
   * Runs one event's work detached from Bolt's listener; a failure is logged, never thrown. With a `turn`, the
   * work starts once the requests delivered before it in its thread have gone to the manager, and the turn is
   * released when the work has handed its request on (or ends without one).
   */
  private spawn(what: string, work: () => Promise<void>, turn?: ArrivalTurn): void {
    if (this.closing) {
      turn?.release();
      return;
    }
    const task = (async () => {
      try {
        await turn?.ready();
        await work();
      } catch (err) {
        this.log(`slack: ${what} failed: ${describeError(err)}`);
      } finally {
        turn?.release();
      }
    })();
    this.tasks.add(task);
    void task.finally(() => this.tasks.delete(task));
  }

  private key(team: string, channel: string, thread: string): ConversationKey {
    return { platform: 'slack', workspace: team, channel, thread };
  }

  private async onMention(ev: MessageLike, team: string, client: WebClient, turn?: ArrivalTurn): Promise<void> {
    if (ignorable(ev, this.botUserId) || !ev.channel || !ev.ts) return;
    if (!(await this.messages.claim(`${team}:${ev.channel}:${ev.ts}`))) return;
    const thread = ev.thread_ts ?? ev.ts;
    let files = eventFiles(ev.files);
    if (files.length === 0 && thread !== ev.ts) files = await this.imageFromThread(client, team, ev.channel, thread, ev.ts);
    await this.askAbout(client, ev as MessageLike & { channel: string; ts: string }, team, thread, files, 'mention', turn);
  }

  private async onMessage(ev: MessageLike, team: string, client: WebClient, turn?: ArrivalTurn): Promise<void> {
    if (ignorable(ev, this.botUserId) || !ev.channel || !ev.ts) return;
    // Only replies in a thread; a message mentioning the bot is the app_mention handler's.
    if (!ev.thread_ts || ev.thread_ts === ev.ts) return;
    if (this.botUserId && (ev.text ?? '').includes(`<@${this.botUserId}`)) return;
    const thread = ev.thread_ts;
    if (!(await this.isBotThread(team, ev.channel, thread))) return;
    if (!(await this.messages.claim(`${team}:${ev.channel}:${ev.ts}`))) return;
    await this.askAbout(client, ev as MessageLike & { channel: string; ts: string }, team, thread, eventFiles(ev.files), 'follow-up', turn);
  }

  /** The request of a mention or a thread message (its text, its files) in `thread`. */
  private askAbout(
    client: WebClient,
    ev: MessageLike & { channel: string; ts: string },
    team: string,
    thread: string,
    files: ReturnType<typeof eventFiles>,
    kind: 'mention' | 'follow-up',
    turn: ArrivalTurn | undefined,
  ): Promise<void> {
    return this.ask(client, {
      team,
      channel: ev.channel,
      thread,
      user: ev.user ?? 'unknown',
      text: slackTextToPlain(ev.text ?? '', this.botUserId),
      files,
      requestId: `slack:${ev.channel}:${ev.ts}`,
      what: `${kind} in ${ev.channel} thread ${thread}`,
      turn,
    });
  }

  /**
   * A mention without a file in a thread the bot has no conversation for: the newest image posted in the
   * thread before it (e.g. the thread's first message), as the user means "this image".
   */
  private async imageFromThread(client: WebClient, team: string, channel: string, thread: string, before: string): Promise<SlackFile[]> {
    try {
      if ((await this.manager.history(this.key(team, channel, thread))) !== null) return [];
      const res = await client.conversations.replies({ channel, ts: thread, limit: 200 });
      const msgs = ((res.messages ?? []) as MessageLike[]).filter((m) => m.ts && Number(m.ts) < Number(before) && !m.bot_id);
      for (const m of msgs.reverse()) {
        const img = eventFiles(m.files).find((f) => isImageFile(f));
        if (img) return [img];
      }
    } catch (err) {
      this.log(`slack: reading thread ${thread} in ${channel} failed: ${describeError(err)}`);
    }
    return [];
  }

  private async isBotThread(team: string, channel: string, thread: string): Promise<boolean> {
    if (await this.threads.has(`${team}:${channel}:${thread}`)) return true;
    try {
      return (await this.manager.history(this.key(team, channel, thread))) !== null;
    } catch {
      return false;
    }
  }

  /** A mention or follow-up: checks its files, then answers in the thread. */
  private async ask(client: WebClient, a: Omit<Ask, 'file' | 'client'> & { files: SlackFile[]; thread: string }): Promise<void> {
    let file: SlackFile | undefined;
    if (a.files.length > 0) {
      file = a.files.find((f) => isImageFile(f) || (!f.mimetype && !f.filetype));
      if (!file) {
        this.log(`slack: ${a.what}: ${a.files.length} file(s), none an image (${a.files.map((f) => f.filetype ?? f.mimetype ?? '?').join(', ')})`);
        await this.threads.mark(`${a.team}:${a.channel}:${a.thread}`);
        const reply = this.reply(client, a.channel, a.thread);
        await reply.error(notAnImage(a.files[0]).message);
        return;
      }
    }
    await this.answer({ ...a, client, file });
  }

  private reply(client: WebClient, channel: string, thread: string | undefined, header?: string): ThreadReply {
    return new ThreadReply({
      client,
      channel,
      threadTs: thread,
      intervalMs: this.updateIntervalMs,
      maxChars: this.maxMessageChars,
      header,
      log: this.log,
    });
  }

  /** Posts the first message, fetches the image, streams the manager's answer into the thread. */
  private async answer(a: Ask): Promise<void> {
    const reply = this.reply(a.client, a.channel, a.thread, a.header);
    try {
      await reply.start(a.file ? '_Looking at the image…_' : '_Thinking…_');
    } catch (err) {
      this.log(`slack: ${a.what}: could not post the reply: ${describeError(err)}`);
      return;
    }
    const thread = reply.thread!;
    await this.threads.mark(`${a.team}:${a.channel}:${thread}`);
    const signal = this.abort.signal;
    try {
      let image: Uint8Array | undefined;
      if (a.file) {
        try {
          image = await this.fetchImage(a.client, a.file, signal);
        } catch (err) {
          if (err instanceof FileInputError) {
            this.log(`slack: ${a.what}: file ${a.file.id} not used (${err.reason})`);
            await reply.error(err.message);
            return;
          }
          throw err;
        }
        this.log(`slack: ${a.what} by ${a.user}: image ${a.file.id} (${image.byteLength} bytes)`);
      } else {
        this.log(`slack: ${a.what} by ${a.user}: text only`);
      }
      const req: ConversationRequest = {
        key: this.key(a.team, a.channel, thread),
        user: a.user,
        text: a.text,
        ...(image ? { image } : {}),
        ...(a.task ? { task: a.task } : {}),
        signal,
        requestId: a.requestId,
      };
      let text = '';
      const events = this.manager.handle(req);
      // The request has its place in the manager's queue: the thread's next request may go on.
      a.turn?.release();
      for await (const ev of events) {
        switch (ev.type) {
          case 'queued':
            if (ev.position > 0) reply.status(`_Waiting: ${ev.position} request${ev.position === 1 ? '' : 's'} ahead of this one…_`);
            break;
          case 'started':
            if (!text) reply.status('_Thinking…_');
            break;
          case 'text':
            text += ev.text;
            reply.streaming(text);
            break;
          case 'restart':
            // another worker answers again: what was streamed so far is replaced
            text = '';
            reply.status('_Answering again…_');
            break;
          case 'final':
            await reply.final(ev.text);
            break;
          case 'image':
            await this.uploadImage(reply, ev.data, ev.mime, a.what);
            break;
          case 'error':
            this.log(`slack: ${a.what}: ${ev.code}${ev.code === 'internal' ? `: ${ev.message}` : ''}`);
            await reply.error(ev.code === 'cancelled' && this.closing ? 'The bot is restarting; please ask again in a moment.' : ev.message);
            break;
          case 'timings':
            break;
        }
      }
    } catch (err) {
      this.log(`slack: ${a.what} failed: ${describeError(err)}`);
      await reply.error('Something went wrong while answering; please try again.').catch(() => {});
    } finally {
      await reply.settle().catch(() => {});
    }
  }

  private async uploadImage(reply: ThreadReply, data: Buffer, mime: string, what: string): Promise<void> {
    const ext = mime === 'image/jpeg' ? 'jpg' : 'png';
    try {
      await reply.upload(data, `minigpt-boxes.${ext}`, 'The answer\'s boxes drawn on the image');
    } catch (err) {
      const code = slackErrorCode(err);
      this.log(`slack: ${what}: uploading the annotated image failed: ${describeError(err)}`);
      const why = code === 'missing_scope' ? ' (the app needs the `files:write` scope)' : '';
      await this.note(reply, `_I could not attach the image with the boxes${why}._`);
    }
  }

  private async note(reply: ThreadReply, text: string): Promise<void> {
    try {
      await reply.note(text);
    } catch (err) {
      this.log(`slack: could not post a note: ${describeError(err)}`);
    }
  }

  /** The file's bytes: metadata from files.info when the event has only the id; checks type and size first. */
  private async fetchImage(client: WebClient, file: SlackFile, signal: AbortSignal): Promise<Uint8Array> {
    let f = file;
    if (f.mode === 'tombstone') throw new FileInputError('not_found', 'That file has been deleted.');
    if (f.mode === 'hidden_by_limit') throw new FileInputError('refused', 'That file is hidden by the workspace\'s plan limits, so I cannot read it.');
    if (f.file_access === 'check_file_info' || !(f.url_private_download || f.url_private) || (!f.mimetype && !f.filetype)) {
      f = await this.fileInfo(client, f.id);
    }
    if (!isImageFile(f)) throw notAnImage(f);
    const label = fileLabel(f);
    if (typeof f.size === 'number' && f.size > this.maxFileBytes) throw tooLarge(label, f.size, this.maxFileBytes);
    const url = f.url_private_download || f.url_private;
    if (!url) throw new FileInputError('failed', `Slack gave no download link for ${label}.`);
    return downloadSlackFile(url, {
      token: this.botToken,
      maxBytes: this.maxFileBytes,
      timeoutMs: this.downloadTimeoutMs,
      apiUrl: this.apiUrl,
      signal,
      label,
    });
  }

  private async fileInfo(client: WebClient, id: string): Promise<SlackFile> {
    try {
      const res = await client.files.info({ file: id });
      if (!res.file || typeof res.file.id !== 'string') throw new FileInputError('not_found', 'Slack has no such file.');
      return res.file as unknown as SlackFile;
    } catch (err) {
      if (err instanceof FileInputError) throw err;
      const code = slackErrorCode(err);
      if (code === 'missing_scope' || code === 'no_permission' || code === 'not_allowed_token_type') throw new FileInputError('scope', SCOPE_MESSAGE, { cause: err });
      if (code === 'file_not_found' || code === 'file_deleted') throw new FileInputError('not_found', 'That file no longer exists (or I cannot see it).', { cause: err });
      throw new FileInputError('failed', 'Slack could not tell me about that file; please try again.', { cause: err });
    }
  }

  /** `/describe [task] prompt`: the linked file or the channel's newest image; the answer starts a thread. */
  private async onDescribe(
    c: { team: string; channel: string; user: string; text: string },
    client: WebClient,
    respond: (text: string) => Promise<void>,
  ): Promise<void> {
    const ephemeral = (text: string) => this.ephemeral(client, c.channel, c.user, text, respond);
    const { task, prompt, fileIds } = parseDescribe(c.text);
    let file: SlackFile | undefined;
    try {
      if (fileIds.length > 0) {
        file = await this.fileInfo(client, fileIds[0]);
        if (!isImageFile(file)) throw notAnImage(file);
      } else {
        file = await this.newestImage(client, c.channel);
        if (!file) {
          await ephemeral(
            `I found no image in the last ${this.historyLimit} messages of this channel. Post one first (or paste a link to an image file after ${this.opts.command ?? DEFAULT_COMMAND}) and try again.`,
          );
          return;
        }
      }
    } catch (err) {
      if (err instanceof FileInputError) {
        await ephemeral(err.message);
        return;
      }
      const code = slackErrorCode(err);
      this.log(`slack: /describe in ${c.channel}: reading the channel failed: ${describeError(err)}`);
      if (code === 'not_in_channel' || code === 'channel_not_found') {
        await ephemeral(`I cannot read this channel: invite me first (\`/invite @${this.botName}\`), then try again.`);
      } else if (code === 'missing_scope') {
        await ephemeral('The app needs the `channels:history` scope (and `groups:history` for private channels) to find the newest image.');
      } else {
        await ephemeral('I could not read this channel\'s messages; please try again.');
      }
      return;
    }
    const shown = [task ? `[${task}]` : '', prompt].filter(Boolean).join(' ');
    const header = `<@${c.user}> asked${shown ? `: ${escapeMrkdwn(shown.slice(0, 300))}` : ' me to describe the newest image'}`;
    await this.answer({
      client,
      team: c.team,
      channel: c.channel,
      user: c.user,
      text: prompt,
      ...(task ? { task } : {}),
      file,
      header,
      requestId: `slack:${c.channel}:cmd${this.nextId++}`,
      what: `/describe in ${c.channel}`,
    });
  }

  private async newestImage(client: WebClient, channel: string): Promise<SlackFile | undefined> {
    let cursor: string | undefined;
    let seen = 0;
    while (seen < this.historyLimit) {
      const res = await client.conversations.history({ channel, limit: Math.min(200, this.historyLimit - seen), ...(cursor ? { cursor } : {}) });
      const msgs = (res.messages ?? []) as MessageLike[];
      for (const m of msgs) {
        const img = eventFiles(m.files).find((f) => isImageFile(f));
        if (img) return img;
      }
      seen += msgs.length;
      cursor = res.response_metadata?.next_cursor || undefined;
      if (!res.has_more || !cursor || msgs.length === 0) break;
    }
    return undefined;
  }

  /** The "Describe image" message shortcut: the message's image, answered in its thread. */
  private async onShortcut(s: ShortcutPayload, client: WebClient, respond: (text: string) => Promise<void>, turn?: ArrivalTurn): Promise<void> {
    const channel = s.channel?.id;
    const user = s.user?.id ?? 'unknown';
    const team = s.team?.id ?? s.user?.team_id ?? '';
    const msg = s.message;
    if (!channel || !msg?.ts) return;
    const files = eventFiles(msg.files);
    const file = files.find((f) => isImageFile(f));
    if (!file) {
      await this.ephemeral(client, channel, user, files.length > 0 ? notAnImage(files[0]).message : 'That message has no image to describe.', respond);
      return;
    }
    const thread = msg.thread_ts ?? msg.ts;
    await this.answer({
      client,
      team,
      channel,
      thread,
      user,
      text: '',
      file,
      header: `<@${user}> asked me to describe this image:`,
      requestId: `slack:${channel}:sc${this.nextId++}`,
      what: `shortcut in ${channel} thread ${thread}`,
      turn,
    });
  }

  private async ephemeral(client: WebClient, channel: string, user: string, text: string, respond?: (text: string) => Promise<void>): Promise<void> {
    try {
      await client.chat.postEphemeral({ channel, user, text: escapeMrkdwn(text) });
    } catch (err) {
      this.log(`slack: chat.postEphemeral in ${channel} failed: ${describeError(err)}`);
      if (respond) await respond(text).catch((e: unknown) => this.log(`slack: response_url failed: ${describeError(e)}`));
    }
  }

  async close(): Promise<void> {
    this.closing ??= (async () => {
      await this.app.stop().catch((err: unknown) => this.log(`slack: stopping the receiver: ${describeError(err)}`));
      const limit = this.opts.closeTimeoutMs ?? 10_000;
      const all = () => Promise.allSettled([...this.tasks]);
      const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), limit).unref());
      if ((await Promise.race([all().then(() => 'done' as const), timer])) === 'timeout') {
        this.abort.abort();
        await Promise.race([all(), new Promise((r) => setTimeout(r, 2000).unref())]);
      }
      this.log('slack: adapter stopped');
    })();
    return this.closing;
  }
}

interface ShortcutPayload {
  callback_id?: string;
  channel?: { id?: string };
  user?: { id?: string; team_id?: string };
  team?: { id?: string } | null;
  message?: MessageLike;
}

/** Takes the arrival-order turn the middleware left in the context for this event's listener. */
function takeTurn(context: Record<string, unknown>): ArrivalTurn | undefined {
  const turn = context[TURN] as ArrivalTurn | undefined;
  delete context[TURN];
  return turn;
}

function teamOf(body: unknown): string {
  const b = body as { team_id?: string; enterprise_id?: string; authorizations?: Array<{ team_id?: string }> };
  return b.team_id ?? b.authorizations?.[0]?.team_id ?? b.enterprise_id ?? '';
}

/** Bots (this one included), edits, deletions and other system subtypes are not requests. */
function ignorable(ev: MessageLike, botUserId: string): boolean {
  if (ev.bot_id) return true;
  if (botUserId && ev.user === botUserId) return true;
  if (ev.edited) return true;
  if (ev.subtype !== undefined && ev.subtype !== 'file_share' && ev.subtype !== 'thread_broadcast') return true;
  return !ev.user;
}

/** How `minigpt serve` starts the adapter from the environment (.env.example). */
export function slackOptionsFromEnv(env: NodeJS.ProcessEnv): Omit<SlackAdapterOptions, 'manager' | 'log' | 'store'> {
  const botToken = env.SLACK_BOT_TOKEN?.trim() ?? '';
  let port: number | undefined;
  if (env.SLACK_PORT?.trim()) {
    port = Number(env.SLACK_PORT);
    if (!Number.isInteger(port) || port < 0 || port > 65535) throw new SlackConfigError(`SLACK_PORT=${env.SLACK_PORT}: expected a port number (0-65535)`);
  }
  return {
    botToken,
    ...(env.SLACK_SIGNING_SECRET?.trim() ? { signingSecret: env.SLACK_SIGNING_SECRET.trim() } : {}),
    ...(env.SLACK_APP_TOKEN?.trim() ? { appToken: env.SLACK_APP_TOKEN.trim() } : {}),
    ...(port !== undefined ? { port } : {}),
    ...(env.SLACK_API_URL?.trim() ? { apiUrl: env.SLACK_API_URL.trim() } : {}),
  };
}

/** For src/serve.ts's PLATFORM_ADAPTERS: `start: (ctx) => import('../adapters/slack/index.js').then((m) => m.startSlack(ctx))`. */
export async function startSlack(ctx: {
  manager: SlackConversationManager;
  env: NodeJS.ProcessEnv;
  log: (line: string) => void;
}): Promise<{ name: string; url?: string; close(): Promise<void> }> {
  const adapter = await startSlackAdapter({ ...slackOptionsFromEnv(ctx.env), manager: ctx.manager, log: ctx.log });
  return { name: 'slack', ...(adapter.url ? { url: adapter.url } : {}), close: () => adapter.close() };
}
