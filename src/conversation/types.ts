// The platform-neutral surface of the conversation manager: what adapters (Discord, Slack, web, CLI) hand
// it and what they get back (docs/architecture.md, "The conversation port").
import type { Entity } from '../grounding/parse.js';
import type { Task } from '../grounding/tasks.js';

/** One conversation: platform + workspace/guild + channel + thread (a Discord thread, a Slack `thread_ts`, a web tab). */
export interface ConversationKey {
  platform: 'discord' | 'slack' | 'web' | 'cli' | 'api';
  workspace: string;
  channel: string;
  thread: string;
}

/** MiniGPT-v2 task tags (`[grounding]` ...; src/grounding/tasks.ts owns the list); `'chat'` is free chat without a tag. */
export type TaskTag = Task;

/** Generation settings a user may choose (sanitised and clamped by the manager, never an error). */
export interface RequestGeneration {
  temperature?: number;
  maxNewTokens?: number;
  topP?: number;
  numBeams?: number;
  repetitionPenalty?: number;
  /** OpenAI's frequency and presence penalties (-2 to 2; 0: off) */
  frequencyPenalty?: number;
  presencePenalty?: number;
  /**
   * OpenAI's logit_bias: token id (a decimal string, as JSON keys are) -> bias added to its logit (-100 to 100).
   * Ids outside the model's vocabulary are left out.
   */
  logitBias?: Readonly<Record<string, number>>;
  /**
   * OpenAI's logprobs: the `text` events carry each answer token's log-probability and this many (0-20) most likely
   * alternatives (AnswerLogprob). Not with beam search.
   */
  logprobs?: number;
  seed?: number;
  /** more stop strings (beside the model's own): the answer ends before the first one written */
  stop?: readonly string[];
}

/** An earlier exchange of a stateless request, as the client sends it back. */
export interface PriorTurn {
  user: string;
  assistant: string;
}

export interface ConversationRequest {
  key: ConversationKey;
  /** who asked (platform user id or name); stored with the turn */
  user: string;
  text: string;
  /** encoded image bytes (JPEG, PNG, ...); any attached image starts the conversation afresh */
  image?: Uint8Array;
  /**
   * A stateless request (the OpenAI-style API): these exchanges, oldest first, are the conversation before
   * `text`; `image` (optional here: without one the language model answers alone) belongs to the first of
   * them. The store is neither read nor written; the KV cache is looked up and kept by the conversation's
   * content, so a request that extends an earlier one's messages prefills only what is new.
   */
  history?: readonly PriorTurn[];
  /** false: no `image` event (the annotated image is not drawn); default true */
  annotate?: boolean;
  /** overrides a task tag written in the text */
  task?: TaskTag | 'chat';
  generation?: RequestGeneration;
  /** aborting cancels the request, queued or running, and frees its slot */
  signal?: AbortSignal;
  requestId?: string;
  /**
   * Answer the conversation's last turn again (a Regenerate button): the `requestId` of that turn as stored. It must
   * still be the conversation's last turn, asked by `user` (else `stale` / `not_allowed`, and nothing changes). The
   * stored turn's text and task are asked again with this request's generation settings (`text`, `task` and `image`
   * are not used); the new answer replaces the old one in the store, under this request's `requestId`. Not with
   * `history` (a stateless request's client resends what it wants answered).
   */
  regenerate?: string;
  /**
   * The user edited the message that asked the conversation's last turn: that turn is answered again with `text` (and
   * `task`) as its question, after the turns before it, and the new turn replaces it in the store under this request's
   * `requestId`. `edit` is the request id the message was first asked under (the turn's `requestId`, or its `askedAs`
   * after a Regenerate or an earlier edit). Refused as for `regenerate` (`stale`: not the last turn's question any more,
   * or the same question as stored; `not_allowed`: someone else's); `image` is not used. Not with `history` or
   * `regenerate`.
   */
  edit?: string;
  /**
   * A question asked under another request id than the message's own (an edited message whose first answer was
   * stopped for the edit, so never stored): that id, kept as the stored turn's `askedAs` so that a later edit of the
   * message finds it.
   */
  askedAs?: string;
  /**
   * `image` came from another message than the one asking (the message replied to, one earlier in the thread, the
   * message a "Describe image" command names): that message's request id, recorded as the image's (ImageRef.askedIn),
   * so that deleting that message forgets the conversation.
   */
  imageFrom?: string;
}

/**
 * Options of a reset. `by`: only if this user took part in the conversation (a stored turn of theirs, or they sent
 * its image; one stored without either, by an earlier version: anyone), decided in the conversation's order, after its earlier requests are stored.
 */
export interface ResetOptions {
  by?: string;
}

/** What a reset did: deleted the conversation; `by` had no part in it (nothing deleted); nothing was stored. */
export type ResetOutcome = 'forgotten' | 'not_allowed' | 'empty';

/**
 * What forgetting a deleted message's question did (ConversationManager.forgetQuestion): the message brought the
 * conversation's image, so the whole conversation went (`conversation_forgotten`); its turn went, the others stay
 * (`question_forgotten`); no stored turn was asked by it (`not_asked`: nothing changed).
 */
export type QuestionOutcome = 'conversation_forgotten' | 'question_forgotten' | 'not_asked';

/**
 * `unavailable`: the conversation store (e.g. Redis) cannot be reached; the request can be sent again later.
 * `stale`: a regenerate request's turn is no longer the conversation's last (or the conversation is gone);
 * `not_allowed`: the user may not do this (regenerate someone else's answer).
 */
export type ErrorCode = 'busy' | 'no_image' | 'bad_image' | 'too_long' | 'cancelled' | 'unavailable' | 'stale' | 'not_allowed' | 'internal';

/**
 * The answer stream of one request, in this order: `queued`, `started`, `text`*, `final`, `image`?,
 * `timings`; or, at any point, one `error` that ends the stream (`busy` comes alone). `restart` may come
 * between the `text` events (see there).
 */
export type AnswerEvent =
  /**
   * position: requests that will run before this one (0: it starts now). `checked`: a regenerate or edit request
   * whose stored question was found to be one it may have answered again, once nothing of its conversation was
   * ahead of it (its place told again, checked): it is answered unless the conversation changes otherwise before
   * it starts. One refused then ends with its `error` before it starts.
   */
  | { type: 'queued'; position: number; checked?: true }
  | { type: 'started' }
  /**
   * a streamed piece of the answer; the pieces concatenated are `final.text`. `logprobs` (when the request asked for
   * them): the answer's tokens whose text this piece completes; such a piece may be empty.
   */
  | { type: 'text'; text: string; logprobs?: AnswerLogprob[] }
  /**
   * the text streamed so far is void: the answer is being given again (its worker died and another one took
   * it over, with a different result); the `text` events that follow make the whole answer. Only from a
   * front end of several processes (src/cluster), never from a local ConversationManager.
   */
  | { type: 'restart' }
  /** the raw answer (box syntax included) and its grounded entities (offsets index `text`) */
  | {
      type: 'final';
      text: string;
      entities: Entity[];
      finishReason: string;
      /** the task the answer was given under (a typed tag, or the request's `task`) */
      task?: TaskTag | 'chat';
      /** the conversation's image in pixels after EXIF orientation (absent for a text-only answer) */
      image?: { width: number; height: number };
    }
  /** the image with the answer's boxes drawn (or, for `[identify]`, the user's box) */
  | { type: 'image'; data: Buffer; mime: string }
  | { type: 'timings'; timings: Record<string, number> }
  | { type: 'error'; code: ErrorCode; message: string };

/** A token as the answer's log-probabilities name it: its id, text (bytes that are no UTF-8 text alone as `\xNN`) and bytes. */
export interface LogprobToken {
  /** the tokenizer's id */
  id: number;
  token: string;
  bytes: number[];
  /** natural log of its probability under the model at that position (before penalties, bias and temperature) */
  logprob: number;
}

/** An answer token's log-probability, with the most likely tokens at its position, best first. */
export interface AnswerLogprob extends LogprobToken {
  top: LogprobToken[];
}

/** One finished exchange as stored. */
export interface StoredTurn {
  /** the user text as it went into the prompt (markers neutralised, task tag applied) */
  user: string;
  /** the model's answer, trimmed (box syntax kept) */
  assistant: string;
  task: TaskTag | 'chat';
  /** ConversationRequest.user */
  by: string;
  /** ISO time */
  at: string;
  finishReason: string;
  requestId?: string;
  /**
   * A turn answered again (Regenerate, an edited question) under a new `requestId`: the request id it was first asked
   * under, by which an edit of the message that asked it still finds it.
   */
  askedAs?: string;
  /**
   * The temperature the request that asked it set (a /describe option, the web page's setting), kept through its
   * Regenerates: a Regenerate that sets none samples at it.
   */
  temperature?: number;
}

/** The conversation's image, stored once under its content hash. */
export interface ImageRef {
  /** sha256 of the bytes, hex */
  hash: string;
  /** pixels after EXIF orientation */
  width: number;
  height: number;
  bytes: number;
  /**
   * The request id of the message that brought it (ConversationRequest.imageFrom, else the request's own: deleting that
   * message forgets the conversation). Absent in conversations stored before it was recorded: there the first turn's,
   * while none was dropped.
   */
  askedIn?: string;
  /**
   * Who sent it (ConversationRequest.user of the message that brought it): a conversation whose image was kept
   * without an answer (its request stopped) has no turn that says whose it is. Absent in conversations stored
   * before it was recorded.
   */
  by?: string;
  /**
   * With a retention time (ConversationStore's ttlMs): until when (ms since the epoch) the stored image is kept at
   * least; its hold is renewed by the conversation's turns before it runs short.
   */
  until?: number;
}

/** What the store holds for one conversation (`history()` returns it). */
export interface ConversationState {
  v: 1;
  key: ConversationKey;
  image: ImageRef;
  /** oldest first, already trimmed to the context budget */
  turns: StoredTurn[];
  /** turns dropped so far to stay within max_context_len */
  droppedTurns: number;
  createdAt: string;
  updatedAt: string;
}
