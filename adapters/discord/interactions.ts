// Discord's interactions: /describe (an attached image, or the thread's image) and the "Describe image"
// message command. Each is acknowledged (deferred) within Discord's 3 s, its original response streamed, and
// a thread opened on that response for follow-ups.
import {
  MessageFlags,
  PermissionFlagsBits,
  Routes,
  ThreadAutoArchiveDuration,
  type Attachment,
  type ButtonInteraction,
  type ChatInputCommandInteraction,
  type Client,
  type Interaction,
  type Message,
  type MessageContextMenuCommandInteraction,
  type ThreadChannel,
} from 'discord.js';
import type { ConversationKey, ConversationRequest, ResetOutcome, TaskTag } from '../../src/conversation/index.js';
import { isTask } from '../../src/grounding/tasks.js';
import type { ArrivalTurn } from '../shared/arrival-order.js';
import { describeError } from '../shared/errors.js';
import { FORGET_FAILED, forgetReply } from '../shared/forget.js';
import type { StopOutcome } from '../shared/stop-buttons.js';
import { DESCRIBE_COMMAND, DESCRIBE_IMAGE_MENU, FORGET_COMMAND } from './commands.js';
import { notice, threadName } from './format.js';
import { findImage, ImageInputProblem, type DownloadPolicy, type ImageSource } from './images.js';
import { isPermissionError, type RelayResult } from './relay.js';
import { apologiseOnFailure, HELP_DESCRIBE_NO_IMAGE, NO_THREAD_AFTER_DESCRIBE, NOT_ENABLED } from './replies.js';
import { interactionTarget, type Route } from './targets.js';

/** What the interactions need from the adapter (DiscordBot). */
export interface InteractionHost {
  readonly client: Client<true>;
  readonly policy: DownloadPolicy;
  log(line: string): void;
  /** the request's turn in its conversation (arrival order), taken before anything is awaited */
  takeTurn(channel: { id: string; isThread(): boolean; isDMBased(): boolean } | null, channelId: string | null, dm: boolean): ArrivalTurn;
  allowed(guildId: string | null, channelId: string | null, parentId?: string | null): boolean;
  withinRate(user: string, tell: (text: string) => Promise<unknown>, privately?: boolean): Promise<boolean>;
  download(source: ImageSource | undefined, rejected: string | undefined): Promise<Uint8Array | undefined>;
  run(req: Omit<ConversationRequest, 'signal'>, route: Route, label: string, turn: ArrivalTurn): Promise<RelayResult>;
  /** a thread the bot opened: messages there are follow-ups */
  rememberThread(id: string): void;
  /** a Stop button pressed (DiscordBot.stop): `id` is its custom id after STOP_PREFIX */
  stop(id: string, user: string, moderator: boolean): StopOutcome;
  /** a thread the bot started */
  isBotThread(thread: ThreadChannel): Promise<boolean>;
  /** `/forget` (DiscordBot.forget) */
  forget(key: ConversationKey, user: string, moderator: boolean): Promise<ResetOutcome>;
}

/** The custom ids of the Stop buttons on running answers start with this. */
export const STOP_PREFIX = 'minigpt-stop:';
const NOT_YOURS = 'Only the person who asked, or a moderator (Manage Messages), can stop this answer.';
const FINISHED = 'This answer has already finished.';
const FORGET_WHERE = 'Use /forget inside a thread I started (or in a DM with me): it deletes that conversation.';
const NOT_YOURS_TO_FORGET = 'Only someone who took part in this conversation, or a moderator (Manage Messages), can make me forget it.';

type DescribeInteraction = ChatInputCommandInteraction | MessageContextMenuCommandInteraction;

interface DescribeInput {
  attachment?: Attachment;
  target?: Message;
  prompt: string;
  task?: TaskTag | 'chat';
  temperature?: number;
}

export async function onInteraction(bot: InteractionHost, i: Interaction): Promise<void> {
  if (i.isButton() && i.customId.startsWith(STOP_PREFIX)) {
    await onStop(bot, i);
    return;
  }
  if (i.isChatInputCommand() && i.commandName === DESCRIBE_COMMAND) {
    const task = i.options.getString('task');
    await describe(bot, i, {
      attachment: i.options.getAttachment('image') ?? undefined,
      prompt: i.options.getString('prompt') ?? '',
      task: task && (task === 'chat' || isTask(task)) ? task : undefined,
      temperature: i.options.getNumber('temperature') ?? undefined,
    });
  } else if (i.isMessageContextMenuCommand() && i.commandName === DESCRIBE_IMAGE_MENU) {
    await describe(bot, i, { target: i.targetMessage, prompt: '' });
  } else if (i.isChatInputCommand() && i.commandName === FORGET_COMMAND) {
    await forget(bot, i);
  }
}

/**
 * `/forget`: the conversation of the bot thread or DM it is used in is deleted (image and history), after the
 * requests sent there before it; the answer is private.
 */
async function forget(bot: InteractionHost, i: ChatInputCommandInteraction): Promise<void> {
  const channel = i.channel;
  let key: ConversationKey | undefined;
  if (!i.guildId && i.channelId) key = { platform: 'discord', workspace: '@me', channel: i.channelId, thread: i.channelId };
  else if (i.guildId && channel?.isThread() && (await bot.isBotThread(channel)))
    key = { platform: 'discord', workspace: i.guildId, channel: channel.parentId ?? channel.id, thread: channel.id };
  if (!key) {
    await i.reply({ content: FORGET_WHERE, flags: MessageFlags.Ephemeral });
    return;
  }
  const turn = bot.takeTurn(channel, i.channelId, !i.guildId);
  try {
    await i.deferReply({ flags: MessageFlags.Ephemeral });
    await turn.ready();
    const moderator = i.memberPermissions?.has(PermissionFlagsBits.ManageMessages) ?? false;
    let outcome: ResetOutcome;
    try {
      outcome = await bot.forget(key, i.user.id, moderator);
    } catch (err) {
      bot.log(`discord: /forget ${i.id}: ${describeError(err)}`);
      await i.editReply({ content: FORGET_FAILED });
      return;
    }
    await i.editReply({ content: forgetReply(outcome, NOT_YOURS_TO_FORGET) });
  } finally {
    turn.release();
  }
}

/** The Stop button: acknowledged without a message of its own (the answer's message says it stopped), or a private no. */
async function onStop(bot: InteractionHost, i: ButtonInteraction): Promise<void> {
  // In a DM the asker is the only other person there.
  const moderator = i.memberPermissions?.has(PermissionFlagsBits.ManageMessages) ?? false;
  const outcome = bot.stop(i.customId.slice(STOP_PREFIX.length), i.user.id, moderator);
  if (outcome === 'stopped') await i.deferUpdate();
  else await i.reply({ content: outcome === 'finished' ? FINISHED : NOT_YOURS, flags: MessageFlags.Ephemeral });
}

async function describe(bot: InteractionHost, i: DescribeInteraction, input: DescribeInput): Promise<void> {
  // Its turn in its conversation (a thread or DM), taken as the gateway delivers it.
  const turn = bot.takeTurn(i.channel, i.channelId, !i.guildId);
  try {
    await describeIn(bot, i, input, turn);
  } finally {
    turn.release();
  }
}

async function describeIn(bot: InteractionHost, i: DescribeInteraction, input: DescribeInput, turn: ArrivalTurn): Promise<void> {
  const channel = i.channel;
  const thread = channel?.isThread() ? channel : null;
  if (!bot.allowed(i.guildId, i.channelId, thread?.parentId)) {
    await i.reply({ content: NOT_ENABLED, flags: MessageFlags.Ephemeral });
    return;
  }
  if (!(await bot.withinRate(i.user.id, (t) => i.reply({ content: t, flags: MessageFlags.Ephemeral }), true))) return;
  // Acknowledge inside Discord's 3 s window before anything slow.
  await i.deferReply();
  const label = `${i.isChatInputCommand() ? '/' : ''}${i.commandName} ${i.id} (${i.guildId ? `guild ${i.guildId}, channel ${i.channelId}` : 'DM'})`;
  await apologiseOnFailure(
    (line) => bot.log(line),
    label,
    () => answerInteraction(bot, i, input, { thread, label, turn }),
    (content) => i.editReply({ content }),
  );
}

async function answerInteraction(
  bot: InteractionHost,
  i: DescribeInteraction,
  input: DescribeInput,
  ctx: { thread: ThreadChannel | null; label: string; turn: ArrivalTurn },
): Promise<void> {
  const dm = !i.guildId;
  let image: Uint8Array | undefined;
  try {
    if (input.attachment) {
      const found = findImage({ attachments: [input.attachment], embeds: [], content: '' }, bot.policy);
      image = await bot.download(found.source, found.rejected);
    } else if (input.target) {
      const found = findImage(input.target, bot.policy);
      if (!found.source && !found.rejected) {
        await i.editReply({
          content: '⚠️ That message has no image I can read (PNG, JPEG, WebP or GIF attachment, or a Discord image link).',
        });
        return;
      }
      image = await bot.download(found.source, found.rejected);
    }
  } catch (err) {
    if (!(err instanceof ImageInputProblem)) throw err;
    await i.editReply({ content: `⚠️ ${err.message}` });
    return;
  }
  if (!image && !dm && !ctx.thread) {
    await i.editReply({ content: HELP_DESCRIBE_NO_IMAGE });
    return;
  }

  const guild = i.guildId ?? '@me';
  const channelId = i.channelId!;
  let key: ConversationKey;
  let replyId: string | undefined;
  if (dm) key = { platform: 'discord', workspace: '@me', channel: channelId, thread: channelId };
  else if (ctx.thread) key = { platform: 'discord', workspace: guild, channel: ctx.thread.parentId ?? channelId, thread: ctx.thread.id };
  else {
    // A thread started from a message has the message's id: the reply's id is the future thread's.
    replyId = (await i.fetchReply()).id;
    key = { platform: 'discord', workspace: guild, channel: channelId, thread: replyId };
  }
  const text = input.prompt.trim();
  const req: Omit<ConversationRequest, 'signal'> = {
    key,
    user: i.user.id,
    text,
    ...(image ? { image } : {}),
    ...(input.task ? { task: input.task } : !text && image ? { task: 'caption' as const } : {}),
    ...(input.temperature !== undefined ? { generation: { temperature: input.temperature } } : {}),
    requestId: `discord-${i.id}`,
  };
  const r = await bot.run(req, { key, target: interactionTarget(i) }, ctx.label, ctx.turn);
  if (!r.ok || !replyId) return;
  try {
    await bot.client.rest.post(Routes.threads(channelId, replyId), {
      body: { name: threadName(text || (input.target ? 'Describe image' : '')), auto_archive_duration: ThreadAutoArchiveDuration.OneDay },
    });
    bot.rememberThread(replyId);
  } catch (err) {
    bot.log(`discord: ${ctx.label}: could not open a thread on the reply: ${describeError(err)}`);
    if (isPermissionError(err)) await i.followUp({ content: notice(NO_THREAD_AFTER_DESCRIBE) }).catch(() => {});
  }
}
