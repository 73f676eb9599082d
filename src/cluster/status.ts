// `minigpt status`: what the front ends and workers on REDIS_URL are doing: workers alive (model, provider,
// jobs running and finished), the queue's depth, jobs in flight.
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { listWorkers } from './frontend.js';
import { listShardHolders, type ShardHolder } from './shard-lease.js';
import { PROTOCOL, QUEUE_NAME, protocolOf, workerQueueName, type WorkerInfo } from './protocol.js';

export interface QueueCounts {
  waiting: number;
  running: number;
  failed: number;
}

export interface ClusterStatus {
  workers: (WorkerInfo & { queue: QueueCounts })[];
  /** the shared queue */
  queue: QueueCounts;
  /** all queues together */
  total: QueueCounts;
  /** the Discord shards front ends hold, one entry per front end and bot (a digest of its token) */
  discord: (ShardHolder & { bot: string; count: number })[];
}

async function counts(redisUrl: string, name: string): Promise<QueueCounts> {
  const q = new Queue(name, { connection: { url: redisUrl, maxRetriesPerRequest: 1, connectTimeout: 5000 } as never });
  try {
    const c = await q.getJobCounts('wait', 'delayed', 'prioritized', 'active', 'failed');
    return { waiting: (c.wait ?? 0) + (c.delayed ?? 0) + (c.prioritized ?? 0), running: c.active ?? 0, failed: c.failed ?? 0 };
  } finally {
    await q.close();
  }
}

export async function clusterStatus(redisUrl: string): Promise<ClusterStatus> {
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1, connectTimeout: 5000, lazyConnect: true });
  redis.on('error', () => {});
  try {
    await redis.connect();
    const workers = await listWorkers(redis);
    const discord = new Map<string, ShardHolder & { bot: string; count: number }>();
    // one entry per holder: its hold of each shard names all of its shards
    for (const h of await listShardHolders(redis))
      discord.set(JSON.stringify([h.bot, h.holder]), { bot: h.bot, count: h.count, ...h.holder });
    const queue = await counts(redisUrl, QUEUE_NAME);
    const withQueues = await Promise.all(workers.map(async (w) => ({ ...w, queue: await counts(redisUrl, workerQueueName(w.id)) })));
    const total = withQueues.reduce(
      (t, w) => ({ waiting: t.waiting + w.queue.waiting, running: t.running + w.queue.running, failed: t.failed + w.queue.failed }),
      { ...queue },
    );
    return { workers: withQueues.sort((a, b) => a.id.localeCompare(b.id)), queue, total, discord: [...discord.values()] };
  } finally {
    redis.disconnect();
  }
}

export function statusText(s: ClusterStatus): string {
  const lines = [
    `${s.workers.length} worker(s) alive; ${s.total.waiting} request(s) waiting, ${s.total.running} running${s.total.failed ? `, ${s.total.failed} failed (kept for inspection)` : ''}`,
  ];
  for (const w of s.workers) {
    lines.push(
      `  ${w.id}  ${w.model} (${w.architecture}, ${w.provider})  running ${w.running}, finished ${w.finished}, own queue ${w.queue.waiting} waiting  since ${w.startedAt}${protocolOf(w) < PROTOCOL ? `  (an earlier version: protocol ${protocolOf(w)}, upgrade it)` : ''}`,
    );
  }
  for (const d of s.discord)
    lines.push(
      `  discord bot ${d.bot}: shards ${d.shards} of ${d.count} connected by the front end on ${d.host} (pid ${d.pid}) since ${d.since}`,
    );
  return lines.join('\n');
}
