// The Slack adapter's event handling: Bolt's middleware (each event claimed once by its id, its arrival-order
// turn taken before anything is awaited), the listeners (mentions, thread follow-ups, direct messages, edited
// questions, /describe, the shortcuts, the Stop and Regenerate buttons), each running as a tracked task, and closing (running answers finish, up to a
// limit).
import type { App, webApi } from '@slack/bolt';
import { LIMITS } from '../../src/conversation/limits.js';
import { LruMap } from '../../src/util/lru.js';
import { ArrivalOrder, type ArrivalTurn } from '../shared/arrival-order.js';
import { forgottenCount } from '../shared/forget.js';
import { admit, userLimiter, type RateLimiter } from '../shared/rate-limit.js';
import { StopButtons, type StopOutcome } from '../shared/stop-buttons.js';
import { ALREADY_REGENERATING, Answering, EDITED_LINE, editRequest, InFlight, LatestAnswers } from '../shared/regenerate.js';
import { TaskSet } from '../shared/tasks.js';
import { AnswerRecords, answerDeleted, DELETED_IMAGE_LINE, questionDeleted, type DeletionHost, type Posted } from '../shared/deleted.js';
import {
  answer,
  dmKey,
  isDirectMessage,
  REGENERATE_ACTION,
  slackKey,
  STOP_ACTION,
  threadReply,
  type Ask,
  answerMessage,
} from './answer.js';
import { SeenSet } from './dedupe.js';
import { WorkspaceAdmins } from './admins.js';
import { ephemeral, onDescribe, onShortcut, type DescribeContext } from './describe.js';
import { onForget } from './forget.js';
import { onRegenerate, regeneratePress, regenerateThread } from './regenerate.js';
import { deletedMessage, editedMessage, ignorable, takeTurn, teamOf, TURN, type MessageLike, type ShortcutPayload } from './events.js';
import { eventFiles, isImageFile, notAnImage, type SlackFile } from './files.js';
import { DEFAULT_MAX_MESSAGE_CHARS, slackTextToPlain } from './format.js';
import {
  DEFAULT_COMMAND,
  DEFAULT_FORGET_SHORTCUT,
  DEFAULT_SHORTCUT,
  type SlackAdapterOptions,
  type SlackConversationManager,
} from './options.js';
import { describeSlackError, slackErrorCode } from './errors.js';

type WebClient = webApi.WebClient;
type BoltApp = InstanceType<typeof App>;

const DAY = 24 * 60 * 60 * 1000;

/** The adapter's event handling on a started Bolt app (app.ts makes the app and checks the token). */
export class SlackBot {
  private readonly manager: SlackConversationManager;
  private readonly events: SeenSet;
  private readonly messages: SeenSet;
  private readonly threads: SeenSet;
  private readonly tasks: TaskSet;
  private readonly abort = new AbortController();
  private closing: Promise<void> | undefined;
  private readonly log: (line: string) => void;
  private readonly botUserId: string;
  /** what answering and /describe need from the adapter */
  private readonly ctx: DescribeContext;
  /** per-thread arrival order of requests, up to the manager (see adapters/shared/arrival-order.ts) */
  private readonly order: ArrivalOrder;
  /** workspace admins may stop and forget others' answers */
  private readonly admins: WorkspaceAdmins;
  /** requests per user (null: no limit) */
  private readonly rate: RateLimiter | null;
  private nextId = 1;
  /** the answers being regenerated (by request id) */
  private readonly regenerating: InFlight;
  private failWith: (err: Error) => void = () => {};
  /** resolves when Slack stops accepting the bot for good (see fail) */
  readonly fatal = new Promise<Error>((resolve) => (this.failWith = resolve));

  constructor(
    private readonly app: BoltApp,
    private readonly opts: SlackAdapterOptions,
    ids: { botToken: string; botUserId: string; botName: string; apiUrl: string | undefined; log: (line: string) => void },
  ) {
    this.manager = opts.manager;
    this.log = ids.log;
    this.botUserId = ids.botUserId;
    this.admins = new WorkspaceAdmins(this.log);
    this.rate = userLimiter('slack', opts.rateLimit, opts.rateLimiter);
    this.tasks = new TaskSet((what, err) => this.log(`slack: ${what} failed: ${describeSlackError(err)}`));
    const store = opts.store ?? opts.manager.store;
    const ttl = opts.dedupeTtlMs ?? DAY;
    this.events = new SeenSet(store, 'slack:event:', ttl, this.log);
    this.messages = new SeenSet(store, 'slack:message:', ttl, this.log);
    this.threads = new SeenSet(store, 'slack:thread:', 90 * DAY, this.log);
    this.regenerating = new InFlight(store, 'slack:regenerating:', (line) => this.log(`slack: ${line}`));
    const downloadTimeoutMs = opts.downloadTimeoutMs ?? 30_000;
    this.ctx = {
      manager: this.manager,
      log: this.log,
      threads: this.threads,
      signal: this.abort.signal,
      closing: () => this.closing !== undefined,
      updateIntervalMs: opts.updateIntervalMs ?? 1200,
      ...(opts.queueUpdateMs !== undefined ? { queueUpdateMs: opts.queueUpdateMs } : {}),
      ...(opts.placeAfterMs !== undefined ? { placeAfterMs: opts.placeAfterMs } : {}),
      maxMessageChars: Math.max(20, opts.maxMessageChars ?? DEFAULT_MAX_MESSAGE_CHARS),
      image: { token: ids.botToken, maxBytes: opts.maxFileBytes ?? LIMITS.imageBytes, timeoutMs: downloadTimeoutMs, apiUrl: ids.apiUrl },
      historyLimit: Math.min(1000, Math.max(1, opts.historyLimit ?? 100)),
      botName: ids.botName,
      command: opts.command ?? DEFAULT_COMMAND,
      nextId: () => this.nextId++,
      stops: new StopButtons(),
      latestAnswers: new LatestAnswers(
        store,
        'slack:latest:',
        answerMessage,
        (a, b) => a.channel === b.channel && a.ts === b.ts,
        (line) => this.log(`slack: ${line}`),
      ),
      answerTexts: new LruMap(5_000),
      answering: new Answering(),
      answers: new AnswerRecords(store, 'slack:answers:', (line) => this.log(`slack: ${line}`)),
      ...(opts.sharedStops ? { shared: opts.sharedStops } : {}),
    };
    // A request waits for the one before it in its thread at most this long (that one's download has its own
    // timeout; Web API calls before it are retried for a while).
    this.order = new ArrivalOrder(
      downloadTimeoutMs + 60_000,
      (k) => this.log(`slack: a request in ${k} waited too long for the one before it in its thread; answering it now`),
      opts.arrivalOrder,
    );
  }

  /**
   * Requests of one conversation (a thread; a whole DM) keep the order in which Slack delivered their events (and,
   * between front ends, the order of their ts).
   */
  private orderKey(team: string, channel: string, thread: string): string {
    return `slack:${team}:${channel}:${isDirectMessage(channel) ? channel : thread}`;
  }

  register(): void {
    const app = this.app;

    // De-duplication by event id, before any listener (events are acknowledged by Bolt before this runs).
    app.use(async ({ body, context, next }) => {
      const b = body as { type?: string; event_id?: string; event?: MessageLike };
      // An edited message takes its turn in its own thread, as of the edit.
      const edited = b.event?.type === 'message' ? editedMessage(b.event, this.botUserId) : undefined;
      // Only events that may become requests are remembered (not every message of every channel).
      const candidate =
        b.event?.type === 'app_mention' ||
        edited !== undefined ||
        (b.event?.type === 'message' && (!!b.event.thread_ts || b.event.channel_type === 'im') && !ignorable(b.event, this.botUserId));
      // The event's turn in its thread is taken now, before anything is awaited: the order of delivery.
      const ev = edited ?? b.event;
      const at = edited ? (b.event?.event_ts ?? b.event?.ts) : ev?.ts;
      const turn =
        candidate && ev?.channel && (ev.thread_ts ?? ev.ts)
          ? this.order.take(this.orderKey(teamOf(body), ev.channel, (ev.thread_ts ?? ev.ts)!), at)
          : undefined;
      if (turn) context[TURN] = turn;
      try {
        if (b.type === 'event_callback' && typeof b.event_id === 'string' && candidate) {
          if (this.closing) return;
          if (!(await this.events.claim(b.event_id))) {
            const retry =
              context.retryNum !== undefined ? ` (retry ${context.retryNum}${context.retryReason ? `, ${context.retryReason}` : ''})` : '';
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

    app.command(this.ctx.command, async ({ command, ack, client, respond }) => {
      await ack();
      const tell = (text: string) => respond({ response_type: 'ephemeral', text }).then(() => {});
      this.spawn('command', async () => {
        if (!(await this.withinRate(command.team_id, command.user_id, tell, true))) return;
        await onDescribe(
          this.ctx,
          { team: command.team_id, channel: command.channel_id, user: command.user_id, text: command.text ?? '' },
          client,
          tell,
        );
      });
    });

    const messageShortcut = (
      callbackId: string,
      what: string,
      work: (s: ShortcutPayload, client: WebClient, respond: (text: string) => Promise<void>, turn?: ArrivalTurn) => Promise<void>,
    ) =>
      app.shortcut({ callback_id: callbackId, type: 'message_action' }, async ({ shortcut, ack, client, respond }) => {
        // It acts on the message's thread: its turn there is taken on arrival, like a message's.
        const s = shortcut as unknown as ShortcutPayload;
        const thread = s.message?.thread_ts ?? s.message?.ts;
        const turn =
          s.channel?.id && thread
            ? this.order.take(this.orderKey(s.team?.id ?? s.user?.team_id ?? '', s.channel.id, thread), s.action_ts)
            : undefined;
        try {
          await ack();
        } catch (err) {
          turn?.release();
          throw err;
        }
        const tell = (text: string) => respond({ response_type: 'ephemeral', text }).then(() => {});
        this.spawn(what, () => work(s, client, tell, turn), turn);
      });
    messageShortcut(this.opts.shortcutCallbackId ?? DEFAULT_SHORTCUT, 'shortcut', async (s, client, tell, turn) => {
      if (await this.withinRate(s.team?.id ?? s.user?.team_id ?? '', s.user?.id ?? '', tell, true))
        await onShortcut(this.ctx, s, client, tell, turn);
    });
    // The thread is forgotten after the requests sent there before it (its turn is held until then).
    messageShortcut(this.opts.forgetShortcutCallbackId ?? DEFAULT_FORGET_SHORTCUT, 'forget', (s, client, tell) =>
      onForget({ manager: this.manager, admins: this.admins, log: this.log }, s, client, tell),
    );

    // The Stop button of an answer being written: the person who asked, or a workspace admin (Slack has no
    // per-channel moderator permission to go by), may stop it; others, and a button of an answer that ended, get a
    // private reply.
    app.action(STOP_ACTION, async ({ ack, body, respond, client }) => {
      await ack();
      const b = body as { user?: { id?: string }; actions?: { value?: string }[] };
      const id = b.actions?.[0]?.value ?? '';
      const user = b.user?.id ?? '';
      let outcome = await this.pressStop(id, user, false);
      if (outcome === 'not_allowed' && user && (await this.admins.isAdmin(client, user))) outcome = await this.pressStop(id, user, true);
      if (outcome === 'stopped') return;
      const text =
        outcome === 'finished'
          ? 'This answer has already finished.'
          : 'Only the person who asked, or a workspace admin, can stop this answer.';
      await respond({ response_type: 'ephemeral', replace_original: false, text }).catch((err: unknown) => {
        this.log(`slack: could not answer a Stop button: ${describeSlackError(err)}`);
      });
    });

    // The Regenerate button of an answer given in full: it acts on the answer's thread (its turn there is taken on
    // arrival, like a message's).
    app.action(REGENERATE_ACTION, async ({ ack, body, respond, client }) => {
      const p = regeneratePress(body, teamOf(body));
      const turn = p ? this.order.take(this.orderKey(p.team, p.channel, regenerateThread(p)), p.actionTs) : undefined;
      try {
        await ack();
      } catch (err) {
        turn?.release();
        throw err;
      }
      if (!p || !turn) return;
      const tell = (text: string) =>
        respond({ response_type: 'ephemeral', replace_original: false, text }).catch((err: unknown) => {
          this.log(`slack: could not answer a Regenerate button: ${describeSlackError(err)}`);
        });
      // A second press while the first is answered (both would pass the check before either is stored): told at once.
      const done = await this.regenerating.claim(p.requestId);
      if (!done) {
        turn.release();
        await tell(ALREADY_REGENERATING);
        return;
      }
      const host = {
        ctx: this.ctx,
        manager: this.manager,
        withinRate: (team: string, user: string, t: (text: string) => Promise<void>) => this.withinRate(team, user, t, true),
      };
      this.spawn('regenerate', () => onRegenerate(host, p, client, tell, turn).finally(done), turn);
    });

    // The app was removed from the workspace: what the bot kept of its conversations goes now, not after the
    // retention time (Slack asks apps to delete a workspace's data when they are uninstalled).
    app.event('app_uninstalled', async ({ body }) => {
      const team = teamOf(body);
      this.spawn('app_uninstalled', async () => {
        const n = await this.manager.forgetWorkspace('slack', team);
        this.log(`slack: the app was uninstalled from workspace ${team}${forgottenCount(n)}`);
      });
    });

    // The bot's token was revoked there (an admin removed the bot without uninstalling the app, or with it: then both
    // events come, and the second finds nothing left): the bot can no longer answer there, and forgets the same way.
    app.event('tokens_revoked', async ({ event, body }) => {
      const team = teamOf(body);
      const bots = (event as { tokens?: { bot?: unknown } }).tokens?.bot;
      if (!Array.isArray(bots) || !this.botUserId || !bots.includes(this.botUserId)) return;
      this.spawn('tokens_revoked', async () => {
        try {
          const n = await this.manager.forgetWorkspace('slack', team);
          this.log(`slack: the bot's token was revoked in workspace ${team}${forgottenCount(n)}`);
        } finally {
          // (the bot can answer nowhere with that token: run on, it would fail every event)
          this.fail(
            `Slack revoked SLACK_BOT_TOKEN (tokens_revoked in workspace ${team}): reinstall the app and set its new Bot User OAuth Token`,
          );
        }
      });
    });

    // A file deleted (its message kept; optional event file_deleted): an image the bot read from it is forgotten as if
    // its message had been deleted.
    app.event('file_deleted', async ({ event, body, client }) => {
      const file = (event as { file_id?: unknown }).file_id;
      if (typeof file !== 'string') return;
      this.spawn('file_deleted', () => this.onFileDeleted(file, teamOf(body), client));
    });

    // A channel was deleted (optional events: channel_deleted, group_deleted): its threads' conversations go with it.
    for (const type of ['channel_deleted', 'group_deleted'] as const) {
      app.event(type, async ({ event, body }) => {
        const team = teamOf(body);
        const channel = (event as { channel?: unknown }).channel;
        if (typeof channel !== 'string') return;
        this.spawn(type, async () => {
          const n = await this.manager.forgetWorkspace('slack', team, channel);
          if (n !== 0) this.log(`slack: channel ${channel} was deleted${forgottenCount(n)}`);
        });
      });
    }

    app.error(async (err) => {
      this.log(`slack: error while handling a request: ${describeSlackError(err)}`);
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
    this.tasks.run(what, async () => {
      try {
        await turn?.ready();
        await work();
      } finally {
        turn?.release();
      }
    });
  }

  private async onMention(ev: MessageLike, team: string, client: WebClient, turn?: ArrivalTurn): Promise<void> {
    if (ignorable(ev, this.botUserId) || !ev.channel || !ev.ts) return;
    if (!(await this.messages.claim(`${team}:${ev.channel}:${ev.ts}`))) return;
    const thread = ev.thread_ts ?? ev.ts;
    let found: { files: SlackFile[]; from?: string } = { files: eventFiles(ev.files) };
    if (found.files.length === 0 && thread !== ev.ts) found = await this.imageFromThread(client, team, ev.channel, thread, ev.ts);
    await this.askAbout(client, ev as MessageLike & { channel: string; ts: string }, team, thread, found, 'mention', turn);
  }

  private async onMessage(ev: MessageLike, team: string, client: WebClient, turn?: ArrivalTurn): Promise<void> {
    const deleted = deletedMessage(ev, this.botUserId);
    if (deleted) return this.onDeleted(deleted, team, client);
    const edited = editedMessage(ev, this.botUserId);
    if (edited) return this.onEdited(edited, ev.event_ts ?? ev.ts ?? `${Date.now() / 1000}`, team, client, turn);
    if (ignorable(ev, this.botUserId) || !ev.channel || !ev.ts) return;
    if (ev.channel_type === 'im') return this.onDirectMessage(ev as MessageLike & { channel: string; ts: string }, team, client, turn);
    // Only replies in a thread; a message mentioning the bot is the app_mention handler's.
    if (!ev.thread_ts || ev.thread_ts === ev.ts) return;
    if (this.botUserId && (ev.text ?? '').includes(`<@${this.botUserId}`)) return;
    const thread = ev.thread_ts;
    if (!(await this.isBotThread(team, ev.channel, thread))) return;
    if (!(await this.messages.claim(`${team}:${ev.channel}:${ev.ts}`))) return;
    await this.askAbout(
      client,
      ev as MessageLike & { channel: string; ts: string },
      team,
      thread,
      { files: eventFiles(ev.files) },
      'follow-up',
      turn,
    );
  }

  /**
   * A message to the bot in a direct message (Slack sends no app_mention there): every one is a request, all of
   * one conversation, as on Discord. A top-level message is answered in the DM itself, one in a thread there.
   */
  private async onDirectMessage(ev: MessageLike & { channel: string; ts: string }, team: string, client: WebClient, turn?: ArrivalTurn) {
    if (!(await this.messages.claim(`${team}:${ev.channel}:${ev.ts}`))) return;
    const inThread = !!ev.thread_ts && ev.thread_ts !== ev.ts;
    await this.ask(client, {
      team,
      channel: ev.channel,
      ...(inThread ? { thread: ev.thread_ts } : {}),
      dm: true,
      user: ev.user ?? 'unknown',
      text: slackTextToPlain(ev.text ?? '', this.botUserId),
      files: eventFiles(ev.files),
      requestId: `slack:${ev.channel}:${ev.ts}`,
      asked: `slack:${ev.channel}:${ev.ts}`,
      what: `direct message in ${ev.channel}`,
      turn,
    });
  }

  /**
   * A person edited a message (`at`: when) in a DM or a thread the bot answers in: if it asked the conversation's latest
   * question, that is answered again with the new text, in the thread (or DM), marked as such. Whether it did is the
   * manager's to decide, in the thread's order; an edit of anything else is left alone without a word. A question still
   * being answered when edited has its answer stopped first (stopped before it was stored: the edited text is asked as
   * the message's question).
   */
  private async onEdited(
    m: MessageLike & { channel: string; ts: string },
    at: string,
    team: string,
    client: WebClient,
    turn?: ArrivalTurn,
  ) {
    const dm = m.channel_type === 'im' || isDirectMessage(m.channel);
    const thread = m.thread_ts ?? m.ts;
    if (!dm && !(await this.isBotThread(team, m.channel, thread))) return;
    const text = slackTextToPlain(m.text ?? '', this.botUserId);
    const user = m.user ?? 'unknown';
    if (!text) return;
    const tell = (t: string) => ephemeral(this.ctx, client, m.channel, user, t, undefined, thread);
    if (!(await this.withinRate(team, user, tell))) return;
    // the id it was asked under (askAbout, onDirectMessage)
    const asked = `slack:${m.channel}:${m.ts}`;
    const stopped =
      (await this.ctx.answering.stop(asked, (id) => this.ctx.stops.press(id, user, false))) ??
      (await this.opts.sharedStops?.stopForEdit(asked, user));
    await answer(this.ctx, {
      client,
      team,
      channel: m.channel,
      // (a top-level message of a DM is answered in the DM itself)
      ...(!dm || m.thread_ts ? { thread } : {}),
      ...(dm ? { dm: true } : {}),
      user,
      text,
      ...editRequest(asked, stopped),
      asked,
      header: `_${EDITED_LINE}_`,
      requestId: `slack:${m.channel}:${m.ts}:e${at}`,
      what: `edit of message ${m.ts} in ${m.channel}`,
      turn,
    });
  }

  /** A Stop button pressed: the answer's, if this front end writes it; else on the front end that does (several). */
  private async pressStop(id: string, user: string, moderator: boolean): Promise<StopOutcome> {
    const here = this.ctx.stops.press(id, user, moderator);
    return here === 'finished' && this.opts.sharedStops ? this.opts.sharedStops.press(id, user, moderator) : here;
  }

  /** Serves the other front ends' requests to stop the answers this one writes (several front ends on Redis). */
  async serveStops(): Promise<void> {
    await this.opts.sharedStops?.serve({
      press: (id, user, moderator) => this.ctx.stops.press(id, user, moderator),
      stopForEdit: (asked, user) => this.ctx.answering.stop(asked, (id) => this.ctx.stops.press(id, user, false)),
      stopForDeletion: (asked) => this.ctx.answering.stopForDeletion(asked, (id) => this.ctx.stops.cancel(id)),
    });
  }

  /**
   * A person's message deleted (by them or an admin) in a DM or a thread: if it asked a question, the bot forgets it
   * (the whole conversation when it brought the image, said in the thread or DM) and deletes its answers to it; an
   * answer being written to it is stopped first.
   */
  private async onDeleted(
    d: { channel: string; ts: string; thread?: string; dm: boolean; bots: boolean },
    team: string,
    client: WebClient,
  ): Promise<void> {
    const asked = `slack:${d.channel}:${d.ts}`;
    const key = d.dm ? dmKey(team, d.channel) : slackKey(team, d.channel, d.thread ?? d.ts);
    const host = this.deletionHost(client);
    // One of this bot's answers (an admin deleted it; those it deleted itself are no longer kept): its exchange goes.
    if (d.bots) await answerDeleted(host, d.ts, `slack: deleted answer ${d.ts} in ${d.channel}`);
    else await questionDeleted(host, asked, () => [key], `slack: deleted message ${d.ts} in ${d.channel}`);
  }

  /** A file deleted: the image read from it goes as its message's would (the message's answers included). */
  private async onFileDeleted(file: string, team: string, client: WebClient): Promise<void> {
    const read = await this.ctx.answers.takeImageFile(file);
    if (!read || read.key.workspace !== team) return;
    await questionDeleted(this.deletionHost(client), read.asked, () => [read.key], `slack: deleted file ${file}`);
  }

  /** What a deletion does on Slack (adapters/shared/deleted.ts). */
  private deletionHost(client: WebClient): DeletionHost {
    return {
      manager: this.manager,
      records: this.ctx.answers,
      log: this.log,
      stopAnswer: async (id) => {
        await this.ctx.answering.stopForDeletion(id, (stopId) => this.ctx.stops.cancel(stopId));
        await this.opts.sharedStops?.stopForDeletion(id);
      },
      deleteMessage: (p) => deleteAnswer(client, p),
      tellForgotten: async (k) => {
        await client.chat.postMessage({
          channel: k.channel,
          ...(k.thread !== k.channel ? { thread_ts: k.thread } : {}),
          text: `_${DELETED_IMAGE_LINE}_`,
        });
      },
    };
  }

  /** The request of a mention or a thread message (its text, its files) in `thread`. */
  private askAbout(
    client: WebClient,
    ev: MessageLike & { channel: string; ts: string },
    team: string,
    thread: string,
    found: { files: SlackFile[]; from?: string },
    kind: 'mention' | 'follow-up',
    turn: ArrivalTurn | undefined,
  ): Promise<void> {
    return this.ask(client, {
      team,
      channel: ev.channel,
      thread,
      user: ev.user ?? 'unknown',
      text: slackTextToPlain(ev.text ?? '', this.botUserId),
      files: found.files,
      ...(found.from ? { imageFrom: `slack:${ev.channel}:${found.from}` } : {}),
      requestId: `slack:${ev.channel}:${ev.ts}`,
      asked: `slack:${ev.channel}:${ev.ts}`,
      what: `${kind} in ${ev.channel} thread ${thread}`,
      turn,
    });
  }

  /**
   * A mention without a file in a thread the bot has no conversation for: the newest image posted in the
   * thread before it (e.g. the thread's first message), as the user means "this image".
   */
  private async imageFromThread(
    client: WebClient,
    team: string,
    channel: string,
    thread: string,
    before: string,
  ): Promise<{ files: SlackFile[]; from?: string }> {
    try {
      if ((await this.manager.history(slackKey(team, channel, thread))) !== null) return { files: [] };
      const res = await client.conversations.replies({ channel, ts: thread, limit: 200 });
      const msgs = ((res.messages ?? []) as MessageLike[]).filter((m) => m.ts && Number(m.ts) < Number(before) && !m.bot_id);
      for (const m of msgs.reverse()) {
        const img = eventFiles(m.files).find((f) => isImageFile(f));
        if (img) return { files: [img], from: m.ts! };
      }
    } catch (err) {
      this.log(`slack: reading thread ${thread} in ${channel} failed: ${describeSlackError(err)}`);
    }
    return { files: [] };
  }

  private async isBotThread(team: string, channel: string, thread: string): Promise<boolean> {
    if (await this.threads.has(`${team}:${channel}:${thread}`)) return true;
    try {
      return (await this.manager.history(slackKey(team, channel, thread))) !== null;
    } catch {
      return false;
    }
  }

  /** A mention or follow-up: checks its files, then answers in the thread. */
  private async ask(client: WebClient, a: Omit<Ask, 'file' | 'client'> & { files: SlackFile[] }): Promise<void> {
    const tell = (text: string) => ephemeral(this.ctx, client, a.channel, a.user, text, undefined, a.thread);
    if (!(await this.withinRate(a.team, a.user, tell))) return;
    let file: SlackFile | undefined;
    if (a.files.length > 0) {
      file = a.files.find((f) => isImageFile(f) || (!f.mimetype && !f.filetype));
      if (!file) {
        this.log(
          `slack: ${a.what}: ${a.files.length} file(s), none an image (${a.files.map((f) => f.filetype ?? f.mimetype ?? '?').join(', ')})`,
        );
        if (!a.dm) await this.threads.mark(`${a.team}:${a.channel}:${a.thread}`);
        const reply = threadReply(this.ctx, client, a.channel, a.thread, undefined, undefined, a.dm === true);
        await reply.error(notAnImage(a.files[0]).message);
        return;
      }
    }
    await answer(this.ctx, { ...a, client, file });
  }

  /**
   * Counts a request against the user's limit; over it, tells them privately and returns false: once per window
   * for messages (no spam), every time for a command or shortcut (`privately`: they expect a reply).
   */
  private async withinRate(team: string, user: string, tell: (text: string) => Promise<void>, privately = false): Promise<boolean> {
    // (user ids are a workspace's)
    if (await admit(this.rate, `${team}:${user}`, tell, privately)) return true;
    this.log(`slack: user ${user} is over the rate limit`);
    return false;
  }

  /**
   * Slack no longer accepts the bot (its token refused or revoked): `fatal` resolves with why, once (the owner, e.g.
   * `minigpt serve`, then says it and closes the adapter).
   */
  fail(reason: string): void {
    if (this.closing) return;
    this.failWith(new Error(reason));
    this.failWith = () => {};
  }

  async close(): Promise<void> {
    this.closing ??= (async () => {
      await this.app.stop().catch((err: unknown) => this.log(`slack: stopping the receiver: ${describeSlackError(err)}`));
      const limit = this.opts.closeTimeoutMs ?? 10_000;
      if (!(await this.tasks.settle(limit))) {
        this.abort.abort();
        await this.tasks.settle(2000);
      }
      await this.opts.sharedStops?.close();
      this.log('slack: adapter stopped');
    })();
    return this.closing;
  }
}

/** One of the bot's answer messages (or uploaded files) deleted; one already gone is no failure. */
async function deleteAnswer(client: WebClient, p: Posted): Promise<void> {
  try {
    if (p.file) await client.files.delete({ file: p.id });
    else await client.chat.delete({ channel: p.channel, ts: p.id });
  } catch (err) {
    const code = slackErrorCode(err);
    if (code !== 'message_not_found' && code !== 'file_not_found' && code !== 'file_deleted') throw err;
  }
}
