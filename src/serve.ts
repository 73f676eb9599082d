// `minigpt serve` / `npm start` (docs/architecture.md, "Layers"): loads the config and the model package once, then
// starts every chat adapter whose credentials are in the environment; with none, the local web demo.
import { readFile, stat } from 'node:fs/promises';
import { basename, dirname, join, relative, isAbsolute } from 'node:path';
import { DEFAULT_CONFIG, loadConfig, type BotConfig } from './config.js';
import { MiniGPT, type LoadOptions } from './inference/model.js';
import { parseProviderChoice } from './inference/providers.js';
import { shouldWarmUp, warmUp } from './inference/warm-up.js';
import type { GenerationOptions } from './inference/generation/index.js';
import { rateLimitFromEnv, userLimiter, type RateLimiterFactory } from '../adapters/shared/rate-limit.js';
import type { ShardLeases } from '../adapters/shared/shard-lease.js';
import type { SharedArrivalOrder } from '../adapters/shared/arrival-order.js';
import type { SharedStops } from '../adapters/shared/shared-stops.js';
import { ConversationManager, createStore, type ConversationManagerOptions } from './conversation/index.js';
import type { ConversationPort } from '../adapters/shared/port.js';
import { BotMetrics } from './observe/metrics.js';
import { startMetricsServer, type MetricsServer, type MetricsSettings } from './observe/server.js';
import { DEFAULT_WEB_HOST, DEFAULT_WEB_PORT, isLoopbackHost, startWebServer, type WebModelInfo } from '../adapters/web/server.js';
import { DEFAULT_API_HOST, startApiServer } from '../adapters/api/server.js';
import type { ConcurrencyLimiter } from '../adapters/api/concurrency.js';
import { CorsPolicy } from '../adapters/api/cors.js';

/** A started adapter. */
export interface RunningAdapter {
  name: string;
  /** where users reach it, when it has an address (the web demo) */
  url?: string;
  close(): Promise<void>;
  /** resolves (with the reason) if the adapter stops working for good, e.g. its token is revoked; else never */
  fatal?: Promise<Error>;
}

// The conversation manager as adapters use it (a local ConversationManager, or src/cluster's
// RemoteConversations): one port for every adapter, defined with them.
export type { ConversationPort } from '../adapters/shared/port.js';

/** What an adapter gets to start with. */
export interface AdapterContext {
  manager: ConversationPort;
  /** where per-user limits count (front ends on Redis share them); default: in the adapter's process */
  rateLimiter?: RateLimiterFactory;
  /** where front ends hold their gateway shards (Discord), so that two never connect the same; default: nowhere */
  shardLeases?: ShardLeases;
  /** where front ends keep the order of a conversation's events between them (Slack); default: each its own */
  arrivalOrder?: SharedArrivalOrder;
  /** how a front end stops an answer another one writes (Slack); default: only its own */
  sharedStops?: SharedStops;
  config: BotConfig;
  env: NodeJS.ProcessEnv;
  log: (line: string) => void;
}

/** The served model as the web page and the API show it. */
export interface ServedModel {
  name: string;
  architecture: 'minigpt-v2' | 'minigpt-4';
  provider?: string;
  dtype?: string;
  /** unix seconds: when the package was written */
  created: number;
  /** the language model's vocabulary size, where this process has the package (the API checks logit_bias ids against it) */
  vocabSize?: number;
  /** the test hook forces every answer (MINIGPT_TEST_FORCED_ANSWER): the page and the API say so */
  forcedAnswer?: boolean;
}

export type WebSettings = ReturnType<typeof webSettings>;
export type ApiSettings = NonNullable<ReturnType<typeof apiSettings>>;

/**
 * Starts the platform adapters whose credentials are set, the web demo when there is none, and the API when
 * API_PORT is set; pushes each onto `started` as it starts (so that a failure can close those).
 */
export async function startAdapters(
  o: {
    manager: ConversationPort;
    model: ServedModel;
    config: BotConfig;
    env: NodeJS.ProcessEnv;
    log: (line: string) => void;
    web: WebSettings;
    api: ApiSettings | undefined;
    specs: readonly PlatformAdapterSpec[];
    rateLimiter?: RateLimiterFactory;
    shardLeases?: ShardLeases;
    arrivalOrder?: SharedArrivalOrder;
    sharedStops?: SharedStops;
    /** where the API counts each key's requests in progress (API_MAX_CONCURRENT); default this process */
    apiConcurrency?: ConcurrencyLimiter;
    /** METRICS_PORT's: every adapter's requests and refused requests counted (BotMetrics.meter, meterLimits) */
    metrics?: BotMetrics;
  },
  started: RunningAdapter[],
): Promise<{ webUrl?: string; apiUrl?: string }> {
  const { config, env, log, web, api, metrics } = o;
  const manager = metrics ? metrics.meter(o.manager) : o.manager;
  const rateLimiter = metrics ? metrics.meterLimits(o.rateLimiter) : o.rateLimiter;
  const ctx: AdapterContext = {
    manager,
    config,
    env,
    log,
    ...(rateLimiter ? { rateLimiter } : {}),
    ...(o.shardLeases ? { shardLeases: o.shardLeases } : {}),
    ...(o.arrivalOrder ? { arrivalOrder: o.arrivalOrder } : {}),
    ...(o.sharedStops ? { sharedStops: o.sharedStops } : {}),
  };
  for (const spec of o.specs) {
    const set = spec.credentials.filter((c) => env[c]?.trim());
    if (set.length === 0) continue;
    const adapter = await spec.start(ctx);
    started.push(adapter);
    log(`minigpt: ${spec.name} adapter started${adapter.url ? ` on ${adapter.url}` : ''}`);
  }

  let webUrl: string | undefined;
  if (started.length === 0) {
    const m = config.model;
    const info: WebModelInfo = { name: o.model.name, path: shownPath(config.packageDir), architecture: o.model.architecture };
    if (isDemoPackage(config.packageDir)) info.notice = demoNotice(await readDemoRecord(config.packageDir));
    if (o.model.forcedAnswer) info.notice = `${info.notice ? `${info.notice} ` : ''}${FORCED_NOTICE}`;
    const server = await startWebServer({
      manager,
      host: web.host,
      port: web.port,
      allowRemote: web.allowRemote,
      allowedHosts: web.allowedHosts,
      model: info,
      defaults: { temperature: m.temperature, numBeams: m.num_beams, maxNewTokens: m.max_new_tokens },
      log,
    });
    webUrl = server.url;
    started.push({ name: 'web', url: server.url, close: () => server.close() });
    log(`minigpt: web demo on ${server.url} (model ${info.path}${o.model.provider ? `, ${o.model.provider}` : ''})`);
  }

  let apiUrl: string | undefined;
  if (api) {
    const id = api.modelId ?? basename(config.packageDir);
    const server = await startApiServer({
      manager,
      host: api.host,
      port: api.port,
      keys: api.keys,
      imageHosts: api.imageHosts,
      ...(api.rateLimit ? { rateLimit: { limiter: userLimiter('api', api.rateLimit, rateLimiter)!, ...api.rateLimit } } : {}),
      ...(api.maxConcurrent ? { maxConcurrent: api.maxConcurrent, ...(o.apiConcurrency ? { concurrency: o.apiConcurrency } : {}) } : {}),
      corsOrigins: api.corsOrigins,
      model: {
        id,
        created: o.model.created,
        architecture: o.model.architecture,
        ...(o.model.provider ? { provider: o.model.provider } : {}),
        ...(o.model.dtype ? { dtype: o.model.dtype } : {}),
        ...(o.model.forcedAnswer ? { forcedAnswer: true } : {}),
        ...(o.model.vocabSize ? { vocabSize: o.model.vocabSize } : {}),
      },
      log,
    });
    apiUrl = server.url;
    started.push({ name: 'api', url: server.url, close: () => server.close() });
    const limits = [
      ...(api.rateLimit ? [`${api.rateLimit.max} requests per ${api.rateLimit.windowMs / 1000} s`] : []),
      ...(api.maxConcurrent ? [`${api.maxConcurrent} at once${o.apiConcurrency ? ' (counted with the other front ends)' : ''}`] : []),
    ];
    const pages = api.corsOrigins.length ? `; pages from ${api.corsOrigins.join(', ')}` : '';
    log(
      `minigpt: OpenAI-compatible API on ${server.url} (model id "${id}", ${api.keys.length ? `${api.keys.length} key(s)` : 'no keys: loopback only'}${limits.length ? `; per key: ${limits.join(', ')}` : ''}${pages})`,
    );
  }
  return { ...(webUrl ? { webUrl } : {}), ...(apiUrl ? { apiUrl } : {}) };
}

/**
 * A chat platform adapter: enabled when any of `credentials` is set in the environment (docs/architecture.md,
 * "Adding a chat platform"). Loaded on demand, so that a bot without Slack never loads Bolt.
 */
export interface PlatformAdapterSpec {
  name: string;
  credentials: readonly string[];
  start: (ctx: AdapterContext) => Promise<RunningAdapter>;
}

export const PLATFORM_ADAPTERS: PlatformAdapterSpec[] = [
  {
    name: 'discord',
    credentials: ['DISCORD_TOKEN'],
    start: (ctx) => import('../adapters/discord/index.js').then((m) => m.startDiscordFromEnv(ctx)),
  },
  {
    name: 'slack',
    credentials: ['SLACK_BOT_TOKEN'],
    start: (ctx) => import('../adapters/slack/index.js').then((m) => m.startSlack(ctx)),
  },
];

export interface ServeOptions {
  /** default process.env (load .env into it first: the CLI does) */
  env?: NodeJS.ProcessEnv;
  /** config file (default MINIGPT_CONFIG, then configs/demo.yaml) */
  config?: string;
  log?: (line: string) => void;
  /** extra MiniGPT.load options (tests: forcedAnswer, provider) */
  load?: Partial<LoadOptions>;
  /** platform adapters to consider (default PLATFORM_ADAPTERS) */
  adapters?: readonly PlatformAdapterSpec[];
}

/** What a running bot (or a front end) shows of its started adapters. */
export interface AdaptersRunning {
  adapters: RunningAdapter[];
  /** the web demo's address when it was started */
  webUrl?: string;
  /** the OpenAI-compatible API's base URL (`.../v1`) when API_PORT is set */
  apiUrl?: string;
  /** the metrics endpoint (`.../metrics`, `/healthz`, `/readyz`) when METRICS_PORT is set */
  metricsUrl?: string;
  /**
   * resolves when the last adapter that can stop for good (`RunningAdapter.fatal`) has stopped, with its reason (its
   * name in front); else never. One that stops while another runs is closed and listed in `stopped`
   */
  fatal: Promise<Error>;
  /** why each adapter that stopped for good while others ran on stopped ("discord adapter stopped: ..."), as it happens */
  stopped: readonly string[];
  /** stops the adapters, then the rest */
  close(): Promise<void>;
}

export interface RunningBot extends AdaptersRunning {
  model: MiniGPT;
  manager: ConversationManager;
  /** stops the adapters, then the manager (finishing the running answer, flushing the store), then the model */
  close(): Promise<void>;
}

export class ServeError extends Error {}

const FORCED_NOTICE = "Every answer here is forced by the test hook MINIGPT_TEST_FORCED_ANSWER: these are not the model's answers.";

/** What the web page needs from models/demo/PROVENANCE.json (models/demo/train/publish.mjs writes it). */
type DemoScores = Partial<Record<'refer' | 'identify' | 'vqa', { accuracy?: number }>>;

export interface DemoRecord {
  /** the selection split: its scores chose among runs */
  heldout?: { seed?: number; eval?: DemoScores };
  /** the final test split, evaluated once after selection: the scores to quote */
  test?: { seed?: number; eval?: DemoScores };
}

const pct = (v: number | undefined) => (typeof v === 'number' ? `${Math.round(v * 100)}%` : 'n/a');

/**
 * The sentence the web page shows under the embedded demo package: what the model is and how well it does on
 * held-out synthetic scenes (its recorded `minigpt eval` scores), so nobody mistakes it for MiniGPT-v2's weights.
 */
export function demoNotice(record: DemoRecord | null): string {
  const base =
    'This is the embedded demo package: a small model of the MiniGPT-v2 architecture trained from scratch on synthetic ' +
    "scenes of coloured shapes (models/demo/train), not MiniGPT-v2's weights; it knows nothing else.";
  // The final test split when the package has one: the selection split's scores are biased by the choosing.
  const e = record?.test?.eval ?? record?.heldout?.eval;
  if (!e) return base;
  return (
    `${base} On held-out scenes (models/demo/PROVENANCE.json) it boxes the object asked for ${pct(e.refer?.accuracy)} of the time ` +
    `([refer], IoU > 0.5), names a boxed object ${pct(e.identify?.accuracy)} ([identify]) and answers ${pct(e.vqa?.accuracy)} of questions ([vqa]).`
  );
}

async function readDemoRecord(dir: string): Promise<DemoRecord | null> {
  try {
    return JSON.parse(await readFile(join(dir, 'PROVENANCE.json'), 'utf8')) as DemoRecord;
  } catch {
    return null; // a notice without scores is still right
  }
}

function isDemoPackage(dir: string): boolean {
  return basename(dir) === 'demo' && basename(dirname(dir)) === 'models';
}

function shownPath(dir: string): string {
  const rel = relative(process.cwd(), dir);
  return rel && !rel.startsWith('..') && !isAbsolute(rel) ? rel : dir;
}

export async function checkPackage(dir: string): Promise<void> {
  const file = join(dir, 'model.json');
  try {
    await stat(file);
  } catch {
    const how = isDemoPackage(dir)
      ? 'git checkout -- models/demo   (or train and publish it: models/demo/train/README.md)'
      : `npx minigpt convert --arch minigpt-v2 --vit eva_vit_g.pth --llm <Llama folder> --ckpt <checkpoint.pth> --out ${shownPath(dir)}`;
    throw new ServeError(`model package not found: ${file} does not exist. Build it with:\n  ${how}`);
  }
}

export function webSettings(env: NodeJS.ProcessEnv) {
  const host = env.WEB_HOST?.trim() || DEFAULT_WEB_HOST;
  const port = env.WEB_PORT?.trim() ? portSetting('WEB_PORT', env.WEB_PORT) : DEFAULT_WEB_PORT;
  const allowRemote = /^(1|true|yes)$/i.test(env.WEB_ALLOW_REMOTE?.trim() ?? '');
  const allowedHosts = (env.WEB_ALLOWED_HOSTS ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  return { host, port, allowRemote, allowedHosts };
}

function portSetting(name: string, value: string): number {
  const port = Number(value);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new ServeError(`${name}=${value}: expected a port number (0-65535)`);
  return port;
}

const list = (v: string | undefined) =>
  (v ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);

/**
 * The operator's endpoint (METRICS_PORT, METRICS_HOST, METRICS_KEY: metrics and probes); undefined when METRICS_PORT
 * is unset. Beyond loopback the metrics need a key, as the API does.
 */
export function metricsSettings(env: NodeJS.ProcessEnv): MetricsSettings | undefined {
  if (!env.METRICS_PORT?.trim()) return undefined;
  const port = portSetting('METRICS_PORT', env.METRICS_PORT.trim());
  const host = env.METRICS_HOST?.trim() || '127.0.0.1';
  const key = env.METRICS_KEY?.trim();
  if (!key && !isLoopbackHost(host)) {
    throw new ServeError(
      `METRICS_HOST=${host} without METRICS_KEY: the metrics would be open to anyone who reaches ${host}. Set METRICS_KEY=<key> (Prometheus sends it as a bearer token: \`authorization: { credentials: <key> }\`), or leave METRICS_HOST unset (127.0.0.1).`,
    );
  }
  return { port, host, ...(key ? { key } : {}) };
}

/**
 * The metrics endpoint, when METRICS_PORT is set: started before the adapters (a port in use stops the start
 * before anything connects to a platform), its address logged. `stopped`, for a process with chat adapters: the
 * ones that stopped for good while others run on (`AdaptersRunning.stopped`), shown by /readyz and counted.
 */
export async function startObserving(
  settings: MetricsSettings | undefined,
  metrics: BotMetrics | undefined,
  problems: () => Promise<string[]>,
  log: (line: string) => void,
  stopped?: () => readonly string[],
): Promise<MetricsServer | undefined> {
  if (!settings || !metrics) return undefined;
  if (stopped)
    metrics.gauge(
      'minigpt_adapters_stopped',
      'Chat adapters that stopped for good (a refused token) while the others run on',
      () => stopped().length,
    );
  const server = await startMetricsServer(settings, metrics, problems, stopped);
  log(`minigpt: metrics on ${server.url}/metrics (probes: /healthz, /readyz)`);
  return server;
}

/** The OpenAI-compatible API's settings (API_PORT, API_HOST, MINIGPT_API_KEYS, ...); undefined when API_PORT is unset. */
export function apiSettings(env: NodeJS.ProcessEnv) {
  if (!env.API_PORT?.trim()) return undefined;
  const port = portSetting('API_PORT', env.API_PORT.trim());
  const host = env.API_HOST?.trim() || DEFAULT_API_HOST;
  const keys = list(env.MINIGPT_API_KEYS);
  if (keys.length === 0 && !isLoopbackHost(host)) {
    throw new ServeError(
      `API_HOST=${host} without MINIGPT_API_KEYS: the API would answer anyone who reaches ${host}. Set MINIGPT_API_KEYS=<key>[,<key>...] (clients send it as their API key), or leave API_HOST unset (127.0.0.1).`,
    );
  }
  // Per key, none by default: a client of the API is a program its operator runs (an evaluation sends many at once).
  const rateLimit = rateLimitFromEnv('API_RATE_LIMIT', env.API_RATE_LIMIT, (m) => new ServeError(m)) ?? false;
  const concurrent = env.API_MAX_CONCURRENT?.trim();
  if (concurrent && !/^\d+$/.test(concurrent))
    throw new ServeError(`API_MAX_CONCURRENT=${concurrent}: expected a whole number of requests (0: no limit)`);
  const corsOrigins = list(env.API_CORS_ORIGINS);
  try {
    new CorsPolicy(corsOrigins, keys.length > 0); // (its refusals before the model loads)
  } catch (err) {
    throw new ServeError((err as Error).message);
  }
  return {
    port,
    host,
    keys,
    imageHosts: list(env.API_IMAGE_HOSTS),
    modelId: env.API_MODEL_ID?.trim() || undefined,
    rateLimit,
    maxConcurrent: concurrent ? Number(concurrent) : 0,
    corsOrigins,
  };
}

/**
 * Watches the adapters that can stop for good (`RunningAdapter.fatal`: a token refused while the bot runs). One that
 * stops while another of them still runs is closed (`close`) and logged, and the others run on: Slack's users keep
 * their bot while Discord's token is being replaced, which a restart would not give them (the refused token stops a
 * start). `fatal` resolves when the last of them has stopped, so that a bot never runs on answering no platform (the
 * web demo and the API cannot stop this way and do not count).
 */
export function watchAdapters(
  adapters: readonly RunningAdapter[],
  close: (a: RunningAdapter) => Promise<void>,
  log: (line: string) => void,
): { fatal: Promise<Error>; stopped: readonly string[] } {
  const watched = adapters.filter((a) => a.fatal);
  const stopped: string[] = [];
  const down = new Set<RunningAdapter>();
  const fatal = new Promise<Error>((resolve) => {
    for (const a of watched) {
      void a.fatal!.then((err) => {
        const reason = `${a.name} adapter stopped: ${err.message}`;
        down.add(a);
        const others = watched.filter((b) => !down.has(b));
        if (others.length === 0) return resolve(new ServeError(reason, { cause: err }));
        stopped.push(reason);
        log(
          `minigpt: ${reason} (${others.map((b) => b.name).join(', ')} ${others.length === 1 ? 'runs' : 'run'} on; restart once it is fixed)`,
        );
        void close(a).catch((e: unknown) => log(`minigpt: closing the ${a.name} adapter failed: ${(e as Error).message}`));
      });
    }
  });
  return { fatal, stopped };
}

/** The config's generation settings, as the conversation manager's defaults. */
export function managerDefaults(config: BotConfig): Partial<GenerationOptions> {
  const m = config.model;
  return {
    maxNewTokens: m.max_new_tokens,
    numBeams: m.num_beams,
    temperature: m.temperature,
    topP: m.top_p,
    repetitionPenalty: m.repetition_penalty,
    ...(m.end_sym ? { stopStrings: [m.end_sym] } : {}),
  };
}

/** The manager's settings from the config, the same for one process and for a cluster's workers. */
export function managerSettings(
  config: BotConfig,
  log: (line: string) => void,
): Pick<ConversationManagerOptions, 'maxContextLen' | 'defaults' | 'log' | 'maxBatch' | 'kvCacheBytes' | 'conversationTtlMs'> {
  return {
    maxContextLen: config.model.max_context_len,
    defaults: managerDefaults(config),
    log,
    maxBatch: config.runtime.max_batch,
    kvCacheBytes: config.runtime.kv_cache_mb * 1024 * 1024,
    conversationTtlMs: config.runtime.conversation_ttl_days * 24 * 3600_000,
  };
}

const stderrLog = (line: string): void => {
  process.stderr.write(`${line}\n`);
};

/** What every role reads first: the environment, the log and the config (ServeOptions' defaults applied). */
export async function serveSetup(opts: ServeOptions): Promise<{ env: NodeJS.ProcessEnv; log: (line: string) => void; config: BotConfig }> {
  const env = opts.env ?? process.env;
  const log = opts.log ?? stderrLog;
  const config = await loadConfig(opts.config ?? env.MINIGPT_CONFIG ?? DEFAULT_CONFIG, env);
  return { env, log, config };
}

/**
 * The package's model, run as the config's runtime section says (warmed up where `warm_up` says: before the
 * adapters or the worker take requests); `load`: the caller's extra options.
 */
export async function loadServedModel(config: BotConfig, log: (line: string) => void, load?: Partial<LoadOptions>): Promise<MiniGPT> {
  const model = await MiniGPT.load(config.packageDir, {
    provider: parseProviderChoice(config.runtime.execution_provider),
    threads: config.runtime.threads || undefined,
    maxBatch: config.runtime.max_batch,
    // (a server runs long: no token's first lookup should wait for the disk, as after a reboot)
    readEmbeddingsThrough: true,
    log,
    ...load,
  });
  const t0 = performance.now();
  void model.tableRead.then((bytes) => {
    if (bytes > 0)
      log(
        `embedding table in the page cache: ${(bytes / 2 ** 20).toFixed(1)} MiB read in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
      );
  });
  if (shouldWarmUp(config.runtime.warm_up, model.provider)) {
    try {
      const t = await warmUp(model);
      const batch = t.batchMs === null ? '' : `, ${model.engine.maxBatch} at once ${Math.round(t.batchMs)} ms`;
      log(`warmed up on ${model.provider}: an image ${Math.round(t.visionMs)} ms, an answer ${Math.round(t.answerMs)} ms${batch}`);
    } catch (err) {
      await model.close();
      throw err;
    }
  }
  return model;
}

/**
 * `close` run once: every later call gets the first call's promise, so that a signal and a fatal adapter closing
 * at the same time close each thing once.
 */
export function closeOnce(close: () => Promise<void>): () => Promise<void> {
  let closing: Promise<void> | undefined;
  return () => {
    closing ??= close();
    return closing;
  };
}

/** Closes the adapters; one that fails to close does not keep the others open. */
export async function closeAdapters(adapters: readonly RunningAdapter[]): Promise<void> {
  await Promise.allSettled(adapters.map((a) => a.close()));
}

/**
 * The started adapters with their addresses (startAdapters' result) and the first failure that cannot recover;
 * `close` stops them first, so that no new request comes in, then runs `closeRest`.
 */
export function adaptersRunning(
  adapters: RunningAdapter[],
  urls: { webUrl?: string; apiUrl?: string },
  closeRest: () => Promise<void>,
  log: (line: string) => void,
): AdaptersRunning {
  // (an adapter that stopped for good is closed then, and again by the bot's close: once)
  const closes = new Map(adapters.map((a) => [a, closeOnce(() => a.close())]));
  const closeAdapter = (a: RunningAdapter) => closes.get(a)!();
  const { fatal, stopped } = watchAdapters(adapters, closeAdapter, log);
  return {
    adapters,
    fatal,
    stopped,
    ...(urls.webUrl ? { webUrl: urls.webUrl } : {}),
    ...(urls.apiUrl ? { apiUrl: urls.apiUrl } : {}),
    close: closeOnce(async () => {
      await Promise.allSettled(adapters.map(closeAdapter));
      await closeRest();
    }),
  };
}

/**
 * The running adapters with the metrics endpoint, if any: closing marks the process not ready first (`closing`),
 * then closes the adapters and the rest, the endpoint last, so that the probes answer until everything is closed.
 */
export function withObserving(running: AdaptersRunning, server: MetricsServer | undefined, closing: () => void): AdaptersRunning {
  return {
    ...running,
    ...(server ? { metricsUrl: server.url } : {}),
    close: closeOnce(async () => {
      closing();
      await running.close();
      await server?.close();
    }),
  };
}

/** Loads everything and starts the adapters. */
export async function serve(opts: ServeOptions = {}): Promise<RunningBot> {
  const { env, log, config } = await serveSetup(opts);
  // Settings errors before the slow part.
  const web = webSettings(env);
  const api = apiSettings(env);
  const observe = metricsSettings(env);
  await checkPackage(config.packageDir);
  const store = await createStore(config.runtime.store_url);
  let model: MiniGPT | undefined;
  let manager: ConversationManager | undefined;
  let metricsServer: MetricsServer | undefined;
  const adapters: RunningAdapter[] = [];
  try {
    model = await loadServedModel(config, log, opts.load);
    const mgr = new ConversationManager({ model, store, maxQueue: config.runtime.queue_size, ...managerSettings(config, log) });
    manager = mgr;
    const metrics = observe && new BotMetrics('all', { model: model.meta.name, provider: model.provider });
    metrics?.gauge('minigpt_queue_waiting', 'Requests waiting for the model', () => mgr.waiting);
    metrics?.meterCaches(() => mgr.contextCacheStats, model.handoff);
    let closing = false;
    let running: AdaptersRunning | undefined;
    metricsServer = await startObserving(
      observe,
      metrics,
      async () => (closing ? ['shutting down'] : []),
      log,
      () => running?.stopped ?? [],
    );
    const created = Math.floor((await stat(join(config.packageDir, 'model.json'))).mtimeMs / 1000);
    const info: ServedModel = {
      name: model.meta.name,
      architecture: model.meta.architecture,
      provider: model.provider,
      dtype: model.meta.dtype,
      created,
      vocabSize: model.meta.llm.vocabSize,
      forcedAnswer: model.forcedAnswer,
    };
    const urls = await startAdapters(
      {
        manager: mgr,
        model: info,
        config,
        env,
        log,
        web,
        api,
        specs: opts.adapters ?? PLATFORM_ADAPTERS,
        ...(metrics ? { metrics } : {}),
      },
      adapters,
    );

    const mdl = model;
    running = adaptersRunning(
      adapters,
      urls,
      async () => {
        await mgr.close();
        await mdl.close();
      },
      log,
    );
    return { model: mdl, manager: mgr, ...withObserving(running, metricsServer, () => (closing = true)) };
  } catch (err) {
    await closeAdapters(adapters);
    await metricsServer?.close();
    if (manager) await manager.close().catch(() => {});
    else await store.disconnect().catch(() => {});
    await model?.close().catch(() => {});
    throw err;
  }
}

/**
 * `minigpt serve`: starts, then runs until SIGINT or SIGTERM, closes everything and resolves (exit 0).
 * A second signal while closing exits at once. When the last platform adapter has stopped for good (`RunningBot.fatal`,
 * e.g. Discord refusing the token after a reconnect; one of two stopping leaves the other running) it closes
 * everything too, then rejects with the reason (exit 1): a supervisor restarts the bot or shows the reason, instead of
 * a bot that runs but answers no one.
 */
export async function serveUntilSignal(
  opts: ServeOptions = {},
  start: (opts: ServeOptions) => Promise<{ fatal: Promise<Error>; close(): Promise<void> }> = serve,
): Promise<void> {
  const bot = await start(opts);
  const log = opts.log ?? stderrLog;
  let on: ((s: NodeJS.Signals) => void) | undefined;
  const stop = await Promise.race([
    new Promise<NodeJS.Signals>((resolve) => {
      on = resolve;
      process.on('SIGINT', on);
      process.on('SIGTERM', on);
    }),
    bot.fatal,
  ]);
  process.off('SIGINT', on!);
  process.off('SIGTERM', on!);
  if (typeof stop === 'string') log(`minigpt: ${stop}, shutting down`);
  const force = () => process.exit(1);
  process.once('SIGINT', force);
  process.once('SIGTERM', force);
  try {
    await bot.close();
  } finally {
    process.off('SIGINT', force);
    process.off('SIGTERM', force);
  }
  if (stop instanceof Error) {
    // Whatever handle a half-dead platform client leaves behind, the process ends (main prints the reason).
    setTimeout(() => process.exit(1), 3000).unref();
    throw stop;
  }
}
