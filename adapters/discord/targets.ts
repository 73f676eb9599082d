// Where a Discord answer goes: a channel or thread message (remembering what it posted, so that replies to an
// in-channel answer continue its conversation), or an interaction's original response.
import type { ChatInputCommandInteraction, Message, MessageContextMenuCommandInteraction, SendableChannels } from 'discord.js';
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

/** An interaction's original response (already deferred) as the answer's target. */
export function interactionTarget(i: ChatInputCommandInteraction | MessageContextMenuCommandInteraction): ReplyTarget {
  return {
    async first(p: Payload) {
      return sent(await i.editReply(p));
    },
    async more(p: Payload) {
      return sent(await i.followUp(p));
    },
    async typing() {},
  };
}

export interface Route {
  key: ConversationKey;
  target: ReplyTarget & { ids?: string[] };
  notice?: string;
  /** answered in the channel itself, not in a thread or DM */
  inChannel?: boolean;
}
