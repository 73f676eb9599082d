// Deleted questions (Discord, Slack): when the message that asked a question is deleted, by its author or a
// moderator, what the bot kept of it goes (ConversationManager.forgetQuestion: its turn, or the whole conversation when
// that message brought the image), and so do the bot's answers to it. To find those answers after a restart, or on
// another front end, each answered message's conversation and answer messages are kept in the store (ids only).
import Keyv from 'keyv';
import { withoutQuestion, type ConversationKey, type QuestionOutcome } from '../../src/conversation/index.js';
import { lockKey } from '../../src/conversation/store.js';
import { StoreSections } from '../../src/conversation/store-lock.js';
import type { ConversationPort } from './port.js';

/** Said where a conversation was, once the message that brought its image was deleted. */
export const DELETED_IMAGE_LINE = 'The image was deleted, so I have forgotten this conversation. Send an image to start again.';

/** How long what a message's answers were is kept (as the in-channel reply marks: a question is rarely deleted later). */
const ANSWERS_TTL_MS = 90 * 24 * 3600 * 1000;
/** At most this many answer messages kept for one message (its answers, Regenerates and edits included). */
const MAX_POSTED = 50;

/** A message the bot posted: its channel and id (a Discord snowflake; a Slack ts); or (`file`) a file it uploaded. */
export interface Posted {
  channel: string;
  id: string;
  file?: true;
}

interface AnswersEntry {
  key: ConversationKey;
  /** oldest first; `answer` numbers the answers (a Regenerate's or an edit's is another one) */
  posted: (Posted & { answer: number })[];
}

/**
 * Each answered message's conversation and the bot's messages answering it, in the store under `prefix` + asked id.
 * An entry is read and written back alone (on Redis, across processes: two front ends may write one message's
 * answers at once, a Slack message's and its edit's).
 */
export class AnswerRecords {
  private readonly store: Keyv;
  private readonly entries: StoreSections;

  /** `store`: the conversation store (none: this process's memory) */
  constructor(
    store: Keyv | undefined,
    private readonly prefix: string,
    private readonly log: (line: string) => void,
  ) {
    this.store = store ?? new Keyv();
    this.entries = new StoreSections(this.store, lockKey(prefix));
  }

  /**
   * An answer `posted` in conversation `key` to the message asked as `asked` (its request id): kept under that message,
   * and under `imageFrom`, the message its image came from (deleting either forgets the answer).
   */
  async answered(to: { asked?: string; imageFrom?: string }, key: ConversationKey, posted: readonly Posted[]): Promise<void> {
    for (const asked of new Set([to.asked, to.imageFrom])) if (asked) await this.add(asked, key, posted);
  }

  /** The message asked as `asked` (its request id) was answered in `key` by `posted` (added to what is kept). */
  async add(asked: string, key: ConversationKey, posted: readonly Posted[]): Promise<void> {
    if (posted.length === 0) return;
    try {
      await this.entries.run(asked, async () => {
        const known = asEntry(await this.store.get(this.prefix + asked));
        const answer = Math.max(-1, ...(known?.posted ?? []).map((p) => p.answer)) + 1;
        const fresh = posted.filter((p) => !known?.posted.some((k) => k.id === p.id)).map((p) => ({ ...p, answer }));
        await this.store.set(this.prefix + asked, { key, posted: [...(known?.posted ?? []), ...fresh].slice(-MAX_POSTED) }, ANSWERS_TTL_MS);
        // and, for each message, which question it answers (a moderator may delete an answer)
        for (const p of fresh) if (!p.file) await this.store.set(this.answerKey(p.id), asked, ANSWERS_TTL_MS);
      });
    } catch (err) {
      this.log(`could not store which messages answered ${asked}: ${(err as Error).message}`);
    }
  }

  /** What was kept for `asked`; undefined when nothing was. */
  async get(asked: string): Promise<AnswersEntry | undefined> {
    return asEntry(await this.store.get(this.prefix + asked));
  }

  /**
   * The image of the message asked as `asked`, in conversation `key`, was read from file `file` (a Slack file, a Discord
   * attachment): deleting the file, or removing the attachment, forgets it as deleting the message would.
   */
  async imageFile(file: string, asked: string, key: ConversationKey): Promise<void> {
    try {
      await this.store.set(this.fileKey(file), { asked, key }, ANSWERS_TTL_MS);
      await this.store.set(`${this.prefix}image:${asked}`, file, ANSWERS_TTL_MS);
    } catch (err) {
      this.log(`could not store which message file ${file} was posted in: ${(err as Error).message}`);
    }
  }

  /** The file (a Discord attachment) the image of the message asked as `asked` was read from, if kept. */
  async imageFileOf(asked: string): Promise<string | undefined> {
    const file = await this.store.get(`${this.prefix}image:${asked}`);
    return typeof file === 'string' ? file : undefined;
  }

  /** The message (its asked id) and conversation an image file was read for, if kept; the mark goes (one taker). */
  takeImageFile(file: string): Promise<{ asked: string; key: ConversationKey } | undefined> {
    return this.entries.run(this.fileKey(file), async () => {
      const v = (await this.store.get(this.fileKey(file))) as { asked?: unknown; key?: unknown } | undefined;
      const entry = asEntry(v ? { key: v.key, posted: [] } : undefined);
      if (!v || typeof v.asked !== 'string' || !entry) return undefined;
      await this.store.delete(this.fileKey(file));
      await this.store.delete(`${this.prefix}image:${v.asked}`);
      return { asked: v.asked, key: entry.key };
    });
  }

  /** The question (its asked id) a bot message answers, if kept. */
  async questionOf(answer: string): Promise<string | undefined> {
    const asked = await this.store.get(this.answerKey(answer));
    return typeof asked === 'string' ? asked : undefined;
  }

  /**
   * Forgets the answer messages `gone` kept for `asked` (they are deleted); what was added since they were read stays
   * (another front end's answer to the same message).
   */
  async drop(asked: string, gone: readonly Posted[]): Promise<void> {
    const ids = new Set(gone.map((p) => p.id));
    await this.entries.run(asked, async () => {
      for (const p of gone) if (!p.file) await this.store.delete(this.answerKey(p.id));
      const entry = asEntry(await this.store.get(this.prefix + asked));
      const left = entry?.posted.filter((p) => !ids.has(p.id)) ?? [];
      if (entry && left.length > 0) await this.store.set(this.prefix + asked, { key: entry.key, posted: left }, ANSWERS_TTL_MS);
      else await this.store.delete(this.prefix + asked);
    });
  }

  private answerKey(id: string): string {
    return `${this.prefix}of:${id}`;
  }

  private fileKey(id: string): string {
    return `${this.prefix}file:${id}`;
  }
}

function asEntry(v: unknown): AnswersEntry | undefined {
  const e = v as Partial<AnswersEntry> | undefined;
  const key = e?.key as Partial<ConversationKey> | undefined;
  if (!key || ![key.workspace, key.channel, key.thread].every((s) => typeof s === 'string') || !Array.isArray(e?.posted)) return undefined;
  const posted = e.posted.filter((p) => typeof p?.channel === 'string' && typeof p?.id === 'string');
  return {
    key: key as ConversationKey,
    posted: posted.map((p) => ({
      channel: p.channel,
      id: p.id,
      ...(p.file === true ? { file: true as const } : {}),
      answer: typeof p.answer === 'number' ? p.answer : 0,
    })),
  };
}

/** What a platform does for a deleted question. */
export interface DeletionHost {
  readonly manager: Pick<ConversationPort, 'forgetQuestion' | 'history'>;
  readonly records: AnswerRecords;
  readonly log: (line: string) => void;
  /** stops the answer to `asked` if this process is giving one, and waits for it to end */
  stopAnswer(asked: string): Promise<void>;
  /** deletes one of the bot's messages (one already gone is no failure) */
  deleteMessage(p: Posted): Promise<void>;
  /** says DELETED_IMAGE_LINE where the conversation was (where there is such a place) */
  tellForgotten(key: ConversationKey): Promise<void>;
}

/**
 * The message asked as `asked` was deleted: its answer (if being given here) is stopped, the conversation it asked in
 * (kept with its answers; else the first of `candidates` that has its question stored) forgets it, and the bot's
 * answers to it are deleted. The outcome; undefined when the bot kept nothing of that message.
 */
export async function questionDeleted(
  host: DeletionHost,
  asked: string,
  candidates: () => Promise<readonly ConversationKey[]> | readonly ConversationKey[],
  label: string,
): Promise<QuestionOutcome | undefined> {
  await host.stopAnswer(asked);
  const record = await host.records.get(asked);
  const key = record?.key ?? (await storedIn(host, asked, await candidates()));
  if (!key) return undefined;
  const outcome = await host.manager.forgetQuestion(key, asked);
  // (kept until the question is forgotten: a store that failed meanwhile loses nothing)
  if (record) await host.records.drop(asked, record.posted);
  await deleteAll(host, record?.posted ?? [], label);
  if (outcome === 'conversation_forgotten') {
    await host
      .tellForgotten(key)
      .catch((err: unknown) => host.log(`${label}: could not say the conversation was forgotten: ${(err as Error).message}`));
  }
  host.log(`${label}: ${outcome.replace('_', ' ')}${record ? `, ${record.posted.length} answer message(s) deleted` : ''}`);
  return outcome;
}

/**
 * The bot's message `id` was deleted (by a moderator; or, on Slack, an admin): if it was part of a question's latest
 * answer, that exchange is forgotten (the question's message stays, and so does the conversation, whatever brought its
 * image) and the rest of that answer is deleted too; an earlier answer, replaced since (a Regenerate, an edit), is no
 * longer in the conversation: nothing else changes. The outcome; undefined when it answered nothing kept.
 */
export async function answerDeleted(host: DeletionHost, id: string, label: string): Promise<QuestionOutcome | undefined> {
  const asked = await host.records.questionOf(id);
  const record = asked !== undefined ? await host.records.get(asked) : undefined;
  const answer = record?.posted.find((p) => p.id === id)?.answer;
  if (asked === undefined || !record || answer === undefined) return undefined;
  const gone = record.posted.filter((p) => p.answer === answer);
  if (answer !== Math.max(...record.posted.map((p) => p.answer))) {
    await host.records.drop(asked, gone);
    host.log(`${label}: an earlier answer, replaced since: nothing forgotten`);
    return 'not_asked';
  }
  const outcome = await host.manager.forgetQuestion(record.key, asked, { turnOnly: true });
  // (before the bot deletes the rest: its own deletions then find nothing kept)
  await host.records.drop(asked, gone);
  const rest = gone.filter((p) => p.id !== id);
  await deleteAll(host, rest, label);
  host.log(`${label}: ${outcome.replace('_', ' ')}, ${rest.length} other answer message(s) deleted`);
  return outcome;
}

/** Deletes the bot's messages `posted`; one that cannot be is logged, the others still go. */
async function deleteAll(host: DeletionHost, posted: readonly Posted[], label: string): Promise<void> {
  for (const p of posted) {
    await host.deleteMessage(p).catch((err: unknown) => host.log(`${label}: could not delete answer ${p.id}: ${(err as Error).message}`));
  }
}

/** The first of `keys` whose stored conversation has the question asked as `asked` (one store read each). */
async function storedIn(host: DeletionHost, asked: string, keys: readonly ConversationKey[]): Promise<ConversationKey | undefined> {
  for (const key of keys) {
    const state = await host.manager.history(key);
    if (state && withoutQuestion(state, asked) !== undefined) return key;
  }
  return undefined;
}
