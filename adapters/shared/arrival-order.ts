// Per-conversation arrival order for the adapters (docs/architecture.md, "The path of one request": "per conversation, requests run one
// at a time in order"). The manager queues requests in the order `handle()` is called, but an adapter does
// slow things before that call (posting a status message, looking up the thread, downloading the image): a
// text-only follow-up would overtake the message before it whose image is still downloading. Each event takes
// a turn of its conversation the moment the platform delivers it (synchronously, before any await), waits for
// the turns before it to be released, does its own preparation, calls `handle()` and releases its turn.
//
// A turn is released whatever happens (the adapters release in `finally`), and no turn waits longer than
// `maxWaitMs` for the ones before it: a stuck predecessor (its download has its own timeout; this is the
// backstop) delays the conversation, never blocks it. A conversation with no turn pending holds no memory.
//
// Front ends that share conversations (src/cluster) also keep the order between them: given a SharedArrivalOrder
// (Redis), a turn taken with the platform's own place of the event (Slack's message ts) also waits for the turns
// of other front ends whose events came before it on the platform, until their requests are numbered.

export interface ArrivalTurn {
  /** Resolves when every earlier turn of the conversation has been released, or after `maxWaitMs`. */
  ready(): Promise<void>;
  /** Lets the next turn of the conversation go on (idempotent). */
  release(): void;
}

/** A turn that waits for nothing and holds nothing back (an event with no order to keep). */
export const NO_TURN: ArrivalTurn = { ready: () => Promise.resolve(), release: () => {} };

/**
 * The order of a conversation's events across processes (src/cluster/arrival-order.ts keeps it in Redis). A turn
 * taken there is ready once no other process holds a turn of the conversation at an earlier `place`; it is
 * released when its request has its number in the conversation (or turned out not to be a request).
 */
export interface SharedArrivalOrder {
  /**
   * `place`: where the platform put the event in the conversation, a decimal number (Slack's ts); `maxWaitMs`: the
   * longest this turn waits for earlier ones, and others wait for it
   */
  take(key: string, place: string, maxWaitMs: number): ArrivalTurn;
}

export class ArrivalOrder {
  /** conversation -> the promise that the last turn taken for it is released */
  private readonly tails = new Map<string, Promise<void>>();

  /**
   * `maxWaitMs`: the longest a turn waits for the ones before it; `onLate(key)` is told when a turn stops
   * waiting for that reason (the conversation's order is then not kept for it).
   */
  constructor(
    private readonly maxWaitMs: number,
    private readonly onLate: (key: string) => void = () => {},
    /** where other processes' turns of the same conversations are (front ends on Redis); absent: this process only */
    private readonly shared?: SharedArrivalOrder,
  ) {}

  /** Conversations with turns pending (for tests and statistics). */
  get size(): number {
    return this.tails.size;
  }

  /**
   * Takes the next turn of conversation `key` (call it synchronously when the event arrives); no key: no order.
   * With `place` (the platform's place of the event) and a shared order, the turn also waits for earlier events of
   * the conversation that other processes received.
   */
  take(key: string | undefined, place?: string): ArrivalTurn {
    if (key === undefined) return NO_TURN;
    const local = this.takeLocal(key);
    if (!this.shared || place === undefined) return local;
    const other = this.shared.take(key, place, this.maxWaitMs);
    return {
      ready: async () => {
        await local.ready();
        await other.ready();
      },
      release: () => {
        local.release();
        other.release();
      },
    };
  }

  private takeLocal(key: string): ArrivalTurn {
    const before = this.tails.get(key);
    let pass!: () => void;
    // The next turn goes on once this one is released AND the ones before it were (or it stopped waiting for
    // them): a turn released early (an event that turns out not to be a request) does not let the next one
    // overtake a turn still preparing before it.
    const passed = new Promise<void>((resolve) => (pass = resolve));
    this.tails.set(key, passed);
    let waiting: Promise<void> | undefined;
    const ready = (): Promise<void> =>
      (waiting ??= before
        ? new Promise<void>((resolve) => {
            const timer = setTimeout(() => {
              this.onLate(key);
              resolve();
            }, this.maxWaitMs);
            timer.unref?.();
            void before.then(() => {
              clearTimeout(timer);
              resolve();
            });
          })
        : Promise.resolve());
    let released = false;
    return {
      ready,
      release: () => {
        if (released) return;
        released = true;
        void ready().then(() => {
          pass();
          // The last turn taken leaves nothing behind.
          if (this.tails.get(key) === passed) this.tails.delete(key);
        });
      },
    };
  }
}

/**
 * `events` (a request's answer events), releasing `turn` at the first of them or at their end: by then the request has
 * its place in the conversation's queue (a front end numbers it before its first event; a local manager at once), so
 * the conversation's next request may go on.
 */
export async function* releasedAtFirst<T>(events: AsyncIterable<T>, turn: ArrivalTurn | undefined): AsyncGenerator<T> {
  try {
    for await (const ev of events) {
      turn?.release();
      yield ev;
    }
  } finally {
    turn?.release();
  }
}
