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

export interface ArrivalTurn {
  /** Resolves when every earlier turn of the conversation has been released, or after `maxWaitMs`. */
  ready(): Promise<void>;
  /** Lets the next turn of the conversation go on (idempotent). */
  release(): void;
}

const NO_TURN: ArrivalTurn = { ready: () => Promise.resolve(), release: () => {} };

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
  ) {}

  /** Conversations with turns pending (for tests and statistics). */
  get size(): number {
    return this.tails.size;
  }

  /** Takes the next turn of conversation `key` (call it synchronously when the event arrives); no key: no order. */
  take(key: string | undefined): ArrivalTurn {
    if (key === undefined) return NO_TURN;
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
