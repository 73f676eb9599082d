// One Slack request from the first message to the last: the reply is posted at once ("Looking at the
// image…"), the image fetched, the request handed to the manager (the thread's next request may then go on),
// and the answer events rendered into the thread (ThreadReply), the annotated image uploaded after the text.
import type { webApi } from '@slack/bolt';
import {
  conversationId,
  type AnswerEvent,
  type ConversationKey,
  type ConversationRequest,
  type TaskTag,
} from '../../src/conversation/index.js';
import { Answering, EDIT_REFUSED_QUIETLY, EDIT_REPLACED_LINE, type LatestAnswers } from '../shared/regenerate.js';
import type { SharedStops } from '../shared/shared-stops.js';
import { releasedAtFirst, type ArrivalTurn } from '../shared/arrival-order.js';
import { onAnswerEvents, PlaceInLine, restartNotice, unlessRefused } from '../shared/answer-events.js';
import type { StopButtons, StopHandle } from '../shared/stop-buttons.js';
import type { SeenSet } from './dedupe.js';
import { fetchImage, type ImageFetchOptions } from './file-info.js';
import { FileInputError, type SlackFile } from './files.js';
import type { SlackConversationManager } from './options.js';
import { describeSlackError, slackErrorCode } from './errors.js';
import { ThreadReply } from './reply.js';
import type { AnswerRecords, Posted } from '../shared/deleted.js';
import type { LruMap } from '../../src/util/lru.js';

type WebClient = webApi.WebClient;

/** What answering needs from the adapter. */
export interface AnswerContext {
  readonly manager: Pick<SlackConversationManager, 'handle'>;
  readonly log: (line: string) => void;
  /** threads the bot answers in (a follow-up there needs no mention) */
  readonly threads: SeenSet;
  /** aborted when closing gives up waiting for the answers in flight */
  readonly signal: AbortSignal;
  closing(): boolean;
  readonly updateIntervalMs: number;
  /** least time between two places in the queue shown in a waiting reply (default QUEUE_UPDATE_MS) */
  readonly queueUpdateMs?: number;
  /** a waiting request's first place is shown once it has waited this long (default PLACE_AFTER_MS) */
  readonly placeAfterMs?: number;
  readonly maxMessageChars: number;
  readonly image: ImageFetchOptions;
  /** the Stop buttons of the answers being written */
  readonly stops: StopButtons;
  /** each conversation's latest answer, whose last message carries the Regenerate button */
  readonly latestAnswers: LatestAnswers<AnswerMessage>;
  /** the text of answers this process posted (`channel:ts`), for taking a button off without reading it back */
  readonly answerTexts: LruMap<string, string>;
  /** the questions being answered (an edit of one stops it) */
  readonly answering: Answering;
  /** each answered message's conversation and answers (a deletion of the message deletes them) */
  readonly answers: AnswerRecords;
  /** with several front ends: the answers this one writes, marked so that the others can have them stopped */
  readonly shared?: SharedStops;
}

/** An answer's message that carries the Regenerate button: where (its thread, if in one). */
export interface AnswerMessage {
  channel: string;
  ts: string;
  thread?: string;
}

/** A stored answer message (LatestAnswers), if it is one. */
export function answerMessage(v: unknown): AnswerMessage | undefined {
  const m = v as Partial<AnswerMessage> | undefined;
  if (typeof m?.channel !== 'string' || typeof m.ts !== 'string') return undefined;
  return { channel: m.channel, ts: m.ts, ...(typeof m.thread === 'string' ? { thread: m.thread } : {}) };
}

/** The action id of the Stop button on an answer being written (its value names the answer). */
export const STOP_ACTION = 'minigpt_stop';
/** The action id of the Regenerate button on an answer given in full (its value is the answer's request id). */
export const REGENERATE_ACTION = 'minigpt_regenerate';

/** One request as the adapter's handlers make it. */
export interface Ask {
  client: WebClient;
  team: string;
  channel: string;
  /** undefined: the answer starts a new thread in the channel (in a direct message: it goes into the DM itself) */
  thread?: string;
  /** a direct message (or a thread of one): the conversation is the whole DM's, as with Discord's DMs */
  dm?: boolean;
  user: string;
  text: string;
  task?: TaskTag;
  /** the image's file (already known to be an image or to be checked) */
  file?: SlackFile;
  header?: string;
  requestId: string;
  /** the request id of the stored answer this one gives again (ConversationRequest.regenerate) */
  regenerate?: string;
  /**
   * the request id the edited message was asked under (ConversationRequest.edit; `thread` given): nothing is posted,
   * and nothing said, unless the manager takes it (see unlessRefused)
   */
  edit?: string;
  /** ConversationRequest.askedAs: an edited message's question asked anew (its first answer stopped for the edit) */
  askedAs?: string;
  /** the request id of the message this answers (its first): deleting that message deletes the answer */
  asked?: string;
  /** ConversationRequest.imageFrom: the request id of the message the image was posted in, when another's */
  imageFrom?: string;
  what: string;
  /** the conversation's turn (arrival order): released once the request has its place in the queue (its first event) */
  turn?: ArrivalTurn;
}

export function slackKey(team: string, channel: string, thread: string): ConversationKey {
  return { platform: 'slack', workspace: team, channel, thread };
}

/** The conversation of a direct message channel (all of it, threads included). */
export function dmKey(team: string, channel: string): ConversationKey {
  return slackKey(team, channel, channel);
}

/** Whether a channel id is a direct message's (Slack's ids say so: D…). */
export function isDirectMessage(channel: string): boolean {
  return channel.startsWith('D');
}

export function threadReply(
  ctx: AnswerContext,
  client: WebClient,
  channel: string,
  thread: string | undefined,
  header?: string,
  stop?: StopHandle,
  inline = false,
  requestId?: string,
): ThreadReply {
  return new ThreadReply({
    client,
    channel,
    threadTs: thread,
    inline,
    intervalMs: ctx.updateIntervalMs,
    maxChars: ctx.maxMessageChars,
    header,
    log: ctx.log,
    ...(stop ? { stop: { actionId: STOP_ACTION, value: stop.id } } : {}),
    ...(requestId ? { regenerate: { actionId: REGENERATE_ACTION, value: requestId } } : {}),
  });
}

/**
 * Posts the first message, fetches the image, streams the manager's answer into the thread. Whether the answer was
 * given in full.
 */
export async function answer(ctx: AnswerContext, a: Ask): Promise<boolean> {
  const stop = ctx.stops.open(a.user);
  const ended = ctx.answering.start(a, stop.id);
  const asked = Answering.askedOf(a);
  const held = ctx.shared?.hold({
    stop: stop.id,
    ...(asked !== undefined ? { asked } : {}),
    ...(a.imageFrom !== undefined ? { image: a.imageFrom } : {}),
  });
  let answered = false;
  try {
    answered = await answerWith(ctx, a, stop);
    return answered;
  } finally {
    stop.close();
    ended?.(answered);
    await held?.();
  }
}

async function answerWith(ctx: AnswerContext, a: Ask, stop: StopHandle): Promise<boolean> {
  // aborted by a closing adapter, or by the Stop button (or here: an edit's answer that cannot be posted)
  const abandon = new AbortController();
  const signal = AbortSignal.any([ctx.signal, stop.signal, abandon.signal]);
  // An edited question: refused without a word (not the latest question, the same text), or answered as any other.
  let edited: AsyncIterable<AnswerEvent> | undefined;
  if (a.edit !== undefined) {
    const req = requestOf(a, keyOf(a, a.thread), signal);
    const held = await unlessRefused(releasedAtFirst(ctx.manager.handle(req), a.turn), EDIT_REFUSED_QUIETLY);
    if ('refused' in held) {
      ctx.log(`slack: ${a.what}: not answered (${held.refused.code}: ${held.refused.message})`);
      return false;
    }
    edited = held.events;
  }
  const reply = threadReply(ctx, a.client, a.channel, a.thread, a.header, stop, a.dm === true, a.requestId);
  // (what was posted answers the message: deleting it deletes them)
  const keep = async () => {
    await ctx.answers.answered(a, keyOf(a, reply.thread), postedOf(a.channel, reply));
  };
  try {
    await reply.start(a.file ? '_Looking at the image…_' : '_Thinking…_');
  } catch (err) {
    ctx.log(`slack: ${a.what}: could not post the reply: ${describeSlackError(err)}`);
    // (an edit's request is with the manager already: not answered where nobody sees it)
    abandon.abort();
    return false;
  }
  let answered = false;
  // a direct message is one conversation, threads included; elsewhere a thread is, and the bot answers in it
  const key = keyOf(a, reply.thread);
  if (!a.dm) await ctx.threads.mark(`${a.team}:${a.channel}:${key.thread}`);
  let text = '';
  const place = new PlaceInLine(
    (position) =>
      reply.status(position > 0 ? `_Waiting: ${position} request${position === 1 ? '' : 's'} ahead of this one…_` : '_Next in line…_'),
    { afterMs: ctx.placeAfterMs, everyMs: ctx.queueUpdateMs },
  );
  const stopped = () => {
    ctx.log(`slack: ${a.what}: stopped by ${stop.stoppedBy()}`);
    return reply.stopped(text, stop.stoppedBy()!);
  };
  try {
    let image: Uint8Array | undefined;
    if (a.file) {
      try {
        image = await fetchImage(a.client, a.file, ctx.image, signal);
      } catch (err) {
        // (stopped meanwhile: the fetch was aborted, whatever it says; the outer catch says stopped)
        if (err instanceof FileInputError && !stop.stoppedBy()) {
          ctx.log(`slack: ${a.what}: file ${a.file.id} not used (${err.reason})`);
          await reply.error(err.message);
          await keep();
          return false;
        }
        throw err;
      }
      ctx.log(`slack: ${a.what} by ${a.user}: image ${a.file.id} (${image.byteLength} bytes)`);
      // (the file deleted, its image is forgotten as with its message)
      const imageAsked = a.imageFrom ?? a.asked;
      if (imageAsked !== undefined) await ctx.answers.imageFile(a.file.id, imageAsked, key);
    } else {
      ctx.log(`slack: ${a.what} by ${a.user}: text only`);
    }
    // Once the request has its place in the conversation's queue (its first event), the thread's next request may go on.
    const events = restartNotice(edited ?? releasedAtFirst(ctx.manager.handle(requestOf(a, key, signal, image)), a.turn), () =>
      ctx.closing(),
    );
    await onAnswerEvents(events, {
      // (a place told again as the queue moves)
      queued: (ev) => place.queued(ev.position),
      started: () => {
        place.end();
        if (!text) reply.status('_Thinking…_');
      },
      text: (ev) => {
        text += ev.text;
        reply.streaming(text);
      },
      restart: () => {
        // another worker answers again: what was streamed so far is replaced
        text = '';
        reply.status('_Answering again…_');
      },
      final: (ev) => {
        answered = true;
        return reply.final(ev.text);
      },
      image: (ev) => uploadImage(ctx, reply, ev.data, ev.mime, a.what),
      error: (ev) => {
        if (ev.code === 'cancelled' && stop.stoppedBy()) return stopped();
        ctx.log(`slack: ${a.what}: ${ev.code}${ev.code === 'internal' ? `: ${ev.message}` : ''}`);
        return reply.error(ev.message);
      },
    });
  } catch (err) {
    // (stopped while the image was being fetched)
    if (stop.stoppedBy()) await stopped().catch(() => {});
    else {
      ctx.log(`slack: ${a.what} failed: ${describeSlackError(err)}`);
      await reply.error('Something went wrong while answering; please try again.').catch(() => {});
    }
  } finally {
    place.end();
    await reply.settle().catch(() => {});
    await keep();
  }
  // Only the latest answer carries the Regenerate button (a regenerated answer's predecessor lost it when pressed).
  const on = reply.regenerateOn;
  if (on) ctx.answerTexts.set(`${a.channel}:${on.ts}`, on.text);
  const now: AnswerMessage | undefined = on && { channel: a.channel, ts: on.ts, ...(reply.thread ? { thread: reply.thread } : {}) };
  const before = answered && now ? await ctx.latestAnswers.replace(conversationId(key), now) : undefined;
  if (before && a.regenerate === undefined)
    await retire(ctx, a.client, before, a.edit !== undefined ? `_${EDIT_REPLACED_LINE}_` : undefined);
  return answered;
}

/** The messages and files of an answer, as kept for its question's deletion. */
function postedOf(channel: string, reply: ThreadReply): Posted[] {
  const { messages, files } = reply.postedMessages;
  return [...messages.map((ts) => ({ channel, id: ts })), ...files.map((id) => ({ channel, id, file: true as const }))];
}

/** The conversation of an answer in `thread`: a direct message's is the whole DM's (threads included). */
function keyOf(a: Ask, thread: string | undefined): ConversationKey {
  return a.dm ? dmKey(a.team, a.channel) : slackKey(a.team, a.channel, thread ?? '');
}

function requestOf(a: Ask, key: ConversationKey, signal: AbortSignal, image?: Uint8Array): ConversationRequest {
  return {
    key,
    user: a.user,
    text: a.text,
    ...(image ? { image } : {}),
    ...(image && a.imageFrom !== undefined ? { imageFrom: a.imageFrom } : {}),
    ...(a.task ? { task: a.task } : {}),
    signal,
    requestId: a.requestId,
    ...(a.regenerate !== undefined ? { regenerate: a.regenerate } : {}),
    ...(a.edit !== undefined ? { edit: a.edit } : {}),
    ...(a.askedAs !== undefined ? { askedAs: a.askedAs } : {}),
  };
}

/** The answer before a conversation's latest loses its Regenerate button (and gets `line` under it). */
async function retire(ctx: AnswerContext, client: WebClient, before: AnswerMessage, line?: string): Promise<void> {
  try {
    // (posted by another front end, or before a restart: its text is read back)
    const text = ctx.answerTexts.get(`${before.channel}:${before.ts}`) ?? (await textOf(client, before));
    await client.chat.update({ channel: before.channel, ts: before.ts, text: line ? `${text}\n${line}` : text, blocks: [] });
  } catch (err) {
    ctx.log(`slack: could not take the Regenerate button off an answer in ${before.channel}: ${describeSlackError(err)}`);
  }
}

/** The text of a message the bot posted, read from Slack (the thread's replies up to it). */
async function textOf(client: WebClient, m: AnswerMessage): Promise<string> {
  const res = await client.conversations.replies({ channel: m.channel, ts: m.thread ?? m.ts, oldest: m.ts, inclusive: true, limit: 2 });
  const text = res.messages?.find((r) => r.ts === m.ts)?.text;
  if (typeof text !== 'string') throw new Error(`answer ${m.ts} not found`);
  return text;
}

async function uploadImage(ctx: AnswerContext, reply: ThreadReply, data: Buffer, mime: string, what: string): Promise<void> {
  const ext = mime === 'image/jpeg' ? 'jpg' : 'png';
  try {
    await reply.upload(data, `minigpt-boxes.${ext}`, "The answer's boxes drawn on the image");
  } catch (err) {
    const code = slackErrorCode(err);
    ctx.log(`slack: ${what}: uploading the annotated image failed: ${describeSlackError(err)}`);
    const why = code === 'missing_scope' ? ' (the app needs the `files:write` scope)' : '';
    try {
      await reply.note(`_I could not attach the image with the boxes${why}._`);
    } catch (e) {
      ctx.log(`slack: could not post a note: ${describeSlackError(e)}`);
    }
  }
}
