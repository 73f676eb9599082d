// Continuous batching: every conversation decoding at the same time submits its next step here, and the
// steps go to the decoder together, as ONE batched session run (LlamaDecoder.step). Conversations join and
// leave between steps; other model work (prefills, the vision encoder) runs alone, between two steps.
import { ContextLengthError, type LlamaDecoder } from './decoder.js';
import type { KvCache } from './kv-cache.js';
import type { StepModel } from './generation/types.js';

interface PendingStep {
  states: readonly KvCache[];
  tokens: readonly number[];
  signal?: AbortSignal;
  resolve: (r: { states: KvCache[]; logits: Float32Array[] }) => void;
  reject: (err: unknown) => void;
  detach: () => void;
}

interface PendingTask {
  run: () => Promise<unknown>;
  resolve: (v: unknown) => void;
  reject: (err: unknown) => void;
}

export interface BatcherStats {
  /** batched steps run, rows they decoded, and the largest batch */
  steps: number;
  rows: number;
  maxRows: number;
  /** exclusive tasks run (prefills, image encodings) */
  tasks: number;
  /** batched steps that failed and were run again member by member, so that one failing row fails alone */
  isolated: number;
}

export interface DecodeBatcherOptions {
  /** most rows (conversations, or beams) in one step; more wait for the next step (default 8) */
  maxBatch?: number;
}

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/** exclusive work may hold the decoding steps up for about this many steps' time (then one step runs) */
const TASK_STEPS = 4;

/**
 * Serialises the model's work and merges concurrent decoding steps into batches.
 *
 * - step() (the StepModel interface generate() uses) queues the rows; a batch runs as soon as every member
 *   (see join()) has its step queued, or after one event-loop turn with those that have: a member whose
 *   consumer is slow joins the next step instead of holding the others up.
 * - Steps are taken in arrival order, at most maxBatch rows per run: with more members than that, those left
 *   out go first next time, so every member gets a step in turn (fair).
 * - exclusive() work and decoding steps take turns: tasks run back to back for up to about TASK_STEPS
 *   steps' time (a long one alone), then a step; so a prefill neither starves nor is starved, and the
 *   short prefills of conversations arriving together are done before the step they all join.
 * - A queued step whose signal aborts leaves the queue at once (rejected, the others unaffected); one already
 *   running completes (its states are returned and the caller, runStep, frees them).
 * - A batched step that fails is run again member by member: only the conversation whose own step fails gets
 *   the error; the others continue as if nothing happened.
 */
export class DecodeBatcher implements StepModel<KvCache> {
  readonly vocabSize: number;
  readonly maxBatch: number;
  readonly stats: BatcherStats = { steps: 0, rows: 0, maxRows: 0, tasks: 0, isolated: 0 };
  private readonly steps: PendingStep[] = [];
  private readonly tasks: PendingTask[] = [];
  private members = 0;
  private busy = false;
  /** duration of the last decoding step (ms) */
  private lastStepMs = 0;

  constructor(
    private readonly decoder: LlamaDecoder,
    opts: DecodeBatcherOptions = {},
  ) {
    this.vocabSize = decoder.vocabSize;
    this.maxBatch = Math.max(1, Math.floor(opts.maxBatch ?? 8));
  }

  /**
   * Declares a decoding loop that will call step() again and again, so that batches wait for it; call the
   * returned function when it ends (idempotent).
   */
  join(): () => void {
    this.members++;
    let left = false;
    return () => {
      if (left) return;
      left = true;
      this.members--;
      // a batch may have been waiting for this member
      void this.pump();
    };
  }

  /** Runs `fn` with the model to itself (between two decoding steps), in arrival order. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.tasks.push({ run: fn, resolve: resolve as (v: unknown) => void, reject });
      void this.pump();
    });
  }

  step(
    states: readonly KvCache[],
    tokens: readonly number[],
    signal?: AbortSignal,
  ): Promise<{ states: KvCache[]; logits: Float32Array[] }> {
    if (states.length !== tokens.length) return Promise.reject(new Error(`step: ${states.length} states but ${tokens.length} tokens`));
    if (signal?.aborted) return Promise.reject(signal.reason);
    // Nothing else wants the model: no queue, no batch to wait for.
    if (!this.busy && this.tasks.length === 0 && this.steps.length === 0 && this.members <= 1) return this.alone(states, tokens, signal);
    return new Promise((resolve, reject) => {
      const p: PendingStep = { states, tokens, signal, resolve, reject, detach: () => {} };
      if (signal) {
        const onAbort = () => {
          const i = this.steps.indexOf(p);
          if (i < 0) return; // already running
          this.steps.splice(i, 1);
          reject(signal.reason);
        };
        signal.addEventListener('abort', onAbort, { once: true });
        p.detach = () => signal.removeEventListener('abort', onAbort);
      }
      this.steps.push(p);
      void this.pump();
    });
  }

  private async alone(
    states: readonly KvCache[],
    tokens: readonly number[],
    signal?: AbortSignal,
  ): Promise<{ states: KvCache[]; logits: Float32Array[] }> {
    this.busy = true;
    try {
      const t0 = performance.now();
      const r = await this.decoder.step(states, tokens, signal);
      this.lastStepMs = performance.now() - t0;
      this.count(states.length);
      return r;
    } finally {
      this.busy = false;
      if (this.steps.length > 0 || this.tasks.length > 0) void this.pump();
    }
  }

  private async pump(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      let taskTurn = true;
      let taskMs = 0;
      for (;;) {
        if (this.tasks.length > 0 && (taskTurn || this.steps.length === 0)) {
          const t = this.tasks.shift()!;
          this.stats.tasks++;
          const t0 = performance.now();
          try {
            t.resolve(await t.run());
          } catch (err) {
            t.reject(err);
          }
          // Short tasks (the prefill of a follow-up) run back to back, up to the time of a few decoding steps:
          // conversations about to join then join the same step instead of each costing a partial batch.
          taskMs += performance.now() - t0;
          taskTurn = taskMs < Math.max(10, TASK_STEPS * this.lastStepMs);
          continue;
        }
        if (this.steps.length === 0) break;
        // Members still busy with their previous token (sampling, streaming) get one event-loop turn:
        // their continuations are microtasks, so they have queued their step by then unless they wait for I/O.
        if (this.steps.length < this.members) await nextTurn();
        if (this.steps.length === 0) continue;
        const batch: PendingStep[] = [];
        let rows = 0;
        while (this.steps.length > 0 && (batch.length === 0 || rows + this.steps[0].states.length <= this.maxBatch)) {
          const p = this.steps.shift()!;
          p.detach();
          batch.push(p);
          rows += p.states.length;
        }
        taskTurn = true;
        taskMs = 0;
        const t0 = performance.now();
        await this.runBatch(batch, rows);
        this.lastStepMs = performance.now() - t0;
      }
    } finally {
      this.busy = false;
    }
  }

  private async runBatch(all: PendingStep[], rows: number): Promise<void> {
    // A sequence at the model's limit fails alone, not its whole batch.
    const limit = this.decoder.maxPositions;
    const batch = all.filter((p) => {
      const over = p.states.find((s) => s.length + 1 > limit);
      if (over) p.reject(new ContextLengthError(over.length + 1, limit));
      return !over;
    });
    if (batch.length === 0) return;
    if (batch.length < all.length) rows = batch.reduce((n, p) => n + p.states.length, 0);
    const states = batch.flatMap((p) => p.states);
    const tokens = batch.flatMap((p) => p.tokens);
    let res: { states: KvCache[]; logits: Float32Array[] };
    try {
      res = await this.decoder.step(states, tokens);
    } catch (err) {
      if (batch.length === 1) batch[0].reject(err);
      else await this.isolate(batch);
      return;
    }
    this.count(rows);
    let at = 0;
    for (const p of batch) {
      const n = p.states.length;
      p.resolve({ states: res.states.slice(at, at + n), logits: res.logits.slice(at, at + n) });
      at += n;
    }
  }
  /**
   * A batched step failed: which member's row made it fail is unknown, so each member's step runs again on its
   * own (the input states are untouched by a failed step). Only a member whose own step fails gets the error;
   * the others go on with the tokens they would have had (a row's logits do not depend on its batch). A
   * member cancelled meanwhile is not run again.
   */
  private async isolate(batch: readonly PendingStep[]): Promise<void> {
    this.stats.isolated++;
    for (const p of batch) {
      if (p.signal?.aborted) {
        p.reject(p.signal.reason);
        continue;
      }
      try {
        const r = await this.decoder.step(p.states, p.tokens);
        this.count(p.states.length);
        p.resolve(r);
      } catch (err) {
        p.reject(err);
      }
    }
  }

  private count(rows: number): void {
    this.stats.steps++;
    this.stats.rows += rows;
    this.stats.maxRows = Math.max(this.stats.maxRows, rows);
  }
}
