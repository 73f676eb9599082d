// `minigpt serve --role worker`: takes answer jobs from the BullMQ queue and runs them on this process's model
// through its own conversation manager (which batches whatever this worker holds), streaming the events back
// on the job's Redis stream. A job whose worker dies (its lock lapses) is run again by another; a conversation's
// jobs run in the order they arrived, whichever front end and worker they meet.
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { Queue, Worker, DelayedError, type Job, type WorkerOptions } from 'bullmq';
import { Redis } from 'ioredis';
import type { TurnRules } from '../conversation/text.js';
import type { ConversationManager } from '../conversation/index.js';
import { EXPIRE_IF_NONE } from '../conversation/store.js';
import { parseGrounding } from '../grounding/parse.js';
import {
  AFFINITY_TTL_MS,
  EVENTS_TTL_S,
  HEARTBEAT_MS,
  HEARTBEAT_TTL_MS,
  ORDER_TTL_MS,
  PROTOCOL,
  decodeForgotten,
  publishForgotten,
  QUEUE_NAME,
  decodeRequest,
  encodeEvent,
  keys,
  workerQueueName,
  type JobData,
  type WireEvent,
  type WorkerInfo,
} from './protocol.js';

export interface ClusterWorkerOptions {
  redisUrl: string;
  /** the local conversations (a ConversationManager; or one whose requests are counted: BotMetrics.meter) */
  manager: Pick<ConversationManager, 'handle' | 'history' | 'reset' | 'forgetQuestion' | 'keepImage' | 'dropCaches' | 'onForgotten'>;
  /** shown in heartbeats (`minigpt status`) */
  model: { name: string; architecture: string; provider: string; turns?: TurnRules };
  /** jobs taken at once (default: the manager's batch size + 1, so that the next one is ready) */
  concurrency?: number;
  /**
   * How long a job's lock lasts without renewal (renewed every half of it while the worker lives): how soon a
   * dead worker's job runs elsewhere (default 10 s).
   */
  lockMs?: number;
  /** a job waits at most this long for its conversation's earlier request before it runs anyway (default 120 s) */
  orderTimeoutMs?: number;
  log?: (line: string) => void;
}

export interface ClusterWorker {
  id: string;
  /** jobs running now, and answered since the start */
  stats(): { running: number; finished: number };
  /** what keeps this worker from taking jobs now (closing, Redis out of reach); none: ready */
  problems(): Promise<string[]>;
  /** finishes the running jobs (new ones stay in the queue for other workers), then stops */
  close(): Promise<void>;
}

/**
 * Sets done:<conv> to seq unless it is already further; both counters live on ORDER_TTL_MS from now (seq too: a
 * front end of an earlier version increments it without renewing its expiry).
 */
const ADVANCE = `local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1`;

export async function startClusterWorker(opts: ClusterWorkerOptions): Promise<ClusterWorker> {
  const id = `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
  const log = opts.log ?? (() => {});
  const lockMs = opts.lockMs ?? 10_000;
  const orderTimeoutMs = opts.orderTimeoutMs ?? 120_000;
  const redis = new Redis(opts.redisUrl, { maxRetriesPerRequest: 2, lazyConnect: false });
  redis.on('error', () => {}); // reconnects on its own; commands fail meanwhile
  const sub = redis.duplicate();
  sub.on('error', () => {});
  const running = new Map<string, AbortController>();
  let finished = 0;
  const startedAt = new Date().toISOString();

  await sub.subscribe(keys.cancel, keys.forgotten);
  sub.on('message', (channel: string, message: string) => {
    if (channel === keys.cancel) running.get(message)?.abort();
    else if (channel === keys.forgotten) void dropForgotten(message);
  });
  // What this worker forgets (a reset job), every worker drops from its caches (another may hold the KV cache);
  // so does what a front end or `minigpt forget` deleted from the store.
  opts.manager.onForgotten((f) => void publishForgotten(redis, f, id));
  const dropForgotten = async (message: string) => {
    try {
      const { from, ...forgotten } = decodeForgotten(message);
      // (its own forget: dropped already)
      if (from === id) return;
      await opts.manager.dropCaches(forgotten);
    } catch (err) {
      log(`worker ${id}: could not drop the caches of forgotten conversations: ${(err as Error).message}`);
    }
  };

  const beat = async () => {
    const info: WorkerInfo = {
      id,
      host: hostname(),
      pid: process.pid,
      model: opts.model.name,
      architecture: opts.model.architecture,
      provider: opts.model.provider,
      startedAt,
      running: running.size,
      finished,
      protocol: PROTOCOL,
      ...(opts.model.turns ? { turns: opts.model.turns } : {}),
    };
    await redis.set(keys.worker(id), JSON.stringify(info), 'PX', HEARTBEAT_TTL_MS).catch(() => {});
  };
  await beat();
  const heartbeat = setInterval(() => void beat(), HEARTBEAT_MS);

  const emit = async (jobId: string, ev: WireEvent) => {
    const stream = keys.events(jobId);
    await redis.multi().xadd(stream, '*', 'e', encodeEvent(ev)).expire(stream, EVENTS_TTL_S).exec();
  };

  async function runJob(job: Job<JobData>, token?: string): Promise<void> {
    const data = job.data;
    const jobId = job.id!;
    // A conversation's requests in arrival order: wait (off the worker's slots) for the one before.
    const done = Number((await redis.get(keys.done(data.convId))) ?? 0);
    if (done < data.seq - 1 && Date.now() - job.timestamp < orderTimeoutMs) {
      await job.moveToDelayed(Date.now() + 50, token);
      throw new DelayedError();
    }
    // Taken up: no longer counted as waiting by the front ends' back-pressure.
    await redis.zrem(keys.pending, jobId).catch(() => {});
    const controller = new AbortController();
    running.set(jobId, controller);
    void beat(); // `minigpt status` shows the job in flight now, not at the next heartbeat
    try {
      if (await redis.get(`${keys.events(jobId)}:cancelled`)) {
        // stopped while it waited in the queue: its new image is kept in the thread all the same
        if (data.kind === 'answer') await opts.manager.keepImage(decodeRequest(data.request, controller.signal));
        await emit(jobId, { type: 'error', code: 'cancelled', message: 'The request was cancelled.' });
        return;
      }
      // Run before by a worker that died (BullMQ counts the stall; or it had streamed): whatever it streamed is void.
      const streamed = (await redis.xlen(keys.events(jobId))) > 0;
      if (streamed || job.stalledCounter > 0) log(`worker ${id}: job ${jobId} (${data.convId}) run again after its worker stopped`);
      if (streamed) await emit(jobId, { type: 'restart' });
      if (data.kind === 'reset') {
        try {
          const outcome =
            data.question !== undefined
              ? await opts.manager.forgetQuestion(data.key, data.question, data.turnOnly ? { turnOnly: true } : {})
              : await opts.manager.reset(data.key, data.by !== undefined ? { by: data.by } : {});
          // (the KV cache that made a worker the conversation's home is gone)
          if (outcome !== 'not_allowed' && outcome !== 'not_asked') await redis.del(keys.affinity(data.convId));
          await emit(jobId, { type: 'reset', outcome });
        } catch (err) {
          await emit(jobId, {
            type: 'error',
            code: 'unavailable',
            message: `The conversation could not be reset: ${(err as Error).message}`,
          });
        }
        return;
      }
      const req = decodeRequest(data.request, controller.signal);
      // Answered and stored by a worker that died before it could say so: the stored answer, not a second turn.
      if (!req.history) {
        const last = (await opts.manager.history(req.key))?.turns.at(-1);
        if (last && last.requestId === req.requestId) {
          await emit(jobId, { type: 'started' });
          await emit(jobId, { type: 'text', text: last.assistant });
          await emit(jobId, {
            type: 'final',
            text: last.assistant,
            entities: parseGrounding(last.assistant).entities,
            finishReason: last.finishReason,
            task: last.task,
          });
          return;
        }
      }
      let answered = false;
      for await (const ev of opts.manager.handle(req)) {
        if (ev.type === 'queued') continue; // the front end tells the queue position
        if (ev.type === 'final') answered = true;
        await emit(jobId, ev);
      }
      // This worker holds the conversation's KV cache now: its follow-ups come to this worker's own queue.
      if (answered && !req.history) await redis.set(keys.affinity(data.convId), id, 'PX', AFFINITY_TTL_MS).catch(() => {});
    } finally {
      running.delete(jobId);
      finished++;
      void beat();
      try {
        await emit(jobId, { type: 'end' });
      } finally {
        await redis.eval(ADVANCE, 2, keys.done(data.convId), keys.seq(data.convId), String(data.seq), String(ORDER_TTL_MS)).catch(() => {});
      }
    }
  }

  const workerOptions: WorkerOptions = {
    connection: { url: opts.redisUrl, maxRetriesPerRequest: null } as never,
    concurrency: opts.concurrency ?? 2,
    lockDuration: lockMs,
    stalledInterval: Math.max(500, Math.floor(lockMs / 2)),
    maxStalledCount: 3,
    removeOnComplete: { count: 1000 },
    removeOnFail: { count: 1000 },
  };
  // A job done with (answered, or failed for good) stays in BullMQ's completed or failed list (the last 1000, for
  // `minigpt status` and inspection), but without the user's image and words: those are kept by the conversation
  // store, under its retention time and forget, not by the queue's history. (A job run again after its worker died
  // past this point finds its answer stored by request id.)
  const spend = async (job: Job<JobData>) => {
    if (job.data.kind !== 'answer') return;
    const { key, user, requestId } = job.data.request;
    await job.updateData({ ...job.data, request: { key, user, text: '', requestId } }).catch(() => {});
  };
  const processJob = async (job: Job<JobData>, token?: string) => {
    try {
      await runJob(job, token);
    } catch (err) {
      if (!(err instanceof DelayedError) && job.attemptsMade + 1 >= (job.opts.attempts ?? 1)) await spend(job);
      throw err;
    }
    await spend(job);
  };
  const consume = (queue: string) => {
    const w = new Worker<JobData>(queue, processJob, workerOptions);
    w.on('error', (err) => log(`worker ${id} (${queue}): ${err.message}`));
    w.on('failed', (job, err) => log(`worker ${id}: job ${job?.id} failed: ${err.message}`));
    return w;
  };
  // The shared queue, and this worker's own (follow-ups of the conversations whose KV cache it holds).
  const consumers = [consume(QUEUE_NAME), consume(workerQueueName(id))];
  await Promise.all(consumers.map((w) => w.waitUntilReady()));
  await redis.sadd(keys.known, id);
  log(
    `minigpt: worker ${id} takes jobs from ${QUEUE_NAME} and ${workerQueueName(id)} (concurrency ${workerOptions.concurrency}, lock ${lockMs} ms)`,
  );

  // A worker that died leaves its own queue behind (jobs waiting, or running when it died): a live one takes it
  // over until it is empty. Its running jobs come back once their locks lapse (BullMQ's stalled check).
  // (each with the Queue its job counts are read through, opened once: not a new Redis connection every beat)
  const adopted = new Map<string, { worker: Worker<JobData>; queue: Queue }>();
  const openQueue = (name: string) => new Queue(name, { connection: { url: opts.redisUrl, maxRetriesPerRequest: 1 } as never });
  const jobsIn = async (queue: Queue) =>
    Object.values(await queue.getJobCounts('wait', 'active', 'delayed', 'prioritized')).reduce((a, b) => a + b, 0);
  const adopt = async () => {
    const ids = await redis.smembers(keys.known);
    for (const other of ids) {
      if (other === id || adopted.has(other) || (await redis.exists(keys.worker(other)))) continue;
      const name = workerQueueName(other);
      const queue = openQueue(name);
      let left: number;
      try {
        left = await jobsIn(queue);
      } catch (err) {
        await queue.close();
        throw err;
      }
      if (left === 0) {
        await queue.close();
        await redis.srem(keys.known, other);
        continue;
      }
      log(`worker ${id}: worker ${other} stopped with ${left} job(s) in its queue; taking them over`);
      adopted.set(other, { worker: consume(name), queue });
    }
    // Queues taken over and now empty are let go.
    for (const [other, { worker, queue }] of adopted) {
      if ((await jobsIn(queue)) > 0) continue;
      adopted.delete(other);
      await worker.close();
      await queue.close();
      await redis.srem(keys.known, other);
    }
  };
  let adopting: Promise<void> = Promise.resolve();
  const adoption = setInterval(() => {
    adopting = adopting.then(adopt).catch((err: unknown) => log(`worker ${id}: adopting queues: ${(err as Error).message}`));
  }, HEARTBEAT_MS);

  let closing: Promise<void> | undefined;
  void expireOrderCounters(redis).then(
    (n) => n > 0 && log(`worker ${id}: ${n} conversation order counter${n === 1 ? '' : 's'} of an earlier version given an expiry`),
    // (a worker closed meanwhile: its connection went; the next start does the rest)
    (err: unknown) => closing || log(`worker ${id}: could not give the old order counters an expiry: ${(err as Error).message}`),
  );
  return {
    id,
    stats: () => ({ running: running.size, finished }),
    async problems() {
      if (closing) return ['shutting down'];
      try {
        await redis.ping();
        return [];
      } catch (err) {
        return [`Redis cannot be reached: ${(err as Error).message}`];
      }
    },
    close() {
      closing ??= (async () => {
        clearInterval(adoption);
        await adopting;
        // Waits for the running jobs. Jobs still waiting in this worker's own queue are left to be adopted.
        await Promise.all([...consumers, ...[...adopted.values()].map((a) => a.worker)].map((w) => w.close()));
        await Promise.all([...adopted.values()].map((a) => a.queue.close()));
        clearInterval(heartbeat);
        await redis.del(keys.worker(id)).catch(() => {});
        sub.disconnect();
        redis.disconnect();
      })();
      return closing;
    },
  };
}

/**
 * Conversation order numbers written by front ends before they had an expiry (minigpt:seq:*, kept for ever) get
 * ORDER_TTL_MS from now, in the background at a worker's start (a key a front end has renewed since is left alone).
 * The whole keyspace is walked (SCAN): once a day at most, however many workers start (keys.orderScan). How many.
 */
async function expireOrderCounters(redis: Redis): Promise<number> {
  if (await redis.exists(keys.orderScan)) return 0;
  let n = 0;
  for await (const batch of redis.scanStream({ match: keys.seq('*'), count: 500 })) {
    const found = batch as string[];
    if (found.length === 0) continue;
    const pipe = redis.pipeline();
    for (const key of found) pipe.eval(EXPIRE_IF_NONE, 1, key, String(ORDER_TTL_MS));
    for (const [err, set] of (await pipe.exec()) ?? []) if (!err && set === 1) n++;
  }
  // (only once the pass is complete: a worker stopped during it leaves the rest to the next start)
  await redis.set(keys.orderScan, '1', 'PX', 24 * 3600 * 1000);
  return n;
}
