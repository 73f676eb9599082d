// Discord's interactions: /describe (an attached image, or the thread's image) and the "Describe image"
// message command. Each is acknowledged (deferred) within Discord's 3 s, its original response streamed, and
// a thread opened on that response for follow-ups. The buttons on answers: Stop (while one is written) and
// Regenerate (the conversation's last answer given again, as a new message after it); /forget.
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
  type SendableChannels,
  type ThreadChannel,
} from 'discord.js';
import {
  regeneration,
  type ConversationKey,
  type ConversationRequest,
  type ConversationState,
  type ResetOutcome,
  type TaskTag,
} from '../../src/conversation/index.js';
import { isTask } from '../../src/grounding/tasks.js';
import type { ArrivalTurn } from '../shared/arrival-order.js';
import { describeError } from '../shared/errors.js';
import { FORGET_FAILED, forgetReply } from '../shared/forget.js';
import { ALREADY_REGENERATING, REGENERATED_LINE, REPLACED_LINE, type InFlight } from '../shared/regenerate.js';
import type { StopOutcome } from '../shared/stop-buttons.js';
import { DESCRIBE_COMMAND, DESCRIBE_IMAGE_MENU, FORGET_COMMAND } from './commands.js';
import { DISCORD_MESSAGE_LIMIT, notice, threadName } from './format.js';
import { findImage, ImageInputProblem, type DownloadPolicy, type ImageSource } from './images.js';
import { isPermissionError, regenerateButton, type RelayResult } from './relay.js';
import { apologiseOnFailure, HELP_DESCRIBE_NO_IMAGE, NO_THREAD_AFTER_DESCRIBE, NOT_ENABLED } from './replies.js';
import { channelTarget, dmKey, interactionTarget, type Route, type RunOptions } from './targets.js';
import type { AnswerRecords } from '../shared/deleted.js';

/** What the interactions need from the adapter (DiscordBot). */
export interface InteractionHost {
  readonly client: Client<true>;
  readonly policy: DownloadPolicy;
  /** each answered message's answers, and the message an image attachment was read from (deletions.ts) */
  readonly answers: AnswerRecords;
  log(line: string): void;
  /**
   * the request's turn in its conversation (arrival order), taken before anything is awaited; `replyTo`: the bot answer
   * in a channel (no thread) it continues
   */
  takeTurn(
    channel: { id: string; isThread(): boolean; isDMBased(): boolean } | null,
    channelId: string | null,
    dm: boolean,
    replyTo?: string | null,
  ): ArrivalTurn;
  allowed(guildId: string | null, channelId: string | null, parentId?: string | null): boolean;
  withinRate(user: string, tell: (text: string) => Promise<unknown>, privately?: boolean): Promise<boolean>;
  download(source: ImageSource | undefined, rejected: string | undefined): Promise<Uint8Array | undefined>;
  /** relays the request's answer to `route` (RunOptions: refusals kept quiet, the message it answers) */
  run(req: Omit<ConversationRequest, 'signal'>, route: Route, label: string, turn: ArrivalTurn, opts?: RunOptions): Promise<RelayResult>;
  /** a thread the bot opened: messages there are follow-ups */
  rememberThread(id: string): void;
  /** a Stop button pressed (DiscordBot.stop): `id` is its custom id after STOP_PREFIX */
  stop(id: string, user: string, moderator: boolean): StopOutcome;
  /** a thread the bot started */
  isBotThread(thread: ThreadChannel): Promise<boolean>;
  /** `/forget` (DiscordBot.forget) */
  forget(key: ConversationKey, user: string, moderator: boolean): Promise<ResetOutcome>;
  /** the conversation of a bot answer posted in a channel (no thread), if this process remembers it */
  replyKey(messageId: string): ConversationKey | undefined;
  /** the stored conversation */
  history(key: ConversationKey): Promise<ConversationState | null>;
  /** the answers being regenerated (by request id) */
  readonly regenerating: InFlight;
}

/** The custom ids of the Stop buttons on running answers start with this. */
export const STOP_PREFIX = 'minigpt-stop:';
/** The custom ids of the Regenerate buttons on answers start with this; the rest is the answer's request id. */
export const REGENERATE_PREFIX = 'minigpt-regen:';
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
  if (i.isButton() && i.customId.startsWith(REGENERATE_PREFIX)) {
    await onRegenerate(bot, i);
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
  if (!i.guildId && i.channelId) key = dmKey(i.channelId);
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

/**
 * The Regenerate button of an answer: the asker gets a new answer to the same question, posted after it, which
 * replaces it in the conversation (the old one says so and loses its button). Only the conversation's last answer can
 * be regenerated; anyone else, or an older answer, is told why privately (an older answer's button is removed).
 */
async function onRegenerate(bot: InteractionHost, i: ButtonInteraction): Promise<void> {
  // A second press while the first is answered (both would pass the check before either is stored): told at once.
  const done = await bot.regenerating.claim(i.customId);
  if (!done) {
    await i.reply({ content: ALREADY_REGENERATING, flags: MessageFlags.Ephemeral });
    return;
  }
  // Its turn in its conversation (a thread, a DM, or an answer in a channel), taken as the gateway delivers it.
  const turn = bot.takeTurn(i.channel, i.channelId, !i.guildId, i.message.id);
  try {
    const label = `regenerate ${i.id} (${i.guildId ? `guild ${i.guildId}, channel ${i.channelId}` : 'DM'})`;
    await apologiseOnFailure(
      (line) => bot.log(line),
      label,
      () => regenerate(bot, i, label, turn),
      (content) => i.followUp({ content, flags: MessageFlags.Ephemeral }),
    );
  } finally {
    turn.release();
    done();
  }
}

async function regenerate(bot: InteractionHost, i: ButtonInteraction, label: string, turn: ArrivalTurn): Promise<void> {
  // `<request id>`, or `<request id>|<thread>` for an answer in a channel (no thread): its conversation's key
  const [requestId = '', inChannel] = i.customId.slice(REGENERATE_PREFIX.length).split('|');
  const channel = i.channel;
  const thread = channel?.isThread() ? channel : null;
  if (!bot.allowed(i.guildId, i.channelId, thread?.parentId) || !channel?.isSendable()) {
    await i.reply({ content: NOT_ENABLED, flags: MessageFlags.Ephemeral });
    return;
  }
  const route = await regenerateRoute(bot, i, channel, inChannel);
  const verdict = regeneration(await bot.history(route.key), requestId, i.user.id);
  if ('code' in verdict) {
    if (verdict.code === 'stale') await i.update({ components: [] });
    const tell = { content: verdict.message, flags: MessageFlags.Ephemeral } as const;
    await (verdict.code === 'stale' ? i.followUp(tell) : i.reply(tell));
    return;
  }
  if (!(await bot.withinRate(i.user.id, (t) => i.reply({ content: t, flags: MessageFlags.Ephemeral }), true))) return;
  // Acknowledged by taking the button away: this answer is being replaced.
  await i.update({ components: [] });
  const req: Omit<ConversationRequest, 'signal'> = {
    key: route.key,
    user: i.user.id,
    text: '',
    regenerate: requestId,
    requestId: `discord-${i.id}`,
  };
  // (the new answer answers the message that asked the turn, as the old one did)
  const r = await bot.run(req, route, label, turn, verdict.askedAs !== undefined ? { asked: verdict.askedAs } : {});
  const old = i.message.content;
  if (r.ok) {
    const line = notice(REPLACED_LINE);
    if (old.length + line.length + 1 <= DISCORD_MESSAGE_LIMIT) await editPressed(bot, i, { content: `${old}\n${line}` });
  } else if (r.error?.code !== 'stale' && r.error?.code !== 'not_allowed') {
    // not answered (stopped, busy, an error): the old answer stands, and can be regenerated again
    await editPressed(bot, i, { components: [regenerateButton(i.customId).toJSON()] });
  }
}

/**
 * Edits the answer whose button was pressed, once the new answer ended: through the channel (the press's token
 * expires 15 minutes after it, and a slow answer behind a queue may take longer), else through the press (an
 * interaction's response in a DM).
 */
async function editPressed(bot: InteractionHost, i: ButtonInteraction, body: { content?: string; components?: unknown[] }): Promise<void> {
  try {
    await bot.client.rest.patch(Routes.channelMessage(i.channelId, i.message.id), { body });
  } catch (err) {
    try {
      await i.editReply(body as Parameters<ButtonInteraction['editReply']>[0]);
    } catch {
      bot.log(`discord: could not edit the answer ${i.message.id} a Regenerate press replaced: ${describeError(err)}`);
    }
  }
}

/**
 * Where a Regenerate button's conversation is and where its new answer goes: after the old answer, in its DM, bot
 * thread or channel; for an answer in a channel with a thread on it (a /describe), in that thread.
 */
async function regenerateRoute(
  bot: InteractionHost,
  i: ButtonInteraction,
  channel: SendableChannels,
  inChannel: string | undefined,
): Promise<Route> {
  const head = { notice: REGENERATED_LINE };
  if (!i.guildId) {
    return {
      key: dmKey(i.channelId),
      target: channelTarget(channel, i.message),
      ...head,
    };
  }
  if (channel.isThread()) {
    const key: ConversationKey = { platform: 'discord', workspace: i.guildId, channel: channel.parentId ?? channel.id, thread: channel.id };
    return { key, target: channelTarget(channel, i.message), ...head };
  }
  // An answer in the channel itself: its conversation is known from the button (also after a restart).
  const known = inChannel
    ? { platform: 'discord' as const, workspace: i.guildId, channel: i.channelId, thread: inChannel }
    : bot.replyKey(i.message.id);
  if (known) return { key: known, target: channelTarget(channel, i.message), inChannel: true, ...head };
  // A /describe answer in a channel: its conversation is the thread opened on it (the thread has the message's id).
  const key: ConversationKey = { platform: 'discord', workspace: i.guildId, channel: i.channelId, thread: i.message.id };
  const onIt = await bot.client.channels.fetch(i.message.id).catch(() => null);
  return { key, target: onIt?.isThread() && onIt.isSendable() ? channelTarget(onIt) : channelTarget(channel, i.message), ...head };
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
  /** the target message's image attachment, when the image was read from one */
  let attachment: string | undefined;
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
      attachment = found.source?.id;
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
  if (dm) key = dmKey(channelId);
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
    // (deleting the message described forgets the conversation, as its image's)
    ...(image && input.target ? { imageFrom: `discord-${input.target.id}` } : {}),
    requestId: `discord-${i.id}`,
  };
  // (the attachment removed from the message later forgets its image as deleting that message would)
  if (attachment && req.imageFrom) await bot.answers.imageFile(attachment, req.imageFrom, key);
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
