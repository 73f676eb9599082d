// What the Regenerate buttons (and edited questions) of Discord and Slack share: the lines that mark a new answer and
// the one it replaced, the questions being answered (an edit stops its question's answer),
// and the answers being regenerated (a second press on one is told so at once, instead of queueing an answer that
// could only be refused as stale), and each conversation's latest answer (the one with the button).
import Keyv from 'keyv';
import { lockKey } from '../../src/conversation/store.js';
import { type RedisStoreLock, StoreSections, storeLockFor } from '../../src/conversation/store-lock.js';

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

/** How long a claim of a process that died without giving it back holds (InFlight): longer than an answer takes. */
export const IN_FLIGHT_TTL_MS = 30 * 60 * 1000;

/**
 * Ids (of answers) being worked on, one piece of work each at a time: in this process, and, on a Redis store, across
 * every front end using it (two presses of one Slack button can reach two front ends), under the lock `prefix` + id.
 */
export class InFlight {
  private readonly ids = new Set<string>();
  private readonly shared: RedisStoreLock | undefined;

  /** `store`: the conversation store (none, or not Redis: this process only) */
  constructor(
    store: Keyv | undefined,
    private readonly prefix: string,
    private readonly log: (line: string) => void,
  ) {
    this.shared = store && storeLockFor(store, { ttlMs: IN_FLIGHT_TTL_MS });
  }

  /** Claims `id`; undefined if it is claimed already. Call the returned function when done. */
  async claim(id: string): Promise<(() => void) | undefined> {
    if (this.ids.has(id)) return undefined;
    this.ids.add(id);
    let shared: (() => Promise<void>) | undefined;
    try {
      shared = await this.shared?.tryTake(lockKey(this.prefix + id));
      if (this.shared && !shared) {
        this.ids.delete(id);
        return undefined;
      }
    } catch (err) {
      // (Redis out of reach: this process's claim alone; a press at another front end is refused as stale after this one)
      this.log(`could not claim ${id} across front ends: ${(err as Error).message}`);
    }
    return () => {
      this.ids.delete(id);
      void shared?.();
    };
  }
}

/** How long a conversation's latest answer is remembered (as the answers kept for deletions, adapters/shared/deleted.ts). */
const LATEST_TTL_MS = 90 * 24 * 3600 * 1000;

/**
 * Each conversation's latest answer: only it can be regenerated, so only it carries the button. Kept in the store
 * under `prefix` + conversation id (the message's ids only), so that after a restart, or with several front ends
 * answering one conversation, the answer before a new one still loses its button. `replace` records a new latest
 * answer and returns the one before it, which should lose its button (undefined: none known, or the same message).
 */
export class LatestAnswers<M> {
  private readonly store: Keyv;
  private readonly sections: StoreSections;

  /** `store`: the conversation store (none: this process's memory); `read`: a stored value as M, if it is one */
  constructor(
    store: Keyv | undefined,
    private readonly prefix: string,
    private readonly read: (v: unknown) => M | undefined,
    private readonly same: (a: M, b: M) => boolean,
    private readonly log: (line: string) => void,
  ) {
    this.store = store ?? new Keyv();
    this.sections = new StoreSections(this.store, lockKey(prefix));
  }

  async replace(conversation: string, now: M): Promise<M | undefined> {
    try {
      return await this.sections.run(conversation, async () => {
        const before = this.read(await this.store.get(this.prefix + conversation));
        await this.store.set(this.prefix + conversation, now, LATEST_TTL_MS);
        return before !== undefined && !this.same(before, now) ? before : undefined;
      });
    } catch (err) {
      // (the answer before keeps its button: a press on it is refused as stale, and takes it away)
      this.log(`could not store which answer is the latest in ${conversation}: ${(err as Error).message}`);
      return undefined;
    }
  }
}

/** The refusals of an edit request that the user is not told of: an edit of anything but their latest question. */
export const EDIT_REFUSED_QUIETLY = ['stale', 'not_allowed'] as const;

/** How a question stopped for its message's edit had ended. */
export interface StoppedForEdit {
  /** it was itself an edited question's answer (the message's earlier question is still stored) */
  edit: boolean;
  /** it was answered in full (and stored) before the stop took */
  answered: boolean;
}

/**
 * The questions being answered in this process, by the request id their message was asked under: an edit of the
 * message stops its answer (why answer a question its asker has changed) before the edited one is asked; so does its
 * deletion, or the deletion of the message its image came from.
 */
export class Answering {
  private readonly now = new Map<string, Running>();
  /** the same answers, by the request id of the message their image came from (ConversationRequest.imageFrom) */
  private readonly byImage = new Map<string, Running>();

  /**
   * Records the answer to `req` (its Stop button `stopId`) under the id its message was asked under (none for a
   * Regenerate: an edit comes after it in the conversation, and replaces its answer) and the id of the message its image
   * came from; call the returned function when it ended.
   */
  start(
    req: { requestId?: string; regenerate?: string; edit?: string; askedAs?: string; imageFrom?: string },
    stopId: string,
  ): ((answered: boolean) => void) | undefined {
    const asked = Answering.askedOf(req);
    if (asked === undefined && req.imageFrom === undefined) return undefined;
    let end!: (answered: boolean) => void;
    const entry: Running = { stopId, edit: req.edit !== undefined, done: new Promise<boolean>((resolve) => (end = resolve)) };
    const held = [
      ...(asked !== undefined ? [[this.now, asked] as const] : []),
      ...(req.imageFrom !== undefined ? [[this.byImage, req.imageFrom] as const] : []),
    ];
    for (const [map, id] of held) map.set(id, entry);
    return (answered) => {
      for (const [map, id] of held) if (map.get(id) === entry) map.delete(id);
      end(answered);
    };
  }

  /**
   * The id a request's message was first asked under (none for a Regenerate, which answers no message of its own):
   * the one its answer is recorded under.
   */
  static askedOf(req: { requestId?: string; regenerate?: string; edit?: string; askedAs?: string }): string | undefined {
    return req.regenerate === undefined ? (req.edit ?? req.askedAs ?? req.requestId) : undefined;
  }

  /**
   * Stops the answer to `asked`, if one is being given (`press`: its Stop button pressed, as by the message's author),
   * and waits for it to end; undefined when none was.
   */
  async stop(asked: string, press: (stopId: string) => void): Promise<StoppedForEdit | undefined> {
    const entry = this.now.get(asked);
    if (!entry) return undefined;
    press(entry.stopId);
    return { edit: entry.edit, answered: await entry.done };
  }

  /**
   * The message `id` was deleted: the answers to it, and those about its image, are stopped (`cancel`) and waited for.
   */
  async stopForDeletion(id: string, cancel: (stopId: string) => void): Promise<void> {
    const entries = [this.now.get(id), this.byImage.get(id)].filter((e): e is Running => e !== undefined);
    for (const e of entries) cancel(e.stopId);
    await Promise.all(entries.map((e) => e.done));
  }
}

interface Running {
  stopId: string;
  edit: boolean;
  done: Promise<boolean>;
}

/**
 * What an edit of the message first asked as `asked` sends, given what stopping its answer found: an edit of the stored
 * question, or (its answer stopped before it was stored) the question asked anew under the message's id.
 */
export function editRequest(asked: string, stopped: StoppedForEdit | undefined): { edit: string } | { askedAs: string } {
  return stopped && !stopped.edit && !stopped.answered ? { askedAs: asked } : { edit: asked };
}
