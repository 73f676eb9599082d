// Shared by the cluster tests: a worker of an earlier version, emulated by its heartbeat alone; Slack front ends as
// `serve --role frontend` starts them on the fake Slack.
import type { Redis } from 'ioredis';
import { HEARTBEAT_TTL_MS, keys } from '../../src/cluster/protocol.js';
import { serveFrontend, type RunningFrontend } from '../../src/cluster/serve.js';
import type { FakeSlack } from '../slack/fake-slack.js';

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

/** `n` front ends with Slack over HTTP on the fake Slack (no Discord), on Redis at `redisUrl`; `extra` env beside. */
export async function slackFrontends(
  n: number,
  redisUrl: string,
  fake: FakeSlack,
  log: (i: number, line: string) => void,
  extra: Record<string, string> = {},
): Promise<RunningFrontend[]> {
  const env = {
    REDIS_URL: redisUrl,
    SLACK_BOT_TOKEN: fake.botToken,
    SLACK_SIGNING_SECRET: fake.signingSecret,
    SLACK_PORT: '0',
    SLACK_API_URL: fake.apiUrl,
    DISCORD_TOKEN: '',
    ...extra,
  };
  const out: RunningFrontend[] = [];
  for (let i = 0; i < n; i++) out.push(await serveFrontend({ env, log: (line) => log(i, line) }));
  return out;
}

/** Where the fake Slack sends events for front end `fe` to (its Slack adapter's URL). */
export function slackUrlOf(fe: RunningFrontend): string {
  return fe.adapters.find((a) => a.name === 'slack')!.url!.replace('localhost', '127.0.0.1');
}
