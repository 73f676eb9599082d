// What an answered turn reports: the numbers of its `timings` event (shown by the adapters and the API,
// summed up by the benchmarks) and its log line.
import type { Timings } from '../inference/model.js';
import type { Encoding } from './image-input.js';

/** Times are performance.now() readings. */
export interface TurnCosts {
  enqueuedAt: number;
  started: number;
  end: number;
  /** when the first text came, 0: none */
  firstText: number;
  /** absent for a text-only turn */
  image: Omit<Encoding, 'encoded'> | undefined;
  /** the model's own, absent if it gave none */
  model: Timings | undefined;
  /** the budget's count, for a model without timings */
  promptTokens: number;
  historyTurns: number;
  droppedTurns: number;
}

export function turnTimings(c: TurnCosts): Record<string, number> {
  return {
    queueMs: c.started - c.enqueuedAt,
    preprocessMs: c.image?.preprocessMs ?? 0,
    visionMs: c.image?.visionMs ?? 0,
    imageCached: c.image?.cached ? 1 : 0,
    prefillMs: c.model?.prefillMs ?? 0,
    firstTokenMs: (c.firstText || c.end) - c.started,
    decodeMs: c.model?.decodeMs ?? 0,
    totalMs: c.end - c.started,
    promptTokens: c.model?.promptTokens ?? c.promptTokens,
    reusedTokens: c.model?.reusedTokens ?? 0,
    newTokens: c.model?.newTokens ?? 0,
    historyTurns: c.historyTurns,
    droppedTurns: c.droppedTurns,
  };
}

/** The log line's account of a turn, from its timings. */
export function turnSummary(task: string, t: Record<string, number>): string {
  return (
    `${task}, ${t.promptTokens} prompt + ${t.newTokens} new tokens, ` +
    `${t.historyTurns} earlier turns${t.droppedTurns ? ` (${t.droppedTurns} dropped)` : ''}, image ${t.imageCached ? 'cached' : 'encoded'}, ${Math.round(t.totalMs)} ms`
  );
}
