// What the Regenerate buttons (and edited questions) of Discord and Slack share: the lines that mark a new answer and
// the one it replaced,
// and the answers being regenerated in this process (a second press on one is told so at once, instead of queueing an
// answer that could only be refused as stale), and each conversation's latest answer (the one with the button).
import { LruMap } from '../../src/util/lru.js';

/** Above a regenerated answer. */
export const REGENERATED_LINE = 'Regenerated: this answer replaces the one above in the conversation.';
/** Under the answer it replaced. */
export const REPLACED_LINE = 'Replaced by a regenerated answer below.';
/** Above the new answer to an edited question. */
export const EDITED_LINE = 'The question was edited: this answer replaces the one before it in the conversation.';
/** Under the answer to the question before it was edited. */
export const EDIT_REPLACED_LINE = 'The question was edited: answered again below.';
/** The reply to a press on an answer whose regeneration is under way. */
export const ALREADY_REGENERATING = 'This answer is being regenerated already.';

/** Ids (of answers) being worked on, one piece of work each at a time. */
export class InFlight {
  private readonly ids = new Set<string>();

  /** Claims `id`; undefined if it is claimed already. Call the returned function when done. */
  claim(id: string): (() => void) | undefined {
    if (this.ids.has(id)) return undefined;
    this.ids.add(id);
    return () => this.ids.delete(id);
  }
}

/**
 * Each conversation's latest answer as far as this process knows (an LRU of `capacity` conversations): only it can be
 * regenerated, so only it carries the button. `replace` records a new latest answer and returns the one before it,
 * which should lose its button (undefined: none known, or the same message).
 */
export class LatestAnswers<M> {
  private readonly latest: LruMap<string, M>;

  constructor(
    capacity: number,
    private readonly same: (a: M, b: M) => boolean,
  ) {
    this.latest = new LruMap(capacity);
  }

  replace(conversation: string, now: M): M | undefined {
    const before = this.latest.get(conversation);
    this.latest.set(conversation, now);
    return before !== undefined && !this.same(before, now) ? before : undefined;
  }
}
