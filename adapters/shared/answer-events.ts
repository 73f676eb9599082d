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
