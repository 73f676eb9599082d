// What front ends and workers exchange through Redis (docs/scaling.md): the BullMQ job of one request, the
// answer events streamed back on a Redis stream per job, the per-conversation order, worker heartbeats.
//
//   bull:minigpt-answers:*           the BullMQ queue (jobs wait, run, are retried when their worker dies)
//   minigpt:ev:<job id>              the job's answer events (XADD by the worker, XREAD by the front end)
//   minigpt:seq:<conversation>       requests numbered as they arrive (INCR by the front end)
//   minigpt:done:<conversation>      the number of the last one finished (a job runs after its predecessor)
//   minigpt:cancel                   pub/sub: ids of jobs whose asker went away
//   minigpt:pending                  answer jobs queued and not yet run (the queue depth that back-pressure counts)
//   minigpt:worker:<id>              a worker's heartbeat (JSON, expires when it stops beating)
//   bull:minigpt-answers@<id>:*      a worker's own queue: follow-ups of conversations whose KV cache it holds
//   minigpt:affinity:<conversation>  which worker that is
//   minigpt:workers                  ids of workers with a queue of their own (a dead one's is adopted by another)
//   minigpt:discord-shards:<bot>     which front end holds which Discord shard (hash: shard id -> hold; shard-lease.ts)
//   minigpt:scanned:order-counters   a worker gave earlier versions' order counters an expiry in the last day
import type {
  AnswerEvent,
  ConversationKey,
  ConversationRequest,
  RequestGeneration,
  PriorTurn,
  QuestionOutcome,
  ResetOutcome,
  TaskTag,
} from '../conversation/index.js';
import type { Forgotten } from '../conversation/store.js';
import type { TurnRules } from '../conversation/text.js';
import type { Redis } from 'ioredis';

export const QUEUE_NAME = 'minigpt-answers';
/**
 * What a worker understands of the jobs, shown in its heartbeat (WorkerInfo.protocol): 6, a request's OpenAI
 * sampling settings (`frequencyPenalty`, `presencePenalty`, `logitBias`, `logprobs`); 5, a reset job's `question`
 * (the question of a deleted message forgotten, not the whole conversation); 4, a request's `edit` (an
 * edited question answered again); 3, a request's `regenerate`
 * (the conversation's last turn answered again); 2, a reset job decides its `by` (whether that user took part) and
 * says what it did (a `reset` event); 1 (no `protocol` in the heartbeat, workers before 2026-12-06): it forgets
 * whatever `by` says and says nothing.
 */
export const PROTOCOL = 6;
/** The first protocol whose workers decide a reset's `by` themselves. */
export const PROTOCOL_RESET_BY = 2;
/** The first protocol whose workers know `regenerate` (an earlier one would answer an empty question). */
export const PROTOCOL_REGENERATE = 3;
/** The first protocol whose workers know `edit` (an earlier one would answer the edited text as a new question). */
export const PROTOCOL_EDIT = 4;
/** The first protocol whose workers know a reset's `question` (an earlier one would forget the whole conversation). */
export const PROTOCOL_FORGET_QUESTION = 5;
/**
 * The first protocol whose workers know a request's OpenAI sampling settings (frequency and presence penalties,
 * logit bias, logprobs; an earlier one would answer without them).
 */
export const PROTOCOL_OPENAI_SAMPLING = 6;
/** A worker's own queue: follow-ups of the conversations whose KV cache it holds. */
export const workerQueueName = (workerId: string) => `${QUEUE_NAME}@${workerId}`;
export const PREFIX = 'minigpt:';
export const keys = {
  events: (jobId: string) => `${PREFIX}ev:${jobId}`,
  seq: (convId: string) => `${PREFIX}seq:${convId}`,
  done: (convId: string) => `${PREFIX}done:${convId}`,
  /** set for a day after a worker gave the order counters of an earlier version an expiry (expireOrderCounters) */
  orderScan: `${PREFIX}scanned:order-counters`,
  cancel: `${PREFIX}cancel`,
  /** pub/sub: what a forget deleted (conversation ids, image hashes; JSON), so that every worker drops its caches of it */
  forgotten: `${PREFIX}forgotten`,
  worker: (id: string) => `${PREFIX}worker:${id}`,
  workers: `${PREFIX}worker:*`,
  /** ids of workers that have their own queue (removed when one stops cleanly; a dead one's queue is adopted) */
  known: `${PREFIX}workers`,
  /** ids of answer jobs not yet taken up by a worker, scored by when they were queued (back-pressure) */
  pending: `${PREFIX}pending`,
  /** the worker that holds a conversation's KV cache */
  affinity: (convId: string) => `${PREFIX}affinity:${convId}`,
  /** the turns of a conversation's events that front ends received and have not numbered yet, scored by their place (arrival-order.ts) */
  arrivals: (key: string) => `${PREFIX}arrivals:${key}`,
  /** which front end writes an answer: by its Stop button's id, by the id its message was asked under, by its image's (stop-relay.ts) */
  held: (kind: 'stop' | 'asked' | 'image', id: string) => `${PREFIX}held:${kind}:${id}`,
  /** a front end's requests from the others (stop an answer it writes), and its replies to theirs */
  stops: (owner: string) => `${PREFIX}stops:${owner}`,
  /** the Discord shards of one bot (a digest of its token) held by front ends */
  discordShards: (bot: string) => `${PREFIX}discord-shards:${bot}`,
} as const;

/** Event streams are deleted this long after their last write (a front end that went away leaves them behind). */
export const EVENTS_TTL_S = 600;
/** A worker's heartbeat is renewed this often and expires after HEARTBEAT_TTL_MS without one. */
export const HEARTBEAT_MS = 2000;
export const HEARTBEAT_TTL_MS = 6000;
/** A pending entry older than this is a front end's leftover (it died between counting and queueing): not counted. */
export const PENDING_TTL_MS = 15 * 60 * 1000;
/** A conversation's order counters (keys.seq, keys.done) outlive its last request by this much. */
export const ORDER_TTL_MS = 7 * 24 * 3600 * 1000;
/** A conversation goes back to its worker's queue for this long after its last answer. */
export const AFFINITY_TTL_MS = 30 * 60 * 1000;

/** A request as it travels in a job: the image as base64, no signal. */
export interface RequestData {
  key: ConversationKey;
  user: string;
  text: string;
  image?: string;
  history?: PriorTurn[];
  task?: TaskTag | 'chat';
  generation?: RequestGeneration;
  annotate?: boolean;
  requestId: string;
  regenerate?: string;
  edit?: string;
  askedAs?: string;
  imageFrom?: string;
}

export type JobData =
  | { kind: 'answer'; convId: string; seq: number; request: RequestData }
  /**
   * `question`: only the question of the deleted message asked as this request id (ConversationManager.forgetQuestion;
   * `turnOnly`: its answer was deleted)
   */
  | { kind: 'reset'; convId: string; seq: number; key: ConversationKey; by?: string; question?: string; turnOnly?: boolean };

/**
 * What a job's stream carries: the manager's answer events, plus `restart` (a retry on another worker begins:
 * the text so far is void), `reset` (what a reset job did) and `end` (the stream is complete).
 */
export type WireEvent = AnswerEvent | { type: 'restart' } | { type: 'reset'; outcome: ResetOutcome | QuestionOutcome } | { type: 'end' };

export function encodeRequest(req: ConversationRequest, requestId: string): RequestData {
  return {
    key: req.key,
    user: req.user,
    text: req.text,
    ...(req.image ? { image: Buffer.from(req.image.buffer, req.image.byteOffset, req.image.byteLength).toString('base64') } : {}),
    ...(req.history ? { history: req.history.map((t) => ({ user: t.user, assistant: t.assistant })) } : {}),
    ...(req.task ? { task: req.task } : {}),
    ...(req.generation ? { generation: { ...req.generation, ...(req.generation.stop ? { stop: [...req.generation.stop] } : {}) } } : {}),
    ...(req.annotate !== undefined ? { annotate: req.annotate } : {}),
    requestId,
    ...(req.regenerate !== undefined ? { regenerate: req.regenerate } : {}),
    ...(req.edit !== undefined ? { edit: req.edit } : {}),
    ...(req.askedAs !== undefined ? { askedAs: req.askedAs } : {}),
    ...(req.imageFrom !== undefined ? { imageFrom: req.imageFrom } : {}),
  };
}

export function decodeRequest(d: RequestData, signal: AbortSignal): ConversationRequest {
  const req: ConversationRequest = { key: d.key, user: d.user, text: d.text, requestId: d.requestId, signal };
  if (d.image !== undefined) req.image = new Uint8Array(Buffer.from(d.image, 'base64'));
  if (d.history) req.history = d.history;
  if (d.task) req.task = d.task;
  if (d.generation) req.generation = d.generation;
  if (d.annotate !== undefined) req.annotate = d.annotate;
  if (d.regenerate !== undefined) req.regenerate = d.regenerate;
  if (d.edit !== undefined) req.edit = d.edit;
  if (d.askedAs !== undefined) req.askedAs = d.askedAs;
  if (d.imageFrom !== undefined) req.imageFrom = d.imageFrom;
  return req;
}

/** A stream entry's single field. */
export function encodeEvent(ev: WireEvent): string {
  return JSON.stringify(ev.type === 'image' ? { type: 'image', mime: ev.mime, data: ev.data.toString('base64') } : ev);
}

export function decodeEvent(s: string): WireEvent {
  const ev = JSON.parse(s) as WireEvent | { type: 'image'; mime: string; data: string };
  if (ev.type === 'image' && typeof ev.data === 'string') return { type: 'image', mime: ev.mime, data: Buffer.from(ev.data, 'base64') };
  return ev as WireEvent;
}

/**
 * Tells every worker what a forget deleted (keys.forgotten), so that each drops its caches of it; a lost message
 * costs only memory until the caches push those entries out. `from`: the worker that forgot it (it has dropped its
 * own caches already).
 */
export async function publishForgotten(redis: Redis, f: Forgotten, from?: string): Promise<void> {
  await redis.publish(keys.forgotten, JSON.stringify(from !== undefined ? { ...f, from } : f)).catch(() => {});
}

/** A keys.forgotten message (from any process: only its lists of strings are taken), and the worker that sent it. */
export function decodeForgotten(s: string): Forgotten & { from?: string } {
  const f = JSON.parse(s) as Partial<Record<keyof Forgotten | 'from', unknown>>;
  const strings = (v: unknown) => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);
  return { conversations: strings(f.conversations), images: strings(f.images), ...(typeof f.from === 'string' ? { from: f.from } : {}) };
}

/** What a worker says about itself in its heartbeat. */
export interface WorkerInfo {
  id: string;
  host: string;
  pid: number;
  model: string;
  architecture: string;
  provider: string;
  startedAt: string;
  /** jobs running now */
  running: number;
  /** jobs finished since start */
  finished: number;
  /** PROTOCOL of the worker (absent: 1) */
  protocol?: number;
  /** how its model's user turns are made (absent: an earlier version): a front end checks an edited question with it */
  turns?: TurnRules;
}

/** A worker's protocol (a heartbeat without one is from before protocols were numbered: 1). */
export function protocolOf(w: WorkerInfo): number {
  return typeof w.protocol === 'number' ? w.protocol : 1;
}
