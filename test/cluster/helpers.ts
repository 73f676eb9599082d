// Shared by the cluster tests: a worker of an earlier version, emulated by its heartbeat alone.
import type { Redis } from 'ioredis';
import { HEARTBEAT_TTL_MS, keys } from '../../src/cluster/protocol.js';

/**
 * Writes the heartbeat of worker `id` (host `h`, the demo model) as an earlier version wrote it: `protocol` as given,
 * or none (protocol 1, before heartbeats said it).
 */
export function earlierWorkerBeat(client: Redis, id: string, pid: number, protocol?: number): Promise<unknown> {
  const info = {
    id,
    host: 'h',
    pid,
    model: 'demo',
    architecture: 'minigpt_v2',
    provider: 'cpu',
    startedAt: '',
    running: 0,
    finished: 0,
    ...(protocol !== undefined ? { protocol } : {}),
  };
  return client.set(keys.worker(id), JSON.stringify(info), 'PX', HEARTBEAT_TTL_MS);
}
