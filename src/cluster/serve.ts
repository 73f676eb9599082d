// `minigpt serve --role frontend|worker` (docs/scaling.md): front ends run the adapters and load no model; workers
// load the model and take jobs; any number of each, on machines that reach the same Redis (REDIS_URL), which also
// holds the conversations (STORE_URL, default REDIS_URL). `--role all` (the default) is src/serve.ts's single
// process, which needs no Redis.
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { Redis } from 'ioredis';
import { basename, join } from 'node:path';
import type { BotConfig } from '../config.js';
import type { MiniGPT } from '../inference/model.js';
import { ConversationManager, createStore } from '../conversation/index.js';
import { redactUrl } from '../conversation/store.js';
import { turnRulesOf } from '../conversation/text.js';
import {
  apiSettings,
  checkPackage,
  metricsSettings,
  startObserving,
  withObserving,
  adaptersRunning,
  closeAdapters,
  closeOnce,
  loadServedModel,
  managerSettings,
  PLATFORM_ADAPTERS,
  ServeError,
  serveSetup,
  startAdapters,
  webSettings,
  type AdaptersRunning,
  type RunningAdapter,
  type ServeOptions,
  type ServedModel,
} from '../serve.js';
import { RemoteConversations } from './frontend.js';
import { BotMetrics } from '../observe/metrics.js';
import type { MetricsServer } from '../observe/server.js';
import { startClusterWorker, type ClusterWorker } from './worker.js';
import { RedisImageCache } from './embedding-cache.js';

export const ROLES = ['all', 'frontend', 'worker'] as const;
export type Role = (typeof ROLES)[number];

export function parseRole(v: string | undefined): Role {
  const r = (v ?? 'all').trim() || 'all';
  if (!(ROLES as readonly string[]).includes(r)) throw new ServeError(`unknown role "${r}": use ${ROLES.join(', ')}`);
  return r as Role;
}

/** REDIS_URL, and the store URL: STORE_URL when it names Redis, else REDIS_URL. */
function redisSettings(role: Role, env: NodeJS.ProcessEnv, config: BotConfig): { redisUrl: string; storeUrl: string } {
  const redisUrl = env.REDIS_URL?.trim();
  if (!redisUrl) throw new ServeError(`--role ${role} needs REDIS_URL (e.g. redis://127.0.0.1:6379): front ends and workers meet there`);
  if (!/^rediss?:\/\//.test(redisUrl))
    throw new ServeError(`REDIS_URL=${redactUrl(redisUrl)}: expected redis://host:port (or rediss:// for TLS)`);
  const store = config.runtime.store_url?.trim();
  if (store && !/^rediss?:\/\//.test(store)) {
    throw new ServeError(
      `--role ${role}: STORE_URL=${store} is local to one machine; front ends and workers share conversations in Redis (leave STORE_URL unset to use REDIS_URL, or set a redis:// URL)`,
    );
  }
  return { redisUrl, storeUrl: store || redisUrl };
}

/** What the page and the API show about the model, without loading it: model.json when it is here, else the config. */
async function servedModel(config: BotConfig): Promise<ServedModel> {
  try {
    const meta = JSON.parse(await readFile(join(config.packageDir, 'model.json'), 'utf8')) as {
      name?: string;
      architecture?: string;
      dtype?: string;
      llm?: { vocabSize?: unknown };
    };
    const vocabSize = meta.llm?.vocabSize;
    return {
      name: meta.name ?? basename(config.packageDir),
      architecture: meta.architecture === 'minigpt-4' ? 'minigpt-4' : 'minigpt-v2',
      ...(meta.dtype ? { dtype: meta.dtype } : {}),
      ...(typeof vocabSize === 'number' && Number.isInteger(vocabSize) && vocabSize > 0 ? { vocabSize } : {}),
      created: Math.floor(Date.now() / 1000),
    };
  } catch {
    return {
      name: basename(config.packageDir),
      architecture: config.model.arch === 'minigpt4' ? 'minigpt-4' : 'minigpt-v2',
      created: Math.floor(Date.now() / 1000),
    };
  }
}

/** A setting in milliseconds from the environment (`name`), at least `min`; undefined when unset or blank. */
function msFromEnv(env: NodeJS.ProcessEnv, name: string, min: number): number | undefined {
  const raw = env[name]?.trim();
  if (!raw) return undefined;
  const ms = Number(raw);
  if (!(Number.isInteger(ms) && ms >= min)) throw new ServeError(`${name}=${raw}: expected milliseconds (at least ${min})`);
  return ms;
}

export interface RunningFrontend extends AdaptersRunning {
  manager: RemoteConversations;
}

/** A front end: the adapters on RemoteConversations. */
export async function serveFrontend(opts: ServeOptions = {}): Promise<RunningFrontend> {
  const { env, log, config } = await serveSetup(opts);
  const web = webSettings(env);
  const api = apiSettings(env);
  // how long a front end's hold on its Discord shards lasts unless renewed (default 15 s)
  const holdMs = msFromEnv(env, 'MINIGPT_SHARD_HOLD_MS', 300);
  const { redisUrl, storeUrl } = redisSettings('frontend', env, config);
  const observe = metricsSettings(env);
  const store = await createStore(storeUrl);
  const manager = new RemoteConversations({ redisUrl, store, maxQueue: config.runtime.queue_size, log });
  const adapters: RunningAdapter[] = [];
  let metricsServer: MetricsServer | undefined;
  try {
    const metrics = observe && new BotMetrics('frontend');
    metrics?.gauge('minigpt_workers', 'Model workers whose heartbeat is current', async () => (await manager.workers()).length);
    let closing = false;
    let running: AdaptersRunning | undefined;
    metricsServer = await startObserving(
      observe,
      metrics,
      () => frontendProblems(manager, closing),
      log,
      () => running?.stopped ?? [],
    );
    const rateLimiter = (scope: string, max: number, windowMs: number) => manager.rateLimiter(scope, max, windowMs);
    const shardLeases = manager.shardLeases(holdMs ? { ttlMs: holdMs } : {});
    const urls = await startAdapters(
      {
        manager,
        model: await servedModel(config),
        config,
        env,
        log,
        web,
        api,
        specs: opts.adapters ?? PLATFORM_ADAPTERS,
        rateLimiter,
        shardLeases,
        arrivalOrder: manager.arrivalOrder(),
        sharedStops: manager.stopRelay(),
        ...(api?.maxConcurrent ? { apiConcurrency: manager.apiConcurrency() } : {}),
        ...(metrics ? { metrics } : {}),
      },
      adapters,
    );
    log(`minigpt: front end on ${redactUrl(redisUrl)} (${adapters.map((a) => a.name).join(', ')})`);
    running = adaptersRunning(adapters, urls, () => manager.close(), log);
    return { manager, ...withObserving(running, metricsServer, () => (closing = true)) };
  } catch (err) {
    await closeAdapters(adapters);
    await metricsServer?.close();
    await manager.close();
    throw err;
  }
}

/** What keeps a front end from answering: shutting down, Redis out of reach, no live worker. */
async function frontendProblems(manager: RemoteConversations, closing: boolean): Promise<string[]> {
  if (closing) return ['shutting down'];
  try {
    return (await manager.workers()).length > 0 ? [] : ['no model worker is running'];
  } catch (err) {
    return [`Redis cannot be reached: ${(err as Error).message}`];
  }
}

export interface RunningWorker {
  model: MiniGPT;
  manager: ConversationManager;
  worker: ClusterWorker;
  /** the metrics endpoint when METRICS_PORT is set */
  metricsUrl?: string;
  fatal: Promise<Error>;
  /** finishes the running jobs, then closes the manager and the model */
  close(): Promise<void>;
}

/** A worker: the model, a local manager, jobs from the queue. */
export async function serveWorker(opts: ServeOptions = {}): Promise<RunningWorker> {
  const { env, log, config } = await serveSetup(opts);
  const { redisUrl, storeUrl } = redisSettings('worker', env, config);
  const lockMs = msFromEnv(env, 'MINIGPT_WORKER_LOCK_MS', 500);
  const observe = metricsSettings(env);
  await checkPackage(config.packageDir);
  const store = await createStore(storeUrl);
  let model: MiniGPT | undefined;
  let manager: ConversationManager | undefined;
  let cacheClient: Redis | undefined;
  let worker: ClusterWorker | undefined;
  let metricsServer: MetricsServer | undefined;
  try {
    model = await loadServedModel(config, log, opts.load);
    // image embeddings shared by the workers of one package (model.json's digest names it)
    const digest = createHash('sha256')
      .update(await readFile(join(config.packageDir, 'model.json')))
      .digest('hex')
      .slice(0, 16);
    cacheClient = new Redis(redisUrl, { maxRetriesPerRequest: 1, connectTimeout: 5000 });
    cacheClient.on('error', () => {});
    manager = new ConversationManager({
      model,
      store,
      sharedImages: new RedisImageCache(cacheClient, digest),
      // the front ends refuse what the queue cannot take; here every job taken is answered
      maxQueue: 1024,
      ...managerSettings(config, log),
    });
    const mgr = manager;
    const metrics = observe && new BotMetrics('worker', { model: model.meta.name, provider: model.provider });
    if (metrics) {
      metrics.gauge('minigpt_queue_waiting', 'Requests waiting for the model', () => mgr.waiting);
      metrics.gauge('minigpt_worker_jobs_running', 'Jobs this worker runs now', () => worker?.stats().running ?? 0);
      metrics.gauge('minigpt_worker_jobs_finished', 'Jobs this worker has answered since it started', () => worker?.stats().finished ?? 0);
      metrics.meterCaches(() => mgr.contextCacheStats, model.handoff);
    }
    metricsServer = await startObserving(observe, metrics, async () => (worker ? worker.problems() : ['starting']), log);
    const started = await startClusterWorker({
      redisUrl,
      manager: metrics
        ? {
            ...metrics.meter(mgr),
            keepImage: (req) => mgr.keepImage(req),
            dropCaches: (f) => mgr.dropCaches(f),
            onForgotten: (fn) => mgr.onForgotten(fn),
          }
        : mgr,
      model: { name: model.meta.name, architecture: model.meta.architecture, provider: model.provider, turns: turnRulesOf(model.meta) },
      concurrency: config.runtime.max_batch + 1,
      ...(lockMs ? { lockMs } : {}),
      log,
    });
    worker = started;
    const mdl = model;
    const cache = cacheClient;
    const observed = metricsServer;
    return {
      model: mdl,
      manager: mgr,
      worker: started,
      ...(observed ? { metricsUrl: observed.url } : {}),
      fatal: new Promise<Error>(() => {}),
      close: closeOnce(async () => {
        // (the probes say "shutting down" from here: the worker's problems())
        await started.close();
        await mgr.close();
        await mdl.close();
        cache.disconnect();
        await observed?.close();
      }),
    };
  } catch (err) {
    await metricsServer?.close();
    if (manager) await manager.close().catch(() => {});
    else await store.disconnect().catch(() => {});
    await model?.close().catch(() => {});
    cacheClient?.disconnect();
    throw err;
  }
}
