// The conversation manager: platform-neutral requests in, answer event streams out (docs/architecture.md, "The
// path of one request"). It owns the queue, cancellation, the KV caches kept between turns and the order of a
// turn's steps (answer()). Each step's rules live in a module of its own, so that answer() reads as the steps:
// image-input.ts (the image and its embeddings), budget.ts (the prompt within its token budget),
// generation-settings.ts, generate.ts (the model run), turn.ts and store.ts (the stored turn), annotation.ts
// (what is drawn), report.ts (timings).
import Keyv from 'keyv';
import type { MiniGPT } from '../inference/model.js';
import { KvCacheLru, type CachedContext, type KvCacheStats } from '../inference/kv-reuse.js';
import type { GenerationOptions } from '../inference/generation/index.js';
import { ImageInputError } from '../image/preprocess.js';
import { annotateImage, type AnnotateOptions } from '../image/annotate.js';
import {
  ConversationStore,
  STORE_NAMESPACE,
  StoreUnavailableError,
  conversationId,
  inPlace,
  sha256Hex,
  type Forgotten,
  type Workspaces,
} from './store.js';
import { EventChannel, FairScheduler } from './scheduler.js';
import { turnRulesOf, userTurn, type UserTurn } from './text.js';
import { ImageInput, type EncodedImage, type SharedImageCache, type TurnImage } from './image-input.js';
import { PromptBudget } from './budget.js';
import { generationOptions } from './generation-settings.js';
import { entitiesToDraw } from './annotation.js';
import { askedAgain, finalEvent, storedTurn, threadState, tookPart, withoutQuestion, type FinalEvent, type Regeneration } from './turn.js';
import { turnSummary, turnTimings, type TurnCosts } from './report.js';
import { CANCELLED, Failure } from './failure.js';
import { generate, type ModelImages } from './generate.js';
import type {
  AnswerEvent,
  ConversationKey,
  ConversationRequest,
  ConversationState,
  ErrorCode,
  PriorTurn,
  ResetOptions,
  QuestionOutcome,
  ResetOutcome,
  StoredTurn,
} from './types.js';
import { LIMITS } from './limits.js';

/** The option types' own parts, for callers that import this module alone. */
export type { EncodedImage, SharedImageCache };

export interface ConversationManagerOptions {
  model: MiniGPT;
  /** default: in memory (see createStore) */
  store?: Keyv;
  /** requests that may wait for the model; one more is answered `busy` at once (default 16) */
  maxQueue?: number;
  /**
   * Most prompt tokens (text + image) per request (the config's `max_context_len`); history is trimmed
   * from the oldest turn to fit. The model's own window always applies too, minus room for the answer.
   */
  maxContextLen?: number;
  /** generation settings below the request's own (over upstream Chat.answer's) */
  defaults?: Partial<GenerationOptions>;
  log?: (line: string) => void;
  /** encoded images kept in memory by hash, so follow-ups skip the vision encoder (default 8) */
  imageCacheSize?: number;
  /**
   * A second-level cache of image embeddings shared with other processes (workers on Redis,
   * src/cluster/embedding-cache.ts): looked up before the vision encoder runs, filled after it ran.
   */
  sharedImages?: SharedImageCache;
  /** largest accepted image file (default 20 MiB) */
  maxImageBytes?: number;
  /** longest accepted message (default 4000 characters) */
  maxTextChars?: number;
  /** options for the annotated image, or false for no `image` events */
  annotate?: AnnotateOptions | false;
  /**
   * Memory for the KV caches of conversations' last turns (least recently used evicted first; an evicted
   * one is simply recomputed): a follow-up then prefills only its new tokens. Default 256 MiB; 0 disables.
   */
  kvCacheBytes?: number;
  /**
   * Conversations answered at the same time, their decoding steps batched in one model run (default 1:
   * one at a time). The model's engine batches at most its own maxBatch rows per step.
   */
  maxBatch?: number;
  /**
   * Forget a conversation this long after its last turn, its image with it (ms; runtime.conversation_ttl_days;
   * ConversationStoreOptions.ttlMs says how long images stay). Absent or 0: keep it until it is reset.
   */
  conversationTtlMs?: number;
  /** how often a store that does not expire entries by itself (SQLite, memory) is swept of expired ones (default 6 h) */
  sweepIntervalMs?: number;
}

interface Job {
  readonly convId: string;
  readonly control: boolean;
  readonly key: ConversationKey;
  readonly req?: ConversationRequest;
  readonly requestId: string;
  readonly channel: EventChannel<AnswerEvent>;
  readonly controller: AbortController;
  readonly enqueuedAt: number;
  state: 'waiting' | 'running' | 'done';
  /** the place in the queue it was last told (a `queued` event) */
  position?: number;
  /**
   * A regenerate or edit request's check of its stored question ahead of its turn (checkAnswerable): due until
   * nothing of its conversation is ahead of it; passed, its places are told as checked.
   */
  check?: 'due' | 'checking' | 'passed';
  /** control jobs: the work itself */
  work?: () => Promise<void>;
  cleanup?: () => void;
  /** the KV cache of the answered turn, to be extended to the next prompt's prefix, then kept */
  keep?: { id: string; context: CachedContext; prefix: string; images: Float32Array[]; keys: string[] };
}

const PLATFORMS = new Set(['discord', 'slack', 'web', 'cli', 'api']);
/** The temperature of a regenerated answer where the configured default is greedy. */
export const REGENERATE_TEMPERATURE = 0.7;

const MESSAGES = {
  cancelled: CANCELLED,
  shuttingDown: 'The bot is shutting down; please try again in a moment.',
  storeDown: 'Conversation history is temporarily unavailable, so this was not answered; please try again in a moment.',
};

export class ConversationManager {
  readonly model: MiniGPT;
  readonly store: Keyv;
  private readonly repo: ConversationStore;
  private readonly scheduler: FairScheduler<Job>;
  private readonly maxQueue: number;
  private readonly defaults: Partial<GenerationOptions>;
  private readonly log: (line: string) => void;
  private readonly images: ImageInput;
  private readonly budget: PromptBudget;
  private readonly contexts: KvCacheLru<string>;
  /** answered turns' KV caches being brought up to date, to be kept (keepContext) */
  private readonly keeping = new Set<Promise<void>>();
  private readonly forgottenListeners: ((f: Forgotten) => void)[] = [];
  private readonly maxTextChars: number;
  private readonly annotate: AnnotateOptions | false;
  private readonly markers: string[];
  private readonly tasks: boolean;
  private closing: Promise<void> | undefined;
  private nextId = 1;
  private sweeper: NodeJS.Timeout | undefined;
  private idleDropper: NodeJS.Timeout | undefined;
  private sweeping: Promise<void> | undefined;

  constructor(opts: ConversationManagerOptions) {
    this.model = opts.model;
    // A Keyv instance without its own store keeps entries in a Map (createStore(undefined) does the same).
    this.store = opts.store ?? new Keyv({ namespace: STORE_NAMESPACE, throwOnErrors: true });
    this.repo = new ConversationStore(this.store, { ttlMs: opts.conversationTtlMs });
    if (opts.conversationTtlMs && opts.conversationTtlMs > 0) {
      if (this.repo.expiresByItself) this.expireUnlimited();
      else this.startSweeping(opts.sweepIntervalMs ?? 6 * 3600_000);
    }
    this.maxQueue = Math.max(0, Math.floor(opts.maxQueue ?? 16));
    this.defaults = opts.defaults ?? {};
    this.log = opts.log ?? (() => {});
    this.maxTextChars = opts.maxTextChars ?? 4000;
    this.annotate = opts.annotate ?? {};
    ({ markers: this.markers, tasks: this.tasks } = turnRulesOf(this.model.meta));
    this.images = new ImageInput({
      model: this.model,
      repo: this.repo,
      cacheSize: opts.imageCacheSize ?? 8,
      shared: opts.sharedImages,
      maxBytes: opts.maxImageBytes ?? LIMITS.imageBytes,
      ...(opts.conversationTtlMs ? { retentionMs: opts.conversationTtlMs } : {}),
    });
    this.budget = new PromptBudget({ model: this.model, maxContextLen: opts.maxContextLen, tasks: this.tasks, markers: this.markers });
    this.contexts = new KvCacheLru(Math.max(0, opts.kvCacheBytes ?? 256 * 1024 * 1024));
    if (opts.conversationTtlMs && opts.conversationTtlMs > 0) this.dropIdleCaches(opts.conversationTtlMs);
    this.scheduler = new FairScheduler<Job>((job) => this.run(job), opts.maxBatch ?? 1);
  }

  /**
   * Answers one request as a stream of events (see AnswerEvent). Never throws: failures are `error`
   * events. The request takes its place in the queue when this is called, not when the stream is read;
   * leaving the stream early (`break`) cancels it.
   */
  handle(req: ConversationRequest): AsyncIterable<AnswerEvent> {
    const channel = new EventChannel<AnswerEvent>();
    const fail = (code: ErrorCode, message: string) => {
      channel.push({ type: 'error', code, message });
      channel.close();
      return channel;
    };
    let key: ConversationKey;
    try {
      key = checkKey(req?.key);
    } catch (err) {
      return fail('internal', (err as Error).message);
    }
    if (this.closing) return fail('busy', MESSAGES.shuttingDown);
    if (req.signal?.aborted) return fail('cancelled', MESSAGES.cancelled);
    if ((req.regenerate !== undefined || req.edit !== undefined) && req.history !== undefined) {
      return fail('internal', 'A stateless request cannot regenerate a stored answer: send the messages to answer instead.');
    }
    if (req.regenerate !== undefined && req.edit !== undefined) {
      return fail('internal', 'A request regenerates an answer or answers an edited question, not both.');
    }
    const convId = conversationId(key);
    if (this.scheduler.waiting >= this.maxQueue && !this.scheduler.wouldStartNow(convId)) {
      this.log(`conversation: busy, ${this.scheduler.waiting} requests waiting; refused a request for ${convId}`);
      return fail('busy', `The bot is busy (${this.scheduler.waiting} requests waiting): please try again in a moment.`);
    }
    const job: Job = {
      convId,
      control: false,
      key,
      // A regenerate or edit request asks the stored turn again: an image sent with it is not the conversation's.
      req: (req.regenerate !== undefined || req.edit !== undefined) && req.image !== undefined ? { ...req, image: undefined } : req,
      requestId: req.requestId ?? `r${this.nextId++}`,
      channel,
      controller: new AbortController(),
      enqueuedAt: performance.now(),
      state: 'waiting',
      ...(req.regenerate !== undefined || req.edit !== undefined ? { check: 'due' as const } : {}),
    };
    const onAbort = () => this.cancel(job);
    req.signal?.addEventListener('abort', onAbort, { once: true });
    job.cleanup = () => req.signal?.removeEventListener('abort', onAbort);
    channel.onReturn = () => this.cancel(job);
    this.scheduler.add(job);
    job.position = this.scheduler.position(job);
    channel.push({ type: 'queued', position: job.position });
    this.scheduler.pump();
    this.checkNext(convId);
    return channel;
  }

  /**
   * Forgets a conversation (after its earlier requests, in order; with `by`, only if that user took part in it);
   * its image goes when no other uses it.
   */
  reset(key: ConversationKey, opts: ResetOptions = {}): Promise<ResetOutcome> {
    return this.control(key, async (convId) => {
      const state = await this.repo.getConversation(convId);
      if (state && !tookPart(state, opts.by)) return 'not_allowed';
      await this.repo.deleteConversation(convId);
      this.contexts.delete(convId);
      if (!state) return 'empty';
      const imageGone = await this.repo.detachImage(state.image.hash, convId);
      await this.forgotten({ conversations: [convId], images: imageGone ? [state.image.hash] : [] });
      return 'forgotten';
    });
  }

  /**
   * The message that asked a question was deleted (`asked`: the request id it was asked under): its turn is forgotten,
   * or, when that message brought the conversation's image, the whole conversation (and the image, unless another
   * conversation uses it); decided in the conversation's order, after its earlier requests are stored. Whoever
   * deleted it (its author, a moderator): the message is gone, so is what the bot kept of it. The conversation's KV
   * caches go too (they hold the question), here and, in a cluster, in every worker. `turnOnly`: the bot's answer to
   * it was deleted (the message stays): that turn alone goes.
   */
  forgetQuestion(key: ConversationKey, asked: string, opts: { turnOnly?: boolean } = {}): Promise<QuestionOutcome> {
    return this.control(key, async (convId) => {
      const state = await this.repo.getConversation(convId);
      const left = state && withoutQuestion(state, String(asked), opts.turnOnly === true);
      if (!state || !left) return 'not_asked';
      if (left === 'all') {
        await this.repo.deleteConversation(convId);
        this.contexts.delete(convId);
        const imageGone = await this.repo.detachImage(state.image.hash, convId);
        await this.forgotten({ conversations: [convId], images: imageGone ? [state.image.hash] : [] });
        return 'conversation_forgotten';
      }
      await this.repo.putConversation(convId, left.state);
      await this.forgotten({ conversations: [convId], images: [] });
      return 'question_forgotten';
    });
  }

  /**
   * Drops what this process derived from forgotten conversations and images: their KV caches, the images' embeddings
   * (in memory, and in the shared cache). For a cluster worker told of a forget elsewhere (it may hold them).
   */
  async dropCaches(f: Forgotten): Promise<void> {
    for (const id of f.conversations) this.contexts.delete(id);
    for (const hash of f.images) await this.images.forget(hash, true);
  }

  /** `fn` is told what this manager forgot (a reset, forgetWorkspace), after it dropped its own caches of it. */
  onForgotten(fn: (f: Forgotten) => void): void {
    this.forgottenListeners.push(fn);
  }

  private async forgotten(f: Forgotten): Promise<void> {
    try {
      await this.dropCaches(f);
    } catch (err) {
      // (the store's deletion is done; a shared cache out of reach keeps embeddings until their expiry)
      this.log(`conversation: could not drop the caches of forgotten conversations: ${(err as Error).message}`);
    }
    for (const fn of this.forgottenListeners) fn(f);
  }

  /** Requests waiting for the model (not yet started). */
  get waiting(): number {
    return this.scheduler.waiting;
  }

  /**
   * The KV caches kept for follow-ups (entries, bytes, hits, misses, evictions, lent) and how many answered turns'
   * caches are on their way in (`keeping`: the stream has ended, the cache is being brought up to date).
   */
  get contextCacheStats(): KvCacheStats & { keeping: number } {
    return { ...this.contexts.stats, keeping: this.keeping.size };
  }

  /** Once the KV caches of the turns answered so far are kept (or given up): what a next conversation may start from. */
  async cachesKept(): Promise<void> {
    while (this.keeping.size > 0) await Promise.all(this.keeping);
  }

  /**
   * Forgets every stored conversation of a platform's workspace (the app was removed there; or of each workspace the
   * function picks: the servers a Discord bot was removed from while offline) or, with `channel`, of one of its
   * channels (the channel was deleted), with the images no other conversation uses, and their KV caches. How many;
   * undefined for a store that cannot be walked.
   */
  async forgetWorkspace(platform: ConversationKey['platform'], workspace: Workspaces, channel?: string): Promise<number | undefined> {
    const gone = await this.repo.forgetWhere(inPlace(platform, workspace, channel));
    if (gone) await this.forgotten(gone);
    return gone?.conversations.length;
  }

  /** The stored conversation (image reference and turns, oldest first), or null. */
  async history(key: ConversationKey): Promise<ConversationState | null> {
    return (await this.repo.getConversation(conversationId(checkKey(key)))) ?? null;
  }

  /**
   * One pass of store maintenance in the background (close() waits for it): the line it returns is logged, as is
   * its failure (`what` failed).
   */
  private maintain(what: string, pass: () => Promise<string | undefined>): void {
    this.sweeping = pass()
      .then((line) => {
        if (line) this.log(`conversation store: ${line}`);
      })
      .catch((err: unknown) => this.log(`conversation store: ${what} failed: ${(err as Error).message}`))
      .finally(() => (this.sweeping = undefined));
  }

  /** Gives what a Redis store holds without an expiry one, once, in the background (see expireUnlimited). */
  private expireUnlimited(): void {
    this.maintain('giving old conversations an expiry', async () => {
      const n = await this.repo.expireUnlimited();
      if (!n || n.kept + n.forgotten + n.images === 0) return undefined;
      return `retention applied to what was stored before it: ${n.forgotten} conversations older than it forgotten, ${n.kept} kept until their time, ${n.images} images given an expiry`;
    });
  }

  /**
   * What was derived from conversations past the retention time goes with them: a KV cache is kept at a turn's end and
   * an image's embeddings are used at each turn about it, so one unused for `ttlMs` belongs to conversations the store
   * has forgotten (or is about to). Checked every `ttlMs`, at most hourly.
   */
  private dropIdleCaches(ttlMs: number): void {
    this.idleDropper = setInterval(
      () => {
        const cutoff = Date.now() - ttlMs;
        const kv = this.contexts.dropUnusedSince(cutoff);
        const images = this.images.dropUnusedSince(cutoff);
        if (kv + images > 0) this.log(`conversation: dropped ${kv} KV caches and ${images} image embeddings unused for the retention time`);
      },
      Math.min(ttlMs, 3600_000),
    );
    this.idleDropper.unref();
  }

  /** Sweeps expired conversations and images out of the store now and every `intervalMs` (see sweepExpired). */
  private startSweeping(intervalMs: number): void {
    const sweep = () => {
      if (this.sweeping || this.closing) return;
      this.maintain(
        'sweeping expired conversations',
        async () => `expired conversations swept out (about ${(await this.repo.sweepExpired()) ?? '?'} entries left)`,
      );
    };
    sweep();
    this.sweeper = setInterval(sweep, intervalMs);
    this.sweeper.unref();
  }

  /**
   * Stops taking requests, cancels the waiting ones, lets the running one finish (and be stored), then
   * closes the store, which flushes it.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      clearInterval(this.sweeper);
      clearInterval(this.idleDropper);
      for (const job of this.scheduler.waitingJobs()) {
        if (!job.control) this.cancel(job, MESSAGES.shuttingDown);
      }
      await this.scheduler.idle();
      await this.sweeping;
      this.contexts.clear();
      await this.store.disconnect();
    })();
    return this.closing;
  }

  private control<T>(key: ConversationKey, work: (convId: string) => Promise<T>): Promise<T> {
    const convId = conversationId(checkKey(key));
    return new Promise<T>((resolve, reject) => {
      const job: Job = {
        convId,
        control: true,
        key,
        requestId: `c${this.nextId++}`,
        channel: new EventChannel<AnswerEvent>(),
        controller: new AbortController(),
        enqueuedAt: performance.now(),
        state: 'waiting',
        work: () =>
          work(convId).then(resolve as (v: T) => void, (err: unknown) => {
            reject(err as Error);
          }),
      };
      this.scheduler.add(job);
      this.scheduler.pump();
    });
  }

  private cancel(job: Job, message = MESSAGES.cancelled): void {
    if (job.state === 'waiting') {
      const keep = this.keepImageJob(job);
      if (keep ? this.scheduler.replace(job, keep) : this.scheduler.remove(job)) {
        this.finish(job, { type: 'error', code: 'cancelled', message });
        this.tellPositions();
        this.checkNext(job.convId);
      }
    } else if (job.state === 'running') {
      job.controller.abort();
    }
  }

  /**
   * A job started, or one waiting left: each waiting request that moved up in the queue is told its new place (a
   * user waiting behind others sees the count go down). A place further back (round robin lets a newly arrived
   * conversation in before a conversation's second request) is not told: it is caught up with again soon.
   */
  private tellPositions(): void {
    for (const [job, position] of this.scheduler.positions()) {
      if (job.state !== 'waiting' || job.control || (job.position !== undefined && position >= job.position)) continue;
      job.position = position;
      job.channel.push({ type: 'queued', position, ...(job.check === 'passed' ? { checked: true as const } : {}) });
    }
  }

  /**
   * Checks the next waiting request of `convId` (checkAnswerable) when it is a regenerate or edit request not yet
   * checked and nothing of its conversation runs (`after`: the job of it that ran has just ended).
   */
  private checkNext(convId: string, after = false): void {
    const job = this.scheduler.nextOf(convId);
    if (job?.check !== 'due' || (!after && this.scheduler.runs(convId))) return;
    job.check = 'checking';
    void this.checkAnswerable(job);
  }

  /**
   * A waiting regenerate or edit request with nothing of its conversation ahead of it: its stored question is checked
   * now rather than when its turn on the model comes (only what runs before it in its conversation changes it, and
   * nothing does). Refused, it ends at once; else its place is told again, checked: an adapter that keeps quiet about
   * such a request until it is known to be answered (an edit of an earlier question is refused without a word) shows
   * its place in the line from then on. A store that cannot be read leaves it to be decided when it runs.
   */
  private async checkAnswerable(job: Job): Promise<void> {
    let refused: Failure | undefined;
    try {
      this.askedAgain(job.req!, await this.repo.getConversation(job.convId));
    } catch (err) {
      if (!(err instanceof Failure)) {
        this.log(`conversation ${job.convId} request ${job.requestId}: not checked before its turn: ${(err as Error).message}`);
        return;
      }
      refused = err;
    }
    if (job.state !== 'waiting') return; // (started meanwhile, or cancelled: decided there)
    if (!refused) {
      job.check = 'passed';
      job.position = this.scheduler.position(job);
      job.channel.push({ type: 'queued', position: job.position, checked: true });
      return;
    }
    if (this.scheduler.remove(job)) {
      this.finish(job, { type: 'error', code: refused.code, message: refused.message });
      this.tellPositions();
      this.checkNext(job.convId);
    }
  }

  /**
   * For a thread's request with a new image, cancelled while it waited (Stop pressed then, the bot closing): a
   * control job that stores the image without a turn, in the request's place in the conversation's order (see
   * keepImage). Undefined for a request without a new image.
   */
  private keepImageJob(job: Job): Job | undefined {
    const req = job.req;
    if (job.control || !req || req.image === undefined || req.history !== undefined) return undefined;
    return {
      convId: job.convId,
      control: true,
      key: job.key,
      requestId: job.requestId,
      channel: new EventChannel<AnswerEvent>(),
      controller: new AbortController(),
      enqueuedAt: job.enqueuedAt,
      state: 'waiting',
      work: () => this.storeImageOf(job.convId, job.key, req),
    };
  }

  /**
   * Stores a thread's request's new image in its conversation without answering (a request cancelled before it
   * was answered: on a worker, one stopped while it waited in the cluster's queue), after the conversation's
   * earlier requests, as for a request stopped while answering: the next message can ask about the image without
   * sending it again. Nothing for a request without a new image.
   */
  async keepImage(req: ConversationRequest): Promise<void> {
    if (req.image === undefined || req.history !== undefined) return;
    const key = checkKey(req.key);
    await this.control(key, (convId) => this.storeImageOf(convId, key, req));
  }

  private async storeImageOf(convId: string, key: ConversationKey, req: ConversationRequest): Promise<void> {
    try {
      const image = await this.images.check(req.image);
      await this.storeTurn({ convId, key, req }, await this.repo.getConversation(convId), image, [], undefined, 0, undefined);
    } catch (err) {
      // (a bad image is simply not kept: its request was cancelled, nobody waits for an answer about it)
      this.log(`conversation ${convId}: the image of a request cancelled before its answer was not kept: ${(err as Error).message}`);
    }
  }

  private finish(job: Job, last?: AnswerEvent): void {
    if (job.state === 'done') return;
    job.state = 'done';
    if (last) job.channel.push(last);
    job.channel.close();
    job.cleanup?.();
  }

  private async run(job: Job): Promise<void> {
    job.state = 'running';
    if (job.control) {
      try {
        await job.work!();
      } finally {
        job.state = 'done';
        this.checkNext(job.convId, true);
      }
      return;
    }
    const started = performance.now();
    job.channel.push({ type: 'started' });
    this.tellPositions();
    try {
      await this.answer(job, started);
      this.finish(job);
      await this.keepContext(job);
    } catch (err) {
      this.finish(job, this.errorEvent(job, err));
    } finally {
      job.keep?.context.dispose();
      job.keep = undefined;
      this.checkNext(job.convId, true);
    }
  }

  /**
   * After the answer (its stream is closed): the turn's KV cache is brought to the form the next prompt
   * will have (this answer as stored, re-tokenised), then kept, so that a follow-up prefills only its own
   * new tokens. The conversation's next request waits for this; other conversations' decoding goes on.
   */
  private async keepContext(job: Job): Promise<void> {
    const keep = job.keep;
    if (!keep) return;
    job.keep = undefined;
    const kept = this.model
      .extendContext(keep.context, keep.prefix, keep.images, keep.keys, job.controller.signal)
      .then(
        (context) => this.contexts.put(keep.id, context),
        (err: unknown) => this.log(`conversation ${job.convId}: KV cache not kept (${(err as Error).message})`),
      )
      .finally(() => this.keeping.delete(kept));
    this.keeping.add(kept);
    await kept;
  }

  private errorEvent(job: Job, err: unknown): AnswerEvent {
    if (err instanceof Failure) return { type: 'error', code: err.code, message: err.message };
    if (err instanceof ImageInputError) return { type: 'error', code: 'bad_image', message: err.message };
    if (err instanceof StoreUnavailableError) {
      this.log(`conversation ${job.convId} request ${job.requestId}: ${err.message}`);
      return { type: 'error', code: 'unavailable', message: MESSAGES.storeDown };
    }
    if (job.controller.signal.aborted) return { type: 'error', code: 'cancelled', message: MESSAGES.cancelled };
    const e = err as Error;
    this.log(`conversation ${job.convId} request ${job.requestId} failed: ${e?.stack ?? String(err)}`);
    return {
      type: 'error',
      code: 'internal',
      message: `Something went wrong while answering (${e?.message ?? String(err)}); please try again.`,
    };
  }

  /**
   * One turn, step by step. Each step throws what becomes the request's `error` event (see errorEvent); the
   * stream's events come from generate (`text`), then here (`final`), drawBoxes (`image`) and report (`timings`).
   */
  private async answer(job: Job, started: number): Promise<void> {
    const req = job.req!;
    const stateless = req.history !== undefined;
    const prev = stateless ? undefined : await this.repo.getConversation(job.convId);
    // Regenerate, or an edited question: the last turn asked again after the turns before it; its answer replaces
    // the stored one.
    const again = this.askedAgain(req, prev);
    const turn = again?.turn ?? this.userTurnOf(req);
    const input = await this.images.resolve(req.image, prev, stateless);
    const history = again?.earlier ?? this.earlierTurns(req, prev);
    const images: ModelImages = { embeds: input ? [input.encoded.embeds] : [], keys: input ? [input.image.hash] : [] };

    // A regenerated answer is sampled at the temperature its question was asked at, where that request set one above
    // 0; else even where the configured default is greedy (it would come out the same). A temperature the request sets
    // itself stands.
    const asked = req.regenerate !== undefined && req.generation?.temperature === undefined ? again?.temperature : undefined;
    const generation = asked !== undefined && asked > 0 ? { ...req.generation, temperature: asked } : req.generation;
    const gen = generationOptions(generation, this.defaults, this.model);
    const greedy = gen.temperature === 0 || gen.doSample === false;
    if (req.regenerate !== undefined && greedy && (gen.numBeams ?? 1) <= 1 && generation?.temperature === undefined) {
      gen.temperature ||= REGENERATE_TEMPERATURE;
      gen.doSample = true;
    }
    const fitted = this.budget.fit(history, turn.prompt, gen.maxNewTokens, input !== undefined);
    const kept = history.slice(fitted.dropped);

    // From the KV cache of the conversation's last turn (a stateless request's: the cache kept by the request
    // whose messages this one extends).
    const contextId = stateless ? statelessContextId(input?.image.hash, history) : job.convId;
    const caching = this.contexts.budget > 0;
    let generated: Awaited<ReturnType<typeof generate>>;
    try {
      job.controller.signal.throwIfAborted();
      generated = await generate(this.model, {
        prompt: fitted.prompt,
        images,
        gen,
        signal: job.controller.signal,
        reuse: caching ? this.contexts.take(contextId) : undefined,
        shared: caching ? this.contexts : undefined,
        keep: caching,
        onText: (text, logprobs) => job.channel.push(logprobs ? { type: 'text', text, logprobs } : { type: 'text', text }),
      });
    } catch (err) {
      // Stopped (by the user, or a closing bot) after a new image was read: the thread keeps the image without
      // this turn, so that the next message can ask about it without sending it again.
      if (job.controller.signal.aborted && !stateless && req.image !== undefined && input) {
        await this.storeTurn(job, prev, input.image, [], undefined, 0, undefined).catch((e: unknown) => {
          this.log(`conversation ${job.convId}: could not keep the image of a stopped answer: ${(e as Error).message}`);
        });
      }
      throw err;
    }

    const stored = storedTurn(req, turn, generated, again);
    // A thread always has an image here (resolve refused one without).
    const turns: PriorTurn[] = stateless
      ? [...kept, stored]
      : await this.storeTurn(job, prev, input!.image, kept, stored, fitted.dropped, generated.context);
    if (generated.context) {
      // The cache matches the conversation as stored (as the client will send it back) now: kept for its next
      // turn (see keepContext).
      const id = stateless ? statelessContextId(input?.image.hash, [...history, stored]) : job.convId;
      const prefix = this.budget.nextPromptPrefix(turns, input !== undefined);
      job.keep = { id, context: generated.context, prefix, images: images.embeds, keys: images.keys };
    }

    const final = finalEvent(turn, generated, input?.image);
    job.channel.push(final);
    await this.drawBoxes(job, turn, final, input?.image);
    this.report(job, started, turn, {
      firstText: generated.firstText,
      image: input,
      model: generated.timings,
      promptTokens: fitted.promptTokens,
      historyTurns: kept.length,
      droppedTurns: fitted.dropped,
    });
  }

  /** The request's text as the user turn of the prompt (too long: too_long). */
  private userTurnOf(req: ConversationRequest): UserTurn {
    const text = typeof req.text === 'string' ? req.text : '';
    if (text.length > this.maxTextChars) {
      throw new Failure('too_long', `Your message is too long (${text.length} characters; the limit is ${this.maxTextChars}).`);
    }
    return userTurn(text, req.task, { tasks: this.tasks, markers: this.markers });
  }

  /**
   * A regenerate or edit request's question, if its user may have the last turn answered again (else `stale` /
   * `not_allowed`); undefined for any other request.
   */
  private askedAgain(req: ConversationRequest, prev: ConversationState | undefined): Regeneration | undefined {
    const r = askedAgain(prev, req, () => this.userTurnOf(req));
    if (r && 'code' in r) throw new Failure(r.code, r.message);
    return r;
  }

  /** The exchanges before this turn: a stateless request's own; a thread's stored ones, none after a new image. */
  private earlierTurns(req: ConversationRequest, prev: ConversationState | undefined): readonly PriorTurn[] {
    if (req.history !== undefined) return this.budget.priorTurns(req.history);
    return req.image === undefined && prev ? prev.turns : [];
  }

  /**
   * A thread's turn into the store (none: a new image alone, its answer stopped): a new image first, then the
   * conversation, then the image it replaced released, so that a stored conversation never names a missing image.
   * The turn's KV cache goes if the image or the conversation cannot be written. Returns the turns as stored.
   */
  private async storeTurn(
    job: Pick<Job, 'convId' | 'key' | 'req'>,
    prev: ConversationState | undefined,
    image: TurnImage,
    kept: readonly PriorTurn[],
    stored: StoredTurn | undefined,
    dropped: number,
    context: CachedContext | undefined,
  ): Promise<StoredTurn[]> {
    const req = job.req!;
    const fresh = req.image !== undefined;
    const askedIn = req.imageFrom ?? req.askedAs ?? req.requestId;
    const state = threadState({ key: job.key, prev, image, fresh, by: req.user, askedIn, kept, dropped, stored });
    try {
      if (fresh) {
        const until = await this.repo.attachImage({ ...state.image, data: image.data! }, job.convId);
        if (until !== undefined) state.image.until = until;
      }
      await this.repo.putConversation(job.convId, state);
    } catch (err) {
      context?.dispose();
      throw err;
    }
    if (fresh && prev && prev.image.hash !== image.hash) {
      // The turn is stored: a replaced image left referenced costs storage, not the answer.
      await this.repo.detachImage(prev.image.hash, job.convId).catch((err: unknown) => {
        this.log(`conversation ${job.convId}: could not release the replaced image ${prev.image.hash}: ${(err as Error).message}`);
      });
    }
    return state.turns;
  }

  /** The annotated image, when the answer has boxes to show; failing to draw them costs the image, not the answer. */
  private async drawBoxes(job: Job, turn: UserTurn, final: FinalEvent, image: TurnImage | undefined): Promise<void> {
    const drawn = entitiesToDraw(turn, final.entities, final.text);
    if (!image || drawn.length === 0 || this.annotate === false || job.req!.annotate === false) return;
    try {
      const bytes = image.data ?? (await this.repo.getImage(image.hash))?.data;
      if (bytes) {
        const out = await annotateImage(bytes, drawn, this.annotate);
        job.channel.push({ type: 'image', data: out.data, mime: out.mime });
      }
    } catch (err) {
      this.log(`conversation ${job.convId} request ${job.requestId}: could not draw the boxes: ${(err as Error).message}`);
    }
  }

  /** The `timings` event and the log line of an answered turn. */
  private report(job: Job, started: number, turn: UserTurn, costs: Omit<TurnCosts, 'enqueuedAt' | 'started' | 'end'>): void {
    const timings = turnTimings({ ...costs, enqueuedAt: job.enqueuedAt, started, end: performance.now() });
    job.channel.push({ type: 'timings', timings });
    this.log(`conversation ${job.convId} request ${job.requestId}: ${turnSummary(turn.task, timings)}`);
  }
}

/** Where a stateless conversation's KV cache is kept: by its image and its exchanges, as the client sends them. */
function statelessContextId(imageHash: string | undefined, turns: readonly PriorTurn[]): string {
  return `stateless:${sha256Hex(new TextEncoder().encode(JSON.stringify([imageHash ?? null, turns.map((t) => [t.user, t.assistant.trim()])])))}`;
}

function checkKey(key: ConversationKey | undefined): ConversationKey {
  if (!key || typeof key !== 'object') throw new Error('the request has no conversation key');
  if (!PLATFORMS.has(key.platform)) throw new Error(`unknown platform ${JSON.stringify(key.platform)} in the conversation key`);
  for (const f of ['workspace', 'channel', 'thread'] as const) {
    if (typeof key[f] !== 'string') throw new Error(`the conversation key's ${f} must be a string`);
  }
  return { platform: key.platform, workspace: key.workspace, channel: key.channel, thread: key.thread };
}
