// A fake Discord on loopback for the adapter's end-to-end tests: the REST API (under /api/v10, what
// `DISCORD_API_URL=http://127.0.0.1:PORT/api` points discord.js at), the WebSocket gateway that
// `GET /gateway/bot` names (HELLO, heartbeat ACK, IDENTIFY -> READY + GUILD_CREATE, then dispatches), and a
// CDN for attachments on the same host. Every REST call is recorded with its JSON body and uploaded files.
//
// It keeps the parts of Discord's behaviour the adapter relies on: a thread started from a message has
// the message's id and the bot as owner, and Discord announces it (THREAD_CREATE); messages the API
// creates are dispatched back (MESSAGE_CREATE); an interaction's deferred response creates the original
// message, which `PATCH /webhooks/{app}/{token}/messages/@original` edits.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';

export interface ApiUser {
  id: string;
  username: string;
  discriminator: string;
  global_name: string | null;
  avatar: string | null;
  bot?: boolean;
}

export interface ApiAttachment {
  id: string;
  filename: string;
  size: number;
  url: string;
  proxy_url: string;
  content_type?: string;
  width?: number;
  height?: number;
}

export type ApiMessage = Record<string, any> & { id: string; channel_id: string; content: string };
export type ApiChannel = Record<string, any> & { id: string; type: number };

export interface UploadedFile {
  field: string;
  filename: string;
  contentType: string;
  data: Buffer;
}

export interface RestCall {
  method: string;
  /** path below /api/v10, e.g. `/channels/1/messages` */
  path: string;
  query: Record<string, string>;
  /** the JSON body (or a multipart request's `payload_json`) */
  body: any;
  files: UploadedFile[];
  /** whether an `Authorization: Bot <token>` header with the right token came with it */
  authorized: boolean;
  at: number;
}

export interface CdnHit {
  path: string;
  at: number;
}

interface Session {
  ws: WebSocket;
  identified: boolean;
  seq: number;
  intents?: number;
  /** the gateway session this socket carries (after IDENTIFY or RESUME) */
  gw?: GatewaySession;
}

/**
 * A gateway session as Discord keeps it: its events by sequence number, so that a client that lost its socket
 * can RESUME and get what it missed; a session closed with a code that does not allow resuming is gone.
 */
interface GatewaySession {
  id: string;
  /** [shard id, shard count] from its IDENTIFY */
  shard: [number, number];
  seq: number;
  events: Array<{ s: number; t: string; d: unknown }>;
  socket?: Session;
  resumable: boolean;
}

/** What a fault hook may answer instead of the fake's own handling of a REST call. */
export interface RestFault {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
}

interface Interaction {
  id: string;
  token: string;
  applicationId: string;
  channelId: string;
  guildId?: string;
  user: ApiUser;
  original?: ApiMessage;
  /** a component interaction's message (the button's): its original message once it is answered by 6 or 7 */
  message?: ApiMessage;
  /** its token has expired (Discord's 15 minutes): webhook calls with it are refused */
  expired?: boolean;
  callback?: { type: number; at: number };
}

const EPOCH = 1420070400000n;
const API_PREFIX = '/api/v10';

/** Permissions bits (as Discord sends them, decimal strings). */
export const PERMISSIONS = {
  ALL: ((1n << 50n) - 1n).toString(),
};

export class FakeDiscord {
  readonly token: string;
  readonly bot: ApiUser;
  readonly appId: string;
  /** every REST call, in order */
  readonly calls: RestCall[] = [];
  readonly cdnHits: CdnHit[] = [];
  /** gateway payloads received from the client (op codes) */
  readonly gatewayIn: Array<{ op: number; d: any }> = [];
  /** channels where starting a thread answers 403 Missing Permissions */
  readonly denyThreads = new Set<string>();
  /** channels where a message with files answers 403 Missing Permissions */
  readonly denyAttachments = new Set<string>();
  /** CDN paths (see delayFile) answered only after this many ms, as a slow download */
  readonly fileDelays = new Map<string, number>();
  /** when true, the gateway refuses every IDENTIFY with close code 4004 (a token Discord no longer accepts) */
  refuseIdentify = false;
  /** when true, REST refuses the bot token (401) while the gateway stays connected: a token reset while the bot runs */
  restTokenRefused = false;
  /**
   * The shard count Discord requires (and recommends in `GET /gateway/bot`), as for a bot in over 2500 guilds:
   * an IDENTIFY with fewer is closed with 4011 (sharding required); each shard gets the guilds whose
   * `(guild_id >> 22) % count` is its id, and their events; DMs go to shard 0.
   */
  shards = 1;
  /** registered application commands by scope (`global` or a guild id) */
  readonly commands = new Map<string, any[]>();
  /**
   * Fault injection: called for every REST call (after it is recorded); an answer it returns is sent instead
   * of the fake's own (e.g. a 429 with retry-after, a 502 on an upload), and the call has no effect.
   */
  restFault: ((call: RestCall) => RestFault | undefined) | undefined;
  /** REST calls answered by `restFault` */
  readonly faulted: RestCall[] = [];
  /** gateway connections opened, IDENTIFYs and RESUMEs received, and RESUMEs that replayed the session */
  readonly gatewayStats = { connections: 0, identifies: 0, resumes: 0, resumed: 0 };

  private readonly server: Server;
  private readonly wss: WebSocketServer;
  private readonly sockets = new Set<Socket>();
  private readonly sessions = new Set<Session>();
  private readonly gwSessions = new Map<string, GatewaySession>();
  private readonly guilds = new Map<string, Record<string, any>>();
  private readonly channels = new Map<string, ApiChannel>();
  private readonly messages = new Map<string, Map<string, ApiMessage>>();
  private readonly files = new Map<string, { data: Buffer; contentType: string }>();
  private readonly interactions = new Map<string, Interaction>();
  private readonly waiters: Array<{ test: () => boolean; resolve: () => void }> = [];
  private nextId = 0n;
  private port = 0;

  constructor(opts: { token?: string; botName?: string } = {}) {
    this.token = opts.token ?? `FAKE.bot-token.${Math.random().toString(36).slice(2)}`;
    this.appId = this.snowflake();
    this.bot = { id: this.appId, username: opts.botName ?? 'MiniGPT', discriminator: '0', global_name: null, avatar: null, bot: true };
    this.server = createServer((req, res) => {
      this.route(req, res).catch((err: unknown) => {
        if (!res.headersSent) this.json(res, 500, { message: String(err), code: 0 });
        else res.destroy();
      });
    });
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    this.wss = new WebSocketServer({ noServer: true });
    this.server.on('upgrade', (req, socket, head) => {
      const path = (req.url ?? '').split('?')[0].replace(/\/+$/, '');
      if (path !== '/gateway') {
        socket.destroy();
        return;
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => this.onGateway(ws));
    });
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
    return this;
  }

  get origin(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** What DISCORD_API_URL is set to (discord.js adds `/v10`). */
  get apiUrl(): string {
    return `${this.origin}/api`;
  }

  get gatewayUrl(): string {
    return `ws://127.0.0.1:${this.port}/gateway`;
  }

  async close(): Promise<void> {
    for (const s of this.sessions) s.ws.terminate();
    this.wss.close();
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  // --------------------------------------------------------------------------------------------
  // World building
  // --------------------------------------------------------------------------------------------

  snowflake(): string {
    // Timestamped like real ids (discord.js derives createdAt from them), unique and increasing.
    const ms = BigInt(Date.now()) - EPOCH;
    return ((ms << 22n) + (this.nextId++ % 4096n)).toString();
  }

  user(name: string): ApiUser {
    return { id: this.snowflake(), username: name, discriminator: '0', global_name: name, avatar: null };
  }

  /** A guild with text channels (ids returned); the bot is a member with every permission. */
  addGuild(name: string, channelNames: string[]): { guildId: string; channelIds: string[] } {
    const guildId = this.snowflake();
    const channels = channelNames.map((n, i) => {
      const c: ApiChannel = {
        id: this.snowflake(),
        type: 0,
        guild_id: guildId,
        name: n,
        position: i,
        permission_overwrites: [],
        parent_id: null,
        nsfw: false,
        topic: null,
        last_message_id: null,
        rate_limit_per_user: 0,
      };
      this.channels.set(c.id, c);
      return c;
    });
    const now = new Date().toISOString();
    this.guilds.set(guildId, {
      id: guildId,
      name,
      icon: null,
      owner_id: this.snowflake(),
      afk_timeout: 300,
      verification_level: 0,
      default_message_notifications: 0,
      explicit_content_filter: 0,
      roles: [
        {
          id: guildId,
          name: '@everyone',
          permissions: PERMISSIONS.ALL,
          position: 0,
          color: 0,
          hoist: false,
          managed: false,
          mentionable: false,
          flags: 0,
        },
      ],
      emojis: [],
      stickers: [],
      features: [],
      mfa_level: 0,
      system_channel_flags: 0,
      premium_tier: 0,
      preferred_locale: 'en-US',
      nsfw_level: 0,
      joined_at: now,
      large: false,
      unavailable: false,
      member_count: 2,
      voice_states: [],
      presences: [],
      members: [{ user: this.bot, roles: [], joined_at: now, deaf: false, mute: false, flags: 0 }],
      channels: [],
      threads: [],
      stage_instances: [],
      guild_scheduled_events: [],
    });
    return { guildId, channelIds: channels.map((c) => c.id) };
  }

  /** The bot is added to a new server while connected: the server as `addGuild` makes it, announced by GUILD_CREATE. */
  joinGuild(name: string, channelNames: string[]): { guildId: string; channelIds: string[] } {
    const made = this.addGuild(name, channelNames);
    this.dispatch('GUILD_CREATE', this.guildCreate(made.guildId));
    return made;
  }

  /**
   * GUILD_DELETE for a server: `outage`, it became unavailable (Discord sends `unavailable: true`; it comes back
   * with `available()`); else the bot was removed from it (kicked, or the server deleted), and it is gone here too.
   */
  removeGuild(guildId: string, opts: { outage?: boolean } = {}): void {
    this.dispatch('GUILD_DELETE', opts.outage ? { id: guildId, unavailable: true } : { id: guildId });
    if (opts.outage) return;
    this.guilds.delete(guildId);
    for (const [id, c] of this.channels) if (c.guild_id === guildId) this.channels.delete(id);
  }

  /** A channel or thread deleted (by a user): THREAD_DELETE for a thread, else CHANNEL_DELETE (with its threads gone too). */
  deleteChannel(id: string): void {
    const c = this.channels.get(id);
    if (!c) throw new Error(`no channel ${id}`);
    this.channels.delete(id);
    if (c.type === 11) {
      this.dispatch('THREAD_DELETE', { id, guild_id: c.guild_id, parent_id: c.parent_id, type: c.type });
      return;
    }
    for (const [tid, t] of this.channels) if (t.parent_id === id) this.channels.delete(tid);
    this.dispatch('CHANNEL_DELETE', c);
  }

  /** A server back after an outage: GUILD_CREATE again. */
  available(guildId: string): void {
    this.dispatch('GUILD_CREATE', this.guildCreate(guildId));
  }

  /** A GUILD_CREATE payload: the server with its channels and threads. */
  private guildCreate(guildId: string): Record<string, unknown> {
    const guildChannels = [...this.channels.values()].filter((c) => c.guild_id === guildId);
    return {
      ...this.guilds.get(guildId),
      channels: guildChannels.filter((c) => c.type !== 11),
      threads: guildChannels.filter((c) => c.type === 11),
    };
  }

  /** A DM channel between the bot and `user`. */
  addDm(user: ApiUser): string {
    const c: ApiChannel = { id: this.snowflake(), type: 1, recipients: [user], last_message_id: null };
    this.channels.set(c.id, c);
    return c.id;
  }

  channel(id: string): ApiChannel | undefined {
    return this.channels.get(id);
  }

  /** Serves `data` on the CDN; returns an attachment object as Discord sends it (signed URL). */
  addAttachment(filename: string, data: Buffer, contentType?: string, dims?: { width: number; height: number }): ApiAttachment {
    const id = this.snowflake();
    const path = `/attachments/${this.snowflake()}/${id}/${encodeURIComponent(filename)}`;
    this.files.set(path, { data, contentType: contentType ?? 'application/octet-stream' });
    const sig = `?ex=${Date.now().toString(16)}&is=${(Date.now() - 1000).toString(16)}&hm=${'ab12'.repeat(16)}&`;
    return {
      id,
      filename,
      size: data.byteLength,
      url: `${this.origin}${path}${sig}`,
      proxy_url: `${this.origin}${path}${sig}`,
      ...(contentType ? { content_type: contentType } : {}),
      ...(dims ?? {}),
    };
  }

  /** Makes the CDN answer the attachment's (or URL's) download only after `ms` (a slow download). */
  delayFile(attachment: { url: string } | string, ms: number): void {
    this.fileDelays.set(new URL(typeof attachment === 'string' ? attachment : attachment.url).pathname, ms);
  }

  /** Serves `data` at a CDN path without an attachment object (for links). */
  addCdnFile(path: string, data: Buffer, contentType: string): string {
    this.files.set(path, { data, contentType });
    return `${this.origin}${path}`;
  }

  // --------------------------------------------------------------------------------------------
  // Gateway
  // --------------------------------------------------------------------------------------------

  private onGateway(ws: WebSocket): void {
    const session: Session = { ws, identified: false, seq: 0 };
    this.sessions.add(session);
    this.gatewayStats.connections++;
    ws.on('close', () => {
      this.sessions.delete(session);
      if (session.gw?.socket === session) session.gw.socket = undefined;
    });
    ws.on('message', (raw) => {
      let p: { op: number; d: any };
      try {
        p = JSON.parse(raw.toString());
      } catch {
        ws.close(4002, 'Decode error');
        return;
      }
      this.gatewayIn.push(p);
      if (p.op === 1) {
        ws.send(JSON.stringify({ op: 11, d: null }));
      } else if (p.op === 2) {
        this.gatewayStats.identifies++;
        if (p.d?.token !== this.token || this.refuseIdentify) {
          ws.close(4004, 'Authentication failed.');
          return;
        }
        const shard: [number, number] = Array.isArray(p.d?.shard) ? [Number(p.d.shard[0]), Number(p.d.shard[1])] : [0, 1];
        if (shard[1] < this.shards) {
          ws.close(4011, 'Sharding required.');
          return;
        }
        session.identified = true;
        session.intents = p.d.intents;
        const gw: GatewaySession = { id: Math.random().toString(36).slice(2), shard, seq: 0, events: [], socket: session, resumable: true };
        this.gwSessions.set(gw.id, gw);
        session.gw = gw;
        this.send(session, 'READY', {
          v: 10,
          user: { ...this.bot, verified: true, mfa_enabled: false, flags: 0 },
          guilds: [...this.guilds.keys()].filter((id) => this.onShard(id, shard)).map((id) => ({ id, unavailable: true })),
          session_id: gw.id,
          resume_gateway_url: this.gatewayUrl,
          shard,
          application: { id: this.appId, flags: 0 },
          private_channels: [],
          relationships: [],
        });
        for (const g of this.guilds.values()) if (this.onShard(g.id, shard)) this.send(session, 'GUILD_CREATE', this.guildCreate(g.id));
        this.notify();
      } else if (p.op === 6) {
        // RESUME: replay what the session missed, then RESUMED; an unknown or closed session must identify anew.
        this.gatewayStats.resumes++;
        const gw = this.gwSessions.get(String(p.d?.session_id ?? ''));
        if (p.d?.token !== this.token || !gw || !gw.resumable || gw.socket) {
          ws.send(JSON.stringify({ op: 9, d: false }));
          return;
        }
        const from = Number(p.d?.seq ?? 0);
        session.identified = true;
        session.gw = gw;
        gw.socket = session;
        for (const e of gw.events) if (e.s > from) ws.send(JSON.stringify({ op: 0, t: e.t, s: e.s, d: e.d }));
        gw.seq++;
        ws.send(JSON.stringify({ op: 0, t: 'RESUMED', s: gw.seq, d: {} }));
        this.gatewayStats.resumed++;
        this.notify();
      }
    });
    ws.send(JSON.stringify({ op: 10, d: { heartbeat_interval: 41250 } }));
  }

  private send(session: Session, t: string, d: unknown): void {
    const gw = session.gw;
    if (!gw) return;
    this.record(gw, t, d);
  }

  /** Numbers an event in its gateway session, keeps it for a RESUME, and sends it when the session has a socket. */
  private record(gw: GatewaySession, t: string, d: unknown): void {
    gw.seq++;
    gw.events.push({ s: gw.seq, t, d });
    if (gw.events.length > 5000) gw.events.splice(0, gw.events.length - 5000);
    const s = gw.socket;
    if (s && s.ws.readyState === s.ws.OPEN) {
      s.seq = gw.seq;
      s.ws.send(JSON.stringify({ op: 0, t, s: gw.seq, d }));
    }
  }

  /**
   * Sends a dispatch event to every live gateway session: the connected ones get it now, ones whose socket
   * dropped get it when they RESUME (as Discord does).
   */
  dispatch(t: string, d: unknown): void {
    const e = d as { guild_id?: string; id?: string } | null;
    const guild = e?.guild_id ?? (t.startsWith('GUILD_') ? e?.id : undefined);
    for (const gw of this.gwSessions.values()) {
      if (!gw.resumable) continue;
      if (guild ? !this.onShard(guild, gw.shard) : gw.shard[0] !== 0) continue;
      this.record(gw, t, d);
    }
  }

  /** Whether a guild's events go to `shard` (Discord's rule: (guild_id >> 22) % count). */
  private onShard(guildId: string, [id, count]: [number, number]): boolean {
    return Number((BigInt(guildId) >> 22n) % BigInt(count)) === id;
  }

  /** The shard ids of the identified gateway sessions with a socket. */
  get connectedShards(): number[] {
    return [...this.sessions]
      .filter((s) => s.identified && s.gw?.socket === s)
      .map((s) => s.gw!.shard[0])
      .sort((a, b) => a - b);
  }

  /**
   * Drops every gateway connection with `code`: 4000-4002, 4009 (and op 7 RECONNECT, `code` 'reconnect')
   * let the client RESUME and get the events it missed; 1000, 4003, 4007, 4008 end the session (a new
   * IDENTIFY, and what happened meanwhile is not replayed, as on Discord).
   */
  dropGateway(code: number | 'reconnect'): void {
    const resumable = code === 'reconnect' || [4000, 4001, 4002, 4009].includes(code);
    for (const s of [...this.sessions]) {
      if (s.gw && !resumable) s.gw.resumable = false;
      if (s.gw?.socket === s) s.gw.socket = undefined;
      if (code === 'reconnect') s.ws.send(JSON.stringify({ op: 7, d: null }));
      else s.ws.close(code, 'fake drop');
    }
    if (!resumable) for (const [id, gw] of this.gwSessions) if (!gw.resumable) this.gwSessions.delete(id);
  }

  get connected(): boolean {
    return [...this.sessions].some((s) => s.identified && s.gw?.socket === s);
  }

  // --------------------------------------------------------------------------------------------
  // Users' actions
  // --------------------------------------------------------------------------------------------

  /** A user posts a message (MESSAGE_CREATE); returns the message as dispatched. */
  postMessage(
    channelId: string,
    author: ApiUser,
    content: string,
    extra: { attachments?: ApiAttachment[]; embeds?: any[]; mentionBot?: boolean; replyTo?: string } = {},
  ): ApiMessage {
    const ch = this.channels.get(channelId);
    if (!ch) throw new Error(`no channel ${channelId}`);
    const mentions = extra.mentionBot ? [this.bot] : [];
    const text = extra.mentionBot ? `<@${this.bot.id}> ${content}` : content;
    const msg = this.storeMessage(ch, author, text, {
      attachments: extra.attachments ?? [],
      embeds: extra.embeds ?? [],
      mentions,
      ...(extra.replyTo
        ? {
            message_reference: {
              type: 0,
              message_id: extra.replyTo,
              channel_id: channelId,
              ...(ch.guild_id ? { guild_id: ch.guild_id } : {}),
            },
            type: 19,
          }
        : {}),
    });
    const payload: ApiMessage = { ...msg };
    if (extra.replyTo) payload.referenced_message = this.messages.get(channelId)?.get(extra.replyTo) ?? null;
    if (ch.guild_id) payload.member = { roles: [], joined_at: new Date().toISOString(), deaf: false, mute: false, flags: 0 };
    if (ch.type === 1) payload.channel_type = 1;
    this.dispatch('MESSAGE_CREATE', payload);
    return msg;
  }

  /**
   * The author edits message `messageId` (MESSAGE_UPDATE with the whole message, as Discord sends it for a content
   * edit): `content` as typed (`mentionBot`: with the bot's mention in front, as postMessage writes it).
   */
  userEdits(
    channelId: string,
    messageId: string,
    content: string,
    extra: { mentionBot?: boolean; removeAttachments?: boolean } = {},
  ): ApiMessage {
    const ch = this.channels.get(channelId);
    const msg = this.messages.get(channelId)?.get(messageId);
    if (!ch || !msg) throw new Error(`no message ${messageId} in channel ${channelId}`);
    msg.content = extra.mentionBot ? `<@${this.bot.id}> ${content}` : content;
    msg.mentions = extra.mentionBot ? [this.bot] : [];
    if (extra.removeAttachments) msg.attachments = [];
    msg.edited_timestamp = new Date().toISOString();
    const payload: ApiMessage = { ...msg };
    if (ch.guild_id) payload.member = { roles: [], joined_at: new Date().toISOString(), deaf: false, mute: false, flags: 0 };
    this.dispatch('MESSAGE_UPDATE', payload);
    return msg;
  }

  /**
   * Messages deleted by a user (their author or a moderator): MESSAGE_DELETE for one, MESSAGE_DELETE_BULK for several
   * (a moderator's purge), with the ids only, as Discord sends them.
   */
  userDeletes(channelId: string, ...messageIds: string[]): void {
    const ch = this.channels.get(channelId);
    if (!ch) throw new Error(`no channel ${channelId}`);
    for (const id of messageIds) if (!this.messages.get(channelId)?.has(id)) throw new Error(`no message ${id} in channel ${channelId}`);
    this.removeMessages(ch, messageIds);
  }

  private removeMessages(ch: ApiChannel, ids: string[]): void {
    for (const id of ids) this.messages.get(ch.id)?.delete(id);
    const where = { channel_id: ch.id, ...(ch.guild_id ? { guild_id: ch.guild_id } : {}) };
    if (ids.length === 1) this.dispatch('MESSAGE_DELETE', { id: ids[0], ...where });
    else this.dispatch('MESSAGE_DELETE_BULK', { ids, ...where });
  }

  /** A user runs a command (`permissions`: the member's, default all); returns the interaction's id and token. */
  interact(channelId: string, user: ApiUser, data: Record<string, any>, permissions = PERMISSIONS.ALL): { id: string; token: string } {
    return this.sendInteraction(channelId, user, { type: 2, data }, permissions);
  }

  /**
   * A user presses a button (`customId`) of message `messageId`; returns the interaction's id and token.
   * `permissions`: the member's in the channel (default all; `'0'`: none, e.g. not a moderator).
   */
  press(
    channelId: string,
    messageId: string,
    customId: string,
    user: ApiUser,
    permissions = PERMISSIONS.ALL,
  ): { id: string; token: string } {
    const message = this.messages.get(channelId)?.get(messageId);
    if (!message) throw new Error(`no message ${messageId} in ${channelId}`);
    return this.sendInteraction(channelId, user, { type: 3, data: { custom_id: customId, component_type: 2 }, message }, permissions);
  }

  private sendInteraction(
    channelId: string,
    user: ApiUser,
    kind: { type: number; data: Record<string, any>; message?: ApiMessage },
    permissions = PERMISSIONS.ALL,
  ): { id: string; token: string } {
    const ch = this.channels.get(channelId);
    if (!ch) throw new Error(`no channel ${channelId}`);
    const id = this.snowflake();
    const token = `aW50ZXJhY3Rpb246${id}_${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
    const guildId: string | undefined = ch.guild_id;
    this.interactions.set(token, {
      id,
      token,
      applicationId: this.appId,
      channelId,
      guildId,
      user,
      ...(kind.message ? { message: kind.message } : {}),
    });
    const payload: Record<string, any> = {
      id,
      application_id: this.appId,
      type: kind.type,
      data: kind.data,
      ...(kind.message ? { message: kind.message } : {}),
      channel_id: channelId,
      channel: { ...ch },
      token,
      version: 1,
      app_permissions: PERMISSIONS.ALL,
      locale: 'en-US',
      entitlements: [],
      authorizing_integration_owners: guildId ? { '0': guildId } : { '1': user.id },
      context: guildId ? 0 : 1,
      attachment_size_limit: 10 * 1024 * 1024,
    };
    if (guildId) {
      payload.guild_id = guildId;
      payload.guild_locale = 'en-US';
      payload.member = {
        user,
        roles: [],
        joined_at: new Date().toISOString(),
        deaf: false,
        mute: false,
        flags: 0,
        permissions,
      };
    } else {
      payload.user = user;
    }
    this.dispatch('INTERACTION_CREATE', payload);
    return { id, token };
  }

  /** Expires an interaction's token now, as Discord does 15 minutes after the interaction. */
  expireInteraction(token: string): void {
    const i = this.interactions.get(token);
    if (!i) throw new Error(`no interaction ${token}`);
    i.expired = true;
  }

  /** The original response message of an interaction (after its deferral). */
  original(token: string): ApiMessage | undefined {
    const i = this.interactions.get(token);
    return i?.original ? this.messages.get(i.channelId)?.get(i.original.id) : undefined;
  }

  interaction(token: string): Interaction | undefined {
    return this.interactions.get(token);
  }

  messagesIn(channelId: string): ApiMessage[] {
    return [...(this.messages.get(channelId)?.values() ?? [])];
  }

  message(channelId: string, id: string): ApiMessage | undefined {
    return this.messages.get(channelId)?.get(id);
  }

  // --------------------------------------------------------------------------------------------
  // Waiting
  // --------------------------------------------------------------------------------------------

  /** Resolves when `test()` holds (checked after every REST call and gateway event), or rejects after `timeoutMs`. */
  waitFor(test: () => boolean, timeoutMs = 30_000, what = 'condition'): Promise<void> {
    if (test()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const w = {
        test,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      };
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(w);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(
          new Error(`fake Discord: timed out waiting for ${what}; calls: ${this.calls.map((c) => `${c.method} ${c.path}`).join(', ')}`),
        );
      }, timeoutMs);
      this.waiters.push(w);
    });
  }

  private notify(): void {
    for (const w of [...this.waiters]) {
      let ok = false;
      try {
        ok = w.test();
      } catch {
        ok = false;
      }
      if (ok) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  }

  callsTo(method: string, pattern: RegExp): RestCall[] {
    return this.calls.filter((c) => c.method === method && pattern.test(c.path));
  }

  // --------------------------------------------------------------------------------------------
  // REST
  // --------------------------------------------------------------------------------------------

  private json(res: ServerResponse, status: number, body: unknown): void {
    if (status === 204) {
      res.writeHead(204).end();
      return;
    }
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text);
  }

  private async readBody(req: IncomingMessage): Promise<Buffer> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    return Buffer.concat(chunks);
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', this.origin);
    if (!url.pathname.startsWith(`${API_PREFIX}/`)) return this.cdn(url, req, res);
    const path = url.pathname
      .slice(API_PREFIX.length)
      .split('/')
      .map((x) => decodeURIComponent(x))
      .join('/');
    const raw = await this.readBody(req);
    const ct = req.headers['content-type'] ?? '';
    let body: any = null;
    const files: UploadedFile[] = [];
    if (ct.startsWith('multipart/form-data')) {
      const form = await new Response(raw, { headers: { 'content-type': ct } }).formData();
      for (const [field, value] of form.entries()) {
        if (typeof value === 'string') {
          if (field === 'payload_json') body = JSON.parse(value);
        } else {
          files.push({ field, filename: value.name, contentType: value.type, data: Buffer.from(await value.arrayBuffer()) });
        }
      }
    } else if (raw.length > 0) {
      body = JSON.parse(raw.toString('utf8'));
    }
    const call: RestCall = {
      method: req.method ?? 'GET',
      path,
      query: Object.fromEntries(url.searchParams),
      body,
      files,
      authorized: req.headers.authorization === `Bot ${this.token}` && !this.restTokenRefused,
      at: Date.now(),
    };
    this.calls.push(call);
    try {
      const fault = this.restFault?.(call);
      if (fault) {
        this.faulted.push(call);
        const text = JSON.stringify(fault.body ?? { message: `fake fault ${fault.status}`, code: 0 });
        res
          .writeHead(fault.status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...fault.headers })
          .end(text);
        return;
      }
      await this.handle(call, res);
    } finally {
      this.notify();
    }
  }

  private async handle(call: RestCall, res: ServerResponse): Promise<void> {
    const { method, path, body } = call;
    const seg = path.split('/').filter(Boolean);
    const isWebhook = seg[0] === 'webhooks' || seg[0] === 'interactions';
    if (!isWebhook && !call.authorized) return this.json(res, 401, { message: '401: Unauthorized', code: 0 });
    const forbidden = () => this.json(res, 403, { message: 'Missing Permissions', code: 50013 });
    const unknown = (what: string, code: number) => this.json(res, 404, { message: `Unknown ${what}`, code });

    // GET /gateway/bot, /gateway
    if (method === 'GET' && (path === '/gateway/bot' || path === '/gateway')) {
      return this.json(res, 200, {
        url: this.gatewayUrl,
        shards: this.shards,
        // (large bots get a concurrency of 16: their shards identify at once, not 5 s apart)
        session_start_limit: { total: 1000, remaining: 999, reset_after: 14_400_000, max_concurrency: this.shards > 1 ? 16 : 1 },
      });
    }
    if (method === 'GET' && path === '/users/@me') return this.json(res, 200, this.bot);
    if (method === 'GET' && path === '/applications/@me')
      return this.json(res, 200, { id: this.appId, name: this.bot.username, bot: this.bot, flags: 0 });

    // Application commands (bulk overwrite)
    if (seg[0] === 'applications' && method === 'PUT' && seg[1] === this.appId) {
      const scope = seg[2] === 'guilds' && seg[4] === 'commands' ? seg[3] : seg[2] === 'commands' && seg.length === 3 ? 'global' : null;
      if (!scope) return unknown('route', 0);
      const list = (body as any[]).map((c) => ({ ...c, id: this.snowflake(), application_id: this.appId, version: this.snowflake() }));
      this.commands.set(scope, list);
      return this.json(res, 200, list);
    }

    // Channels
    if (seg[0] === 'channels' && seg[1]) {
      const ch = this.channels.get(seg[1]);
      if (!ch) return unknown('Channel', 10003);
      if (seg.length === 2 && method === 'GET') return this.json(res, 200, ch);
      if (seg[2] === 'typing' && method === 'POST') return this.json(res, 204, null);
      if (seg[2] === 'messages') {
        if (seg.length === 3 && method === 'POST') {
          if (call.files.length > 0 && this.denyAttachments.has(ch.id)) return forbidden();
          const msg = this.storeMessage(ch, this.bot, body?.content ?? '', this.messageExtras(body, call.files));
          if (body?.message_reference) msg.message_reference = { type: 0, ...body.message_reference, channel_id: ch.id };
          this.dispatch('MESSAGE_CREATE', msg);
          return this.json(res, 200, msg);
        }
        const msg = seg[3] ? this.messages.get(ch.id)?.get(seg[3]) : undefined;
        if (!msg) return unknown('Message', 10008);
        if (seg.length === 4 && method === 'GET') return this.json(res, 200, msg);
        if (seg.length === 4 && method === 'DELETE') {
          if (msg.author.id !== this.bot.id) return forbidden();
          this.removeMessages(ch, [msg.id]);
          return this.json(res, 204, null);
        }
        if (seg.length === 4 && method === 'PATCH') {
          if (call.files.length > 0 && this.denyAttachments.has(ch.id)) return forbidden();
          this.editMessage(msg, body, call.files);
          this.dispatch('MESSAGE_UPDATE', msg);
          return this.json(res, 200, msg);
        }
        if (seg[4] === 'threads' && method === 'POST') {
          if (this.denyThreads.has(ch.id)) return forbidden();
          if (ch.type !== 0 && ch.type !== 5)
            return this.json(res, 400, { message: 'Cannot execute action on this channel type', code: 50024 });
          if (this.channels.has(msg.id))
            return this.json(res, 400, { message: 'A thread has already been created for this message', code: 160004 });
          const thread: ApiChannel = {
            id: msg.id,
            type: 11,
            guild_id: ch.guild_id,
            parent_id: ch.id,
            owner_id: this.bot.id,
            name: String(body?.name ?? ''),
            last_message_id: null,
            rate_limit_per_user: 0,
            message_count: 0,
            member_count: 1,
            total_message_sent: 0,
            flags: 0,
            thread_metadata: {
              archived: false,
              auto_archive_duration: body?.auto_archive_duration ?? 4320,
              archive_timestamp: new Date().toISOString(),
              locked: false,
              create_timestamp: new Date().toISOString(),
            },
          };
          this.channels.set(thread.id, thread);
          msg.thread = thread;
          this.dispatch('THREAD_CREATE', { ...thread, newly_created: true });
          return this.json(res, 201, thread);
        }
      }
      return unknown('route', 0);
    }

    // Interaction callbacks and webhooks (token auth)
    if (seg[0] === 'interactions' && seg.length === 4 && seg[3] === 'callback' && method === 'POST') {
      const i = this.interactions.get(seg[2]);
      if (!i || i.id !== seg[1]) return unknown('interaction', 10062);
      if (i.callback) return this.json(res, 400, { message: 'Interaction has already been acknowledged.', code: 40060 });
      i.callback = { type: body?.type, at: Date.now() };
      const ch = this.channels.get(i.channelId)!;
      if (body?.type === 5 || body?.type === 4) {
        const content = body?.type === 4 ? (body.data?.content ?? '') : '';
        const flags = (body.data?.flags ?? 0) | (body.type === 5 ? 128 : 0);
        i.original = this.storeMessage(ch, this.bot, content, {
          flags,
          interaction_metadata: {
            id: i.id,
            type: 2,
            user: i.user,
            authorizing_integration_owners: i.guildId ? { '0': i.guildId } : { '1': i.user.id },
          },
          webhook_id: this.appId,
        });
        if (!(flags & 64)) this.dispatch('MESSAGE_CREATE', i.original);
      }
      // DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE (a component's): the original is the component's message, 7 edits it
      if ((body?.type === 6 || body?.type === 7) && i.message) {
        i.original = i.message;
        if (body.type === 7) {
          this.editMessage(i.message, body.data ?? {}, call.files);
          this.dispatch('MESSAGE_UPDATE', i.message);
        }
      }
      return this.json(res, 204, null);
    }
    if (seg[0] === 'webhooks' && seg[1] === this.appId && seg[2]) {
      const i = this.interactions.get(seg[2]);
      if (!i) return unknown('Webhook', 10015);
      if (i.expired) return this.json(res, 401, { message: 'Invalid Webhook Token', code: 50027 });
      const ch = this.channels.get(i.channelId)!;
      if (seg[3] === 'messages' && seg[4] === '@original') {
        const msg = i.original ? this.messages.get(ch.id)?.get(i.original.id) : undefined;
        if (!msg) return unknown('Message', 10008);
        if (method === 'GET') return this.json(res, 200, msg);
        if (method === 'PATCH') {
          if (call.files.length > 0 && this.denyAttachments.has(ch.id)) return forbidden();
          this.editMessage(msg, body, call.files);
          msg.flags = (msg.flags ?? 0) & ~128;
          this.dispatch('MESSAGE_UPDATE', msg);
          return this.json(res, 200, msg);
        }
      }
      if (seg.length === 3 && method === 'POST') {
        if (call.files.length > 0 && this.denyAttachments.has(ch.id)) return forbidden();
        const msg = this.storeMessage(ch, this.bot, body?.content ?? '', {
          ...this.messageExtras(body, call.files),
          webhook_id: this.appId,
          flags: body?.flags ?? 0,
        });
        if (!((body?.flags ?? 0) & 64)) this.dispatch('MESSAGE_CREATE', msg);
        return this.json(res, 200, msg);
      }
      return unknown('route', 0);
    }
    return unknown('route', 0);
  }

  private messageExtras(body: any, files: UploadedFile[]): Record<string, any> {
    return { attachments: this.uploaded(files), embeds: body?.embeds ?? [], components: body?.components ?? [] };
  }

  private uploaded(files: UploadedFile[]): ApiAttachment[] {
    return files.map((f) => this.addAttachment(f.filename, f.data, f.contentType || undefined));
  }

  private storeMessage(ch: ApiChannel, author: ApiUser, content: string, extra: Record<string, any>): ApiMessage {
    const msg: ApiMessage = {
      id: this.snowflake(),
      channel_id: ch.id,
      ...(ch.guild_id ? { guild_id: ch.guild_id } : {}),
      author,
      content,
      timestamp: new Date().toISOString(),
      edited_timestamp: null,
      tts: false,
      mention_everyone: false,
      mentions: [],
      mention_roles: [],
      attachments: [],
      embeds: [],
      pinned: false,
      type: 0,
      flags: 0,
      components: [],
      ...extra,
    };
    let m = this.messages.get(ch.id);
    if (!m) this.messages.set(ch.id, (m = new Map()));
    m.set(msg.id, msg);
    ch.last_message_id = msg.id;
    return msg;
  }

  private editMessage(msg: ApiMessage, body: any, files: UploadedFile[]): void {
    if (body && 'content' in body) msg.content = body.content ?? '';
    if (body && 'embeds' in body) msg.embeds = body.embeds ?? [];
    if (body && 'components' in body) msg.components = body.components ?? [];
    if (files.length > 0 || (body && 'attachments' in body)) {
      const kept = (body?.attachments ?? [])
        .map((a: { id: string }) => (msg.attachments as ApiAttachment[]).find((x) => x.id === a.id))
        .filter(Boolean);
      msg.attachments = [...kept, ...this.uploaded(files)];
    }
    msg.edited_timestamp = new Date().toISOString();
  }

  // --------------------------------------------------------------------------------------------
  // CDN
  // --------------------------------------------------------------------------------------------

  /** `/redirect?to=URL` answers 302 to URL; `/slow` never answers; other paths serve added files. */
  private async cdn(url: URL, _req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.cdnHits.push({ path: url.pathname, at: Date.now() });
    this.notify();
    if (url.pathname === '/redirect') {
      res.writeHead(302, { location: url.searchParams.get('to') ?? '/' }).end();
      return;
    }
    if (url.pathname === '/slow') return; // left hanging; closed with the server
    const delay = this.fileDelays.get(url.pathname);
    if (delay) await new Promise((r) => setTimeout(r, delay).unref());
    const f = this.files.get(url.pathname);
    if (res.destroyed) return;
    if (!f) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': f.contentType, 'content-length': f.data.byteLength }).end(f.data);
  }
}
