// "Forget this conversation" (Discord's /forget, Slack's message shortcut): the conversation's image and history
// deleted at once, for someone who took part in it or may moderate; the replies both platforms give.
import type { ConversationKey, ResetOutcome } from '../../src/conversation/index.js';
import type { ConversationPort } from './port.js';

const FORGOTTEN = "Forgotten: this conversation's image and history are deleted. Send an image to start again.";
const NOTHING_STORED = 'I have nothing stored for this conversation.';
export const FORGET_FAILED = "⚠️ I couldn't reach my conversation store; nothing was deleted. Please try again in a moment.";

/**
 * Deletes `key`'s conversation if `user` took part in it (a stored turn of theirs, or they sent its image; one
 * stored without either by an earlier version is anyone's to forget) or may moderate: `moderator` (a function is asked only when the user
 * took no part: on Slack it is an API call). Decided in the conversation's order, so that requests sent before it
 * are stored, then forgotten. Store errors are thrown: nothing was deleted.
 */
export async function forgetConversation(
  port: Pick<ConversationPort, 'reset'>,
  key: ConversationKey,
  user: string,
  moderator: boolean | (() => Promise<boolean>),
): Promise<ResetOutcome> {
  if (moderator === true) return port.reset(key);
  const outcome = await port.reset(key, { by: user });
  if (outcome !== 'not_allowed' || moderator === false || !(await moderator())) return outcome;
  return port.reset(key);
}

/** What the user is told of a forget's outcome (`notAllowed`: the platform's sentence, naming who may). */
export function forgetReply(outcome: ResetOutcome, notAllowed: string): string {
  return outcome === 'forgotten' ? FORGOTTEN : outcome === 'empty' ? NOTHING_STORED : notAllowed;
}

/**
 * How a log line about forgetting a workspace's or channel's conversations ends: ": 2 conversations forgotten", or
 * (a store that cannot be walked) that they go after the retention time.
 */
export function forgottenCount(n: number | undefined): string {
  return n === undefined
    ? '; its conversations cannot be listed in this store and go after the retention time'
    : `: ${n} conversation${n === 1 ? '' : 's'} forgotten`;
}
