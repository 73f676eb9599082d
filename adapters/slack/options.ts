// The Slack adapter's settings: its options, what it gives back, the SLACK_* environment (.env.example), and
// the one error a misconfiguration raises (its message names the variable to fix).
import type { ConversationPort } from '../shared/port.js';
import { rateLimitFromEnv, type RateLimiterFactory, type RateLimitSetting } from '../shared/rate-limit.js';
import type { SharedStops } from '../shared/shared-stops.js';
import type { SharedArrivalOrder } from '../shared/arrival-order.js';
import type Keyv from 'keyv';

/**
 * What the adapter needs from the conversation manager (reset: "Forget this conversation"; forgetWorkspace: the app
 * uninstalled; its store: where the "seen" marks live unless given `store`).
 */
export type SlackConversationManager = Pick<ConversationPort, 'handle' | 'history' | 'reset' | 'forgetQuestion' | 'forgetWorkspace'> &
  Partial<Pick<ConversationPort, 'store'>>;

export interface SlackAdapterOptions {
  manager: SlackConversationManager;
  /** SLACK_BOT_TOKEN (xoxb-…) */
  botToken: string;
  /** SLACK_SIGNING_SECRET: HTTP mode */
  signingSecret?: string;
  /** SLACK_APP_TOKEN (xapp-…): Socket Mode (wins over HTTP mode) */
  appToken?: string;
  /** SLACK_PORT: HTTP mode's port (default 3000; 0 picks a free one) */
  port?: number;
  /** HTTP mode's listen address (default: every interface, as Slack must reach it) */
  host?: string;
  /** SLACK_API_URL: Web API base URL (default Slack's); its origin may also serve files */
  apiUrl?: string;
  /** where event ids are remembered (default the manager's store; in memory when neither) */
  store?: Keyv;
  log?: (line: string) => void;
  /** largest image downloaded (default 20 MiB) */
  maxFileBytes?: number;
  /** download timeout (default 30 s) */
  downloadTimeoutMs?: number;
  /** least time between two edits of an answer (default 1200 ms; Slack allows about one a second) */
  updateIntervalMs?: number;
  /** least time between two places in the queue shown in a waiting reply (default 5 s) */
  queueUpdateMs?: number;
  /** a request waiting in line shows its place once it has waited this long (default 1 s: PLACE_AFTER_MS) */
  placeAfterMs?: number;
  /** most characters per message (default 3500); longer answers continue in more messages */
  maxMessageChars?: number;
  /** the slash command (default /describe) */
  command?: string;
  /** the "Describe image" message shortcut's callback id (default describe_image) */
  shortcutCallbackId?: string;
  /** the "Forget this conversation" message shortcut's callback id (default forget_conversation) */
  forgetShortcutCallbackId?: string;
  /** messages of the channel searched for /describe's image (default 100) */
  historyLimit?: number;
  /** how long event ids are remembered (default 24 h) */
  dedupeTtlMs?: number;
  /** how long close() lets running answers finish before cancelling them (default 10 s) */
  closeTimeoutMs?: number;
  /** SLACK_RATE_LIMIT: requests per user (default 6 a minute; false: none) */
  rateLimit?: RateLimitSetting;
  /** where the limit's counts live (default: this process; front ends on Redis share them) */
  rateLimiter?: RateLimiterFactory;
  /** where front ends on Redis keep the order of a thread's messages between them (default: this process only) */
  arrivalOrder?: SharedArrivalOrder;
  /** how front ends on Redis stop an answer another one writes (a Stop press, an edit, a deletion; default: none) */
  sharedStops?: SharedStops;
}

export interface SlackAdapter {
  name: 'slack';
  mode: 'http' | 'socket';
  /** HTTP mode: the events URL (http://host:port/slack/events) */
  url?: string;
  port?: number;
  botUserId: string;
  /** resolves when Slack stops accepting the bot (its token refused or revoked while it runs): why, in one line */
  fatal: Promise<Error>;
  close(): Promise<void>;
}

export const SLACK_EVENTS_PATH = '/slack/events';
export const DEFAULT_SLACK_PORT = 3000;
export const DEFAULT_COMMAND = '/describe';
export const DEFAULT_SHORTCUT = 'describe_image';
export const DEFAULT_FORGET_SHORTCUT = 'forget_conversation';

export class SlackConfigError extends Error {}

/** A Slack API base URL with the trailing slash the WebClient needs. */
export function normaliseApiUrl(url: string | undefined): string | undefined {
  const u = url?.trim();
  if (!u) return undefined;
  let parsed: URL;
  try {
    parsed = new URL(u);
  } catch {
    throw new SlackConfigError(`SLACK_API_URL=${u}: not a URL (expected e.g. https://slack.com/api/)`);
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:')
    throw new SlackConfigError(`SLACK_API_URL=${u}: expected an http(s) URL`);
  return u.endsWith('/') ? u : `${u}/`;
}

/** How `minigpt serve` starts the adapter from the environment (.env.example). */
export function slackOptionsFromEnv(env: NodeJS.ProcessEnv): Omit<SlackAdapterOptions, 'manager' | 'log' | 'store'> {
  const botToken = env.SLACK_BOT_TOKEN?.trim() ?? '';
  let port: number | undefined;
  if (env.SLACK_PORT?.trim()) {
    port = Number(env.SLACK_PORT);
    if (!Number.isInteger(port) || port < 0 || port > 65535)
      throw new SlackConfigError(`SLACK_PORT=${env.SLACK_PORT}: expected a port number (0-65535)`);
  }
  const rateLimit = rateLimitFromEnv('SLACK_RATE_LIMIT', env.SLACK_RATE_LIMIT, (m) => new SlackConfigError(m));
  return {
    botToken,
    ...(rateLimit !== undefined ? { rateLimit } : {}),
    ...(env.SLACK_SIGNING_SECRET?.trim() ? { signingSecret: env.SLACK_SIGNING_SECRET.trim() } : {}),
    ...(env.SLACK_APP_TOKEN?.trim() ? { appToken: env.SLACK_APP_TOKEN.trim() } : {}),
    ...(port !== undefined ? { port } : {}),
    ...(env.SLACK_API_URL?.trim() ? { apiUrl: env.SLACK_API_URL.trim() } : {}),
  };
}
