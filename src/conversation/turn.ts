// A finished turn as the client is told (the `final` event) and as the store keeps it (the turn, and a
// thread's conversation after it).
import { parseGrounding } from '../grounding/parse.js';
import type { TurnImage } from './image-input.js';
import type { UserTurn } from './text.js';
import type { AnswerEvent, ConversationKey, ConversationRequest, ConversationState, PriorTurn, StoredTurn } from './types.js';

export type FinalEvent = Extract<AnswerEvent, { type: 'final' }>;

/** The model's answer: raw text (box syntax included) and why it ended. */
export interface Answer {
  text: string;
  finishReason: string;
}

export function finalEvent(turn: UserTurn, answer: Answer, image: TurnImage | undefined): FinalEvent {
  const { entities } = parseGrounding(answer.text);
  return {
    type: 'final',
    text: answer.text,
    entities,
    finishReason: answer.finishReason,
    task: turn.task,
    ...(image ? { image: { width: image.width, height: image.height } } : {}),
  };
}

/**
 * `again`: a turn answered again, the request id it was first asked under and, for a Regenerate, the temperature it
 * was asked at (see StoredTurn).
 */
export function storedTurn(
  req: ConversationRequest,
  turn: UserTurn,
  answer: Answer,
  again?: { askedAs?: string; temperature?: number },
): StoredTurn {
  const temperature = req.generation?.temperature ?? (req.regenerate !== undefined ? again?.temperature : undefined);
  const asked = again?.askedAs ?? (typeof req.askedAs === 'string' ? req.askedAs : undefined);
  return {
    user: turn.prompt,
    assistant: answer.text.trim(),
    task: turn.task,
    // Cluster jobs and JavaScript callers are not held to the request's types; the store is.
    by: typeof req.user === 'string' ? req.user : String(req.user),
    at: new Date().toISOString(),
    finishReason: answer.finishReason,
    ...(req.requestId !== undefined ? { requestId: req.requestId } : {}),
    ...(asked !== undefined && asked !== req.requestId ? { askedAs: asked } : {}),
    ...(typeof temperature === 'number' && Number.isFinite(temperature) ? { temperature } : {}),
  };
}

/**
 * A thread's conversation after `stored`. `fresh`: the turn brought a new image, which starts the conversation
 * afresh (its dropped-turn count included); `kept`: the earlier turns that fitted the budget, `dropped` the rest.
 */
export function threadState(opts: {
  key: ConversationKey;
  prev: ConversationState | undefined;
  image: TurnImage;
  fresh: boolean;
  /** who sent the request (recorded as the image's sender when it brought the image) */
  by: string;
  /** the request id its message was asked under (recorded as the image's when it brought the image) */
  askedIn: string | undefined;
  kept: readonly PriorTurn[];
  dropped: number;
  /** the new turn; undefined: none (a new image whose answer was stopped) */
  stored: StoredTurn | undefined;
}): ConversationState {
  const { prev, image, fresh, stored } = opts;
  const at = stored?.at ?? new Date().toISOString();
  return {
    v: 1,
    key: opts.key,
    image: {
      hash: image.hash,
      width: image.width,
      height: image.height,
      bytes: image.bytes,
      ...(fresh ? { by: opts.by } : prev?.image.by !== undefined ? { by: prev.image.by } : {}),
      ...(fresh
        ? opts.askedIn !== undefined
          ? { askedIn: opts.askedIn }
          : {}
        : prev?.image.askedIn !== undefined
          ? { askedIn: prev.image.askedIn }
          : {}),
      // the same image: its hold goes on (ConversationStore renews it when it runs short)
      ...(prev?.image.hash === image.hash && prev.image.until !== undefined ? { until: prev.image.until } : {}),
    },
    // A thread's earlier turns are its stored ones.
    turns: [...(opts.kept as StoredTurn[]), ...(stored ? [stored] : [])],
    droppedTurns: (fresh ? 0 : (prev?.droppedTurns ?? 0)) + opts.dropped,
    createdAt: fresh || !prev ? at : prev.createdAt,
    updatedAt: at,
  };
}

/**
 * The conversation once the question a deleted message asked (first asked as `asked`) is forgotten: nothing of it left
 * when that message brought the conversation's image (what the turns were about); without that question's turn (an
 * answered-again turn found by the id it was first asked under); undefined when no stored turn was asked by it.
 * `turnOnly` (its answer was deleted, the message stays): the turn alone, whatever brought the image.
 */
export function withoutQuestion(
  state: ConversationState,
  asked: string,
  turnOnly = false,
): { state: ConversationState } | 'all' | undefined {
  const first = state.turns[0];
  const imageMessage = state.image.askedIn ?? (state.droppedTurns === 0 && first ? (first.askedAs ?? first.requestId) : undefined);
  if (imageMessage === asked && !turnOnly) return 'all';
  const turns = state.turns.filter((t) => (t.askedAs ?? t.requestId) !== asked);
  if (turns.length === state.turns.length) return undefined;
  return { state: { ...state, turns } };
}

/** Whether `user` has a part in the stored conversation: a turn of theirs, or they sent its image. */
export function isParticipant(state: ConversationState, user: string): boolean {
  return state.image.by === user || state.turns.some((t) => t.by === user);
}

/**
 * Whether `user` took part in the conversation: a turn of theirs, or they sent its image (no `user`: anyone; a
 * conversation stored without turns or sender: anyone's).
 */
export function tookPart(state: ConversationState, user: string | undefined): boolean {
  if (user === undefined || isParticipant(state, user)) return true;
  return state.turns.length === 0 && state.image.by === undefined;
}

/** Why an answer cannot be regenerated, as the user is told. */
export const REGENERATE_REFUSED = {
  gone: 'There is nothing to regenerate: this conversation was forgotten or has expired.',
  notLast: 'Only the latest answer in a conversation can be regenerated.',
  notYours: 'Only the person who asked can regenerate this answer.',
} as const;

/** Why an edited question is not answered again (adapters say nothing of it: an edit is not a request). */
export const EDIT_REFUSED = {
  gone: 'This conversation was forgotten or has expired: there is no answer to give again.',
  notLast: 'Only the latest question in a conversation is answered again when edited.',
  unchanged: 'The edited question is the same as the one answered.',
} as const;

/** A regenerate (or edit) request's question: the stored turn asked again, after the turns before it. */
export interface Regeneration {
  turn: UserTurn;
  /** the turns before it, as stored */
  earlier: StoredTurn[];
  /** the request id the turn was first asked under (kept by the turn that replaces it) */
  askedAs: string | undefined;
  /** the temperature it was asked at, where its request set one (StoredTurn.temperature) */
  temperature?: number;
}

/**
 * Whether `user` may have the turn stored as `requestId` answered again: it must be the conversation's last turn
 * (an earlier one's answer was followed up) and theirs. Adapters ask before showing a refusal privately; the
 * manager decides.
 */
export function regeneration(
  state: ConversationState | null | undefined,
  requestId: string,
  user: string,
): Regeneration | { code: 'stale' | 'not_allowed'; message: string } {
  const last = state?.turns.at(-1);
  if (!state || !last) return { code: 'stale', message: REGENERATE_REFUSED.gone };
  if (last.requestId !== requestId) return { code: 'stale', message: REGENERATE_REFUSED.notLast };
  if (last.by !== user) return { code: 'not_allowed', message: REGENERATE_REFUSED.notYours };
  return {
    turn: { task: last.task, prompt: last.user },
    earlier: state.turns.slice(0, -1),
    askedAs: last.askedAs ?? last.requestId,
    ...(last.temperature !== undefined ? { temperature: last.temperature } : {}),
  };
}

/**
 * Whether the edit of the message first asked as `askedAs` gets the conversation's last turn answered again with
 * `turn` as its question: that message must have asked the last turn (answered again since or not), be `user`'s, and
 * say something else than the stored question.
 */
export function edition(
  state: ConversationState | null | undefined,
  askedAs: string,
  user: string,
  turn: UserTurn,
): Regeneration | { code: 'stale' | 'not_allowed'; message: string } {
  const last = state?.turns.at(-1);
  if (!state || !last) return { code: 'stale', message: EDIT_REFUSED.gone };
  if ((last.askedAs ?? last.requestId) !== askedAs) return { code: 'stale', message: EDIT_REFUSED.notLast };
  if (last.by !== user) return { code: 'not_allowed', message: REGENERATE_REFUSED.notYours };
  if (last.user === turn.prompt && last.task === turn.task) return { code: 'stale', message: EDIT_REFUSED.unchanged };
  return { turn, earlier: state.turns.slice(0, -1), askedAs };
}

/**
 * A regenerate or edit request's verdict on the conversation as stored (regeneration, or edition with the request's
 * text as `turn()` makes it its question); undefined for any other request. The manager's rule, and a cluster front
 * end's for a request still waiting in line.
 */
export function askedAgain(
  state: ConversationState | null | undefined,
  req: Pick<ConversationRequest, 'regenerate' | 'edit' | 'user'>,
  turn: () => UserTurn,
): Regeneration | { code: 'stale' | 'not_allowed'; message: string } | undefined {
  const user = String(req.user);
  if (req.regenerate !== undefined) return regeneration(state, String(req.regenerate), user);
  if (req.edit !== undefined) return edition(state, String(req.edit), user, turn());
  return undefined;
}
