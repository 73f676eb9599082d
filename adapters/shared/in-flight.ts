// Work on one thing at a time per id within a process: a second Regenerate press on an answer being regenerated
// is told so at once, instead of queueing an answer that could only be refused as stale.

/** The message for a press on an answer whose regeneration is under way. */
export const ALREADY_REGENERATING = 'This answer is being regenerated already.';

export class InFlight {
  private readonly ids = new Set<string>();

  /** Claims `id`; undefined if it is claimed already. Call the returned function when done. */
  claim(id: string): (() => void) | undefined {
    if (this.ids.has(id)) return undefined;
    this.ids.add(id);
    return () => this.ids.delete(id);
  }
}
