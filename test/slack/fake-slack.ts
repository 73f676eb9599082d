// A fake Slack for the adapter's end-to-end tests, on 127.0.0.1 only:
//   - the Web API (`/api/<method>`): auth.test, chat.postMessage, chat.update, chat.postEphemeral,
//     conversations.history, conversations.replies, files.info, files.getUploadURLExternal,
//     files.completeUploadExternal, users.info, apps.connections.open; tokens checked like Slack (Bearer header or `token`);
//   - the upload URLs that files.getUploadURLExternal hands out (`/upload/<file id>`);
//   - a private file host (`/files-pri/<team>-<file id>/<name>`) that needs the bot token: without it (or
//     without the `files:read` scope) it answers with an HTML sign-in page, as Slack does;
//   - a sender that signs events, slash commands and shortcuts with the signing secret and posts them to the
//     app like Slack does (or sends them over a Socket Mode WebSocket);
//   - the bot's own posts and edits echoed back to the app as `message` events, as Slack does.
import { createHmac, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';

export interface FakeFile {
  id: string;
  name: string;
  title: string;
  mimetype: string;
  filetype: string;
  pretty_type: string;
  size: number;
  user: string;
  url_private: string;
  url_private_download: string;
  permalink: string;
  data: Buffer;
  /** served without a content-length (chunked), so only the bytes tell the size */
  chunked?: boolean;
}

export interface FakeMessage {
  channel: string;
  ts: string;
  thread_ts?: string;
  user?: string;
  bot_id?: string;
  text: string;
  files?: FakeFile[];
  subtype?: string;
  /** texts this message had, oldest first (chat.update history) */
  versions: string[];
  /** its Block Kit blocks (as the app last sent them; none when it sent none, or an empty list to clear them) */
  blocks?: Record<string, any>[];
}

export interface ApiCall {
  method: string;
  args: Record<string, unknown>;
  at: number;
}

export interface SendOptions {
  eventId?: string;
  retryNum?: number;
  retryReason?: string;
  /** sign with this secret instead of the real one */
  secret?: string;
  /** request timestamp (seconds) to sign with */
  timestamp?: number;
}

const ALL_SCOPES = [
  'app_mentions:read',
  'channels:history',
  'groups:history',
  'chat:write',
  'commands',
  'files:read',
  'files:write',
  'users:read',
  'im:history',
];

/** What Slack's events call a channel, from its id: D… a direct message, G… private, C… public. */
function channelType(channel: string): 'im' | 'group' | 'channel' {
  return channel.startsWith('D') ? 'im' : channel.startsWith('G') ? 'group' : 'channel';
}

export class FakeSlack {
  readonly botToken = `xoxb-1111-2222-${randomBytes(12).toString('hex')}`;
  readonly appToken = `xapp-1-A0FAKE-3333-${randomBytes(16).toString('hex')}`;
  readonly signingSecret = randomBytes(16).toString('hex');
  readonly teamId = 'T0FAKE';
  readonly botUserId = 'U0BOT';
  readonly botId = 'B0BOT';
  readonly botName = 'minigpt';
  /** where events go (HTTP mode) */
  appUrl: string | undefined;
  /** 'socket': events go over the Socket Mode connection instead */
  transport: 'http' | 'socket' = 'http';
  /** echo the bot's own posts, edits and uploads back to the app as events */
  echo = true;

  readonly messages: FakeMessage[] = [];
  readonly ephemerals: Array<{ channel: string; user: string; text: string; thread?: string }> = [];
  /** users that users.info says are workspace admins */
  readonly admins = new Set<string>();
  readonly calls: ApiCall[] = [];
  readonly files = new Map<string, FakeFile>();
  readonly downloads: Array<{ fileId: string; authorized: boolean }> = [];
  /** file id -> ms: the file host answers that file's downloads only after this long (a slow download) */
  readonly fileDelays = new Map<string, number>();
  readonly uploads = new Map<string, { filename: string; length: number; data?: Buffer }>();
  /** scopes the bot token has */
  readonly scopes = new Set(ALL_SCOPES);
  /** channels where chat.postMessage fails with channel_not_found */
  readonly brokenChannels = new Set<string>();
  /** when set, every Web API call with the bot token fails with this error (`token_revoked`: revoked while the app runs) */
  botTokenRefusal: string | undefined;
  /** channels the bot is not a member of (conversations.history: not_in_channel) */
  readonly foreignChannels = new Set<string>();
  /** every request the fake received (method + path), for "no request was made" checks */
  readonly requests: string[] = [];
  /** socket acks received, by envelope id */
  readonly socketAcks = new Map<string, unknown>();
  /**
   * Fault injection for the Web API: called for every API call (after it is recorded); an answer it returns
   * is sent instead (e.g. 429 with retry-after, 503), and the call has no effect.
   */
  apiFault:
    | ((method: string, args: Record<string, unknown>) => { status: number; headers?: Record<string, string>; body?: string } | undefined)
    | undefined;
  /** Fault injection for the upload URLs (files.getUploadURLExternal's): an HTTP status to answer instead of storing. */
  uploadFault: ((fileId: string) => number | undefined) | undefined;
  /** calls and uploads answered by a fault hook */
  readonly faulted: string[] = [];
  /** Socket Mode: how long to wait for an ack before delivering the envelope again (Slack retries, up to 3 times) */
  socketAckTimeoutMs = 5000;
  /** Socket Mode connections opened, envelopes sent (retries included) */
  readonly socketStats = { connections: 0, envelopes: 0, redeliveries: 0 };

  private server!: Server;
  private wss!: WebSocketServer;
  private socket: WebSocket | undefined;
  private seq = 0;
  private fileSeq = 0;
  private eventSeq = 0;
  /** event ids are unique across fakes (Slack's are global), as adapters may share a store */
  private readonly eventPrefix = randomBytes(3).toString('hex').toUpperCase();
  private readonly pendingEchoes = new Set<Promise<unknown>>();
  url = '';

  static async start(): Promise<FakeSlack> {
    const fake = new FakeSlack();
    await fake.listen();
    return fake;
  }

  get apiUrl(): string {
    return `${this.url}/api/`;
  }

  get socketConnected(): boolean {
    return this.socket !== undefined && this.socket.readyState === this.socket.OPEN;
  }

  private async listen(): Promise<void> {
    this.server = createServer((req, res) => {
      this.route(req, res).catch((err: unknown) => {
        sendText(res, 500, String((err as Error)?.stack ?? err));
      });
    });
    this.wss = new WebSocketServer({ noServer: true });
    this.server.on('upgrade', (req, sock, head) => {
      if (req.url !== '/socket') {
        sock.destroy();
        return;
      }
      this.wss.handleUpgrade(req, sock, head, (ws) => {
        this.socket = ws;
        this.socketStats.connections++;
        ws.on('message', (data) => {
          try {
            const msg = JSON.parse(String(data)) as { envelope_id?: string; payload?: unknown };
            if (msg.envelope_id) this.socketAcks.set(msg.envelope_id, msg.payload ?? null);
          } catch {
            // not JSON: ignored
          }
        });
        ws.on('close', () => {
          if (this.socket === ws) this.socket = undefined;
        });
        ws.send(JSON.stringify({ type: 'hello', num_connections: 1, debug_info: { host: 'fake' }, connection_info: { app_id: 'A0FAKE' } }));
      });
    });
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.pendingEchoes]);
    for (const c of this.wss.clients) c.terminate();
    this.wss.close();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  // ----------------------------------------------------------------------------------------------
  // Workspace content
  // ----------------------------------------------------------------------------------------------

  nextTs(): string {
    this.seq++;
    return `${1_700_000_000 + this.seq}.${String(this.seq).padStart(6, '0')}`;
  }

  /** A file in the workspace, hosted by the fake's file host unless `url` says otherwise. */
  addFile(f: {
    name: string;
    data: Buffer;
    mimetype: string;
    filetype?: string;
    size?: number;
    url?: string;
    user?: string;
    chunked?: boolean;
  }): FakeFile {
    const id = `F0${String(++this.fileSeq).padStart(8, '0')}`;
    const filetype = f.filetype ?? f.name.split('.').pop() ?? 'binary';
    const url = f.url ?? `${this.url}/files-pri/${this.teamId}-${id}/${encodeURIComponent(f.name)}`;
    const file: FakeFile = {
      id,
      name: f.name,
      title: f.name,
      mimetype: f.mimetype,
      filetype,
      pretty_type: filetype.toUpperCase(),
      size: f.size ?? f.data.byteLength,
      user: f.user ?? 'U0ALICE',
      url_private: url,
      url_private_download: `${url}${url.includes('?') ? '&' : '?'}download=1`,
      permalink: `${this.url}/files/${f.user ?? 'U0ALICE'}/${id}/${encodeURIComponent(f.name)}`,
      data: f.data,
      ...(f.chunked ? { chunked: true } : {}),
    };
    this.files.set(id, file);
    return file;
  }

  /** A file as events and API answers show it (no bytes). */
  fileObject(f: FakeFile): Record<string, unknown> {
    const { data: _data, chunked: _chunked, ...rest } = f;
    return { ...rest, mode: 'hosted', is_external: false, created: 1_700_000_000, timestamp: 1_700_000_000 };
  }

  /** Stores a user's message (what conversations.history shows) without sending an event. */
  addMessage(
    channel: string,
    m: { user?: string; text?: string; files?: FakeFile[]; thread_ts?: string; bot_id?: string; subtype?: string },
  ): FakeMessage {
    const msg: FakeMessage = {
      channel,
      ts: this.nextTs(),
      text: m.text ?? '',
      versions: [m.text ?? ''],
      user: m.user ?? 'U0ALICE',
      ...(m.thread_ts ? { thread_ts: m.thread_ts } : {}),
      ...(m.files ? { files: m.files } : {}),
      ...(m.bot_id ? { bot_id: m.bot_id } : {}),
      ...(m.subtype ? { subtype: m.subtype } : m.files ? { subtype: 'file_share' } : {}),
    };
    this.messages.push(msg);
    return msg;
  }

  messageEvent(m: FakeMessage, type: 'message' | 'app_mention' = 'message'): Record<string, unknown> {
    return {
      type,
      ...(type === 'message' && m.subtype ? { subtype: m.subtype } : {}),
      channel: m.channel,
      ...(type === 'message' ? { channel_type: channelType(m.channel) } : {}),
      user: m.user,
      ...(m.bot_id ? { bot_id: m.bot_id } : {}),
      text: m.text,
      ts: m.ts,
      event_ts: m.ts,
      ...(m.thread_ts ? { thread_ts: m.thread_ts } : {}),
      ...(m.files ? { files: m.files.map((f) => this.fileObject(f)), upload: false } : {}),
      team: this.teamId,
    };
  }

  /**
   * A user mentions the bot: the message is stored, then Slack's two events for it (app_mention and, as the
   * bot is in the channel, message) are sent at once. Returns the message and the HTTP answers.
   */
  async mention(
    channel: string,
    m: { user?: string; text?: string; files?: FakeFile[]; thread_ts?: string },
    opts: SendOptions & { alsoMessage?: boolean } = {},
  ): Promise<{ msg: FakeMessage; statuses: number[] }> {
    const text = m.text ?? `<@${this.botUserId}>`;
    const msg = this.addMessage(channel, { ...m, text: text.includes(`<@${this.botUserId}>`) ? text : `<@${this.botUserId}> ${text}` });
    const sends = [this.sendEvent(this.messageEvent(msg, 'app_mention'), opts)];
    if (opts.alsoMessage !== false) sends.push(this.sendEvent(this.messageEvent(msg, 'message')));
    const res = await Promise.all(sends);
    return { msg, statuses: res.map((r) => r.status) };
  }

  /** A user's top-level message (no mention; e.g. in a direct message with the bot): stored and sent as a message event. */
  async say(
    channel: string,
    m: { user?: string; text?: string; files?: FakeFile[] },
    opts: SendOptions = {},
  ): Promise<{ msg: FakeMessage; status: number }> {
    const msg = this.addMessage(channel, m);
    const res = await this.sendEvent(this.messageEvent(msg, 'message'), opts);
    return { msg, status: res.status };
  }

  /** A user's message in a thread (no mention): stored and sent as a message event. */
  async reply(
    channel: string,
    thread: string,
    m: { user?: string; text?: string; files?: FakeFile[]; bot_id?: string; subtype?: string },
    opts: SendOptions = {},
  ): Promise<{ msg: FakeMessage; status: number }> {
    const msg = this.addMessage(channel, { ...m, thread_ts: thread });
    const res = await this.sendEvent(this.messageEvent(msg, 'message'), opts);
    return { msg, status: res.status };
  }

  /**
   * The author edits message `msg` to `text`: stored, and sent as Slack sends it to an app in the channel, a message
   * event of subtype message_changed with the message as it is now and as it was (no app_mention: Slack sends none for
   * an edit).
   */
  async edit(msg: FakeMessage, text: string, opts: SendOptions = {}): Promise<{ status: number }> {
    const previous = this.messageEvent(msg, 'message');
    msg.text = text;
    msg.versions.push(text);
    const ts = this.nextTs();
    const { channel: _c, team: _t, event_ts: _e, channel_type: _ct, ...now } = this.messageEvent(msg, 'message');
    const { channel: _c2, team: _t2, event_ts: _e2, channel_type: _ct2, ...before } = previous;
    const res = await this.sendEvent(
      {
        type: 'message',
        subtype: 'message_changed',
        hidden: true,
        channel: msg.channel,
        channel_type: channelType(msg.channel),
        ts,
        event_ts: ts,
        message: { ...now, edited: { user: msg.user, ts } },
        previous_message: before,
      },
      opts,
    );
    return { status: res.status };
  }

  /**
   * A person deletes a message (its author, or an admin): message_deleted, or, for a thread's first message with
   * replies, message_changed turning it into a tombstone, as Slack does.
   */
  async userDeletes(msg: FakeMessage, opts: SendOptions = {}): Promise<{ status: number }> {
    const { channel: _c, team: _t, event_ts: _e, channel_type: _ct, ...before } = this.messageEvent(msg, 'message');
    const ts = this.nextTs();
    const where = { type: 'message', hidden: true, channel: msg.channel, channel_type: channelType(msg.channel), ts, event_ts: ts };
    const replies = this.messages.some((m) => m.thread_ts === msg.ts && m.ts !== msg.ts);
    if (replies) {
      Object.assign(msg, { text: 'This message was deleted.', subtype: 'tombstone', user: 'USLACKBOT', files: undefined });
      const tomb = {
        type: 'message',
        subtype: 'tombstone',
        hidden: true,
        text: msg.text,
        user: 'USLACKBOT',
        ts: msg.ts,
        thread_ts: msg.ts,
      };
      return {
        status: (await this.sendEvent({ ...where, subtype: 'message_changed', message: tomb, previous_message: before }, opts)).status,
      };
    }
    this.messages.splice(this.messages.indexOf(msg), 1);
    return {
      status: (await this.sendEvent({ ...where, subtype: 'message_deleted', deleted_ts: msg.ts, previous_message: before }, opts)).status,
    };
  }

  /** A person deletes a file (its message stays, without it): file_deleted, as Slack sends it to subscribed apps. */
  async userDeletesFile(id: string, opts: SendOptions = {}): Promise<{ status: number }> {
    if (!this.files.delete(id)) throw new Error(`no file ${id}`);
    for (const m of this.messages) if (m.files?.some((f) => f.id === id)) m.files = m.files.filter((f) => f.id !== id);
    const ts = this.nextTs();
    return { status: (await this.sendEvent({ type: 'file_deleted', file_id: id, event_ts: ts }, opts)).status };
  }

  // ----------------------------------------------------------------------------------------------
  // Sender: events, commands, shortcuts, signed like Slack
  // ----------------------------------------------------------------------------------------------

  sign(body: string, timestamp: number, secret = this.signingSecret): string {
    return `v0=${createHmac('sha256', secret).update(`v0:${timestamp}:${body}`).digest('hex')}`;
  }

  private async post(
    body: string,
    contentType: string,
    opts: SendOptions,
    extraHeaders: Record<string, string> = {},
  ): Promise<{ status: number; text: string }> {
    if (!this.appUrl) throw new Error('FakeSlack.appUrl is not set');
    const timestamp = opts.timestamp ?? Math.floor(Date.now() / 1000);
    const res = await fetch(this.appUrl, {
      method: 'POST',
      headers: {
        'content-type': contentType,
        'x-slack-request-timestamp': String(timestamp),
        'x-slack-signature': this.sign(body, timestamp, opts.secret),
        ...(opts.retryNum !== undefined
          ? { 'x-slack-retry-num': String(opts.retryNum), 'x-slack-retry-reason': opts.retryReason ?? 'http_timeout' }
          : {}),
        ...extraHeaders,
      },
      body,
    });
    return { status: res.status, text: await res.text() };
  }

  /** Sends an Events API envelope for `event` (HTTP or Socket Mode). Returns the HTTP status (200 for a socket ack). */
  async sendEvent(event: Record<string, unknown>, opts: SendOptions = {}): Promise<{ status: number; eventId: string }> {
    const eventId = opts.eventId ?? `Ev${this.eventPrefix}${String(++this.eventSeq).padStart(6, '0')}`;
    const envelope = {
      token: 'legacy-verification-token',
      team_id: this.teamId,
      api_app_id: 'A0FAKE',
      event,
      type: 'event_callback',
      event_id: eventId,
      event_time: Math.floor(Date.now() / 1000),
      authorizations: [{ enterprise_id: null, team_id: this.teamId, user_id: this.botUserId, is_bot: true, is_enterprise_install: false }],
      is_ext_shared_channel: false,
      event_context: `4-fake-${eventId}`,
    };
    if (this.transport === 'socket') {
      await this.sendEnvelope('events_api', envelope, opts.retryNum ?? 0, opts.retryReason);
      return { status: 200, eventId };
    }
    const res = await this.post(JSON.stringify(envelope), 'application/json', opts);
    return { status: res.status, eventId };
  }

  /** A slash command as Slack posts it (form-encoded). Returns the HTTP status, body and how long the ack took. */
  async sendCommand(
    c: { text: string; channel: string; user?: string; command?: string },
    opts: SendOptions = {},
  ): Promise<{ status: number; text: string; ms: number }> {
    const form = new URLSearchParams({
      token: 'legacy-verification-token',
      team_id: this.teamId,
      team_domain: 'fake',
      channel_id: c.channel,
      channel_name: c.channel.toLowerCase(),
      user_id: c.user ?? 'U0ALICE',
      user_name: 'alice',
      command: c.command ?? '/describe',
      text: c.text,
      api_app_id: 'A0FAKE',
      response_url: `${this.url}/response/${c.channel}`,
      trigger_id: `trigger-${Date.now()}`,
    });
    const t0 = performance.now();
    const res = await this.post(form.toString(), 'application/x-www-form-urlencoded', opts);
    return { ...res, ms: performance.now() - t0 };
  }

  /** A message shortcut on `msg` as Slack posts it (form-encoded `payload`; an `interactive` envelope in Socket Mode). */
  async sendShortcut(
    msg: FakeMessage,
    opts: SendOptions & { user?: string; callbackId?: string } = {},
  ): Promise<{ status: number; text: string }> {
    const payload = {
      type: 'message_action',
      token: 'legacy-verification-token',
      action_ts: `${Date.now() / 1000}`,
      team: { id: this.teamId, domain: 'fake' },
      user: { id: opts.user ?? 'U0ALICE', username: 'alice', team_id: this.teamId, name: 'alice' },
      channel: { id: msg.channel, name: msg.channel.toLowerCase() },
      is_enterprise_install: false,
      enterprise: null,
      callback_id: opts.callbackId ?? 'describe_image',
      trigger_id: `trigger-${Date.now()}`,
      response_url: `${this.url}/response/${msg.channel}`,
      message_ts: msg.ts,
      message: { type: 'message', ...this.messageEvent(msg, 'message') },
    };
    if (this.transport === 'socket') {
      await this.sendEnvelope('interactive', payload, 0);
      return { status: 200, text: '' };
    }
    return this.post(new URLSearchParams({ payload: JSON.stringify(payload) }).toString(), 'application/x-www-form-urlencoded', opts);
  }

  /**
   * A user presses a button of a message as Slack sends it (`block_actions`: form-encoded `payload` over HTTP, an
   * `interactive` envelope in Socket Mode). The button is looked up in the message's blocks by its action id.
   */
  async pressButton(msg: FakeMessage, actionId: string, user = 'U0ALICE'): Promise<{ status: number; text: string }> {
    const button = (msg.blocks ?? [])
      .flatMap((b) => (b.type === 'actions' ? (b.elements as Record<string, any>[]) : []))
      .find((e) => e.action_id === actionId);
    if (!button) throw new Error(`message ${msg.ts} has no button ${actionId}`);
    const payload = {
      type: 'block_actions',
      token: 'legacy-verification-token',
      api_app_id: 'A0FAKE',
      team: { id: this.teamId, domain: 'fake' },
      user: { id: user, username: user.toLowerCase(), name: user.toLowerCase(), team_id: this.teamId },
      channel: { id: msg.channel, name: msg.channel.toLowerCase() },
      container: { type: 'message', message_ts: msg.ts, channel_id: msg.channel, is_ephemeral: false },
      message: { type: 'message', ...this.messageEvent(msg, 'message'), blocks: msg.blocks },
      trigger_id: `trigger-${Date.now()}`,
      response_url: `${this.url}/response/${msg.channel}`,
      actions: [
        { type: 'button', action_id: actionId, block_id: 'b', value: button.value, text: button.text, action_ts: `${Date.now() / 1000}` },
      ],
    };
    if (this.transport === 'socket') {
      await this.sendEnvelope('interactive', payload, 0);
      return { status: 200, text: '' };
    }
    return this.post(new URLSearchParams({ payload: JSON.stringify(payload) }).toString(), 'application/x-www-form-urlencoded', {});
  }

  private async sendEnvelope(type: string, payload: unknown, retryAttempt: number, retryReason?: string): Promise<void> {
    if (!this.socket) {
      // Between two connections (a reconnect): Slack holds the envelope until the app is back.
      await this.waitFor(() => this.socketConnected, 10_000, 'a Socket Mode connection');
    }
    const ws = this.socket;
    if (!ws) throw new Error('no Socket Mode connection');
    const envelopeId = randomBytes(8).toString('hex');
    this.socketStats.envelopes++;
    ws.send(
      JSON.stringify({
        envelope_id: envelopeId,
        payload,
        type,
        accepts_response_payload: false,
        retry_attempt: retryAttempt,
        retry_reason: retryReason ?? '',
      }),
    );
    try {
      await this.waitFor(() => this.socketAcks.has(envelopeId), this.socketAckTimeoutMs, `the ack of envelope ${envelopeId}`);
    } catch (err) {
      // Not acknowledged (the connection dropped, or the app was too slow): Slack delivers it again, up to 3 times.
      if (retryAttempt >= 3) throw err;
      this.socketStats.redeliveries++;
      await this.sendEnvelope(type, payload, retryAttempt + 1, 'timeout');
    }
  }

  /**
   * Ends the Socket Mode connection: 'refresh' sends Slack's `disconnect` (refresh_requested) message, after
   * which the app opens a new connection; 'close' closes the socket; 'terminate' drops it without a close frame.
   */
  dropSocket(how: 'refresh' | 'close' | 'terminate' = 'close'): void {
    const ws = this.socket;
    if (!ws) return;
    if (how === 'refresh') {
      ws.send(JSON.stringify({ type: 'disconnect', reason: 'refresh_requested', debug_info: { host: 'fake' } }));
      return;
    }
    this.socket = undefined;
    if (how === 'close') ws.close(1001, 'going away');
    else ws.terminate();
  }

  // ----------------------------------------------------------------------------------------------
  // Inspection
  // ----------------------------------------------------------------------------------------------

  /** Messages the bot posted in a channel (optionally in one thread, the root included), oldest first. */
  botMessages(channel: string, thread?: string): FakeMessage[] {
    return this.messages.filter(
      (m) => m.channel === channel && m.bot_id === this.botId && (thread === undefined || m.thread_ts === thread || m.ts === thread),
    );
  }

  callsOf(method: string): ApiCall[] {
    return this.calls.filter((c) => c.method === method);
  }

  async waitFor<T>(fn: () => T | undefined | null | false, timeoutMs = 20_000, what = 'a condition'): Promise<T> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const v = fn();
      if (v) return v;
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  // ----------------------------------------------------------------------------------------------
  // HTTP side
  // ----------------------------------------------------------------------------------------------

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', this.url);
    this.requests.push(`${req.method} ${url.pathname}`);
    const body = await readBody(req);
    if (url.pathname.startsWith('/api/')) return this.api(url.pathname.slice(5), req, body, res);
    if (url.pathname.startsWith('/files-pri/')) return this.fileHost(url, req, res);
    if (url.pathname.startsWith('/upload/')) return this.upload(url.pathname.slice(8), req, body, res);
    if (url.pathname.startsWith('/response/')) {
      // response_url: accepted, recorded as an ephemeral message
      const j = JSON.parse(body.toString('utf8') || '{}') as { text?: string };
      this.ephemerals.push({ channel: url.pathname.slice(10), user: '(response_url)', text: j.text ?? '' });
      sendText(res, 200, 'ok');
      return;
    }
    sendText(res, 404, 'not found');
  }

  private fileHost(url: URL, req: IncomingMessage, res: ServerResponse): void {
    const m = /^\/files-pri\/[A-Z0-9]+-(F[A-Z0-9]+)\//.exec(url.pathname);
    const file = m ? this.files.get(m[1]) : undefined;
    const authorized = req.headers.authorization === `Bearer ${this.botToken}` && this.scopes.has('files:read');
    if (file) this.downloads.push({ fileId: file.id, authorized });
    if (!authorized) {
      // Slack serves its sign-in page to requests without a token that may read the file.
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end('<!DOCTYPE html><html><body>Sign in to Slack</body></html>');
      return;
    }
    if (!file) {
      sendText(res, 404, 'file not found');
      return;
    }
    const delay = this.fileDelays.get(file.id);
    if (delay) setTimeout(() => this.serveFile(file, res), delay).unref();
    else this.serveFile(file, res);
  }

  private serveFile(file: FakeFile, res: ServerResponse): void {
    if (res.destroyed) return;
    if (file.chunked) {
      res.writeHead(200, { 'content-type': file.mimetype });
      for (let i = 0; i < file.data.byteLength; i += 16 * 1024) res.write(file.data.subarray(i, i + 16 * 1024));
      res.end();
      return;
    }
    res.writeHead(200, { 'content-type': file.mimetype, 'content-length': String(file.data.byteLength) });
    res.end(file.data);
  }

  private async upload(fileId: string, req: IncomingMessage, body: Buffer, res: ServerResponse): Promise<void> {
    const up = this.uploads.get(fileId);
    const failWith = up ? this.uploadFault?.(fileId) : undefined;
    if (failWith) {
      this.faulted.push(`upload ${fileId}`);
      sendText(res, failWith, 'fake upload fault');
      return;
    }
    if (!up) {
      sendText(res, 404, 'unknown upload');
      return;
    }
    const type = String(req.headers['content-type'] ?? '');
    let data = body;
    if (type.startsWith('multipart/form-data')) {
      const form = await new Request('http://x/', { method: 'POST', headers: { 'content-type': type }, body }).formData();
      const part = [...form.values()].find((v) => typeof v !== 'string') as unknown as Blob | undefined;
      if (!part) {
        sendText(res, 400, 'no file part');
        return;
      }
      data = Buffer.from(await part.arrayBuffer());
    }
    up.data = data;
    sendText(res, 200, `OK - ${data.byteLength}`);
  }

  private async api(method: string, req: IncomingMessage, raw: Buffer, res: ServerResponse): Promise<void> {
    const type = String(req.headers['content-type'] ?? '');
    let args: Record<string, unknown> = {};
    const text = raw.toString('utf8');
    if (type.startsWith('application/json')) args = text ? (JSON.parse(text) as Record<string, unknown>) : {};
    else if (type.startsWith('multipart/form-data')) {
      const form = await new Request('http://x/', { method: 'POST', headers: { 'content-type': type }, body: raw }).formData();
      for (const [k, v] of form.entries()) args[k] = typeof v === 'string' ? v : '(file)';
    } else args = Object.fromEntries(new URLSearchParams(text));
    const auth = String(req.headers.authorization ?? '');
    const token = auth.startsWith('Bearer ') ? auth.slice(7) : typeof args.token === 'string' ? args.token : '';
    const { token: _t, ...shown } = args;
    this.calls.push({ method, args: shown, at: Date.now() });
    const fault = this.apiFault?.(method, shown);
    if (fault) {
      this.faulted.push(method);
      res.writeHead(fault.status, { 'content-type': 'application/json; charset=utf-8', ...fault.headers });
      res.end(fault.body ?? JSON.stringify({ ok: false, error: 'fake_fault' }));
      return;
    }
    const send = (obj: Record<string, unknown>) => {
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' });
      res.end(JSON.stringify(obj));
    };
    if (method === 'apps.connections.open') {
      if (token !== this.appToken) return send({ ok: false, error: 'invalid_auth' });
      return send({ ok: true, url: `${this.url.replace(/^http/, 'ws')}/socket` });
    }
    if (!token) return send({ ok: false, error: 'not_authed' });
    if (token !== this.botToken) return send({ ok: false, error: 'invalid_auth' });
    if (this.botTokenRefusal) return send({ ok: false, error: this.botTokenRefusal });
    const need = (scope: string) =>
      this.scopes.has(scope) ? null : { ok: false, error: 'missing_scope', needed: scope, provided: [...this.scopes].join(',') };
    const str = (k: string) => (typeof args[k] === 'string' ? (args[k] as string) : undefined);
    // the Web API client sends nested values JSON-encoded in its form
    const blocks = (): Record<string, any>[] | undefined =>
      args.blocks === undefined
        ? undefined
        : typeof args.blocks === 'string'
          ? JSON.parse(args.blocks)
          : (args.blocks as Record<string, any>[]);

    switch (method) {
      case 'auth.test':
        return send({
          ok: true,
          url: `${this.url}/`,
          team: 'Fake',
          user: this.botName,
          team_id: this.teamId,
          user_id: this.botUserId,
          bot_id: this.botId,
          is_enterprise_install: false,
        });
      case 'chat.postMessage': {
        const channel = str('channel');
        if (!channel || this.brokenChannels.has(channel)) return send({ ok: false, error: 'channel_not_found' });
        const text = str('text') ?? '';
        if (!text.trim()) return send({ ok: false, error: 'no_text' });
        if (text.length > 40_000) return send({ ok: false, error: 'msg_too_long' });
        const msg = this.addMessage(channel, { user: this.botUserId, bot_id: this.botId, text, thread_ts: str('thread_ts') });
        const b = blocks();
        if (b) msg.blocks = b;
        this.echoEvent({ ...this.messageEvent(msg), bot_profile: { id: this.botId, name: this.botName } });
        return send({
          ok: true,
          channel,
          ts: msg.ts,
          message: { type: 'message', text, user: this.botUserId, bot_id: this.botId, ts: msg.ts, thread_ts: msg.thread_ts },
        });
      }
      case 'chat.update': {
        const msg = this.messages.find((m) => m.channel === str('channel') && m.ts === str('ts'));
        if (!msg) return send({ ok: false, error: 'message_not_found' });
        if (msg.bot_id !== this.botId) return send({ ok: false, error: 'cant_update_message' });
        const text = str('text') ?? '';
        if (!text.trim()) return send({ ok: false, error: 'no_text' });
        msg.text = text;
        msg.versions.push(text);
        const b = blocks();
        if (b) msg.blocks = b;
        this.echoEvent({
          type: 'message',
          subtype: 'message_changed',
          channel: msg.channel,
          hidden: true,
          ts: this.nextTs(),
          message: {
            type: 'message',
            user: this.botUserId,
            bot_id: this.botId,
            text,
            ts: msg.ts,
            edited: { user: this.botUserId, ts: msg.ts },
          },
          previous_message: { type: 'message', text: msg.versions[msg.versions.length - 2] ?? '', ts: msg.ts },
        });
        return send({ ok: true, channel: msg.channel, ts: msg.ts, text });
      }
      case 'chat.delete': {
        const msg = this.messages.find((m) => m.channel === str('channel') && m.ts === str('ts'));
        if (!msg) return send({ ok: false, error: 'message_not_found' });
        if (msg.bot_id !== this.botId) return send({ ok: false, error: 'cant_delete_message' });
        this.messages.splice(this.messages.indexOf(msg), 1);
        const { channel: _c, team: _t, event_ts: _e, channel_type: _ct, ...before } = this.messageEvent(msg, 'message');
        const ts = this.nextTs();
        this.echoEvent({
          type: 'message',
          subtype: 'message_deleted',
          hidden: true,
          channel: msg.channel,
          ts,
          deleted_ts: msg.ts,
          previous_message: before,
        });
        return send({ ok: true, channel: msg.channel, ts: msg.ts });
      }
      case 'files.delete': {
        const missing = need('files:write');
        if (missing) return send(missing);
        const f = this.files.get(str('file') ?? '');
        if (!f) return send({ ok: false, error: 'file_not_found' });
        if (f.user !== this.botUserId) return send({ ok: false, error: 'cant_delete_file' });
        this.files.delete(f.id);
        // (the message that shared it goes with it)
        for (const m of this.messages.filter((m) => m.files?.some((x) => x.id === f.id))) this.messages.splice(this.messages.indexOf(m), 1);
        return send({ ok: true });
      }
      case 'chat.postEphemeral': {
        const channel = str('channel');
        if (!channel || this.brokenChannels.has(channel)) return send({ ok: false, error: 'channel_not_found' });
        const thread = str('thread_ts');
        this.ephemerals.push({ channel, user: str('user') ?? '', text: str('text') ?? '', ...(thread ? { thread } : {}) });
        return send({ ok: true, message_ts: this.nextTs() });
      }
      case 'conversations.history': {
        const channel = str('channel') ?? '';
        const missing = need({ im: 'im:history', group: 'groups:history', channel: 'channels:history' }[channelType(channel)]);
        if (missing) return send(missing);
        if (this.foreignChannels.has(channel)) return send({ ok: false, error: 'not_in_channel' });
        const limit = Number(str('limit') ?? 100) || 100;
        const top = this.messages.filter((m) => m.channel === channel && (!m.thread_ts || m.thread_ts === m.ts)).reverse();
        const start = Number(str('cursor') ?? 0) || 0;
        const page = top.slice(start, start + limit);
        const more = start + limit < top.length;
        return send({
          ok: true,
          messages: page.map((m) => this.apiMessage(m)),
          has_more: more,
          response_metadata: { next_cursor: more ? String(start + limit) : '' },
        });
      }
      case 'conversations.replies': {
        const channel = str('channel') ?? '';
        const ts = str('ts') ?? '';
        const msgs = this.messages.filter((m) => m.channel === channel && (m.ts === ts || m.thread_ts === ts));
        if (msgs.length === 0) return send({ ok: false, error: 'thread_not_found' });
        return send({ ok: true, messages: msgs.map((m) => this.apiMessage(m)), has_more: false });
      }
      case 'files.info': {
        const missing = need('files:read');
        if (missing) return send(missing);
        const f = this.files.get(str('file') ?? '');
        if (!f) return send({ ok: false, error: 'file_not_found' });
        return send({ ok: true, file: this.fileObject(f) });
      }
      case 'files.getUploadURLExternal': {
        const missing = need('files:write');
        if (missing) return send(missing);
        const filename = str('filename');
        const length = Number(str('length'));
        if (!filename || !Number.isInteger(length) || length <= 0) return send({ ok: false, error: 'invalid_arguments' });
        const id = `F0UP${String(++this.fileSeq).padStart(6, '0')}`;
        this.uploads.set(id, { filename, length });
        return send({ ok: true, upload_url: `${this.url}/upload/${id}`, file_id: id });
      }
      case 'files.completeUploadExternal': {
        let list: Array<{ id: string; title?: string }>;
        try {
          list = JSON.parse(str('files') ?? '[]') as Array<{ id: string; title?: string }>;
        } catch {
          return send({ ok: false, error: 'invalid_arguments' });
        }
        const done: FakeFile[] = [];
        for (const item of list) {
          const up = this.uploads.get(item.id);
          if (!up?.data) return send({ ok: false, error: 'file_not_found' });
          if (up.data.byteLength !== up.length) return send({ ok: false, error: 'file_upload_size_mismatch' });
          const png = up.data.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
          const file = this.addFile({ name: up.filename, data: up.data, mimetype: png ? 'image/png' : 'image/jpeg', user: this.botUserId });
          file.title = item.title ?? up.filename;
          done.push(file);
        }
        const channel = str('channel_id');
        if (channel) {
          const msg = this.addMessage(channel, {
            user: this.botUserId,
            bot_id: this.botId,
            text: str('initial_comment') ?? '',
            files: done,
            thread_ts: str('thread_ts'),
          });
          this.echoEvent(this.messageEvent(msg));
        }
        return send({ ok: true, files: done.map((f) => ({ id: f.id, title: f.title })) });
      }
      case 'users.info': {
        const missing = need('users:read');
        if (missing) return send(missing);
        const id = str('user');
        if (!id) return send({ ok: false, error: 'user_not_found' });
        const admin = this.admins.has(id);
        return send({
          ok: true,
          user: { id, team_id: this.teamId, name: id.toLowerCase(), is_admin: admin, is_owner: false, is_bot: false },
        });
      }
      default:
        return send({ ok: false, error: 'unknown_method' });
    }
  }

  private apiMessage(m: FakeMessage): Record<string, unknown> {
    return {
      type: 'message',
      ...(m.subtype ? { subtype: m.subtype } : {}),
      user: m.user,
      ...(m.bot_id ? { bot_id: m.bot_id } : {}),
      text: m.text,
      ts: m.ts,
      ...(m.thread_ts ? { thread_ts: m.thread_ts } : {}),
      ...(m.files ? { files: m.files.map((f) => this.fileObject(f)) } : {}),
    };
  }

  /** Slack tells the app about the bot's own messages too; the app must ignore them. */
  private echoEvent(event: Record<string, unknown>): void {
    if (!this.echo || (!this.appUrl && this.transport === 'http') || (this.transport === 'socket' && !this.socket)) return;
    const p = this.sendEvent(event).catch(() => {});
    this.pendingEchoes.add(p);
    void p.finally(() => this.pendingEchoes.delete(p));
  }
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** A plain-text answer, as Slack's file host and upload URLs give. */
function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'content-type': 'text/plain' });
  res.end(text);
}
