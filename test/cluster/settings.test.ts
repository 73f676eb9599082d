// The millisecond settings of the cluster roles, checked at start before anything connects: a bad value stops the
// start with one sentence naming the variable and the least value it takes.
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { serveFrontend, serveWorker } from '../../src/cluster/serve.js';

const env = (extra: NodeJS.ProcessEnv): NodeJS.ProcessEnv => ({
  MINIGPT_CONFIG: join(import.meta.dirname, '..', '..', 'configs', 'demo.yaml'),
  // (never reached: the settings are refused first)
  REDIS_URL: 'redis://127.0.0.1:1',
  ...extra,
});

describe('cluster settings in milliseconds', () => {
  it('MINIGPT_SHARD_HOLD_MS (front ends) and MINIGPT_WORKER_LOCK_MS (workers) must be whole milliseconds above their least', async () => {
    const log = () => {};
    await expect(serveFrontend({ env: env({ MINIGPT_SHARD_HOLD_MS: '200' }), log })).rejects.toThrow(
      /^MINIGPT_SHARD_HOLD_MS=200: expected milliseconds \(at least 300\)$/,
    );
    await expect(serveFrontend({ env: env({ MINIGPT_SHARD_HOLD_MS: '1.5s' }), log })).rejects.toThrow(
      /^MINIGPT_SHARD_HOLD_MS=1\.5s: expected milliseconds \(at least 300\)$/,
    );
    await expect(serveWorker({ env: env({ MINIGPT_WORKER_LOCK_MS: '499' }), log })).rejects.toThrow(
      /^MINIGPT_WORKER_LOCK_MS=499: expected milliseconds \(at least 500\)$/,
    );
  });
});
