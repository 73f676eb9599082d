// The answer-event switch every adapter needs: a handler per AnswerEvent type (src/conversation/types.ts), the
// ones an adapter leaves out ignored, each awaited before the next event is read (a slow platform holds the
// answer back, not the model), and the cancellation of an adapter that is closing told as a restart.
import type { AnswerEvent } from '../../src/conversation/index.js';

export type AnswerEventOf<K extends AnswerEvent['type']> = Extract<AnswerEvent, { type: K }>;

export type AnswerHandlers = { [K in AnswerEvent['type']]?: (ev: AnswerEventOf<K>) => void | Promise<void> };

/** Runs the handler of each event's type, in order, until the stream ends. */
export async function onAnswerEvents(events: AsyncIterable<AnswerEvent>, on: AnswerHandlers): Promise<void> {
  for await (const ev of events) {
    // TypeScript cannot relate `on[ev.type]` to `ev` through the mapped type: the pairing is the map's own.
    const handler = on[ev.type] as ((e: AnswerEvent) => void | Promise<void>) | undefined;
    await handler?.(ev);
  }
}

/** What a user whose answer was cancelled by a closing adapter is told (they did nothing wrong). */
export const RESTARTING = 'The bot is restarting; please ask again in a moment.';

/** The events as they are, but a `cancelled` error while `closing()` says RESTARTING instead of "cancelled". */
export async function* restartNotice(events: AsyncIterable<AnswerEvent>, closing: () => boolean): AsyncIterable<AnswerEvent> {
  for await (const ev of events) {
    yield ev.type === 'error' && ev.code === 'cancelled' && closing() ? { ...ev, message: RESTARTING } : ev;
  }
}

/**
 * A request that may be refused without a word to the user (an edited message that asks nothing to answer again):
 * reads the stream up to its first `queued` event that is `checked` (the manager found it answerable while it
 * waits), or its first event after `started`; an error with one of `codes` there is returned as `refused` (the
 * stream has ended), else `events` gives the stream from there on as it came, the places told before it was known to
 * be answered left out (a later one, or the start, supersedes them).
 */
export async function unlessRefused(
  events: AsyncIterable<AnswerEvent>,
  codes: readonly string[],
): Promise<{ refused: AnswerEventOf<'error'> } | { events: AsyncIterable<AnswerEvent> }> {
  const it = events[Symbol.asyncIterator]();
  const held: AnswerEvent[] = [];
  for (;;) {
    const r = await it.next();
    if (r.done) break;
    const ev = r.value;
    if (ev.type === 'queued' && !ev.checked) continue;
    held.push(ev);
    if (ev.type === 'started') continue;
    if (ev.type === 'error' && codes.includes(ev.code)) return { refused: ev };
    break;
  }
  return {
    events: (async function* () {
      try {
        yield* held;
        for (let r = await it.next(); !r.done; r = await it.next()) yield r.value;
      } finally {
        await it.return?.();
      }
    })(),
  };
}

/** How often a reply shows a new place in the queue at most (QueuePlaces), unless an adapter is told otherwise. */
export const QUEUE_UPDATE_MS = 5000;

/**
 * Which places in the queue a reply shows (each one an edit of the reply; a long line moves often, and the platform's
 * edit budget is shared with the answers being written): the first place above 0, then a lower one (0: next in line)
 * at most every `everyMs`. `show(position)`: whether to show it now.
 */
export class QueuePlaces {
  private shown: number | undefined;
  private shownAt = 0;

  constructor(private readonly everyMs = QUEUE_UPDATE_MS) {}

  /** whether a place was shown (the line is taken down when the answer starts) */
  get waited(): boolean {
    return this.shown !== undefined;
  }

  show(position: number, now = Date.now()): boolean {
    if (this.shown === undefined ? position <= 0 : position >= this.shown || now - this.shownAt < this.everyMs) return false;
    this.shown = position;
    this.shownAt = now;
    return true;
  }
}

/** PlaceInLine's default wait before a request's first place is shown. */
export const PLACE_AFTER_MS = 1000;

/**
 * A waiting request's place in line as its reply shows it (`show`): nothing until it has waited `afterMs` (most waits
 * are shorter, and each place shown is a call on the platform's budget: Discord's 50 requests a second for the whole
 * bot, Slack's edits a minute per workspace), then the place it has then, and as it moves (QueuePlaces, `everyMs`).
 */
export class PlaceInLine {
  private readonly places: QueuePlaces;
  private readonly afterMs: number;
  private pending: { position: number; timer: NodeJS.Timeout } | undefined;
  private ended = false;

  constructor(
    private readonly show: (position: number) => void,
    opts: { afterMs?: number; everyMs?: number } = {},
  ) {
    this.places = new QueuePlaces(opts.everyMs);
    this.afterMs = opts.afterMs ?? PLACE_AFTER_MS;
  }

  /** whether a place was shown (the line is taken down when the answer starts) */
  get waited(): boolean {
    return this.places.waited;
  }

  /** the request's place, from a `queued` event */
  queued(position: number): void {
    if (this.ended) return;
    if (this.places.waited) this.tell(position);
    else if (this.pending) this.pending.position = position;
    else if (position > 0) {
      const p = { position, timer: setTimeout(() => this.tell(p.position), this.afterMs) };
      this.pending = p;
    }
  }

  /** the request left the line (its answer started, or it ended): no place is shown from now */
  end(): void {
    this.ended = true;
    if (this.pending) clearTimeout(this.pending.timer);
  }

  private tell(position: number): void {
    if (!this.ended && this.places.show(position)) this.show(position);
  }
}
