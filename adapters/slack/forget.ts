// The "Forget this conversation" message shortcut, on any message of a thread the bot answers in (or of a direct
// message with it): that conversation's image and history are deleted at once (after the requests sent there before it), for someone who took part
// in it or a workspace admin. The reply is for the user alone (ephemeral, in the thread).
import type { webApi } from '@slack/bolt';
import { FORGET_FAILED, forgetConversation, forgetReply } from '../shared/forget.js';
import type { WorkspaceAdmins } from './admins.js';
import { dmKey, isDirectMessage, slackKey } from './answer.js';
import { ephemeral } from './describe.js';
import { describeSlackError } from './errors.js';
import type { ShortcutPayload } from './events.js';
import type { SlackConversationManager } from './options.js';

type WebClient = webApi.WebClient;

const NOT_YOURS_TO_FORGET = 'Only someone who took part in this conversation, or a workspace admin, can make me forget it.';

export async function onForget(
  ctx: { manager: Pick<SlackConversationManager, 'history' | 'reset'>; admins: WorkspaceAdmins; log: (line: string) => void },
  s: ShortcutPayload,
  client: WebClient,
  respond: (text: string) => Promise<void>,
): Promise<void> {
  const channel = s.channel?.id;
  const user = s.user?.id;
  const msg = s.message;
  if (!channel || !user || !msg?.ts) return;
  const thread = msg.thread_ts ?? msg.ts;
  const team = s.team?.id ?? s.user?.team_id ?? '';
  // (a direct message is one conversation)
  const key = isDirectMessage(channel) ? dmKey(team, channel) : slackKey(team, channel, thread);
  let text: string;
  try {
    const outcome = await forgetConversation(ctx.manager, key, user, () => ctx.admins.isAdmin(client, user));
    if (outcome === 'forgotten') ctx.log(`slack: conversation ${channel}/${key.thread} forgotten at the request of user ${user}`);
    text = forgetReply(outcome, NOT_YOURS_TO_FORGET);
  } catch (err) {
    ctx.log(`slack: forgetting ${channel}/${key.thread}: ${describeSlackError(err)}`);
    text = FORGET_FAILED;
  }
  await ephemeral(ctx, client, channel, user, text, respond, thread);
}
