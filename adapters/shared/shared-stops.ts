// Answers written by another front end (several Slack front ends: a Stop press, an edit or a deletion may reach any
// of them, not the one writing the answer). The adapter marks each answer it writes as its own while it is written
// (`hold`), and asks the others to stop one it does not write; src/cluster/stop-relay.ts does it over Redis.
import type { StopOutcome } from './stop-buttons.js';
import type { StoppedForEdit } from './regenerate.js';

/** What this front end does for another's request: stop one of its own answers. */
export interface LocalStops {
  /** a Stop button pressed (StopButtons.press) */
  press(id: string, user: string, moderator: boolean): StopOutcome;
  /** the message asked as `asked` was edited by `user`: its answer stopped and waited for (Answering.stop) */
  stopForEdit(asked: string, user: string): Promise<StoppedForEdit | undefined>;
  /** the message `asked` was deleted: the answers to it or about its image stopped and waited for */
  stopForDeletion(asked: string): Promise<void>;
}

export interface SharedStops {
  /** serves the other front ends' requests with this front end's answers */
  serve(local: LocalStops): Promise<void>;
  /** marks an answer as this front end's while it is written: its Stop button, the ids of its message and image */
  hold(ids: { stop: string; asked?: string; image?: string }): () => Promise<void>;
  /** presses a Stop button of another front end's answer ('finished': no front end writes it) */
  press(id: string, user: string, moderator: boolean): Promise<StopOutcome>;
  /** stops another front end's answer to an edited message, and waits for it (undefined: none is written) */
  stopForEdit(asked: string, user: string): Promise<StoppedForEdit | undefined>;
  /** stops another front end's answers to a deleted message, or about its image, and waits for them */
  stopForDeletion(asked: string): Promise<void>;
  close(): Promise<void>;
}
