// Shared by the cluster tests: the demo model behind a cluster worker; a worker of an earlier version, emulated by its
// heartbeat alone; Slack front ends as `serve --role frontend` starts them on the fake Slack.
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { MiniGPT } from '../../src/inference/model.js';
import { ConversationManager, createStore, type ConversationManagerOptions } from '../../src/conversation/index.js';
import { turnRulesOf } from '../../src/conversation/text.js';
import { HEARTBEAT_TTL_MS, keys } from '../../src/cluster/protocol.js';
import { serveFrontend, type RunningFrontend } from '../../src/cluster/serve.js';
import { startClusterWorker, type ClusterWorker, type ClusterWorkerOptions } from '../../src/cluster/worker.js';
import { slowSteps, type SlowSteps } from '../helpers/slow-steps.js';
import type { FakeSlack } from '../slack/fake-slack.js';

const DEMO = join(import.meta.dirname, '..', '..', 'models', 'demo');

/** The demo model, its conversation manager on the shared store and the cluster worker over them. */
export interface DemoWorker {
  readonly model: MiniGPT;
  readonly manager: ConversationManager;
  readonly worker: ClusterWorker;
  /** the decoding steps, slowed by `stepMs` (when given) */
  readonly slow?: SlowSteps;
  close(): Promise<void>;
}

/**
 * A cluster worker on Redis at `redisUrl` answering with the demo model (one thread; `forcedAnswer` if given, each
 * decoding step first waiting `stepMs`), its manager on the Redis store with `manager` options (answers' defaults,
 * shared image cache), and `worker` options over a short job lock.
 */
export async function startDemoWorker(
  redisUrl: string,
  opts: {
    forcedAnswer?: string;
    stepMs?: number;
    manager: Pick<ConversationManagerOptions, 'defaults' | 'sharedImages'>;
    worker?: Partial<ClusterWorkerOptions>;
  },
): Promise<DemoWorker> {
  const model = await MiniGPT.load(DEMO, {
    provider: 'cpu',
    threads: 1,
    ...(opts.forcedAnswer ? { forcedAnswer: opts.forcedAnswer } : {}),
  });
  const slow = opts.stepMs !== undefined ? slowSteps(model, opts.stepMs) : undefined;
  const manager = new ConversationManager({ model, store: await createStore(redisUrl), ...opts.manager });
  const worker = await startClusterWorker({
    redisUrl,
    manager,
    model: { name: 'demo', architecture: 'minigpt_v2', provider: 'cpu', turns: turnRulesOf(model.meta) },
    lockMs: 2000,
    ...opts.worker,
  });
  return {
    model,
    manager,
    worker,
    ...(slow ? { slow } : {}),
    close: async () => {
      await worker.close();
      await manager.close();
      slow?.restore();
      await model.close();
    },
  };
}

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
