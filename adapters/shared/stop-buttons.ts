// The Stop buttons of the answers an adapter is writing (Discord's message button, Slack's Block Kit button): each
// running answer has an id that its button carries; pressing it aborts that answer's request, if the presser may.

/** What pressing a Stop button did: the answer stopped; the presser may not stop it; it had already ended. */
export type StopOutcome = 'stopped' | 'not_allowed' | 'finished';

/** One running answer's button. */
export interface StopHandle {
  /** what the button carries (Discord: after the adapter's custom-id prefix; Slack: the button's value) */
  readonly id: string;
  /** aborted when the button is pressed by someone who may */
  readonly signal: AbortSignal;
  /** who pressed it (a user id), once someone did */
  stoppedBy(): string | undefined;
  /** the answer ended: its button does nothing more */
  close(): void;
}

/** The line under a stopped answer (Discord and Slack both write a user mention as `<@id>`). */
export function stoppedLine(user: string): string {
  return `Stopped by <@${user}>. A stopped answer is not kept in the conversation.`;
}

interface Running {
  controller: AbortController;
  user: string;
  stoppedBy?: string;
}

export class StopButtons {
  private readonly running = new Map<string, Running>();

  /** A button for an answer to `user`'s request. */
  open(user: string): StopHandle {
    const id = crypto.randomUUID();
    const entry: Running = { controller: new AbortController(), user };
    this.running.set(id, entry);
    return {
      id,
      signal: entry.controller.signal,
      stoppedBy: () => entry.stoppedBy,
      close: () => this.running.delete(id),
    };
  }

  /** Stops the answer of button `id` without anyone pressing it (its question was deleted): no one is named. */
  cancel(id: string): void {
    this.running.get(id)?.controller.abort();
  }

  /** Button `id` pressed by `user`; `moderator`: they may stop others' answers too. */
  press(id: string, user: string, moderator: boolean): StopOutcome {
    const entry = this.running.get(id);
    if (!entry) return 'finished';
    if (entry.user !== user && !moderator) return 'not_allowed';
    entry.stoppedBy ??= user;
    entry.controller.abort();
    return 'stopped';
  }
}
