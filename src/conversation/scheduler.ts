// Request scheduling: one conversation's requests run one at a time in arrival order; conversations take
// turns on the model (round robin: a conversation with many waiting requests cannot starve the others);
// the model runs up to `concurrency` generations at a time, of different conversations (their decoding
// steps are batched together by the model's engine).

export interface ScheduledJob {
  readonly convId: string;
  /**
   * Control jobs (reset) keep their place in the conversation's order but do not use the model: they run
   * as soon as the conversation is idle, whatever other conversations are doing.
   */
  readonly control: boolean;
}

export class FairScheduler<J extends ScheduledJob> {
  /** waiting jobs per conversation, in arrival order */
  private readonly queues = new Map<string, J[]>();
  /** conversations with waiting jobs and nothing running, in turn order */
  private readonly ready: string[] = [];
  /** conversations with a job running */
  private readonly active = new Set<string>();
  /** model jobs running */
  private modelRunning = 0;
  private running = 0;
  private waitingModelJobs = 0;
  private idleWaiters: Array<() => void> = [];

  private readonly concurrency: number;

  /** `concurrency`: model jobs (of different conversations) that may run at the same time (default 1) */
  constructor(
    private readonly runJob: (job: J) => Promise<void>,
    concurrency = 1,
  ) {
    this.concurrency = Math.max(1, Math.floor(concurrency));
  }

  private get modelFull(): boolean {
    return this.modelRunning >= this.concurrency;
  }

  /** Model jobs waiting (not running). */
  get waiting(): number {
    return this.waitingModelJobs;
  }

  /** Whether a model job of `convId` added now would start at once. */
  wouldStartNow(convId: string): boolean {
    return !this.modelFull && this.ready.length === 0 && !this.active.has(convId) && !this.queues.has(convId);
  }

  /** Adds a job; call pump() to start what can start. */
  add(job: J): void {
    let q = this.queues.get(job.convId);
    if (!q) {
      q = [];
      this.queues.set(job.convId, q);
    }
    q.push(job);
    if (!job.control) this.waitingModelJobs++;
    if (q.length === 1 && !this.active.has(job.convId)) this.ready.push(job.convId);
  }

  /**
   * Puts `by` (of the same conversation) in the place of a waiting job, its turn in the conversation's order kept;
   * false if `old` is not waiting.
   */
  replace(old: J, by: J): boolean {
    const q = this.queues.get(old.convId);
    const i = q ? q.indexOf(old) : -1;
    if (!q || i < 0 || by.convId !== old.convId) return false;
    q[i] = by;
    if (!old.control) this.waitingModelJobs--;
    if (!by.control) this.waitingModelJobs++;
    this.pump();
    return true;
  }

  /** Removes a waiting job (cancelled before it started); false if it is not waiting. */
  remove(job: J): boolean {
    const q = this.queues.get(job.convId);
    const i = q ? q.indexOf(job) : -1;
    if (!q || i < 0) return false;
    q.splice(i, 1);
    if (!job.control) this.waitingModelJobs--;
    if (q.length === 0) {
      this.queues.delete(job.convId);
      const r = this.ready.indexOf(job.convId);
      if (r >= 0) this.ready.splice(r, 1);
    }
    this.pump();
    this.checkIdle();
    return true;
  }

  /** The first of `convId`'s waiting jobs (the next of that conversation to start). */
  nextOf(convId: string): J | undefined {
    return this.queues.get(convId)?.[0];
  }

  /** Whether a job of `convId` is running. */
  runs(convId: string): boolean {
    return this.active.has(convId);
  }

  /** Waiting jobs, in no particular order. */
  waitingJobs(): J[] {
    return [...this.queues.values()].flat();
  }

  /** How many model jobs must finish before `job` starts if nothing else arrives (0: it starts now). */
  position(job: J): number {
    const all = this.positions();
    return all.get(job) ?? Math.max(0, all.size - (this.concurrency - this.modelRunning) + 1);
  }

  /** position() of every waiting model job, in one pass (the order they would start in). */
  positions(): Map<J, number> {
    const free = this.concurrency - this.modelRunning;
    const queues = new Map<string, J[]>();
    for (const [c, q] of this.queues)
      queues.set(
        c,
        q.filter((j) => !j.control),
      );
    // An active conversation rejoins the round at the end once its job is done.
    const out = new Map<J, number>();
    const order = [...this.ready, ...[...this.active].filter((c) => this.queues.has(c) && !this.ready.includes(c))];
    while (order.length > 0) {
      const c = order.shift()!;
      const q = queues.get(c);
      if (!q || q.length === 0) continue;
      out.set(q.shift()!, Math.max(0, out.size - free + 1));
      if (q.length > 0) order.push(c);
    }
    return out;
  }

  /** Starts every job that can start now. */
  pump(): void {
    for (const c of [...this.ready]) {
      const q = this.queues.get(c)!;
      if (q[0].control) this.start(c, false);
    }
    while (!this.modelFull) {
      const c = this.ready.find((id) => !this.queues.get(id)![0].control);
      if (c === undefined) break;
      this.start(c, true);
    }
  }

  /** Resolves when nothing runs or waits. */
  idle(): Promise<void> {
    if (this.running === 0 && this.queues.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private start(convId: string, model: boolean): void {
    this.ready.splice(this.ready.indexOf(convId), 1);
    const q = this.queues.get(convId)!;
    const job = q.shift()!;
    if (q.length === 0) this.queues.delete(convId);
    this.active.add(convId);
    if (model) {
      this.modelRunning++;
      this.waitingModelJobs--;
    }
    this.running++;
    const done = () => {
      this.active.delete(convId);
      if (model) this.modelRunning--;
      this.running--;
      if (this.queues.has(convId)) this.ready.push(convId);
      this.pump();
      this.checkIdle();
    };
    let p: Promise<void>;
    try {
      p = this.runJob(job);
    } catch {
      p = Promise.resolve();
    }
    p.catch(() => {}).finally(done);
  }

  private checkIdle(): void {
    if (this.running === 0 && this.queues.size === 0) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const f of w) f();
    }
  }
}

/** A single-consumer async event stream: pushes buffer until read; `return()` (a `break`) calls onReturn. */
export class EventChannel<T> implements AsyncIterable<T> {
  private buffer: T[] = [];
  private waiters: Array<(r: IteratorResult<T>) => void> = [];
  private closed = false;
  onReturn: (() => void) | undefined;

  get isClosed(): boolean {
    return this.closed;
  }

  push(value: T): void {
    if (this.closed) return;
    const w = this.waiters.shift();
    if (w) w({ value, done: false });
    else this.buffer.push(value);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: (): Promise<IteratorResult<T>> => {
        if (this.buffer.length > 0) return Promise.resolve({ value: this.buffer.shift()!, done: false });
        if (this.closed) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => this.waiters.push(resolve));
      },
      return: (): Promise<IteratorResult<T>> => {
        const wasOpen = !this.closed;
        this.buffer = [];
        this.close();
        if (wasOpen) this.onReturn?.();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}
