// The two ways to ask about an image without mentioning the bot: `/describe [task] prompt` (the linked file,
// else the channel's newest image; the answer starts a thread) and the "Describe image" message shortcut (the
// message's image, answered in its thread). Problems are told to the user alone (ephemeral).
import type { webApi } from '@slack/bolt';
import type { ArrivalTurn } from '../shared/arrival-order.js';
import { answer, isDirectMessage, type AnswerContext } from './answer.js';
import type { MessageLike, ShortcutPayload } from './events.js';
import { fileInfo } from './file-info.js';
import { eventFiles, FileInputError, isImageFile, notAnImage, type SlackFile } from './files.js';
import { escapeMrkdwn, parseDescribe } from './format.js';
import { describeSlackError, slackErrorCode } from './errors.js';

type WebClient = webApi.WebClient;

export interface DescribeContext extends AnswerContext {
  /** messages of the channel searched for /describe's image */
  readonly historyLimit: number;
  /** the bot's name, for "/invite @name" */
  readonly botName: string;
  /** the slash command, as the user types it */
  readonly command: string;
  /** a number for request ids, new on each call */
  nextId(): number;
}

/** `/describe [task] prompt`: the linked file or the channel's newest image; the answer starts a thread. */
export async function onDescribe(
  ctx: DescribeContext,
  c: { team: string; channel: string; user: string; text: string },
  client: WebClient,
  respond: (text: string) => Promise<void>,
): Promise<void> {
  const tell = (text: string) => ephemeral(ctx, client, c.channel, c.user, text, respond);
  const { task, prompt, fileIds } = parseDescribe(c.text);
  let file: SlackFile | undefined;
  let from: string | undefined;
  try {
    if (fileIds.length > 0) {
      file = await fileInfo(client, fileIds[0]);
      if (!isImageFile(file)) throw notAnImage(file);
    } else {
      ({ file, from } = await newestImage(ctx, client, c.channel));
      if (!file) {
        await tell(
          `I found no image in the last ${ctx.historyLimit} messages of this channel. Post one first (or paste a link to an image file after ${ctx.command}) and try again.`,
        );
        return;
      }
    }
  } catch (err) {
    if (err instanceof FileInputError) {
      await tell(err.message);
      return;
    }
    const code = slackErrorCode(err);
    ctx.log(`slack: /describe in ${c.channel}: reading the channel failed: ${describeSlackError(err)}`);
    if (code === 'not_in_channel' || code === 'channel_not_found') {
      await tell(`I cannot read this channel: invite me first (\`/invite @${ctx.botName}\`), then try again.`);
    } else if (code === 'missing_scope') {
      await tell(
        'The app needs the `channels:history` scope (`groups:history` for private channels, `im:history` for direct messages) to find the newest image.',
      );
    } else {
      await tell("I could not read this channel's messages; please try again.");
    }
    return;
  }
  const shown = [task ? `[${task}]` : '', prompt].filter(Boolean).join(' ');
  const header = `<@${c.user}> asked${shown ? `: ${escapeMrkdwn(shown.slice(0, 300))}` : ' me to describe the newest image'}`;
  await answer(ctx, {
    client,
    team: c.team,
    channel: c.channel,
    user: c.user,
    text: prompt,
    ...(task ? { task } : {}),
    // in a direct message, the answer goes into the DM's one conversation
    ...(isDirectMessage(c.channel) ? { dm: true } : {}),
    file,
    ...(from ? { imageFrom: `slack:${c.channel}:${from}` } : {}),
    header,
    requestId: `slack:${c.channel}:cmd${ctx.nextId()}`,
    what: `/describe in ${c.channel}`,
  });
}

/** The channel's newest image and the ts of its message; none in the last `historyLimit` messages: `{}`. */
async function newestImage(ctx: DescribeContext, client: WebClient, channel: string): Promise<{ file?: SlackFile; from?: string }> {
  let cursor: string | undefined;
  let seen = 0;
  while (seen < ctx.historyLimit) {
    const res = await client.conversations.history({
      channel,
      limit: Math.min(200, ctx.historyLimit - seen),
      ...(cursor ? { cursor } : {}),
    });
    const msgs = (res.messages ?? []) as MessageLike[];
    for (const m of msgs) {
      const img = eventFiles(m.files).find((f) => isImageFile(f));
      if (img) return { file: img, ...(m.ts ? { from: m.ts } : {}) };
    }
    seen += msgs.length;
    cursor = res.response_metadata?.next_cursor || undefined;
    if (!res.has_more || !cursor || msgs.length === 0) break;
  }
  return {};
}

/** The "Describe image" message shortcut: the message's image, answered in its thread. */
export async function onShortcut(
  ctx: DescribeContext,
  s: ShortcutPayload,
  client: WebClient,
  respond: (text: string) => Promise<void>,
  turn?: ArrivalTurn,
): Promise<void> {
  const channel = s.channel?.id;
  const user = s.user?.id ?? 'unknown';
  const team = s.team?.id ?? s.user?.team_id ?? '';
  const msg = s.message;
  if (!channel || !msg?.ts) return;
  const files = eventFiles(msg.files);
  const file = files.find((f) => isImageFile(f));
  if (!file) {
    await ephemeral(
      ctx,
      client,
      channel,
      user,
      files.length > 0 ? notAnImage(files[0]).message : 'That message has no image to describe.',
      respond,
    );
    return;
  }
  const thread = msg.thread_ts ?? msg.ts;
  await answer(ctx, {
    client,
    team,
    channel,
    thread,
    ...(isDirectMessage(channel) ? { dm: true } : {}),
    user,
    text: '',
    file,
    // (deleting the message described forgets the conversation, as its image's)
    imageFrom: `slack:${channel}:${msg.ts}`,
    header: `<@${user}> asked me to describe this image:`,
    requestId: `slack:${channel}:sc${ctx.nextId()}`,
    what: `shortcut in ${channel} thread ${thread}`,
    turn,
  });
}

/** `text` shown to `user` alone (in `thread` if given); by the command's or shortcut's response URL if that fails. */
export async function ephemeral(
  ctx: Pick<DescribeContext, 'log'>,
  client: WebClient,
  channel: string,
  user: string,
  text: string,
  respond?: (text: string) => Promise<void>,
  thread?: string,
): Promise<void> {
  try {
    await client.chat.postEphemeral({ channel, user, text: escapeMrkdwn(text), ...(thread ? { thread_ts: thread } : {}) });
  } catch (err) {
    ctx.log(`slack: chat.postEphemeral in ${channel} failed: ${describeSlackError(err)}`);
    if (respond) await respond(text).catch((e: unknown) => ctx.log(`slack: response_url failed: ${describeSlackError(e)}`));
  }
}
