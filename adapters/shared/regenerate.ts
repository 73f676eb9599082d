// What the Regenerate buttons of Discord and Slack share: the lines that mark a new answer and the one it replaced,
// and the answers being regenerated in this process (a second press on one is told so at once, instead of queueing an
// answer that could only be refused as stale).

/** Above a regenerated answer. */
export const REGENERATED_LINE = 'Regenerated: this answer replaces the one above in the conversation.';
/** Under the answer it replaced. */
export const REPLACED_LINE = 'Replaced by a regenerated answer below.';
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
