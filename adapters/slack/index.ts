// The Slack adapter (docs/architecture.md): @slack/bolt events in, ConversationRequest out; AnswerEvents in,
// Slack messages out. It translates and nothing more: conversations, images and history are the manager's.
//
//   app_mention (+ files)      -> a request keyed by the mention's thread; the answer goes into that thread
//   message in a bot thread    -> a follow-up (no mention needed); a new image replaces the conversation's
//   message in a DM            -> a request in the DM's one conversation, answered in the DM (or the thread)
//   /describe [task] prompt    -> the channel's newest image (or a linked file); the answer starts a thread
//   "Describe image" shortcut  -> the message's image; the answer goes into the message's thread
//   "Forget this conversation" -> the thread's (the DM's) conversation deleted, for a participant or an admin
//   Stop button                -> the answer being written stops (the asker, or a workspace admin)
//   Regenerate button          -> the latest answer given again (the asker)
//   the latest question edited -> answered again (message_changed)
//   app_uninstalled, the bot's tokens_revoked -> the workspace's conversations forgotten
//   channel_deleted, group_deleted -> the channel's conversations forgotten
//   a question's message deleted (message_deleted, a tombstone), or its image's file (file_deleted)
//                              -> what the bot kept of it forgotten, its answers deleted; an answer deleted by an
//                                 admin -> that exchange forgotten
//
// HTTP mode (Bolt's HTTPReceiver on `/slack/events`, signatures verified) when a signing secret is given,
// Socket Mode when an app token is given. Every event is acknowledged at once and claimed by its event id
// (and its message by channel + ts) in the store, so a retried event is answered once.
//
// The files: options.ts (settings, SLACK_* environment), app.ts (Bolt's App, the token check), bot.ts (the
// event handlers), answer.ts and reply.ts (one answer as messages), describe.ts (/describe and the shortcut),
// forget.ts (the forget shortcut), admins.ts (workspace admins), files.ts and file-info.ts (images), format.ts
// (mrkdwn), dedupe.ts ("seen" marks).
import { startSlackAdapter } from './app.js';
import { slackOptionsFromEnv, type SlackConversationManager } from './options.js';
import type { RateLimiterFactory } from '../shared/rate-limit.js';
import type { SharedStops } from '../shared/shared-stops.js';
import type { SharedArrivalOrder } from '../shared/arrival-order.js';

export { startSlackAdapter } from './app.js';
export {
  DEFAULT_COMMAND,
  DEFAULT_SHORTCUT,
  DEFAULT_SLACK_PORT,
  normaliseApiUrl,
  SLACK_EVENTS_PATH,
  SlackConfigError,
  slackOptionsFromEnv,
  type SlackAdapter,
  type SlackAdapterOptions,
  type SlackConversationManager,
} from './options.js';
export { answerChunks, answerMrkdwn, parseDescribe, slackTextToPlain } from './format.js';
export { isAllowedFileUrl } from './files.js';

/** For src/serve.ts's PLATFORM_ADAPTERS: `start: (ctx) => import('../adapters/slack/index.js').then((m) => m.startSlack(ctx))`. */
export async function startSlack(ctx: {
  manager: SlackConversationManager;
  env: NodeJS.ProcessEnv;
  log: (line: string) => void;
  rateLimiter?: RateLimiterFactory;
  arrivalOrder?: SharedArrivalOrder;
  sharedStops?: SharedStops;
}): Promise<{ name: string; url?: string; fatal: Promise<Error>; close(): Promise<void> }> {
  const adapter = await startSlackAdapter({
    ...slackOptionsFromEnv(ctx.env),
    manager: ctx.manager,
    log: ctx.log,
    ...(ctx.rateLimiter ? { rateLimiter: ctx.rateLimiter } : {}),
    ...(ctx.arrivalOrder ? { arrivalOrder: ctx.arrivalOrder } : {}),
    ...(ctx.sharedStops ? { sharedStops: ctx.sharedStops } : {}),
  });
  return { name: 'slack', ...(adapter.url ? { url: adapter.url } : {}), fatal: adapter.fatal, close: () => adapter.close() };
}
