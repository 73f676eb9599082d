// The prompt of a turn within its token budget: earlier exchanges as they go into the prompt, the oldest
// dropped until the prompt fits, and the prefix the next turn's prompt will start with (which the kept KV
// cache is extended to). Token counts are the model's own (docs/architecture.md, "The path of one request").
import type { MiniGPT } from '../inference/model.js';
import { conversationPrompt, type Turn } from '../inference/prompt.js';
import { promptSegmentIds } from '../inference/context.js';
import { Failure } from './failure.js';
import { neutralizeMarkers, userTurn } from './text.js';
import type { PriorTurn } from './types.js';

export interface FittedPrompt {
  prompt: string;
  /** text tokens plus the image's embedding rows */
  promptTokens: number;
  /** the oldest earlier exchanges left out */
  dropped: number;
}

export interface PromptBudgetOptions {
  model: Pick<MiniGPT, 'meta' | 'tokenizer'>;
  /** the config's max_context_len; undefined or not positive: only the model's window applies */
  maxContextLen: number | undefined;
  /** how user text becomes a user turn (src/conversation/text.ts userTurn) */
  tasks: boolean;
  markers: readonly string[];
}

export class PromptBudget {
  private readonly model: Pick<MiniGPT, 'meta' | 'tokenizer'>;
  private readonly maxContextLen: number;
  private readonly tasks: boolean;
  private readonly markers: readonly string[];

  constructor(opts: PromptBudgetOptions) {
    this.model = opts.model;
    this.maxContextLen = opts.maxContextLen !== undefined && opts.maxContextLen > 0 ? Math.floor(opts.maxContextLen) : Infinity;
    this.tasks = opts.tasks;
    this.markers = opts.markers;
  }

  /**
   * A stateless request's earlier exchanges as they go into the prompt: each user text through the same rule
   * as a new one (markers neutralised, task tag applied), so that the prompt is the one its own request had.
   */
  priorTurns(history: readonly PriorTurn[]): PriorTurn[] {
    if (!Array.isArray(history)) throw new Error('history must be an array of {user, assistant} turns');
    return history.map((t) => {
      if (typeof t?.user !== 'string' || typeof t?.assistant !== 'string')
        throw new Error('history must be an array of {user, assistant} turns');
      return { user: userTurn(t.user, undefined, { tasks: this.tasks, markers: this.markers }).prompt, assistant: t.assistant.trim() };
    });
  }

  /**
   * The prompt for the history plus the new user text within the budget: min(maxContextLen, the model's
   * window minus room for the answer (maxNewTokens, at most a quarter of the window)). Oldest turns go
   * first; the image is always in the first kept turn. Too long even alone -> too_long.
   */
  fit(history: readonly PriorTurn[], user: string, maxNewTokens: number, image: boolean): FittedPrompt {
    const window = this.model.meta.llm.maxPositions;
    const reserve = Math.max(1, Math.min(maxNewTokens, Math.floor(window / 4)));
    const limit = Math.min(this.maxContextLen, window - reserve);
    const spec = this.model.meta.prompt;
    const turns: Turn[] = [...history.map((t) => ({ user: t.user, assistant: neutralizeMarkers(t.assistant, this.markers) })), { user }];
    let dropped = 0;
    for (;;) {
      const prompt = conversationPrompt(spec, turns.slice(dropped), { image });
      const tokens = this.countTokens(prompt, image);
      if (tokens <= limit) return { prompt, promptTokens: tokens, dropped };
      if (dropped === turns.length - 1) {
        throw new Failure(
          'too_long',
          `Your message is too long for this model: with the image it takes ${tokens} tokens, the limit is ${limit}. Please shorten it.`,
        );
      }
      dropped++;
    }
  }

  /** The start of the next turn's prompt after `turns` (up to the next user text). */
  nextPromptPrefix(turns: readonly PriorTurn[], image: boolean): string {
    // A stand-in for the next user text: the template decides what comes before it (role, separators).
    const mark = '\u0000';
    const next = conversationPrompt(
      this.model.meta.prompt,
      [...turns.map((t) => ({ user: t.user, assistant: neutralizeMarkers(t.assistant, this.markers) })), { user: mark }],
      { image },
    );
    return next.slice(0, next.lastIndexOf(mark)).trimEnd();
  }

  /** Prompt tokens of a conversation (text tokens + the image's embedding rows), as the model counts them. */
  private countTokens(prompt: string, image: boolean): number {
    const { imageToken } = this.model.meta.prompt;
    const segments = promptSegmentIds(prompt, imageToken, image ? 1 : 0, this.model.tokenizer);
    return segments.reduce((n, s) => n + s.length, 0) + (image ? this.model.meta.vision.imageTokens : 0);
  }
}
