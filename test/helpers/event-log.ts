// Several answer streams read at once, into one log of what came in which order: "<label> <event type>", a place
// told as checked marked " checked" (so that a test can say what one request was told before another's answer ended).
import type { AnswerEvent } from '../../src/conversation/index.js';

export interface EventLog {
  /** the lines, in the order the events came */
  readonly seen: string[];
  /** reads `stream` to its end, logging each event under `label`; its events */
  read(label: string, stream: AsyncIterable<AnswerEvent>): Promise<AnswerEvent[]>;
}

export function eventLog(): EventLog {
  const seen: string[] = [];
  return {
    seen,
    async read(label, stream) {
      const events: AnswerEvent[] = [];
      for await (const ev of stream) {
        events.push(ev);
        seen.push(`${label} ${ev.type}${ev.type === 'queued' && ev.checked ? ' checked' : ''}`);
      }
      return events;
    },
  };
}
