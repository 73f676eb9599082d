// The answer events of every job a front end waits on, read through one blocking Redis connection: XREAD takes
// many streams at once, so a front end holds one reader however many answers are in flight, instead of opening
// (and closing) a connection per request. A stream added while XREAD blocks on the others interrupts it
// (CLIENT UNBLOCK) so that the new one's events are not held back; if the interruption misses, they wait at most
// one block (nothing is lost: the stream keeps them).
import type { Redis } from 'ioredis';

type Entry = [id: string, fields: string[]];

/** One stream's entries, in order, as the shared reader receives them. */
export interface StreamReader {
  /** the entries that arrived since the last call, waiting up to `waitMs` for some; [] if none came */
  next(waitMs: number): Promise<Entry[]>;
  /** stops reading this stream */
  close(): void;
}

interface Sub {
  last: string;
  buffer: Entry[];
  error?: Error;
  wake?: () => void;
}

export class EventStreams {
  private readonly subs = new Map<string, Sub>();
  private reader: Redis | undefined;
  private readerId: number | undefined;
  /** whether run() is reading (set and cleared synchronously with its loop's start and end) */
  private running = false;
  private blocked = false;
  private closed = false;

  /** `redis`: the front end's connection, duplicated for the reader and used to interrupt it */
  constructor(
    private readonly redis: Redis,
    private readonly blockMs = 1000,
  ) {}

  /** Reads `stream` from its start. One reader per stream at a time. */
  open(stream: string): StreamReader {
    if (this.closed) throw new Error('closing');
    if (this.subs.has(stream)) throw new Error(`${stream} is already being read`);
    const sub: Sub = { last: '0', buffer: [] };
    this.subs.set(stream, sub);
    if (!this.running) void this.run();
    else if (this.blocked && this.readerId !== undefined) void this.redis.call('CLIENT', 'UNBLOCK', String(this.readerId)).catch(() => {});
    return {
      next: async (waitMs) => {
        if (sub.buffer.length === 0 && !sub.error) {
          await new Promise<void>((resolve) => {
            const timer = setTimeout(done, waitMs);
            function done() {
              clearTimeout(timer);
              sub.wake = undefined;
              resolve();
            }
            sub.wake = done;
          });
        }
        if (sub.buffer.length > 0) return sub.buffer.splice(0);
        if (sub.error) throw sub.error;
        return [];
      },
      close: () => {
        if (this.subs.get(stream) === sub) this.subs.delete(stream);
      },
    };
  }

  /** Stops the reader; every open stream's next() fails. */
  close(): void {
    this.closed = true;
    this.fail(new Error('closing'));
  }

  private async run(): Promise<void> {
    this.running = true;
    for (;;) {
      // (checked and cleared in one turn, with no await between: a stream opened after this starts a new run)
      if (this.subs.size === 0 || this.closed) {
        this.running = false;
        return;
      }
      try {
        const reader = await this.connect();
        const names = [...this.subs.keys()];
        const ids = names.map((n) => this.subs.get(n)!.last);
        this.blocked = true;
        const res = (await reader.xread('COUNT', 100, 'BLOCK', this.blockMs, 'STREAMS', ...names, ...ids)) as [string, Entry[]][] | null;
        this.blocked = false;
        for (const [name, entries] of res ?? []) {
          const sub = this.subs.get(name);
          if (!sub || entries.length === 0) continue;
          sub.last = entries[entries.length - 1][0];
          sub.buffer.push(...entries);
          sub.wake?.();
        }
      } catch (err) {
        this.blocked = false;
        // Redis unreachable (or closing): every answer waiting on it is told; the next request reconnects.
        this.fail(err instanceof Error ? err : new Error(String(err)));
      }
    }
  }

  private async connect(): Promise<Redis> {
    if (this.reader) return this.reader;
    const reader = this.redis.duplicate({ maxRetriesPerRequest: 1 });
    reader.on('error', () => {});
    try {
      this.readerId = Number(await reader.call('CLIENT', 'ID'));
    } catch (err) {
      // A Redis that refuses CLIENT (some hosted ones restrict it) still reads: new streams then wait for the
      // current block to end. A connection that failed is the caller's error.
      if (reader.status !== 'ready') {
        reader.disconnect();
        throw err;
      }
      this.readerId = undefined;
    }
    this.reader = reader;
    return reader;
  }

  private fail(err: Error): void {
    for (const sub of this.subs.values()) {
      sub.error = err;
      sub.wake?.();
    }
    this.subs.clear();
    this.reader?.disconnect();
    this.reader = undefined;
    this.readerId = undefined;
  }
}
