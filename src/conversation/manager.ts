// The conversation manager: platform-neutral requests in, answer event streams out (docs/architecture.md, "The path of one request").
import Keyv from 'keyv';
import type { MiniGPT, Timings } from '../inference/model.js';
import { KvCacheLru, type CachedContext, type KvCacheStats } from '../inference/kv-reuse.js';
import { conversationPrompt, type Turn } from '../inference/prompt.js';
import { promptSegmentIds } from '../inference/context.js';
import { UPSTREAM_CHAT_OPTIONS, type GenerationOptions } from '../inference/generation/index.js';
import { ImageInputError } from '../image/preprocess.js';
import { annotateImage, type AnnotateOptions } from '../image/annotate.js';
import { parseGrounding, parseUserBox, type Entity } from '../grounding/parse.js';
import { ConversationStore, STORE_NAMESPACE, StoreUnavailableError, conversationId, sha256Hex } from './store.js';
import { EventChannel, FairScheduler } from './scheduler.js';
import { markersFor, neutralizeMarkers, userTurn } from './text.js';
import { formatBytes } from '../util/bytes.js';
import { LruMap } from '../util/lru.js';
import type {
  AnswerEvent,
  ConversationKey,
  ConversationRequest,
  ConversationState,
  ErrorCode,
  PriorTurn,
  RequestGeneration,
  StoredTurn,
} from './types.js';
import { LIMITS } from './limits.js';

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
  /** control jobs: the work itself */
  work?: () => Promise<void>;
  cleanup?: () => void;
  /** the KV cache of the answered turn, to be extended to the next prompt's prefix, then kept */
  keep?: { id: string; context: CachedContext; prefix: string; images: Float32Array[]; keys: string[] };
}

export interface EncodedImage {
  embeds: Float32Array;
  width: number;
  height: number;
}

/** Image embeddings by the image's content hash, shared between processes; failures are misses, never errors. */
export interface SharedImageCache {
  get(hash: string): Promise<EncodedImage | undefined>;
  set(hash: string, image: EncodedImage): Promise<void>;
}

class Failure extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
  }
}

const PLATFORMS = new Set(['discord', 'slack', 'web', 'cli', 'api']);
/** Most extra stop strings a request may add. */
const MAX_STOP_STRINGS = 8;

/** Upstream Chat.answer's settings minus its stop conditions (the package's apply). */
const { stopIds: _stopIds, stopStrings: _stopStrings, ...CHAT_DEFAULTS } = UPSTREAM_CHAT_OPTIONS;

const MESSAGES = {
  noImage: 'There is no image in this conversation yet: attach an image to your message, then ask about it (follow-ups in the same thread keep it).',
  imageGone: 'The image of this conversation is no longer stored: please send it again.',
  cancelled: 'The request was cancelled.',
  shuttingDown: 'The bot is shutting down; please try again in a moment.',
  storeDown: 'Conversation history is temporarily unavailable, so this was not answered; please try again in a moment.',
};

function finite(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

export class ConversationManager {
  readonly model: MiniGPT;
  readonly store: Keyv;
  private readonly repo: ConversationStore;
  private readonly scheduler: FairScheduler<Job>;
  private readonly maxQueue: number;
  private readonly maxContextLen: number;
  private readonly defaults: Partial<GenerationOptions>;
  private readonly log: (line: string) => void;
  private readonly images: LruMap<string, EncodedImage>;
  private readonly sharedImages: SharedImageCache | undefined;
  /** images being encoded, so that concurrent requests with the same new image share one encoding */
  private readonly encoding = new Map<string, Promise<EncodedImage>>();
  private readonly contexts: KvCacheLru<string>;
  private readonly maxImageBytes: number;
  private readonly maxTextChars: number;
  private readonly annotate: AnnotateOptions | false;
  private readonly markers: string[];
  private readonly tasks: boolean;
  private closing: Promise<void> | undefined;
  private nextId = 1;

  constructor(opts: ConversationManagerOptions) {
    this.model = opts.model;
    // A Keyv instance without its own store keeps entries in a Map (createStore(undefined) does the same).
    this.store = opts.store ?? new Keyv({ namespace: STORE_NAMESPACE, throwOnErrors: true });
    this.repo = new ConversationStore(this.store);
    this.maxQueue = Math.max(0, Math.floor(opts.maxQueue ?? 16));
    this.maxContextLen = opts.maxContextLen !== undefined && opts.maxContextLen > 0 ? Math.floor(opts.maxContextLen) : Infinity;
    this.defaults = opts.defaults ?? {};
    this.log = opts.log ?? (() => {});
    this.images = new LruMap(Math.max(0, Math.floor(opts.imageCacheSize ?? 8)));
    this.sharedImages = opts.sharedImages;
    this.maxImageBytes = opts.maxImageBytes ?? LIMITS.imageBytes;
    this.maxTextChars = opts.maxTextChars ?? 4000;
    this.annotate = opts.annotate ?? {};
    this.markers = markersFor(this.model.meta.prompt);
    this.tasks = this.model.meta.architecture === 'minigpt-v2';
    this.contexts = new KvCacheLru(Math.max(0, opts.kvCacheBytes ?? 256 * 1024 * 1024));
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
    const convId = conversationId(key);
    if (this.scheduler.waiting >= this.maxQueue && !this.scheduler.wouldStartNow(convId)) {
      this.log(`conversation: busy, ${this.scheduler.waiting} requests waiting; refused a request for ${convId}`);
      return fail('busy', `The bot is busy (${this.scheduler.waiting} requests waiting): please try again in a moment.`);
    }
    const job: Job = {
      convId,
      control: false,
      key,
      req,
      requestId: req.requestId ?? `r${this.nextId++}`,
      channel,
      controller: new AbortController(),
      enqueuedAt: performance.now(),
      state: 'waiting',
    };
    const onAbort = () => this.cancel(job);
    req.signal?.addEventListener('abort', onAbort, { once: true });
    job.cleanup = () => req.signal?.removeEventListener('abort', onAbort);
    channel.onReturn = () => this.cancel(job);
    this.scheduler.add(job);
    channel.push({ type: 'queued', position: this.scheduler.position(job) });
    this.scheduler.pump();
    return channel;
  }

  /** Forgets a conversation (after its earlier requests, in order); its image goes when no other uses it. */
  reset(key: ConversationKey): Promise<void> {
    return this.control(key, async (convId) => {
      const state = await this.repo.getConversation(convId);
      await this.repo.deleteConversation(convId);
      this.contexts.delete(convId);
      if (state) await this.repo.detachImage(state.image.hash, convId);
    });
  }

  /** The KV caches kept for follow-ups: entries, bytes, hits, misses, evictions. */
  get contextCacheStats(): KvCacheStats {
    return this.contexts.stats;
  }

  /** The stored conversation (image reference and turns, oldest first), or null. */
  async history(key: ConversationKey): Promise<ConversationState | null> {
    return (await this.repo.getConversation(conversationId(checkKey(key)))) ?? null;
  }

  /**
   * Stops taking requests, cancels the waiting ones, lets the running one finish (and be stored), then
   * closes the store, which flushes it.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const job of this.scheduler.waitingJobs()) {
        if (!job.control) this.cancel(job, MESSAGES.shuttingDown);
      }
      await this.scheduler.idle();
      this.contexts.clear();
      await this.store.disconnect();
    })();
    return this.closing;
  }

  private control(key: ConversationKey, work: (convId: string) => Promise<void>): Promise<void> {
    const convId = conversationId(checkKey(key));
    return new Promise<void>((resolve, reject) => {
      const job: Job = {
        convId,
        control: true,
        key,
        requestId: `c${this.nextId++}`,
        channel: new EventChannel<AnswerEvent>(),
        controller: new AbortController(),
        enqueuedAt: performance.now(),
        state: 'waiting',
        work: () => work(convId).then(resolve, (err: unknown) => {
          reject(err as Error);
        }),
      };
      this.scheduler.add(job);
      this.scheduler.pump();
    });
  }

  private cancel(job: Job, message = MESSAGES.cancelled): void {
    if (job.state === 'waiting') {
      if (this.scheduler.remove(job)) this.finish(job, { type: 'error', code: 'cancelled', message });
    } else if (job.state === 'running') {
      job.controller.abort();
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
      }
      return;
    }
    const started = performance.now();
    job.channel.push({ type: 'started' });
    try {
      await this.answer(job, started);
      this.finish(job);
      await this.keepContext(job);
    } catch (err) {
      this.finish(job, this.errorEvent(job, err));
    } finally {
      job.keep?.context.dispose();
      job.keep = undefined;
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
    try {
      const context = await this.model.extendContext(keep.context, keep.prefix, keep.images, keep.keys, job.controller.signal);
      this.contexts.put(keep.id, context);
    } catch (err) {
      this.log(`conversation ${job.convId}: KV cache not kept (${(err as Error).message})`);
    }
  }

  /** The start of the next turn's prompt after `turns` (up to the next user text). */
  private nextPromptPrefix(turns: readonly PriorTurn[], image: boolean): string {
    const mark = '\u0000';
    const next = conversationPrompt(
      this.model.meta.prompt,
      [...turns.map((t) => ({ user: t.user, assistant: neutralizeMarkers(t.assistant, this.markers) })), { user: mark }],
      { image },
    );
    return next.slice(0, next.lastIndexOf(mark)).trimEnd();
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
    return { type: 'error', code: 'internal', message: `Something went wrong while answering (${e?.message ?? String(err)}); please try again.` };
  }

  private async answer(job: Job, started: number): Promise<void> {
    const req = job.req!;
    const signal = job.controller.signal;
    const emit = (ev: AnswerEvent) => job.channel.push(ev);
    const spec = this.model.meta.prompt;

    // The user turn.
    const text = typeof req.text === 'string' ? req.text : '';
    if (text.length > this.maxTextChars) {
      throw new Failure('too_long', `Your message is too long (${text.length} characters; the limit is ${this.maxTextChars}).`);
    }
    const turn = userTurn(text, req.task, { tasks: this.tasks, markers: this.markers });

    // The image: a new one resets the conversation; otherwise the stored one. A stateless request brings its
    // history (and image, if any) itself.
    const stateless = req.history !== undefined;
    const prev = stateless ? undefined : await this.repo.getConversation(job.convId);
    let image: { hash: string; width: number; height: number; bytes: number; data?: Uint8Array } | undefined;
    let encoded: EncodedImage | undefined;
    let history: readonly PriorTurn[];
    let cached = false;
    let visionMs = 0;
    let preprocessMs = 0;
    if (req.image !== undefined) {
      const data = req.image;
      if (!(data instanceof Uint8Array)) throw new ImageInputError('Not an image: expected binary image data.');
      if (data.byteLength > this.maxImageBytes) {
        throw new ImageInputError(`Image too large: the file has ${formatBytes(data.byteLength)}; the limit is ${formatBytes(this.maxImageBytes)}.`);
      }
      const hash = sha256Hex(data);
      ({ encoded, cached, visionMs, preprocessMs } = await this.encode(hash, data));
      image = { hash, width: encoded.width, height: encoded.height, bytes: data.byteLength, data };
      history = stateless ? this.priorTurns(req.history!) : [];
    } else if (stateless) {
      history = this.priorTurns(req.history!);
    } else if (prev) {
      image = { ...prev.image };
      let hit = this.images.get(prev.image.hash);
      if (hit) {
        cached = true;
      } else {
        const stored = await this.repo.getImage(prev.image.hash);
        if (!stored) throw new Failure('no_image', MESSAGES.imageGone);
        image.data = stored.data;
        ({ encoded: hit, cached, visionMs, preprocessMs } = await this.encode(prev.image.hash, stored.data));
      }
      encoded = hit;
      history = prev.turns;
    } else {
      throw new Failure('no_image', MESSAGES.noImage);
    }
    signal.throwIfAborted();
    const images = encoded ? [encoded.embeds] : [];
    const imageKeys = image ? [image.hash] : [];

    // The prompt, trimmed to the budget from the oldest turn; the image stays with the first kept turn.
    const gen = this.generationOptions(req.generation);
    const { prompt, promptTokens, dropped } = this.fit(history, turn.prompt, gen.maxNewTokens, image !== undefined);
    const kept = history.slice(dropped);

    // Generation, from the KV cache of the conversation's last turn where the prompts agree (a stateless
    // request's: the cache kept by the request whose messages this one extends).
    const contextId = stateless ? statelessContextId(image?.hash, history) : job.convId;
    let answer: { text: string; finishReason: string } | undefined;
    let firstText = 0;
    let modelTimings: Timings | undefined;
    let context: CachedContext | undefined;
    try {
      const reuse = this.contexts.budget > 0 ? this.contexts.take(contextId) : undefined;
      const keep = this.contexts.budget > 0 ? (c: CachedContext) => (context = c) : undefined;
      for await (const ev of this.model.answer(prompt, images, gen, signal, { imageKeys, reuse, keep })) {
        if (ev.type === 'text') {
          if (!firstText) firstText = performance.now();
          emit({ type: 'text', text: ev.text });
        } else if (ev.type === 'done') {
          answer = { text: ev.text, finishReason: ev.finishReason };
        } else {
          modelTimings = ev.timings;
        }
      }
      if (!answer || answer.finishReason === 'aborted') throw new Failure('cancelled', MESSAGES.cancelled);
    } catch (err) {
      (context as CachedContext | undefined)?.dispose();
      throw err;
    }

    // Store the turn (a new image first, then the conversation, then release the old image).
    const now = new Date().toISOString();
    const stored: StoredTurn = {
      user: turn.prompt,
      assistant: answer.text.trim(),
      task: turn.task,
      by: typeof req.user === 'string' ? req.user : String(req.user),
      at: now,
      finishReason: answer.finishReason,
      ...(req.requestId !== undefined ? { requestId: req.requestId } : {}),
    };
    let turns: PriorTurn[];
    if (stateless) {
      turns = [...kept, stored];
    } else {
      // Only the thread path gets here, and it always has an image.
      const img = image!;
      const imageRef = { hash: img.hash, width: img.width, height: img.height, bytes: img.bytes };
      const fresh = req.image !== undefined;
      if (fresh) await this.repo.attachImage({ ...imageRef, data: img.data! }, job.convId);
      const state: ConversationState = {
        v: 1,
        key: job.key,
        image: imageRef,
        turns: [...(kept as StoredTurn[]), stored],
        droppedTurns: (fresh ? 0 : (prev?.droppedTurns ?? 0)) + dropped,
        createdAt: fresh || !prev ? now : prev.createdAt,
        updatedAt: now,
      };
      try {
        await this.repo.putConversation(job.convId, state);
      } catch (err) {
        (context as CachedContext | undefined)?.dispose();
        throw err;
      }
      if (fresh && prev && prev.image.hash !== img.hash) await this.repo.detachImage(prev.image.hash, job.convId);
      turns = state.turns;
    }
    // The cache matches the conversation as stored (as the client will send it back) now: kept for its next
    // turn (see keepContext).
    if (context) {
      const id = stateless ? statelessContextId(image?.hash, [...history, stored]) : job.convId;
      job.keep = { id, context, prefix: this.nextPromptPrefix(turns, image !== undefined), images, keys: imageKeys };
    }

    // Entities, the annotated image, timings.
    const { entities } = parseGrounding(answer.text);
    emit({
      type: 'final',
      text: answer.text,
      entities,
      finishReason: answer.finishReason,
      task: turn.task,
      ...(image ? { image: { width: image.width, height: image.height } } : {}),
    });
    const drawn = this.entitiesToDraw(turn, entities, answer.text);
    if (image && drawn.length > 0 && this.annotate !== false && req.annotate !== false) {
      try {
        const bytes = image.data ?? (await this.repo.getImage(image.hash))?.data;
        if (bytes) {
          const out = await annotateImage(bytes, drawn, this.annotate);
          emit({ type: 'image', data: out.data, mime: out.mime });
        }
      } catch (err) {
        this.log(`conversation ${job.convId} request ${job.requestId}: could not draw the boxes: ${(err as Error).message}`);
      }
    }
    const end = performance.now();
    const timings: Record<string, number> = {
      queueMs: started - job.enqueuedAt,
      preprocessMs,
      visionMs,
      imageCached: cached ? 1 : 0,
      prefillMs: modelTimings?.prefillMs ?? 0,
      firstTokenMs: (firstText || end) - started,
      decodeMs: modelTimings?.decodeMs ?? 0,
      totalMs: end - started,
      promptTokens: modelTimings?.promptTokens ?? promptTokens,
      reusedTokens: modelTimings?.reusedTokens ?? 0,
      newTokens: modelTimings?.newTokens ?? 0,
      historyTurns: kept.length,
      droppedTurns: dropped,
    };
    emit({ type: 'timings', timings });
    this.log(
      `conversation ${job.convId} request ${job.requestId}: ${turn.task}, ${timings.promptTokens} prompt + ${timings.newTokens} new tokens, ` +
        `${kept.length} earlier turns${dropped ? ` (${dropped} dropped)` : ''}, image ${cached ? 'cached' : 'encoded'}, ${Math.round(timings.totalMs)} ms`,
    );
  }

  /**
   * Image embeddings from the cache, or the vision encoder (then cached). Concurrent requests with the same
   * image share one encoding.
   */
  private async encode(hash: string, data: Uint8Array): Promise<{ encoded: EncodedImage; cached: boolean; visionMs: number; preprocessMs: number }> {
    const hit = this.images.get(hash);
    if (hit) return { encoded: hit, cached: true, visionMs: 0, preprocessMs: 0 };
    const pending = this.encoding.get(hash);
    if (pending) return { encoded: await pending, cached: true, visionMs: 0, preprocessMs: 0 };
    const fromShared = this.sharedImages ? await this.sharedImages.get(hash).catch(() => undefined) : undefined;
    if (fromShared && fromShared.embeds.length === this.model.meta.vision.imageTokens * this.model.meta.llm.hidden) {
      this.images.set(hash, fromShared);
      return { encoded: fromShared, cached: true, visionMs: 0, preprocessMs: 0 };
    }
    const work = this.model.encodeImage(data);
    const shared = work.then((r) => ({ embeds: r.embeds, width: r.width, height: r.height }));
    this.encoding.set(hash, shared);
    shared.catch(() => {});
    try {
      const r = await work;
      const encoded = await shared;
      this.images.set(hash, encoded);
      if (this.sharedImages) void this.sharedImages.set(hash, encoded).catch(() => {});
      return { encoded, cached: false, visionMs: r.visionMs, preprocessMs: r.preprocessMs };
    } finally {
      this.encoding.delete(hash);
    }
  }

  /** Prompt tokens of a conversation (text tokens + the image's embedding rows), as the model counts them. */
  private countTokens(prompt: string, image: boolean): number {
    const { imageToken } = this.model.meta.prompt;
    const segments = promptSegmentIds(prompt, imageToken, image ? 1 : 0, this.model.tokenizer);
    return segments.reduce((n, s) => n + s.length, 0) + (image ? this.model.meta.vision.imageTokens : 0);
  }

  /**
   * A stateless request's earlier exchanges as they go into the prompt: each user text through the same rule
   * as a new one (markers neutralised, task tag applied), so that the prompt is the one its own request had.
   */
  private priorTurns(history: readonly PriorTurn[]): PriorTurn[] {
    if (!Array.isArray(history)) throw new Error('history must be an array of {user, assistant} turns');
    return history.map((t) => {
      if (typeof t?.user !== 'string' || typeof t?.assistant !== 'string') throw new Error('history must be an array of {user, assistant} turns');
      return { user: userTurn(t.user, undefined, { tasks: this.tasks, markers: this.markers }).prompt, assistant: t.assistant.trim() };
    });
  }

  /**
   * The prompt for the history plus the new user text within the budget: min(maxContextLen, the model's
   * window minus room for the answer (maxNewTokens, at most a quarter of the window)). Oldest turns go
   * first; the image is always in the first kept turn. Too long even alone -> too_long.
   */
  private fit(history: readonly PriorTurn[], user: string, maxNewTokens: number, image: boolean): { prompt: string; promptTokens: number; dropped: number } {
    const window = this.model.meta.llm.maxPositions;
    const reserve = Math.max(1, Math.min(maxNewTokens, Math.floor(window / 4)));
    const limit = Math.min(this.maxContextLen, window - reserve);
    const spec = this.model.meta.prompt;
    const turns: Turn[] = [...history.map((t) => ({ user: t.user, assistant: neutralizeMarkers(t.assistant, this.markers) })), { user }];
    let dropped = 0;
    for (;;) {
      const prompt = conversationPrompt(spec, turns.slice(dropped), { image });
      const tokens = this.countTokens(prompt, image);
      if (tokens <= limit) return { prompt, promptTokens: tokens, dropped };
      if (dropped === turns.length - 1) {
        throw new Failure(
          'too_long',
          `Your message is too long for this model: with the image it takes ${tokens} tokens, the limit is ${limit}. Please shorten it.`,
        );
      }
      dropped++;
    }
  }

  /** Defaults (upstream Chat.answer, then `defaults`), then the request's settings, sanitised and clamped. */
  private generationOptions(g: RequestGeneration | undefined): GenerationOptions {
    const out: Partial<GenerationOptions> = { ...CHAT_DEFAULTS, ...this.defaults };
    const window = this.model.meta.llm.maxPositions;
    if (g) {
      if (finite(g.temperature) && g.temperature >= 0) out.temperature = Math.min(g.temperature, 10);
      if (finite(g.maxNewTokens) && g.maxNewTokens >= 1) out.maxNewTokens = Math.min(Math.floor(g.maxNewTokens), window);
      if (finite(g.topP) && g.topP > 0) out.topP = Math.min(g.topP, 1);
      if (finite(g.numBeams) && g.numBeams >= 1) out.numBeams = Math.min(Math.floor(g.numBeams), LIMITS.beams);
      if (finite(g.repetitionPenalty) && g.repetitionPenalty > 0) out.repetitionPenalty = Math.min(g.repetitionPenalty, 10);
      if (finite(g.seed)) out.seed = Math.floor(g.seed);
      const stop = Array.isArray(g.stop) ? g.stop.filter((x): x is string => typeof x === 'string' && x.length > 0).slice(0, MAX_STOP_STRINGS) : [];
      if (stop.length > 0) out.stopStrings = [...(out.stopStrings ?? this.model.meta.prompt.stopStrings), ...stop];
    }
    return { ...out, maxNewTokens: out.maxNewTokens ?? 300 };
  }

  /**
   * What the annotated image shows: the answer's boxes; for `[identify]`, the user's box first, labelled
   * with the answer.
   */
  private entitiesToDraw(turn: { task: string; prompt: string }, entities: Entity[], answer: string): Entity[] {
    const drawn = entities.filter((e) => e.boxes.length > 0);
    if (turn.task === 'identify') {
      const box = parseUserBox(turn.prompt);
      if (box) {
        const label = parseGrounding(answer).plainText.trim().slice(0, 60) || 'your box';
        drawn.unshift({ phrase: label, boxes: [box], start: 0, end: 0 });
      }
    }
    return drawn;
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
