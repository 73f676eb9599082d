// Where a Discord answer goes: a channel or thread message (remembering what it posted, so that replies to an
// in-channel answer continue its conversation), or an interaction's original response.
import {
  DiscordAPIError,
  type ChatInputCommandInteraction,
  type Message,
  type MessageContextMenuCommandInteraction,
  type SendableChannels,
} from 'discord.js';
import type { ConversationKey } from '../../src/conversation/index.js';
import type { Payload, ReplyTarget, SentMessage } from './relay.js';

const sent = (m: Message): SentMessage => ({ channelId: m.channelId, id: m.id });

/** A channel or thread message as the answer's target; remembers the ids of what it posted. */
export function channelTarget(channel: SendableChannels, replyTo?: Message): ReplyTarget & { ids: string[] } {
  let msg: Message | undefined;
  const ids: string[] = [];
  return {
    ids,
    async first(p: Payload) {
      if (msg) {
        await msg.edit(p);
        return sent(msg);
      }
      msg = replyTo ? await replyTo.reply(p) : await channel.send(p);
      ids.push(msg.id);
      return sent(msg);
    },
    async more(p: Payload) {
      const m = await channel.send(p);
      ids.push(m.id);
      return sent(m);
    },
    async typing() {
      await channel.sendTyping();
    },
  };
}

/** Discord refused an interaction's token: it expired (15 minutes after the interaction) or is unknown. */
function tokenExpired(err: unknown): boolean {
  return err instanceof DiscordAPIError && (err.code === 50027 || err.code === 10015 || err.status === 401);
}

/**
 * An interaction's original response (already deferred) as the answer's target. Its token expires 15 minutes after
 * the interaction, which a slow answer behind a queue may outlast: the response is then finished through its channel
 * (edited there, the rest of a long answer sent there), as any of the bot's messages.
 */
export function interactionTarget(i: ChatInputCommandInteraction | MessageContextMenuCommandInteraction): ReplyTarget {
  let original: SentMessage | undefined;
  const channel = async () => {
    const ch = await i.client.channels.fetch(original?.channelId ?? i.channelId);
    if (!ch?.isSendable()) throw new Error(`channel ${i.channelId} cannot be written to`);
    return ch;
  };
  return {
    async first(p: Payload) {
      try {
        original = sent(await i.editReply(p));
      } catch (err) {
        if (!original || !tokenExpired(err)) throw err;
        await (await channel()).messages.edit(original.id, p);
      }
      return original;
    },
    async more(p: Payload) {
      try {
        return sent(await i.followUp(p));
      } catch (err) {
        if (!tokenExpired(err)) throw err;
        return sent(await (await channel()).send(p));
      }
    },
    async typing() {},
  };
}

/** A DM's conversation: the whole DM channel, in the workspace '@me'. */
export function dmKey(channelId: string): ConversationKey {
  return { platform: 'discord', workspace: '@me', channel: channelId, thread: channelId };
}

/** `target`, noting in `into` each message it posts (once each, however often it is edited). */
export function recordPosts<T extends ReplyTarget>(target: T, into: SentMessage[]): T {
  const note = (m: SentMessage) => {
    if (!into.some((k) => k.id === m.id)) into.push(m);
    return m;
  };
  return { ...target, first: async (p: Payload) => note(await target.first(p)), more: async (p: Payload) => note(await target.more(p)) };
}

/** How DiscordBot.run relays one request. */
export interface RunOptions {
  /** the refusals said nothing of (an edit's: unlessRefused) */
  quiet?: readonly string[];
  /** the request id of the message this answers (its first): deleting that message deletes the answer */
  asked?: string;
}

export interface Route {
  key: ConversationKey;
  target: ReplyTarget & { ids?: string[] };
  notice?: string;
  /** answered in the channel itself, not in a thread or DM */
  inChannel?: boolean;
}
