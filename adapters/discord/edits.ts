// Edited messages: a user who edits the message that asked their conversation's latest question gets it answered
// again (ConversationRequest.edit), as a reply to the edited message, or in the thread opened on it; the old answer
// says so and loses its Regenerate button (DiscordBot.run). An edit of anything else (an earlier question, someone
// else's message, a link preview added by Discord, a message that asked nothing) is left alone, without a word:
// the conversation manager decides in the conversation's order. A question still being answered when its message is
// edited has its answer stopped first; stopped before it was stored, the edited text is asked as the message's
// question.
import type { Message, PartialMessage, SendableChannels } from 'discord.js';
import type { ConversationKey, ConversationRequest } from '../../src/conversation/index.js';
import { EDIT_REFUSED_QUIETLY, EDITED_LINE, editRequest, type StoppedForEdit } from '../shared/regenerate.js';
import type { ArrivalTurn } from '../shared/arrival-order.js';
import type { InteractionHost } from './interactions.js';
import { apologiseOnFailure, stripBotMention } from './replies.js';
import { channelTarget, dmKey, type Route } from './targets.js';

/** What an edit needs from the adapter (DiscordBot). */
export interface EditHost extends Pick<InteractionHost, 'client' | 'log' | 'takeTurn' | 'allowed' | 'withinRate' | 'run' | 'isBotThread'> {
  readonly botId: string;
  /** the answer to the message asked as `asked`, if one is being given, stopped and waited for (DiscordBot.stopForEdit) */
  stopForEdit(asked: string, user: string): Promise<StoppedForEdit | undefined>;
  /** the conversation of a bot answer posted in a channel (no thread), remembered or stored */
  replyKeyOf(messageId: string): Promise<ConversationKey | undefined>;
}

/**
 * MESSAGE_UPDATE: `before` is the message as the client had it (partial, or undefined, for one it had not seen, sent
 * before it connected: then the manager tells an unchanged text from an edit), `msg` as it is now.
 */
export async function onEdited(host: EditHost, before: Message | PartialMessage | undefined, msg: Message | PartialMessage): Promise<void> {
  if (msg.partial || msg.author.bot || msg.system || msg.webhookId) return;
  // A link preview, a pin, a thread opened on it: the same text, not an edit of the question.
  if (before && !before.partial && before.content === msg.content) return;
  // Its turn in its conversation, taken as the gateway delivers it (see DiscordBot.onMessage).
  const turn = host.takeTurn(msg.channel, msg.channelId, false, msg.reference?.messageId);
  try {
    const label = `edit of message ${msg.id} (${msg.channel.isDMBased() ? 'DM' : `guild ${msg.guildId}, channel ${msg.channelId}`})`;
    await apologiseOnFailure(
      host.log,
      label,
      () => answerAgain(host, msg, label, turn),
      (content) => msg.reply({ content }),
    );
  } finally {
    turn.release();
  }
}

async function answerAgain(host: EditHost, msg: Message, label: string, turn: ArrivalTurn): Promise<void> {
  const ch = msg.channel;
  if (!ch.isSendable()) return;
  const route = await editRoute(host, msg, ch);
  if (!route) return;
  const text = stripBotMention(msg.content, host.botId);
  if (!text) return;
  if (!(await host.withinRate(msg.author.id, (t) => msg.reply({ content: t })))) return;
  // the id the message was asked under (DiscordBot.answerMessage); its answer, if still being given, is stopped first
  const asked = `discord-${msg.id}`;
  const again = editRequest(asked, await host.stopForEdit(asked, msg.author.id));
  const req: Omit<ConversationRequest, 'signal'> = {
    key: route.key,
    user: msg.author.id,
    text,
    ...again,
    requestId: `discord-${msg.id}-e${msg.editedTimestamp ?? Date.now()}`,
  };
  await host.run(req, route, label, turn, { asked, ...('edit' in again ? { quiet: EDIT_REFUSED_QUIETLY } : {}) });
}

/**
 * The conversation the edited message asked in and where its new answer goes: as for a new message (DiscordBot.message),
 * but a message that started a conversation is answered in the thread opened on it (or, where none could be, in the
 * channel). Undefined: a message the bot would not have answered.
 */
async function editRoute(host: EditHost, msg: Message, ch: SendableChannels): Promise<Route | undefined> {
  const guild = msg.guildId ?? '@me';
  const head = { notice: EDITED_LINE };
  if (ch.isDMBased()) {
    if (!host.allowed(null, ch.id)) return undefined;
    return { key: dmKey(ch.id), target: channelTarget(ch, msg), ...head };
  }
  if (ch.isThread()) {
    if (!host.allowed(msg.guildId, ch.id, ch.parentId) || !(await host.isBotThread(ch))) return undefined;
    return {
      key: { platform: 'discord', workspace: guild, channel: ch.parentId ?? ch.id, thread: ch.id },
      target: channelTarget(ch, msg),
      ...head,
    };
  }
  if (!msg.mentions.users.has(host.botId) || !host.allowed(msg.guildId, ch.id)) return undefined;
  const answerKey = msg.reference?.messageId ? await host.replyKeyOf(msg.reference.messageId) : undefined;
  if (answerKey) return { key: answerKey, target: channelTarget(ch, msg), inChannel: true, ...head };
  // The message that started the conversation: a thread on it has its id.
  const opened = await host.client.channels.fetch(msg.id).catch(() => null);
  if (opened?.isThread() && opened.isSendable() && (await host.isBotThread(opened))) {
    return { key: { platform: 'discord', workspace: guild, channel: ch.id, thread: opened.id }, target: channelTarget(opened), ...head };
  }
  return {
    key: { platform: 'discord', workspace: guild, channel: ch.id, thread: `message:${msg.id}` },
    target: channelTarget(ch, msg),
    inChannel: true,
    ...head,
  };
}
