// Deleted messages (MESSAGE_DELETE, MESSAGE_DELETE_BULK, read from the gateway itself: discord.js drops those of
// channels it has not cached, a DM's after a restart): a deleted message that asked a question has what the bot kept
// of it forgotten and the bot's answers to it deleted; one of the bot's answers deleted by a moderator takes its
// exchange out of the conversation (adapters/shared/deleted.ts).
import { DiscordAPIError, Routes, type Client } from 'discord.js';
import type { ConversationKey } from '../../src/conversation/index.js';
import {
  answerDeleted,
  DELETED_IMAGE_LINE,
  questionDeleted,
  type AnswerRecords,
  type DeletionHost,
  type Posted,
} from '../shared/deleted.js';
import type { ConversationPort } from '../shared/port.js';
import { LruMap } from '../../src/util/lru.js';
import { notice } from './format.js';
import { dmKey } from './targets.js';

/** Discord's "Unknown Message": deleted already. */
const UNKNOWN_MESSAGE = 10008;

/** What a deletion needs from the adapter (DiscordBot). */
export interface DeletionsHost {
  readonly client: Client<true>;
  readonly manager: Pick<ConversationPort, 'forgetQuestion' | 'history'>;
  readonly answers: AnswerRecords;
  readonly log: (line: string) => void;
  /** stops the answer to the message asked as `asked`, if one is being given here, and waits for it */
  stopForDeletion(asked: string): Promise<void>;
}

/** The gateway's MESSAGE_DELETE (one id) or MESSAGE_DELETE_BULK (several): channel, server (none in a DM), ids. */
export interface Deleted {
  ids: readonly string[];
  channelId: string;
  guildId: string | undefined;
}

export class Deletions {
  /** the bot's own answers it deleted: their MESSAGE_DELETE asks nothing of the store */
  private readonly ownDeletes = new LruMap<string, true>(1_000);

  constructor(private readonly host: DeletionsHost) {}

  async onDeleted(d: Deleted): Promise<void> {
    for (const id of d.ids) {
      if (this.ownDeletes.get(id)) continue;
      const where = d.guildId ? `guild ${d.guildId}, channel ${d.channelId}` : `DM ${d.channelId}`;
      const host = this.deletionHost();
      // (the gateway does not say whose message it was: a question's, else one of the bot's answers, deleted by a moderator)
      const asked = await questionDeleted(host, `discord-${id}`, () => this.candidates(d, id), `discord: deleted message ${id} (${where})`);
      if (asked === undefined) await answerDeleted(host, id, `discord: deleted answer ${id} (${where})`);
    }
  }

  /**
   * The image attachment the bot read from `msg` is no longer on it (its author removed it in an edit): what the bot
   * kept of it goes as if the message had been deleted.
   */
  async imageRemoved(msg: {
    id: string;
    channelId: string;
    guildId: string | null;
    attachments: { has(id: string): boolean };
  }): Promise<void> {
    const asked = `discord-${msg.id}`;
    const file = await this.host.answers.imageFileOf(asked);
    if (file === undefined || msg.attachments.has(file)) return;
    // (one taker: Discord may send the update more than once, and two front ends may each see one)
    const read = await this.host.answers.takeImageFile(file);
    if (!read) return;
    const where = msg.guildId ? `guild ${msg.guildId}, channel ${msg.channelId}` : `DM ${msg.channelId}`;
    await questionDeleted(this.deletionHost(), asked, () => [read.key], `discord: image removed from message ${msg.id} (${where})`);
  }

  private deletionHost(): DeletionHost {
    return {
      manager: this.host.manager,
      records: this.host.answers,
      log: this.host.log,
      stopAnswer: (asked) => this.host.stopForDeletion(asked),
      deleteMessage: (p) => this.deleteAnswer(p),
      tellForgotten: (key) => this.tellForgotten(key),
    };
  }

  /**
   * Where a message whose answers were not kept (answered before they were, or not at all) may have asked: its DM; its
   * thread; in a channel, the thread opened on it, or its conversation in the channel (no thread). An in-channel
   * follow-up is found only through its kept answers.
   */
  private candidates(d: Deleted, id: string): ConversationKey[] {
    if (!d.guildId) return [dmKey(d.channelId)];
    const ch = this.host.client.channels.cache.get(d.channelId);
    if (ch?.isThread()) return ch.parentId ? [{ platform: 'discord', workspace: d.guildId, channel: ch.parentId, thread: ch.id }] : [];
    return [
      { platform: 'discord', workspace: d.guildId, channel: d.channelId, thread: id },
      { platform: 'discord', workspace: d.guildId, channel: d.channelId, thread: `message:${id}` },
    ];
  }

  private async deleteAnswer(p: Posted): Promise<void> {
    this.ownDeletes.set(p.id, true);
    try {
      await this.host.client.rest.delete(Routes.channelMessage(p.channel, p.id));
    } catch (err) {
      if (!(err instanceof DiscordAPIError && err.code === UNKNOWN_MESSAGE)) throw err;
    }
  }

  /** In the DM or the bot's thread the conversation was (an in-channel one had its answers deleted: nothing to say). */
  private async tellForgotten(key: ConversationKey): Promise<void> {
    const where = key.workspace === '@me' ? key.channel : key.thread.startsWith('message:') ? undefined : key.thread;
    if (!where) return;
    const ch = await this.host.client.channels.fetch(where).catch(() => null);
    if (ch?.isSendable()) await ch.send({ content: notice(DELETED_IMAGE_LINE) });
  }
}
