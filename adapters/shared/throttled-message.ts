// A chat message that shows a growing answer: platforms limit how often one message may be edited (Discord
// about 5 per 5 s, Slack about one per second), while the model streams text faster. Edits are coalesced:
// at most one write per `intervalMs`, never two at once, the newest wanted content winning; the final content
// is written as soon as the answer ends. The interval runs from the end of a write (its reply received) to the
// start of the next: the platform counts requests as they reach it, and a write that was slow to get there
// (a busy event loop, the network) must not let the next one arrive less than an interval after it.

export interface ThrottledMessageOptions<T> {
  /** least time from the end of one write to the start of the next */
  intervalMs: number;
  /** puts `content` on the platform; a rejection leaves the shown content as it was (tried again later) */
  write(content: T): Promise<void>;
  /** a failed write, for the log (the message itself goes on) */
  onError?(err: unknown): void;
  /** whether two contents look the same (default ===) */
  same?(a: T, b: T): boolean;
  /** the earliest time (Date.now() scale) the next write may start besides the interval (0: no such wait) */
  notBefore?(): number;
}

export class ThrottledMessage<T> {
  private wanted: T | undefined;
  private shown: T | undefined;
  private lastWrite = 0;
  private inFlight: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(private readonly o: ThrottledMessageOptions<T>) {}

  /** Asks for `content` to be shown, at the message's pace. */
  show(content: T): void {
    if (this.stopped || (this.wanted !== undefined && this.same(content, this.wanted))) return;
    this.wanted = content;
    this.schedule();
  }

  /** Writes `content` now (after the write in flight), counting toward the interval; throws what the write throws. */
  async put(content: T): Promise<void> {
    await this.inFlight;
    try {
      await this.o.write(content);
      this.shown = content;
    } finally {
      this.lastWrite = Date.now();
    }
  }

  /** Stops the edits (what is wanted and not yet written is not written); waits for the write in flight. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.clearTimer();
    await this.inFlight;
  }

  /** Stops the edits and writes `content` at once: the last word; throws what the write throws. */
  async final(content: T): Promise<void> {
    await this.stop();
    this.wanted = undefined;
    await this.put(content);
  }

  /** Stops the edits, writing what is wanted and not yet shown now (an answer that ends without a final word). */
  async flush(): Promise<void> {
    await this.stop();
    const wanted = this.wanted;
    this.wanted = undefined;
    if (wanted !== undefined && !this.isShown(wanted)) await this.o.write(wanted);
  }

  private same(a: T, b: T): boolean {
    return this.o.same ? this.o.same(a, b) : a === b;
  }

  private isShown(content: T): boolean {
    return this.shown !== undefined && this.same(content, this.shown);
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private schedule(): void {
    if (this.timer || this.inFlight || this.stopped) return;
    const now = Date.now();
    const wait = Math.max(0, this.lastWrite + this.o.intervalMs - now, (this.o.notBefore?.() ?? 0) - now);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const wanted = this.wanted;
      if (!this.stopped && wanted !== undefined && !this.isShown(wanted)) void this.writeNow(wanted);
    }, wait);
  }

  private writeNow(content: T): Promise<void> {
    const p = this.o.write(content).then(
      () => {
        this.shown = content;
      },
      (err: unknown) => this.o.onError?.(err),
    );
    this.inFlight = p.finally(() => {
      this.lastWrite = Date.now();
      this.inFlight = undefined;
      const wanted = this.wanted;
      if (!this.stopped && wanted !== undefined && !this.isShown(wanted)) this.schedule();
    });
    return this.inFlight;
  }
}
