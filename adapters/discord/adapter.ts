// The Discord adapter (issue 4, docs/architecture.md): translates discord.js v14 events into
// ConversationRequests and answer events back into Discord messages. Conversations, history, images and
// scheduling are the conversation manager's; this file only decides which conversation a Discord event
// belongs to, where the answer goes, and how it looks.
//
//   @mention with an image in a channel -> a thread on that message, the answer streamed into it
//   any message in a thread the bot started, or in a DM -> a follow-up (a new image replaces the image)
//   the latest question edited           -> answered again (edits.ts)
//   /describe, "Describe image"          -> deferred at once, the original response streamed, then a thread
//                                           on it for follow-ups (interactions.ts)
//   the bot removed from a server        -> the server's conversations forgotten
//   a bot thread or a channel deleted    -> its conversations forgotten
import {
  Events,
  GatewayDispatchEvents,
  Routes,
  ThreadAutoArchiveDuration,
  type Client,
  type AnyThreadChannel,
  type Guild,
  type Message,
  type SendableChannels,
  type ThreadChannel,
} from 'discord.js';
import {
  conversationId,
  type ConversationKey,
  type ConversationRequest,
  type ConversationState,
  type ResetOutcome,
} from '../../src/conversation/index.js';
import { LruMap } from '../../src/util/lru.js';
import { DISCORD_MESSAGE_LIMIT, notice, threadName } from './format.js';
import { apologiseOnFailure, HELP_NO_IMAGE, NO_THREAD_NOTICE, stripBotMention } from './replies.js';
import { admit, DEFAULT_RATE_LIMIT, userLimiter, type RateLimitSetting } from '../shared/rate-limit.js';
import {
  downloadImage,
  downloadPolicy,
  findImage,
  ImageInputProblem,
  NOT_AN_IMAGE,
  urlForLog,
  type DownloadPolicy,
  type ImageSource,
} from './images.js';
import type { RateLimiter, RateLimiterFactory } from './limits.js';
import { ArrivalOrder, type ArrivalTurn } from '../shared/arrival-order.js';
import { restartNotice, unlessRefused } from '../shared/answer-events.js';
import { describeError } from '../shared/errors.js';
import { forgetConversation, forgottenCount } from '../shared/forget.js';
import type { ConversationPort } from '../shared/port.js';
import type { ShardLeases } from '../shared/shard-lease.js';
import { TaskSet } from '../shared/tasks.js';
import { regenerateButton, relayAnswer, stopButton, type RelayResult, type SentMessage } from './relay.js';
import { onInteraction, REGENERATE_PREFIX, STOP_PREFIX, type InteractionHost } from './interactions.js';
import { StopButtons, type StopOutcome } from '../shared/stop-buttons.js';
import { Answering, EDIT_REPLACED_LINE, InFlight, LatestAnswers, type StoppedForEdit } from '../shared/regenerate.js';
import { onEdited } from './edits.js';
import { Deletions } from './deletions.js';
import { AnswerRecords } from '../shared/deleted.js';
import { channelTarget, dmKey, recordPosts, type Route, type RunOptions } from './targets.js';

/** What the adapter needs from the conversation manager. */
export type DiscordConversations = Pick<ConversationPort, 'handle' | 'reset' | 'forgetQuestion' | 'history' | 'forgetWorkspace' | 'store'>;

export interface DiscordAdapterOptions {
  manager: DiscordConversations;
  /** the bot token (DISCORD_TOKEN) */
  token: string;
  /** the application id (DISCORD_APP_ID); checked against the one Discord reports when given */
  appId?: string;
  /** REST base URL (DISCORD_API_URL; discord.js adds `/v10`); its host is also allowed for image downloads */
  apiUrl?: string;
  log?: (line: string) => void;
  /** answer only in these guilds (ids; empty or absent: all) */
  allowedGuilds?: readonly string[];
  /** answer only in these channels (ids; threads count as their parent channel; empty or absent: all) */
  allowedChannels?: readonly string[];
  /** answer direct messages (default true) */
  allowDMs?: boolean;
  /** requests per user and window (default 6 per 60 s); false: no limit */
  rateLimit?: RateLimitSetting;
  /** where the limit's counts live (default: this process, UserRateLimiter) */
  rateLimiter?: RateLimiterFactory;
  /** least time between two writes to one answer message (default 1500 ms: Discord allows 5 edits per 5 s) */
  editIntervalMs?: number;
  /** the answer's first text waits this long for more before it is shown (default 600 ms; see RelayOptions) */
  firstTextWaitMs?: number;
  /** least time between two places in the queue shown in a waiting reply (default 5 s) */
  queueUpdateMs?: number;
  /** a request waiting in line shows its place once it has waited this long (default 1 s; see RelayOptions) */
  placeAfterMs?: number;
  /** largest image downloaded (default 20 MiB) */
  maxImageBytes?: number;
  /** image download timeout (default 15 s) */
  downloadTimeoutMs?: number;
  /** how long to wait for the gateway's READY (default 30 s) */
  readyTimeoutMs?: number;
  /**
   * The shards this process connects, of `count` in all (DISCORD_SHARDS, DISCORD_SHARD_COUNT): to spread a large
   * bot's shards over several front ends. Absent: every shard, as many as Discord recommends.
   */
  shards?: { ids: readonly number[]; count: number };
  /**
   * Where front ends hold their shards (src/cluster/shard-lease.ts, in Redis): given, the adapter claims its
   * shards (`shards`, else every one Discord recommends) before connecting and refuses to start if another front
   * end connects any of them; absent (one process), nothing is claimed.
   */
  shardLeases?: ShardLeases;
}

export interface DiscordAdapter {
  readonly client: Client<true>;
  /** the bot's user id */
  readonly botId: string;
  /** aborts the answers in progress (their messages say so), waits for them briefly, disconnects */
  close(): Promise<void>;
  /**
   * Resolves, with the reason as one sentence, if Discord disconnects the bot for good while it runs (the
   * token was reset, the intents were disallowed: close codes discord.js does not reconnect after); never
   * otherwise. `minigpt serve` then stops with that sentence and a non-zero exit code.
   */
  readonly fatal: Promise<Error>;
  /** the start's look for servers the bot was removed from while offline, in the background (DiscordBot.sweep) */
  readonly swept: Promise<void>;
}

export { DEFAULT_RATE_LIMIT };
export const DEFAULT_EDIT_INTERVAL_MS = 1500;
const CLOSE_GRACE_MS = 5_000;
const KNOWN_REPLIES = 5_000;
/** The store's entries saying which conversation a bot answer in a channel belongs to (ids only) */
const REPLY_PREFIX = 'discord:reply:';
const REPLY_TTL_MS = 90 * 24 * 3600 * 1000;
/** The store's entries saying which conversation a message was asked in and which bot messages answered it (ids only) */
const ANSWERS_PREFIX = 'discord:answers:';

/** The adapter's event handling on a connected client (connect.ts makes the client and waits for READY). */
export class DiscordBot implements DiscordAdapter, InteractionHost {
  readonly client: Client<true>;
  readonly manager: DiscordConversations;
  readonly log: (line: string) => void;
  readonly policy: DownloadPolicy;
  private readonly rate: RateLimiter | null;
  private readonly editIntervalMs: number;
  private readonly firstTextWaitMs: number | undefined;
  private readonly queueUpdateMs: number | undefined;
  private readonly placeAfterMs: number | undefined;
  private readonly allowedGuilds: ReadonlySet<string>;
  private readonly allowedChannels: ReadonlySet<string>;
  private readonly allowDMs: boolean;
  /** threads this process started (besides ownerId, for threads Discord has not described yet) */
  private readonly botThreads = new LruMap<string, true>(KNOWN_REPLIES);
  /** each conversation's latest answer, which carries the Regenerate button */
  private readonly latestAnswers: LatestAnswers<SentMessage>;
  /** bot answers posted in a channel (no thread) -> their conversation, so replies to them follow up */
  private readonly replyKeys = new LruMap<string, ConversationKey>(KNOWN_REPLIES);
  private readonly tasks = new TaskSet((what, err) => this.log(`discord: ${what} handler failed: ${describeError(err)}`));
  private readonly controllers = new Set<AbortController>();
  /** the Stop buttons of the answers being written */
  private readonly stops = new StopButtons();
  /** the answers being regenerated */
  readonly regenerating: InFlight;
  /** the questions being answered (an edit of one stops it) */
  private readonly answering = new Answering();
  /** each answered message's conversation and answers (a deletion of the message deletes them) */
  readonly answers: AnswerRecords;
  private readonly deletions: Deletions;
  /** per-conversation arrival order of requests, up to the manager (see adapters/shared/arrival-order.ts) */
  private readonly order: ArrivalOrder;
  private closing: Promise<void> | undefined;
  /** run after the client is destroyed (e.g. giving up the shards' hold) */
  private readonly afterClose: (() => Promise<void>)[] = [];
  private failWith: (err: Error) => void = () => {};
  readonly fatal = new Promise<Error>((resolve) => (this.failWith = resolve));
  swept: Promise<void> = Promise.resolve();

  constructor(client: Client<true>, opts: DiscordAdapterOptions, log: (line: string) => void) {
    this.client = client;
    this.manager = opts.manager;
    this.log = log;
    this.policy = downloadPolicy({ apiUrl: opts.apiUrl, maxBytes: opts.maxImageBytes, timeoutMs: opts.downloadTimeoutMs });
    // A request waits for the one before it in its conversation at most this long (that one's image download
    // has its own timeout; this is the backstop).
    this.order = new ArrivalOrder(this.policy.timeoutMs + 30_000, (k) =>
      log(`discord: a request in ${k} waited too long for the one before it; answering it now`),
    );
    this.rate = userLimiter('discord', opts.rateLimit, opts.rateLimiter);
    this.editIntervalMs = opts.editIntervalMs ?? DEFAULT_EDIT_INTERVAL_MS;
    this.firstTextWaitMs = opts.firstTextWaitMs;
    this.queueUpdateMs = opts.queueUpdateMs;
    this.placeAfterMs = opts.placeAfterMs;
    this.allowedGuilds = new Set(opts.allowedGuilds ?? []);
    this.allowedChannels = new Set(opts.allowedChannels ?? []);
    this.allowDMs = opts.allowDMs ?? true;
    client.on(Events.MessageCreate, (m) => this.track('message', () => this.onMessage(m)));
    client.on(Events.MessageUpdate, (before, now) => {
      // (an edit takes its turn in its conversation as the gateway delivers it: started first)
      this.track('message edit', () => onEdited(this, before, now));
      // an image attachment the bot read, removed from its message: as if the message had been deleted
      // (an attachment can only go: with the message as it was known, unchanged attachments ask nothing of the store)
      const same = before && !before.partial && before.attachments.size === now.attachments.size;
      if (!now.partial && !now.author.bot && !same) this.track('attachment removal', () => this.deletions.imageRemoved(now));
    });
    // An edit in a DM the client has no channel for (no message there since it connected): discord.js drops it, the
    // event not saying enough about the channel; it is fetched, with the message, and the edit handled all the same.
    client.ws.on(GatewayDispatchEvents.MessageUpdate, (d: { id: string; channel_id: string; guild_id?: string }) => {
      if (!d.guild_id && !client.channels.cache.has(d.channel_id))
        this.track('message edit', () => this.uncachedDmEdit(d.channel_id, d.id));
    });
    this.answers = new AnswerRecords(opts.manager.store, ANSWERS_PREFIX, (line) => log(`discord: ${line}`));
    this.regenerating = new InFlight(opts.manager.store, 'discord:regenerating:', (line) => log(`discord: ${line}`));
    this.latestAnswers = new LatestAnswers(
      opts.manager.store,
      'discord:latest:',
      sentMessage,
      (a, b) => a.id === b.id,
      (line) => log(`discord: ${line}`),
    );
    this.deletions = new Deletions(this);
    // A deleted message that asked a question: read from the gateway, as discord.js drops a deletion in a channel it
    // has not cached (a DM's, after a restart).
    client.ws.on(GatewayDispatchEvents.MessageDelete, (d: { id: string; channel_id: string; guild_id?: string }) =>
      this.track('message deletion', () => this.deletions.onDeleted({ ids: [d.id], channelId: d.channel_id, guildId: d.guild_id })),
    );
    client.ws.on(GatewayDispatchEvents.MessageDeleteBulk, (d: { ids: string[]; channel_id: string; guild_id?: string }) =>
      this.track('message deletion', () => this.deletions.onDeleted({ ids: d.ids, channelId: d.channel_id, guildId: d.guild_id })),
    );
    client.on(Events.InteractionCreate, (i) => this.track('interaction', () => onInteraction(this, i)));
    // discord.js emits GuildDelete only when the bot was removed (kicked, left, the server deleted); a server's
    // outage comes as GuildUnavailable, and its conversations stay.
    client.on(Events.GuildDelete, (g) => this.track('guild removal', () => this.onRemoved(g)));
    client.on(Events.ThreadDelete, (t) => this.track('thread deletion', () => this.onThreadDeleted(t)));
    client.on(Events.ChannelDelete, (c) => {
      if ('guildId' in c) this.track('channel deletion', () => this.onChannelDeleted(c.guildId, c.id));
    });
  }

  get botId(): string {
    return this.client.user.id;
  }

  /** Discord disconnected the bot for good: `fatal` resolves with why (the owner, e.g. `minigpt serve`, then closes it). */
  fail(reason: string): void {
    if (this.closing) return;
    this.failWith(new Error(reason));
  }

  /** `fn` runs when the adapter has closed, after the client disconnected */
  onClosed(fn: () => Promise<void>): void {
    this.afterClose.push(fn);
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const c of this.controllers) c.abort();
      await this.tasks.settle(CLOSE_GRACE_MS);
      await this.client.destroy();
      for (const fn of this.afterClose) await fn();
    })();
    return this.closing;
  }

  /** Runs one event's handler; whatever happens stays inside it (logged), the bot goes on. */
  private track(what: string, fn: () => Promise<void>): void {
    if (this.closing) return;
    this.tasks.run(what, fn);
  }

  /**
   * The bot was removed from a server: what it kept of the server's conversations goes now, not after the retention
   * time (as on Slack when the app is uninstalled; Discord's developer policy asks for a server's data to be
   * deleted when the bot leaves it).
   */
  private async onRemoved(guild: Guild): Promise<void> {
    const n = await this.manager.forgetWorkspace('discord', guild.id);
    this.log(`discord: removed from server ${guild.name ? `${guild.name} ` : ''}(${guild.id})${forgottenCount(n)}`);
  }

  /**
   * Forgets the conversations of servers the bot was removed from while it was offline (Discord sends no GUILD_DELETE
   * for those; its developer policy asks for their data to go): those of servers on this process's `shards` that READY
   * did not list (it lists every server of its shards, unavailable ones included). At start, after READY, in the
   * background (`swept`): it walks the whole store, which the bot's answers need not wait for.
   */
  sweep(shards: { ids: readonly number[]; count: number }): void {
    this.swept = this.forgetServersLeft(shards);
    this.tasks.run('the look for servers left while offline', () => this.swept);
  }

  private async forgetServersLeft(shards: { ids: readonly number[]; count: number }): Promise<void> {
    const own = new Set(shards.ids);
    const member = (id: string) => this.client.guilds.cache.has(id);
    try {
      const n = await this.manager.forgetWorkspace('discord', (ws) => leftWhileOffline(ws, own, shards.count, member));
      if (n) this.log(`discord: removed from servers while offline${forgottenCount(n)}`);
    } catch (err) {
      this.log(`discord: could not look for servers the bot was removed from while offline: ${describeError(err)}`);
    }
  }

  /**
   * A thread the bot started was deleted: its conversation goes with it (whoever deleted it could see and remove the
   * whole exchange). discord.js reports threads it has in its cache: those active since the bot connected.
   */
  private async onThreadDeleted(thread: AnyThreadChannel): Promise<void> {
    if (!thread.parentId || !(this.botThreads.has(thread.id) || thread.ownerId === this.botId)) return;
    const key: ConversationKey = { platform: 'discord', workspace: thread.guildId, channel: thread.parentId, thread: thread.id };
    if ((await this.manager.reset(key)) === 'forgotten') this.log(`discord: thread ${thread.id} was deleted: its conversation forgotten`);
  }

  /** A channel was deleted: the conversations of its threads (and answers given in it) go with it. */
  private async onChannelDeleted(guildId: string, channelId: string): Promise<void> {
    const n = await this.manager.forgetWorkspace('discord', guildId, channelId);
    if (n !== 0) this.log(`discord: channel ${channelId} was deleted${forgottenCount(n)}`);
  }

  /** Whether the bot answers here (allowed guilds and channels; a thread counts as its parent channel; DMs). */
  allowed(guildId: string | null, channelId: string | null, parentId?: string | null): boolean {
    if (!guildId) return this.allowDMs;
    if (this.allowedGuilds.size > 0 && !this.allowedGuilds.has(guildId)) return false;
    if (this.allowedChannels.size > 0) {
      return (channelId !== null && this.allowedChannels.has(channelId)) || (!!parentId && this.allowedChannels.has(parentId));
    }
    return true;
  }

  /** A thread the bot started (its answers' threads): messages there are follow-ups. */
  async isBotThread(thread: ThreadChannel): Promise<boolean> {
    if (this.botThreads.has(thread.id)) return true;
    if (thread.ownerId) return thread.ownerId === this.botId;
    try {
      return (await thread.fetch()).ownerId === this.botId;
    } catch {
      return false;
    }
  }

  /**
   * Counts a request against the user's limit; over it, tells them and returns false. Channel replies are
   * sent once per window (no spam); `privately` (an interaction's ephemeral reply, which must be answered
   * anyway) every time.
   */
  async withinRate(user: string, tell: (text: string) => Promise<unknown>, privately = false): Promise<boolean> {
    if (await admit(this.rate, user, tell, privately)) return true;
    this.log(`discord: user ${user} is over the rate limit`);
    return false;
  }

  /**
   * A message's image, else the image of the message it replies to (unless that one is the bot's: then `from` is that
   * message's id).
   */
  private async imageOf(msg: Message): Promise<{ source?: ImageSource; rejected?: string; from?: string }> {
    const own = findImage(msg, this.policy);
    if (own.source || own.rejected || !msg.reference?.messageId) return own;
    try {
      const ref = await msg.fetchReference();
      if (ref.author.id === this.botId) return {};
      return { ...findImage(ref, this.policy), from: ref.id };
    } catch (err) {
      this.log(`discord: could not fetch the replied-to message: ${describeError(err)}`);
      return {};
    }
  }

  /** The image's bytes (none without a source); a refused or failed one throws ImageInputProblem, logged. */
  async download(source: ImageSource | undefined, rejected: string | undefined): Promise<Uint8Array | undefined> {
    if (!source) {
      if (rejected) throw new ImageInputProblem('not_image', NOT_AN_IMAGE(rejected));
      return undefined;
    }
    try {
      return await downloadImage(source, this.policy);
    } catch (err) {
      if (err instanceof ImageInputProblem) this.log(`discord: image ${urlForLog(source.url)} refused: ${err.kind}`);
      throw err;
    }
  }

  /**
   * Hands the request to the manager once the conversation's earlier requests have been (`turn`: its place in
   * the order the gateway delivered them), then relays the answer.
   */
  async run(
    req: Omit<ConversationRequest, 'signal'>,
    route: Route,
    label: string,
    turn: ArrivalTurn,
    opts: RunOptions = {},
  ): Promise<RelayResult> {
    await turn.ready();
    const controller = new AbortController();
    this.controllers.add(controller);
    // A request that reaches this point while the adapter closes is answered at once with the restart notice.
    if (this.closing) controller.abort();
    const started = Date.now();
    const stop = this.stops.open(req.user);
    const signal = AbortSignal.any([controller.signal, stop.signal]);
    const ended = this.answering.start(req, stop.id);
    let answered = false;
    const posted: SentMessage[] = [];
    try {
      let events = restartNotice(this.manager.handle({ ...req, signal }), () => this.closing !== undefined);
      // The request has its place in the manager's queue: the conversation's next request may go on.
      turn.release();
      if (opts.quiet) {
        const held = await unlessRefused(events, opts.quiet);
        if ('refused' in held) {
          this.log(`discord: ${label}: not answered (${held.refused.code}: ${held.refused.message})`);
          return { ok: false, error: { code: held.refused.code, message: held.refused.message }, attached: false, chars: 0 };
        }
        events = held.events;
      }
      const r = await relayAnswer(events, recordPosts(route.target, posted), {
        editIntervalMs: this.editIntervalMs,
        firstTextWaitMs: this.firstTextWaitMs,
        ...(this.queueUpdateMs !== undefined ? { queueUpdateMs: this.queueUpdateMs } : {}),
        ...(this.placeAfterMs !== undefined ? { placeAfterMs: this.placeAfterMs } : {}),
        notice: route.notice,
        log: this.log,
        label,
        stop: { button: stopButton(`${STOP_PREFIX}${stop.id}`), stoppedBy: stop.stoppedBy },
        // (an answer in a channel, no thread, names its conversation: a reply's key is not kept over a restart)
        ...(req.requestId
          ? { regenerate: regenerateButton(`${REGENERATE_PREFIX}${req.requestId}${route.inChannel ? `|${route.key.thread}` : ''}`) }
          : {}),
      });
      const stopper = stop.stoppedBy();
      const outcome = r.ok
        ? `answered (${r.chars} chars${r.attached ? ', annotated image' : ''})`
        : stopper && r.error?.code === 'cancelled'
          ? `stopped by user ${stopper}`
          : `error ${r.error?.code}`;
      // Answers in a channel (no thread): a reply to one of them continues the conversation.
      if (route.inChannel) await this.rememberReplies(route.target.ids ?? [], route.key);
      // Only the latest answer carries the Regenerate button (a regenerated answer's predecessor lost it when pressed);
      // the answer to an edited question also says it was answered again.
      const before = r.regenerateOn && (await this.latestAnswers.replace(conversationId(route.key), r.regenerateOn));
      if (before && req.regenerate === undefined) await this.retire(before, req.edit !== undefined ? EDIT_REPLACED_LINE : undefined);
      this.log(`discord: ${label}: ${outcome} in ${Date.now() - started} ms`);
      answered = r.ok;
      return r;
    } finally {
      this.controllers.delete(controller);
      stop.close();
      // (deleting the message, or the one its image came from, deletes them: kept before the answer counts as ended,
      // which a deletion waits for)
      const kept = posted.map((m) => ({ channel: m.channelId, id: m.id }));
      await this.answers.answered({ asked: opts.asked, imageFrom: req.imageFrom }, route.key, kept);
      ended?.(answered);
    }
  }

  private async uncachedDmEdit(channelId: string, messageId: string): Promise<void> {
    const ch = await this.client.channels.fetch(channelId);
    if (!ch?.isDMBased() || !ch.isTextBased()) return;
    await onEdited(this, undefined, await ch.messages.fetch(messageId));
  }

  /** The answer before a conversation's latest loses its Regenerate button (and gets `line` under it). */
  private async retire(before: SentMessage, line?: string): Promise<void> {
    try {
      const body: { components: []; content?: string } = { components: [] };
      if (line) {
        const old = (await this.client.rest.get(Routes.channelMessage(before.channelId, before.id))) as { content?: string };
        const add = `\n${notice(line)}`;
        if (typeof old.content === 'string' && old.content.length + add.length <= DISCORD_MESSAGE_LIMIT) body.content = old.content + add;
      }
      await this.client.rest.patch(Routes.channelMessage(before.channelId, before.id), { body });
    } catch (err) {
      this.log(`discord: could not take the Regenerate button off answer ${before.id}: ${describeError(err)}`);
    }
  }

  /** The answer to the message asked as `asked`, if one is being given here, stopped (its message was deleted) and waited for. */
  async stopForDeletion(asked: string): Promise<void> {
    await this.answering.stopForDeletion(asked, (id) => this.stops.cancel(id));
  }

  /**
   * The answer to the message asked as `asked`, if one is being given here, stopped (as by its asker `user`, who edited
   * the message) and waited for (edits.ts).
   */
  stopForEdit(asked: string, user: string): Promise<StoppedForEdit | undefined> {
    return this.answering.stop(asked, (id) => this.stops.press(id, user, false));
  }

  /** The conversation of a bot answer posted in a channel (no thread), while this process remembers it. */
  replyKey(messageId: string): ConversationKey | undefined {
    return this.replyKeys.get(messageId);
  }

  /**
   * Bot answers posted in a channel (no thread) belong to `key`: kept in memory and in the store (for a restart, and
   * for the other front ends of a cluster; ids only).
   */
  private async rememberReplies(ids: readonly string[], key: ConversationKey): Promise<void> {
    for (const id of ids) {
      this.replyKeys.set(id, key);
      await this.manager.store.set(`${REPLY_PREFIX}${id}`, key, REPLY_TTL_MS).catch((err: unknown) => {
        this.log(`discord: could not store which conversation answer ${id} belongs to: ${describeError(err)}`);
      });
    }
  }

  /** The conversation of a bot answer posted in a channel (no thread): remembered, or stored; undefined for another message. */
  async replyKeyOf(messageId: string): Promise<ConversationKey | undefined> {
    const known = this.replyKeys.get(messageId);
    if (known) return known;
    try {
      const stored = (await this.manager.store.get(`${REPLY_PREFIX}${messageId}`)) as Partial<ConversationKey> | undefined;
      if (stored?.platform !== 'discord' || ![stored.workspace, stored.channel, stored.thread].every((v) => typeof v === 'string'))
        return undefined;
      const key = stored as ConversationKey;
      this.replyKeys.set(messageId, key);
      return key;
    } catch (err) {
      this.log(`discord: could not read which conversation message ${messageId} belongs to: ${describeError(err)}`);
      return undefined;
    }
  }

  /** The stored conversation (to check a Regenerate button before answering). */
  history(key: ConversationKey): Promise<ConversationState | null> {
    return this.manager.history(key);
  }

  /**
   * Stop button `id` (its custom id after STOP_PREFIX) pressed by `user` (`moderator`: may manage messages in the
   * channel): the asker or a moderator stops the answer; anyone else is told no; an answer that already ended (or
   * ran in a process since restarted) is `finished`.
   */
  stop(id: string, user: string, moderator: boolean): StopOutcome {
    return this.stops.press(id, user, moderator);
  }

  /**
   * `/forget` by `user` (`moderator`: may manage messages): the conversation's image and history deleted, if the
   * user took part in it or may moderate; 'empty' when there was nothing stored.
   */
  async forget(key: ConversationKey, user: string, moderator: boolean): Promise<ResetOutcome> {
    const outcome = await forgetConversation(this.manager, key, user, moderator);
    if (outcome === 'forgotten') this.log(`discord: conversation ${key.channel}/${key.thread} forgotten at the request of user ${user}`);
    return outcome;
  }

  // ------------------------------------------------------------------------------------------------
  // Messages: mentions, thread follow-ups, DMs
  // ------------------------------------------------------------------------------------------------

  /**
   * The conversation whose request order a message or interaction joins, known without awaiting anything: a
   * thread or DM channel, or the in-channel conversation of the bot answer it replies to. A mention that starts
   * a new thread has no earlier request to wait for.
   */
  private orderKey(
    channel: { id: string; isThread(): boolean; isDMBased(): boolean } | null,
    channelId: string | null,
    dm: boolean,
    replyTo?: string | null,
  ): string | undefined {
    if (dm || channel?.isThread() || channel?.isDMBased()) return channelId ? `channel ${channelId}` : undefined;
    const k = replyTo ? this.replyKeys.get(replyTo) : undefined;
    // (a reply to an answer this process does not remember, e.g. after a restart: ordered with the other replies to it)
    return k ? `conversation ${k.channel}/${k.thread}` : replyTo ? `reply ${replyTo}` : undefined;
  }

  /** The request's turn in its conversation: call it as the gateway delivers the event, before any await. */
  takeTurn(
    channel: { id: string; isThread(): boolean; isDMBased(): boolean } | null,
    channelId: string | null,
    dm: boolean,
    replyTo?: string | null,
  ): ArrivalTurn {
    return this.order.take(this.orderKey(channel, channelId, dm, replyTo));
  }

  /** A thread the bot opened: its messages are follow-ups even before Discord describes its owner. */
  rememberThread(id: string): void {
    this.botThreads.set(id, true);
  }

  private async onMessage(msg: Message): Promise<void> {
    if (msg.author.bot || msg.system || msg.webhookId) return;
    // Its turn in its conversation, taken as the gateway delivers it, before anything is awaited.
    const turn = this.takeTurn(msg.channel, msg.channelId, false, msg.reference?.messageId);
    try {
      await this.message(msg, turn);
    } finally {
      turn.release();
    }
  }

  private async message(msg: Message, turn: ArrivalTurn): Promise<void> {
    const ch = msg.channel;
    const dm = ch.isDMBased();
    const thread = ch.isThread() ? ch : null;
    const mentioned = msg.mentions.users.has(this.botId);
    const botThread = thread ? await this.isBotThread(thread) : false;
    if (!dm && !mentioned && !botThread) return;
    if (!this.allowed(msg.guildId, ch.id, thread?.parentId)) return;
    if (!ch.isSendable()) return;
    const label = `message ${msg.id} (${dm ? 'DM' : `guild ${msg.guildId}, channel ${ch.id}`})`;
    await apologiseOnFailure(
      this.log,
      label,
      () => this.answerMessage(msg, ch, { dm, thread, label, turn }),
      (content) => msg.reply({ content }),
    );
  }

  private async answerMessage(
    msg: Message,
    ch: SendableChannels,
    ctx: { dm: boolean; thread: ThreadChannel | null; label: string; turn: ArrivalTurn },
  ): Promise<void> {
    const text = stripBotMention(msg.content, this.botId);
    const answerKey = !ctx.dm && !ctx.thread && msg.reference?.messageId ? await this.replyKeyOf(msg.reference.messageId) : undefined;
    const found: { source?: ImageSource; rejected?: string; from?: string } = answerKey
      ? findImage(msg, this.policy)
      : await this.imageOf(msg);
    const newConversation = !ctx.dm && !ctx.thread && !answerKey;
    if (!found.source && !found.rejected && (newConversation || !text)) {
      // Nothing to answer: a mention in a channel without an image (help), or an empty follow-up (a sticker).
      if (newConversation) await msg.reply({ content: HELP_NO_IMAGE });
      return;
    }
    if (!(await this.withinRate(msg.author.id, (t) => msg.reply({ content: t })))) return;
    let image: Uint8Array | undefined;
    try {
      image = await this.download(found.source, found.rejected);
    } catch (err) {
      if (!(err instanceof ImageInputProblem)) throw err;
      await msg.reply({ content: `⚠️ ${err.message}` });
      return;
    }

    const guild = msg.guildId ?? '@me';
    let route: Route;
    if (ctx.dm) {
      route = { key: dmKey(ch.id), target: channelTarget(ch) };
    } else if (ctx.thread) {
      route = {
        key: { platform: 'discord', workspace: guild, channel: ctx.thread.parentId ?? ch.id, thread: ctx.thread.id },
        target: channelTarget(ch),
      };
    } else if (answerKey) {
      route = { key: answerKey, target: channelTarget(ch, msg), inChannel: true };
    } else {
      route = await this.openThread(msg, ch, text);
    }

    const req: Omit<ConversationRequest, 'signal'> = {
      key: route.key,
      user: msg.author.id,
      text,
      ...(image ? { image } : {}),
      ...(!text && image ? { task: 'caption' as const } : {}),
      ...(image && found.from ? { imageFrom: `discord-${found.from}` } : {}),
      requestId: `discord-${msg.id}`,
    };
    // (an attachment removed from its message later forgets its image as deleting that message would)
    if (image && found.source?.id) await this.answers.imageFile(found.source.id, req.imageFrom ?? req.requestId!, route.key);
    await this.run(req, route, ctx.label, ctx.turn, { asked: req.requestId });
  }

  /** A thread on the user's message; without the permission, a reply in the channel that says why. */
  private async openThread(msg: Message, ch: SendableChannels, text: string): Promise<Route> {
    const guild = msg.guildId ?? '@me';
    try {
      const thread = await msg.startThread({ name: threadName(text), autoArchiveDuration: ThreadAutoArchiveDuration.OneDay });
      this.rememberThread(thread.id);
      return { key: { platform: 'discord', workspace: guild, channel: ch.id, thread: thread.id }, target: channelTarget(thread) };
    } catch (err) {
      this.log(
        `discord: could not start a thread on message ${msg.id} in channel ${ch.id}: ${describeError(err)}; answering in the channel`,
      );
      return {
        key: { platform: 'discord', workspace: guild, channel: ch.id, thread: `message:${msg.id}` },
        target: channelTarget(ch, msg),
        notice: NO_THREAD_NOTICE,
        inChannel: true,
      };
    }
  }
}

/**
 * Whether a stored conversation's workspace is a server the bot was removed from while offline: a server id (not DMs'
 * '@me') on one of `own` shards (of `count`: Discord's rule, (id >> 22) % count) that the bot is not a `member` of.
 */
export function leftWhileOffline(workspace: string, own: ReadonlySet<number>, count: number, member: (id: string) => boolean): boolean {
  if (!/^\d{1,20}$/.test(workspace) || !(count >= 1)) return false;
  if (!own.has(Number((BigInt(workspace) >> 22n) % BigInt(count)))) return false;
  return !member(workspace);
}

/** A stored answer message (LatestAnswers), if it is one. */
function sentMessage(v: unknown): SentMessage | undefined {
  const m = v as Partial<SentMessage> | undefined;
  return typeof m?.channelId === 'string' && typeof m.id === 'string' ? { channelId: m.channelId, id: m.id } : undefined;
}
