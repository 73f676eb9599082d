// What an operator watches: Prometheus metrics of the requests the adapters hand to the conversations (counted at
// the conversation port, so that one process and a front end on Redis report the same things), the process's own
// (CPU, memory, event-loop lag: prom-client's defaults), and whatever the role adds at scrape time (a worker's jobs,
// a front end's live workers). One registry per process, made here: nothing global.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { ConversationPort } from '../../adapters/shared/port.js';
import { UserRateLimiter, type RateLimiter, type RateLimiterFactory } from '../../adapters/shared/rate-limit.js';
import type { AnswerEvent, ConversationRequest } from '../conversation/index.js';
import type { KvCacheStats } from '../inference/kv-reuse.js';
import type { PrefillHandoff } from '../inference/prefill-handoff.js';

/** Seconds, from a fast cached follow-up on a GPU to a 7B answer on a 2-core CPU. */
const SECONDS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300];

export class BotMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'platform' | 'outcome'>;
  private readonly inFlight: Gauge<'platform'>;
  private readonly firstText: Histogram<'platform'>;
  private readonly answer: Histogram<'platform'>;
  private readonly queueWait: Histogram;
  private readonly vision: Histogram;
  private readonly promptTokens: Counter;
  private readonly newTokens: Counter;
  private readonly decodeSeconds: Counter;
  private readonly resets: Counter<'platform' | 'outcome'>;
  private readonly deletedQuestions: Counter<'platform' | 'outcome'>;
  private readonly regenerations: Counter<'platform' | 'outcome'>;
  private readonly edits: Counter<'platform' | 'outcome'>;
  private readonly limited: Counter<'platform'>;

  /** `role`: what this process is (all, frontend, worker), as a label of minigpt_info */
  constructor(role: string, info: Record<string, string> = {}) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    new Gauge({
      name: 'minigpt_info',
      help: 'What this process serves (always 1; the labels say it)',
      labelNames: ['role', ...Object.keys(info)],
      registers,
    }).set({ role, ...info }, 1);
    this.requests = new Counter({
      name: 'minigpt_requests_total',
      help: 'Requests handed to the conversations, by platform and outcome (answered, or the error code: busy, cancelled, no_image, ...)',
      labelNames: ['platform', 'outcome'],
      registers,
    });
    this.inFlight = new Gauge({
      name: 'minigpt_requests_in_flight',
      help: 'Requests waiting or being answered',
      labelNames: ['platform'],
      registers,
    });
    this.firstText = new Histogram({
      name: 'minigpt_time_to_first_text_seconds',
      help: 'From a request handed over to the first text of its answer (queue, image, prefill)',
      labelNames: ['platform'],
      buckets: SECONDS,
      registers,
    });
    this.answer = new Histogram({
      name: 'minigpt_answer_seconds',
      help: 'From a request handed over to its complete answer',
      labelNames: ['platform'],
      buckets: SECONDS,
      registers,
    });
    this.queueWait = new Histogram({
      name: 'minigpt_queue_wait_seconds',
      help: 'Time an answered request waited for the model',
      buckets: SECONDS,
      registers,
    });
    this.vision = new Histogram({
      name: 'minigpt_vision_encoder_seconds',
      help: 'Vision encoder runs of answered requests (new images that were not cached)',
      buckets: SECONDS,
      registers,
    });
    this.promptTokens = new Counter({ name: 'minigpt_prompt_tokens_total', help: 'Prompt tokens of answered requests', registers });
    this.newTokens = new Counter({ name: 'minigpt_generated_tokens_total', help: 'Tokens generated for answered requests', registers });
    this.decodeSeconds = new Counter({
      name: 'minigpt_decode_seconds_total',
      help: 'Time spent decoding answered requests (generated tokens / this: decode speed)',
      registers,
    });
    this.limited = new Counter({
      name: 'minigpt_rate_limited_total',
      help: "Requests refused by a user's rate limit (DISCORD_RATE_LIMIT, SLACK_RATE_LIMIT), by adapter",
      labelNames: ['platform'],
      registers,
    });
    this.regenerations = new Counter({
      name: 'minigpt_regenerations_total',
      help: 'Answers users asked to be given again (Regenerate), by platform and outcome (answered, stale, not_allowed, ...): how often users rejected an answer',
      labelNames: ['platform', 'outcome'],
      registers,
    });
    this.edits = new Counter({
      name: 'minigpt_edited_questions_total',
      help: 'Questions users edited to have them answered again, by platform and outcome (answered; stale: not the latest question, or the same text; ...)',
      labelNames: ['platform', 'outcome'],
      registers,
    });
    this.deletedQuestions = new Counter({
      name: 'minigpt_deleted_questions_total',
      help: 'Messages that asked a question deleted on the platform, by what was forgotten: conversation_forgotten (it brought the image), question_forgotten, not_asked (no stored turn), failed',
      labelNames: ['platform', 'outcome'],
      registers,
    });
    this.resets = new Counter({
      name: 'minigpt_resets_total',
      help: "Conversations reset at a user's request (forget; the web page's new conversation), by outcome: forgotten, empty, not_allowed, failed",
      labelNames: ['platform', 'outcome'],
      registers,
    });
  }

  /**
   * The adapters' per-user limits (`inner`, else each counted in this process) with the requests they refused
   * counted, by adapter.
   */
  meterLimits(inner?: RateLimiterFactory): RateLimiterFactory {
    return (scope, max, windowMs) => {
      const limiter: RateLimiter = inner?.(scope, max, windowMs) ?? new UserRateLimiter(max, windowMs);
      return {
        take: async (user) => {
          const r = await limiter.take(user);
          if (!r.ok) this.limited.inc({ platform: scope });
          return r;
        },
        shouldWarn: (user) => limiter.shouldWarn(user),
      };
    };
  }

  /** A gauge whose value is read at each scrape (a worker's running jobs, a front end's live workers). */
  gauge(name: string, help: string, read: () => number | Promise<number>): void {
    new Gauge({
      name,
      help,
      registers: [this.registry],
      async collect() {
        this.set(await read());
      },
    });
  }

  /** A counter whose value is read at each scrape from a count that only grows (a cache's hits). */
  counter(name: string, help: string, read: () => number): void {
    new Counter({
      name,
      help,
      registers: [this.registry],
      collect() {
        this.reset();
        this.inc(read());
      },
    });
  }

  /**
   * The conversations' kept KV caches (runtime.kv_cache_mb) and the model's shared prefills: how much of the prompts
   * the bot did not prefill again, and why.
   */
  meterCaches(caches: () => KvCacheStats & { keeping: number }, handoff: Pick<PrefillHandoff, 'lent'>): void {
    this.gauge(
      'minigpt_kv_cache_bytes',
      'Bytes of the KV caches kept for follow-ups (the budget: runtime.kv_cache_mb)',
      () => caches().bytes,
    );
    this.gauge('minigpt_kv_cache_entries', 'Conversations whose KV cache is kept', () => caches().entries);
    this.gauge('minigpt_kv_cache_keeping', 'Answered turns whose KV cache is being brought up to date, to be kept', () => caches().keeping);
    this.counter('minigpt_kv_cache_hits_total', "Turns that started from their conversation's kept KV cache", () => caches().hits);
    this.counter('minigpt_kv_cache_misses_total', 'Turns whose conversation had no kept KV cache', () => caches().misses);
    this.counter(
      'minigpt_kv_cache_lent_total',
      "Turns that started from another conversation's kept KV cache, which shared more of the prompt (the same image)",
      () => caches().lent,
    );
    this.counter('minigpt_kv_cache_evictions_total', 'Kept KV caches dropped to stay within the budget', () => caches().evictions);
    this.counter(
      'minigpt_prefill_handoffs_total',
      'Prompts that started from the rows of a prefill that ran just before theirs (arriving together, starting alike)',
      () => handoff.lent,
    );
  }

  /** The port with every request and reset it sees counted; what goes through is unchanged. */
  meter(port: ConversationPort): ConversationPort {
    return {
      store: port.store,
      handle: (req) => this.observe(req, port.handle(req)),
      history: (key) => port.history(key),
      forgetWorkspace: (platform, workspace, channel) => port.forgetWorkspace(platform, workspace, channel),
      forgetQuestion: (key, asked, opts) =>
        outcomeCounted(this.deletedQuestions, key.platform, () => port.forgetQuestion(key, asked, opts)),
      reset: (key, opts) => outcomeCounted(this.resets, key.platform, () => port.reset(key, opts)),
    };
  }

  private async *observe(req: ConversationRequest, events: AsyncIterable<AnswerEvent>): AsyncIterable<AnswerEvent> {
    const platform = req.key?.platform ?? 'unknown';
    const started = performance.now();
    const seconds = () => (performance.now() - started) / 1000;
    let outcome = 'unfinished';
    let texted = false;
    this.inFlight.inc({ platform });
    try {
      for await (const ev of events) {
        if (ev.type === 'text' && !texted) {
          texted = true;
          this.firstText.observe({ platform }, seconds());
        } else if (ev.type === 'final') {
          outcome = 'answered';
          this.answer.observe({ platform }, seconds());
        } else if (ev.type === 'timings') {
          this.turnCosts(ev.timings);
        } else if (ev.type === 'error') {
          outcome = ev.code;
        }
        yield ev;
      }
    } finally {
      // (a stream left early, `break`: the adapter gave up on it)
      this.inFlight.dec({ platform });
      const ended = { platform, outcome: outcome === 'unfinished' ? 'cancelled' : outcome };
      this.requests.inc(ended);
      if (req.regenerate !== undefined) this.regenerations.inc(ended);
      if (req.edit !== undefined) this.edits.inc(ended);
    }
  }

  private turnCosts(t: Record<string, number>): void {
    if (t.queueMs !== undefined) this.queueWait.observe(t.queueMs / 1000);
    if (!t.imageCached && t.visionMs > 0) this.vision.observe(t.visionMs / 1000);
    if (t.promptTokens > 0) this.promptTokens.inc(t.promptTokens);
    if (t.newTokens > 0) this.newTokens.inc(t.newTokens);
    if (t.decodeMs > 0) this.decodeSeconds.inc(t.decodeMs / 1000);
  }
}

/** `fn`'s outcome counted on `counter` (`failed` when it throws). */
async function outcomeCounted<T extends string>(
  counter: Counter<'platform' | 'outcome'>,
  platform: string,
  fn: () => Promise<T>,
): Promise<T> {
  try {
    const outcome = await fn();
    counter.inc({ platform, outcome });
    return outcome;
  } catch (err) {
    counter.inc({ platform, outcome: 'failed' });
    throw err;
  }
}
