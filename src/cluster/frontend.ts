// `minigpt serve --role frontend`: the adapters' conversation manager when the model runs elsewhere. Each
// request becomes a BullMQ job (numbered in its conversation, so that workers keep the arrival order), its
// answer events come back on the job's Redis stream; history and per-thread state are read from the shared
// Redis store. Adapters see the same AnswerEvent streams as from a local ConversationManager.
import { randomBytes } from 'node:crypto';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import type Keyv from 'keyv';
import { ConversationStore, conversationId, inPlace, type Workspaces } from '../conversation/store.js';
import { EventChannel } from '../conversation/scheduler.js';
import { KeyedMutex } from '../util/keyed-mutex.js';
import { RedisArrivalOrder } from './arrival-order.js';
import { RedisStopRelay } from './stop-relay.js';
import { RedisConcurrency } from './concurrency.js';
import type {
  AnswerEvent,
  AnswerLogprob,
  ConversationKey,
  ConversationRequest,
  ConversationState,
  ResetOptions,
  QuestionOutcome,
  ResetOutcome,
} from '../conversation/index.js';
import type { ConversationPort } from '../../adapters/shared/port.js';
import { RedisRateLimiter } from './rate-limit.js';
import { RedisShardLeases, type RedisShardLeasesOptions } from './shard-lease.js';
import { EventStreams } from './event-streams.js';
import {
  QUEUE_NAME,
  decodeEvent,
  encodeRequest,
  keys,
  HEARTBEAT_TTL_MS,
  ORDER_TTL_MS,
  PENDING_TTL_MS,
  PROTOCOL,
  PROTOCOL_EDIT,
  PROTOCOL_FORGET_QUESTION,
  PROTOCOL_OPENAI_SAMPLING,
  PROTOCOL_REGENERATE,
  PROTOCOL_RESET_BY,
  publishForgotten,
  protocolOf,
  workerQueueName,
  type JobData,
  type WorkerInfo,
} from './protocol.js';
import { askedAgain, tookPart } from '../conversation/turn.js';
import { userTurn } from '../conversation/text.js';

export interface RemoteConversationsOptions {
  redisUrl: string;
  /** the shared store (STORE_URL, else REDIS_URL) */
  store: Keyv;
  /** jobs that may wait in the queue; one more is answered `busy` at once (runtime.queue_size, default 16) */
  maxQueue?: number;
  /** a job that shows no sign of progress (no event, no worker) for this long fails with an error (default 10 min) */
  stallTimeoutMs?: number;
  /** how often a request waiting in the queue checks its place there, told when it moves up (default 2 s) */
  positionPollMs?: number;
  log?: (line: string) => void;
}

/** INCR with an expiry; a new count (1) clears the count of done requests of an expired one. */
const NEXT_SEQ = `local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('DEL', KEYS[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n`;

/** A waiting regenerate or edit request's check by the front end (tellPlace): `unchecked`, left to the worker. */
type Checked = 'passed' | 'refused' | 'unchecked';

const UNAVAILABLE = 'The bot cannot reach its job queue right now; please try again in a moment.';
const NO_WORKER = 'No model worker is running right now; please try again in a moment.';
const EDIT_NEEDS_UPGRADE =
  'An edited question cannot be answered again while this bot is being upgraded (a worker of an earlier version is running); please ask it again as a new message, or edit it later.';
const FORGET_QUESTION_NEEDS_UPGRADE =
  "a worker of an earlier version is running (it would forget the whole conversation): the deleted message's question is kept until the retention time, /forget or `minigpt forget`";
const SAMPLING_NEEDS_UPGRADE =
  'frequency_penalty, presence_penalty, logit_bias and logprobs cannot be honoured while this bot is being upgraded (a worker of an earlier version is running); please try again in a moment, or send the request without them.';
const REGENERATE_NEEDS_UPGRADE =
  'Regenerating an answer is not possible while this bot is being upgraded (a worker of an earlier version is running); please ask again instead, or try later.';

/** Whether the request sets a generation setting that only workers of PROTOCOL_OPENAI_SAMPLING know. */
function asksOpenAiSampling(req: ConversationRequest): boolean {
  const g = req.generation;
  return (
    !!g &&
    (!!g.frequencyPenalty || !!g.presencePenalty || (!!g.logitBias && Object.keys(g.logitBias).length > 0) || g.logprobs !== undefined)
  );
}

export class RemoteConversations implements ConversationPort {
  readonly store: Keyv;
  /** what close() stops besides the connections (the API's concurrency holds' renewal) */
  private readonly closers: (() => void)[] = [];
  private readonly repo: ConversationStore;
  private readonly queue: Queue<JobData>;
  private readonly redis: Redis;
  private readonly maxQueue: number;
  private readonly stallTimeoutMs: number;
  private readonly positionPollMs: number;
  private readonly log: (line: string) => void;
  private readonly streams: EventStreams;
  /** workers' own queues, by worker id */
  private readonly workerQueues = new Map<string, Queue<JobData>>();
  /**
   * A conversation's requests and resets are queued one at a time in this process, in the order of the calls, so
   * that their numbers (seq) follow that order whatever each awaits before taking its number (the adapters hand
   * requests over in arrival order; a forget right after a question must not overtake it).
   */
  private readonly enqueueing = new KeyedMutex();
  /** workers of an earlier protocol already logged */
  private readonly warnedOlder = new Set<string>();
  /** this front end, among others on the same Redis */
  private readonly owner = randomBytes(8).toString('hex');
  private closing = false;

  constructor(private readonly opts: RemoteConversationsOptions) {
    this.store = opts.store;
    this.repo = new ConversationStore(opts.store);
    this.maxQueue = Math.max(0, opts.maxQueue ?? 16);
    this.stallTimeoutMs = opts.stallTimeoutMs ?? 600_000;
    this.positionPollMs = opts.positionPollMs ?? 2000;
    this.log = opts.log ?? (() => {});
    // A command waits for at most one reconnection attempt, then fails: the user gets "try again", not a hang.
    this.redis = new Redis(opts.redisUrl, { maxRetriesPerRequest: 1, connectTimeout: 5000 });
    this.redis.on('error', () => {});
    this.streams = new EventStreams(this.redis);
    this.queue = new Queue<JobData>(QUEUE_NAME, {
      connection: { url: opts.redisUrl, maxRetriesPerRequest: 1, connectTimeout: 5000 } as never,
    });
    this.queue.on('error', () => {});
  }

  private queueOf(workerId: string | null): Queue<JobData> {
    if (workerId === null) return this.queue;
    let q = this.workerQueues.get(workerId);
    if (!q) {
      q = new Queue<JobData>(workerQueueName(workerId), {
        connection: { url: this.opts.redisUrl, maxRetriesPerRequest: 1, connectTimeout: 5000 } as never,
      });
      q.on('error', () => {});
      this.workerQueues.set(workerId, q);
    }
    return q;
  }

  /** Answers one request as a stream of AnswerEvents (see ConversationManager.handle); never throws. */
  handle(req: ConversationRequest): AsyncIterable<AnswerEvent> {
    const channel = new EventChannel<AnswerEvent>();
    const controller = new AbortController();
    const onAbort = () => controller.abort();
    req.signal?.addEventListener('abort', onAbort, { once: true });
    channel.onReturn = () => controller.abort();
    void this.run(req, channel, controller.signal).finally(() => {
      req.signal?.removeEventListener('abort', onAbort);
      channel.close();
    });
    return channel;
  }

  /**
   * Forgets a conversation (with `by`: only if that user took part in it), after its earlier requests (a job like
   * them, so the order holds).
   */
  async reset(key: ConversationKey, opts: ResetOptions = {}): Promise<ResetOutcome> {
    const convId = conversationId(key);
    if (opts.by !== undefined && this.olderWorkers(await listWorkers(this.redis)).some((w) => protocolOf(w) < PROTOCOL_RESET_BY)) {
      // A worker of an earlier version would forget whatever `by` says: decided here too, from the store as it is
      // (not after the requests queued before it).
      const state = await this.repo.getConversation(convId);
      if (state && !tookPart(state, opts.by)) return 'not_allowed';
    }
    // (a worker of an earlier version resets without saying what it did: it deleted whatever was there)
    const outcome = await this.resetJob(key, opts.by !== undefined ? { by: opts.by } : {});
    return outcome === 'not_allowed' || outcome === 'empty' ? outcome : 'forgotten';
  }

  /**
   * Forgets the question of a deleted message (see ConversationManager.forgetQuestion), after the conversation's
   * earlier requests. Throws while a worker of an earlier version runs: it would forget the whole conversation.
   */
  async forgetQuestion(key: ConversationKey, asked: string, opts: { turnOnly?: boolean } = {}): Promise<QuestionOutcome> {
    if (this.olderWorkers(await listWorkers(this.redis)).some((w) => protocolOf(w) < PROTOCOL_FORGET_QUESTION)) {
      throw new Error(FORGET_QUESTION_NEEDS_UPGRADE);
    }
    const outcome = await this.resetJob(key, { question: asked, ...(opts.turnOnly ? { turnOnly: true } : {}) });
    if (outcome === 'conversation_forgotten' || outcome === 'question_forgotten' || outcome === 'not_asked') return outcome;
    throw new Error(`a worker said it did ${String(outcome)} with a deleted message's question`);
  }

  /** A reset job (a job like the conversation's requests, so the order holds): what its worker said it did. */
  private async resetJob(
    key: ConversationKey,
    extra: { by?: string; question?: string; turnOnly?: boolean },
  ): Promise<ResetOutcome | QuestionOutcome | undefined> {
    const convId = conversationId(key);
    const jobId = `x${randomBytes(12).toString('hex')}`;
    await this.enqueueing.run(convId, async () => {
      const seq = await this.nextSeq(convId);
      await this.queue.add('reset', { kind: 'reset', convId, seq, key, ...extra }, { jobId, attempts: 3 });
    });
    let outcome: ResetOutcome | QuestionOutcome | undefined;
    for await (const ev of this.events(jobId, this.queue, new AbortController().signal)) {
      if (ev.type === 'error') throw new Error(ev.message);
      if (ev.type === 'reset') outcome = ev.outcome;
    }
    return outcome;
  }

  /**
   * Forgets every conversation of a platform's workspace (or, with `channel`, of one of its channels) in the shared
   * store (the workers' KV caches of them are of no use without it: a follow-up there has no image).
   */
  async forgetWorkspace(platform: ConversationKey['platform'], workspace: Workspaces, channel?: string): Promise<number | undefined> {
    const gone = await this.repo.forgetWhere(inPlace(platform, workspace, channel));
    // the workers drop what they derived from them (KV caches, image embeddings)
    if (gone) await publishForgotten(this.redis, gone);
    return gone?.conversations.length;
  }

  /**
   * The next number in a conversation's order. The counters expire ORDER_TTL_MS after the conversation's last request
   * (they were kept for ever); a count that starts again at 1 starts the workers' count of done requests again too.
   */
  private async nextSeq(convId: string): Promise<number> {
    return Number(await this.redis.eval(NEXT_SEQ, 2, keys.seq(convId), keys.done(convId), String(ORDER_TTL_MS)));
  }

  /** Those of `workers` of an earlier protocol than this front end's; each is logged once. */
  private olderWorkers(workers: readonly WorkerInfo[]): WorkerInfo[] {
    const older = workers.filter((w) => protocolOf(w) < PROTOCOL);
    for (const w of older) {
      if (this.warnedOlder.has(w.id)) continue;
      this.warnedOlder.add(w.id);
      this.log(
        `frontend: worker ${w.id} (${w.host}, pid ${w.pid}) is of an earlier version (protocol ${protocolOf(w)}, this front end's ${PROTOCOL}): upgrade workers with or before front ends; until then what it cannot do is done without it (who may forget a conversation decided from the store as it is) or refused (regenerate, edited questions)`,
      );
    }
    return older;
  }

  /** The stored conversation, read from the shared store. */
  async history(key: ConversationKey): Promise<ConversationState | null> {
    return (await this.repo.getConversation(conversationId(key))) ?? null;
  }

  /** A per-user limit shared by every front end (counted in Redis). */
  rateLimiter(scope: string, max: number, windowMs: number): RedisRateLimiter {
    return new RedisRateLimiter(this.redis, scope, max, windowMs, this.log);
  }

  /** The API's requests in progress per key, counted with every front end's (API_MAX_CONCURRENT); renewed until close. */
  apiConcurrency(): RedisConcurrency {
    const c = new RedisConcurrency(this.redis, this.log);
    this.closers.push(() => c.close());
    return c;
  }

  /** where front ends keep the order of a conversation's events between them (Slack's threads) */
  arrivalOrder(): RedisArrivalOrder {
    return new RedisArrivalOrder(this.redis, { owner: this.owner, log: this.log });
  }

  /** How the adapters of this front end stop answers another front end writes, and serve the others' requests. */
  stopRelay(): RedisStopRelay {
    return new RedisStopRelay(this.redis, { owner: this.owner, log: this.log });
  }

  /** where this front end holds its Discord shards, so that no other connects them too */
  shardLeases(opts: Omit<RedisShardLeasesOptions, 'log'> = {}): RedisShardLeases {
    return new RedisShardLeases(this.redis, { ...opts, log: this.log });
  }

  /** Workers whose heartbeat is current. */
  async workers(): Promise<WorkerInfo[]> {
    return listWorkers(this.redis);
  }

  async close(): Promise<void> {
    this.closing = true;
    for (const close of this.closers) close();
    this.streams.close();
    await Promise.all([this.queue, ...this.workerQueues.values()].map((q) => q.close().catch(() => {})));
    this.redis.disconnect();
    await this.store.disconnect().catch(() => {});
  }

  private async run(req: ConversationRequest, channel: EventChannel<AnswerEvent>, signal: AbortSignal): Promise<void> {
    const fail = (code: Extract<AnswerEvent, { type: 'error' }>['code'], message: string) => channel.push({ type: 'error', code, message });
    if (this.closing) return fail('busy', 'The bot is shutting down; please try again in a moment.');
    const convId = conversationId(req.key);
    const requestId = req.requestId ?? randomBytes(8).toString('hex');
    const jobId = `j${randomBytes(12).toString('hex')}`;
    // (taken now, before this method's first await: the order of the calls)
    const queued = await this.enqueueing.run(convId, () => this.enqueue(req, convId, jobId, requestId));
    if ('code' in queued) return fail(queued.code, queued.message);
    const { queue, position, seq } = queued;
    channel.push({ type: 'queued', position });
    const onAbort = () => {
      // The worker stops it if it runs; a waiting one is dropped when a worker takes it, and no longer counted as
      // waiting from now (the places behind it move up, the busy check has its room).
      void this.redis
        .multi()
        .set(`${keys.events(jobId)}:cancelled`, '1', 'EX', 600)
        .publish(keys.cancel, jobId)
        .zrem(keys.pending, jobId)
        .exec()
        .catch(() => {});
    };
    // A regenerate or edit request waiting in line is checked once nothing of its conversation is ahead of it (as a
    // local manager does, ConversationManager.checkAnswerable): refused at once, or its places told as checked.
    let refused = false;
    const check =
      req.regenerate !== undefined || req.edit !== undefined
        ? async (): Promise<Checked | undefined> => {
            const verdict = await this.waitingVerdict(req, convId, seq);
            if (typeof verdict !== 'object') return verdict;
            refused = true;
            onAbort();
            fail(verdict.code, verdict.message);
            return 'refused';
          }
        : undefined;
    const waiting = position > 0 || check ? this.tellPlace(jobId, position, channel, check) : undefined;
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      // What a retry on another worker repeats is not passed on again (a seeded answer repeats itself); an answer
      // that comes out different replaces the text so far.
      let sent = '';
      let replay: string | null = null;
      // (the replayed pieces' token log-probabilities, when asked for: they go with the text that is passed on)
      let replayLogprobs: AnswerLogprob[] = [];
      for await (const ev of this.events(jobId, queue, signal, () => refused)) {
        if (refused) return;
        waiting?.stop(); // (a worker has it)
        if (ev.type === 'reset') continue; // (a reset job's; an answer's stream has none)
        if (ev.type === 'restart') {
          replay = '';
          replayLogprobs = [];
          continue;
        }
        if (ev.type === 'started' && replay !== null) continue;
        if (ev.type === 'text') {
          if (replay !== null) {
            replay += ev.text;
            if (ev.logprobs) replayLogprobs.push(...ev.logprobs);
            // the text given again (its tokens were given with it the first time)
            if (sent.startsWith(replay)) continue;
            if (replay.startsWith(sent)) {
              // (a piece across the end of what was sent: its tokens, as they cannot be told apart)
              channel.push({ type: 'text', text: replay.slice(sent.length), ...(ev.logprobs ? { logprobs: ev.logprobs } : {}) });
              sent = replay;
              replay = null;
              continue;
            }
            channel.push({ type: 'restart' });
            channel.push({ type: 'text', text: replay, ...(ev.logprobs ? { logprobs: replayLogprobs } : {}) });
            sent = replay;
            replay = null;
            continue;
          }
          sent += ev.text;
        }
        if (ev.type === 'final' && replay !== null && replay !== sent) {
          // the retry's whole answer is shorter than what was shown: show it instead
          channel.push({ type: 'restart' });
          if (ev.text || replayLogprobs.length)
            channel.push({ type: 'text', text: ev.text, ...(replayLogprobs.length ? { logprobs: replayLogprobs } : {}) });
          replay = null;
        }
        channel.push(ev);
      }
    } catch (err) {
      if (signal.aborted) return fail('cancelled', 'The request was cancelled.');
      this.log(`frontend: job ${jobId}: ${(err as Error).message}`);
      return fail('unavailable', UNAVAILABLE);
    } finally {
      waiting?.stop();
      signal.removeEventListener('abort', onAbort);
    }
  }

  /**
   * While job `jobId` waits for a worker (it is among the pending jobs), its place among them is read every
   * positionPollMs and told when it moved up (`queued`), as the manager tells a request waiting in one process.
   * `check` (a regenerate or edit request's) is asked at each read until it decides: passed, the places are told as
   * checked; refused, it has ended the request.
   */
  private tellPlace(
    jobId: string,
    told: number,
    channel: EventChannel<AnswerEvent>,
    check?: () => Promise<Checked | undefined>,
  ): { stop(): void } {
    let stopped = false;
    // `check` (a regenerate or edit request's): undefined until it can be decided
    let checked: Checked | undefined = check ? undefined : 'unchecked';
    let checking = false;
    const tick = () => {
      if (checked === undefined && !checking) {
        checking = true;
        void check!()
          .then(
            (verdict) => {
              if (stopped || verdict === undefined) return;
              checked = verdict;
              if (verdict === 'passed') channel.push({ type: 'queued', position: told, checked: true });
              if (verdict === 'refused') stop();
            },
            () => {}, // (decided by the worker when it runs it)
          )
          .finally(() => (checking = false));
      }
      void this.redis
        .zrank(keys.pending, jobId)
        .then((rank) => {
          if (stopped || rank === null || rank >= told) return;
          told = rank;
          channel.push({ type: 'queued', position: rank, ...(checked === 'passed' ? { checked: true as const } : {}) });
        })
        .catch(() => {}); // (a place not told this time: the answer itself does not depend on it)
    };
    const timer = setInterval(tick, this.positionPollMs);
    timer.unref?.();
    if (check) tick();
    const stop = () => {
      stopped = true;
      clearInterval(timer);
    };
    return { stop };
  }

  /**
   * A regenerate or edit request's verdict while it waits in line: undefined while something of its conversation is
   * ahead of it (its order number `seq` not next); `unchecked` where no worker says how its model makes user turns
   * (an earlier version's: the worker decides); else `passed`, or the refusal (`stale`, `not_allowed`) the worker
   * would give, from the store as it is: nothing else of the conversation runs before it.
   */
  private async waitingVerdict(
    req: ConversationRequest,
    convId: string,
    seq: number,
  ): Promise<Exclude<Checked, 'refused'> | { code: 'stale' | 'not_allowed'; message: string } | undefined> {
    if (Number((await this.redis.get(keys.done(convId))) ?? 0) < seq - 1) return undefined;
    const rules = (await listWorkers(this.redis)).find((w) => w.turns)?.turns;
    if (!rules) return 'unchecked';
    const state = await this.repo.getConversation(convId);
    const verdict = askedAgain(state, req, () => userTurn(typeof req.text === 'string' ? req.text : '', req.task, rules));
    return verdict && 'code' in verdict ? verdict : 'passed';
  }

  /**
   * Queues one request's job (numbered in its conversation), or says why not: no worker, the queue full, Redis
   * unreachable.
   */
  private async enqueue(
    req: ConversationRequest,
    convId: string,
    jobId: string,
    requestId: string,
  ): Promise<{ queue: Queue<JobData>; position: number; seq: number } | { code: 'busy' | 'unavailable'; message: string }> {
    let counted = false;
    try {
      const workers = await listWorkers(this.redis);
      if (workers.length === 0) return { code: 'unavailable', message: NO_WORKER };
      const older = this.olderWorkers(workers);
      // An earlier worker would take a regenerate request for an empty question.
      if (req.regenerate !== undefined && older.some((w) => protocolOf(w) < PROTOCOL_REGENERATE)) {
        return { code: 'unavailable', message: REGENERATE_NEEDS_UPGRADE };
      }
      // ... and an edit request for a new question after the answered one.
      if (req.edit !== undefined && older.some((w) => protocolOf(w) < PROTOCOL_EDIT)) {
        return { code: 'unavailable', message: EDIT_NEEDS_UPGRADE };
      }
      // ... and would answer without a request's penalties, logit bias and log-probabilities, as if not asked for.
      if (asksOpenAiSampling(req) && older.some((w) => protocolOf(w) < PROTOCOL_OPENAI_SAMPLING)) {
        return { code: 'unavailable', message: SAMPLING_NEEDS_UPGRADE };
      }
      // Counted and checked in one step, so that requests arriving together at several front ends cannot all
      // pass the check before any of them is counted.
      const now = Date.now();
      const res = await this.redis
        .multi()
        .zremrangebyscore(keys.pending, '-inf', now - PENDING_TTL_MS)
        .zadd(keys.pending, now, jobId)
        .zcard(keys.pending)
        .exec();
      counted = true;
      const waiting = Number(res?.[2]?.[1] ?? 0) - 1;
      if (waiting >= this.maxQueue) {
        await this.redis.zrem(keys.pending, jobId);
        counted = false;
        this.log(`frontend: busy, ${waiting} requests waiting; refused a request for ${convId}`);
        return { code: 'busy', message: `The bot is busy (${waiting} requests waiting): please try again in a moment.` };
      }
      // A follow-up goes to the worker that holds its conversation's KV cache while that worker is alive.
      const holder = req.history ? null : await this.redis.get(keys.affinity(convId));
      const queue = this.queueOf(holder && workers.some((w) => w.id === holder) ? holder : null);
      const seq = await this.nextSeq(convId);
      // A seed for every request: a retry on another worker samples the same answer.
      const generation = { seed: Math.floor(Math.random() * 2 ** 31), ...req.generation };
      await queue.add(
        'answer',
        { kind: 'answer', convId, seq, request: encodeRequest({ ...req, generation }, requestId) },
        { jobId, attempts: 2 },
      );
      return { queue, position: waiting, seq };
    } catch (err) {
      if (counted) await this.redis.zrem(keys.pending, jobId).catch(() => {});
      this.log(`frontend: cannot queue a request for ${convId}: ${(err as Error).message}`);
      return { code: 'unavailable', message: UNAVAILABLE };
    }
  }

  /** The job's events until `end` (read through the front end's one stream reader). */
  private async *events(
    jobId: string,
    queue: Queue<JobData>,
    signal: AbortSignal,
    until: () => boolean = () => false,
  ): AsyncGenerator<Exclude<ReturnType<typeof decodeEvent>, { type: 'end' }>> {
    const reader = this.streams.open(keys.events(jobId));
    let quietSince = Date.now();
    try {
      for (;;) {
        if (this.closing) throw new Error('closing');
        if (until()) return;
        const entries = await reader.next(1000);
        if (entries.length === 0) {
          // Nothing for a while: a job nobody runs (no worker alive) or that failed for good ends here.
          if (Date.now() - quietSince > this.stallTimeoutMs) throw new Error('no progress');
          // (a job of a worker's own queue may have been adopted, but it stays in that queue)
          const job = await queue.getJob(jobId);
          const state = job ? await job.getState() : 'unknown';
          if (state === 'failed' || state === 'unknown') throw new Error(`the job is ${state}`);
          if (state === 'waiting' && (await listWorkers(this.redis)).length === 0 && Date.now() - quietSince > HEARTBEAT_TTL_MS)
            throw new Error('no worker');
          continue;
        }
        quietSince = Date.now();
        for (const [, fields] of entries) {
          const ev = decodeEvent(fields[1]);
          if (ev.type === 'end') return;
          yield ev;
          if (signal.aborted && ev.type === 'error') return;
        }
      }
    } finally {
      reader.close();
    }
  }
}

export async function listWorkers(redis: Redis): Promise<WorkerInfo[]> {
  const found: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', keys.workers, 'COUNT', 100);
    cursor = next;
    found.push(...batch);
  } while (cursor !== '0');
  if (found.length === 0) return [];
  const values = await redis.mget(found);
  return values.flatMap((v) => (v ? [JSON.parse(v) as WorkerInfo] : []));
}
