// The shapes of the Slack payloads the adapter reads, and what it decides from them alone: which workspace an
// event is from, which messages are not requests, and the arrival-order turn handed from Bolt's middleware
// to the event's listener.
import type { ArrivalTurn } from '../shared/arrival-order.js';

export interface MessageLike {
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
  /** a message_changed event: the message as it is now, and as it was */
  message?: MessageLike;
  previous_message?: MessageLike;
  /** a message_deleted event: the ts of the message deleted */
  deleted_ts?: string;
  event_ts?: string;
}

export interface ShortcutPayload {
  callback_id?: string;
  /** when the shortcut was used (a Slack ts) */
  action_ts?: string;
  channel?: { id?: string };
  user?: { id?: string; team_id?: string };
  team?: { id?: string } | null;
  message?: MessageLike;
}

/** Where a listener finds the arrival-order turn the middleware took for its event. */
export const TURN = 'minigptTurn';

/** Takes the arrival-order turn the middleware left in the context for this event's listener. */
export function takeTurn(context: Record<string, unknown>): ArrivalTurn | undefined {
  const turn = context[TURN] as ArrivalTurn | undefined;
  delete context[TURN];
  return turn;
}

export function teamOf(body: unknown): string {
  const b = body as { team_id?: string; enterprise_id?: string; authorizations?: Array<{ team_id?: string }> };
  return b.team_id ?? b.authorizations?.[0]?.team_id ?? b.enterprise_id ?? '';
}

/** Bots (this one included), edits, deletions and other system subtypes are not requests. */
export function ignorable(ev: MessageLike, botUserId: string): boolean {
  if (ev.bot_id) return true;
  if (botUserId && ev.user === botUserId) return true;
  if (ev.edited) return true;
  if (ev.subtype !== undefined && ev.subtype !== 'file_share' && ev.subtype !== 'thread_broadcast') return true;
  return !ev.user;
}

/**
 * The message a person edited, from a message_changed event, when its text changed (Slack also sends the event when a
 * link preview is added or a thread's reply count changes); with the event's channel. Undefined for anything else.
 */
export function editedMessage(ev: MessageLike, botUserId: string): (MessageLike & { channel: string; ts: string }) | undefined {
  const m = ev.message;
  if (ev.subtype !== 'message_changed' || !m || !ev.channel || !m.ts) return undefined;
  if (ignorable({ ...m, edited: undefined }, botUserId)) return undefined;
  if (ev.previous_message?.text === m.text) return undefined;
  return { ...m, channel: ev.channel, ts: m.ts, ...(ev.channel_type ? { channel_type: ev.channel_type } : {}) };
}

/**
 * The message a deletion took (a person's, by them or an admin; or a bot's: `bots`, e.g. this one's answer deleted by
 * an admin), with its channel: a message_deleted event, or the message_changed one that Slack sends instead for a
 * thread's first message with replies (it leaves a tombstone). Undefined for anything else.
 */
export function deletedMessage(
  ev: MessageLike,
  botUserId: string,
): { channel: string; ts: string; thread?: string; dm: boolean; bots: boolean } | undefined {
  const before = ev.previous_message;
  if (!ev.channel || !before) return undefined;
  const tombstone = ev.subtype === 'message_changed' && ev.message?.subtype === 'tombstone';
  if (ev.subtype !== 'message_deleted' && !tombstone) return undefined;
  const ts = (tombstone ? ev.message?.ts : ev.deleted_ts) ?? before.ts;
  if (!ts) return undefined;
  const thread = before.thread_ts ?? ev.message?.thread_ts;
  return {
    channel: ev.channel,
    ts,
    ...(thread ? { thread } : {}),
    dm: ev.channel_type === 'im' || ev.channel.startsWith('D'),
    bots: !!before.bot_id || (!!botUserId && before.user === botUserId),
  };
}
