// What the Discord adapter says besides answers (help, refusals, limits), and the mention it strips from a
// question, kept apart from the event handling so that the wording is read and changed in one place.
import { describeError } from '../shared/errors.js';

export const HELP_NO_IMAGE =
  'Attach an image (PNG, JPEG, WebP or GIF) to your message, or reply to a message that has one, and mention me with your question. ' +
  'Start with a task tag such as `[grounding]`, `[refer]`, `[detection]`, `[identify]`, `[vqa]` or `[caption]` to pick a task.';
export const HELP_DESCRIBE_NO_IMAGE =
  'Add an image with the `image` option, or use `/describe` inside a thread I started to ask about its image.';
export const NO_THREAD_NOTICE =
  "I couldn't start a thread here (I need the Create Public Threads permission), so I'm answering in the channel: reply to my answer and mention me to follow up.";
export const NO_THREAD_AFTER_DESCRIBE = "I couldn't open a thread for follow-ups here (I need the Create Public Threads permission).";
export const NOT_ENABLED = "I'm not enabled in this server or channel.";
export const INTERNAL = 'Sorry, something went wrong on my side while handling that. Please try again.';

/**
 * Handles one request; a failure that nothing in it caught is logged and the user told INTERNAL (`tell`: the reply
 * the request still allows), so that nobody waits for an answer that will not come.
 */
export async function apologiseOnFailure(
  log: (line: string) => void,
  label: string,
  handle: () => Promise<void>,
  tell: (content: string) => Promise<unknown>,
): Promise<void> {
  try {
    await handle();
  } catch (err) {
    log(`discord: ${label} failed: ${describeError(err)}`);
    await tell(`⚠️ ${INTERNAL}`).catch(() => {});
  }
}

/** Removes mentions of the bot (`<@id>`, `<@!id>`) from a message's text. */
export function stripBotMention(content: string, botId: string): string {
  return content
    .replace(new RegExp(`<@!?${botId}>`, 'g'), ' ')
    .replace(/[ \t]{2,}/g, ' ')
    .trim();
}
