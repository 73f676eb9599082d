// Where a Discord answer goes: a channel or thread message (remembering what it posted, so that replies to an
// in-channel answer continue its conversation), or an interaction's original response.
import type { ChatInputCommandInteraction, Message, MessageContextMenuCommandInteraction, SendableChannels } from 'discord.js';
import type { ConversationKey } from '../../src/conversation/index.js';
import type { Payload, ReplyTarget } from './relay.js';

/** A channel or thread message as the answer's target; remembers the ids of what it posted. */
export function channelTarget(channel: SendableChannels, replyTo?: Message): ReplyTarget & { ids: string[] } {
  let msg: Message | undefined;
  const ids: string[] = [];
  return {
    ids,
    async first(p: Payload) {
      if (msg) {
        await msg.edit(p);
        return;
      }
      msg = replyTo ? await replyTo.reply(p) : await channel.send(p);
      ids.push(msg.id);
    },
    async more(p: Payload) {
      ids.push((await channel.send(p)).id);
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
      await i.editReply(p);
    },
    async more(p: Payload) {
      await i.followUp(p);
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
