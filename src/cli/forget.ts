// `minigpt forget`: an operator deletes from the conversation store every conversation of one user (each in which
// they took part) or of a whole workspace, with the images nobody else uses: a user's request to be forgotten, a
// workspace that removed the app. Works on the store a running bot uses (SQLite file, Redis).
import { ConversationStore, createStore, redactUrl, type Forgotten } from '../conversation/store.js';
import { publishForgotten } from '../cluster/protocol.js';
import type { ConversationState } from '../conversation/index.js';
import { isParticipant } from '../conversation/turn.js';

export class ForgetUsageError extends Error {}

/** Whose conversations: a platform's workspace (`*`: any), and, for a user's, the user. */
export interface ForgetSelector {
  platform: string;
  workspace: string;
  user?: string;
}

/**
 * `platform:workspace` (a workspace's) or `platform:workspace:user` (a user's); the workspace of a Discord DM is
 * `@me`, and `*` matches any workspace (a Discord user's id is the same in every server).
 */
export function parseSelector(kind: 'user' | 'workspace', value: string): ForgetSelector {
  const parts = value.split(':');
  const want = kind === 'user' ? 3 : 2;
  if (parts.length !== want || parts.some((p) => p.trim() === '')) {
    throw new ForgetUsageError(
      kind === 'user'
        ? `--user ${value}: expected platform:workspace:user, e.g. slack:T0123ABCD:U0456EFGH or discord:*:123456789012345678`
        : `--workspace ${value}: expected platform:workspace, e.g. slack:T0123ABCD or discord:123456789012345678`,
    );
  }
  const [platform, workspace, user] = parts as [string, string, string?];
  if (kind === 'workspace' && workspace === '*') throw new ForgetUsageError('--workspace needs one workspace, not *');
  return { platform, workspace, ...(user !== undefined ? { user } : {}) };
}

/** Whether a stored conversation is the selector's: of its workspace, and (a user's) with a turn or the image of that user. */
export function matches(sel: ForgetSelector, state: ConversationState): boolean {
  if (state.key.platform !== sel.platform) return false;
  if (sel.workspace !== '*' && state.key.workspace !== sel.workspace) return false;
  return sel.user === undefined || isParticipant(state, sel.user);
}

/** The store to work on: `--store`, else STORE_URL, else REDIS_URL (front ends and workers keep it there). */
export function storeUrlFor(flag: string | undefined, env: NodeJS.ProcessEnv): string {
  const url = flag?.trim() || env.STORE_URL?.trim() || env.REDIS_URL?.trim();
  if (!url || /^memory(:\/\/)?$/.test(url)) {
    throw new ForgetUsageError(
      'Give the conversation store the bot uses: --store sqlite://path or redis://host:port (or STORE_URL). A bot without STORE_URL keeps its conversations in its memory: restarting it forgets them all.',
    );
  }
  return url;
}

export async function runForget(
  o: { user?: string; workspace?: string; store?: string; dryRun?: boolean },
  env: NodeJS.ProcessEnv,
  out: (line: string) => void,
): Promise<number> {
  if ((o.user === undefined) === (o.workspace === undefined)) throw new ForgetUsageError('give one of --user or --workspace');
  const sel = o.user !== undefined ? parseSelector('user', o.user) : parseSelector('workspace', o.workspace!);
  const url = storeUrlFor(o.store, env);
  const kv = await createStore(url);
  try {
    const gone = await new ConversationStore(kv).forgetWhere((state) => matches(sel, state), { dryRun: o.dryRun });
    if (gone === undefined) throw new ForgetUsageError(`the store ${redactUrl(url)} cannot be walked`);
    if (!o.dryRun && gone.conversations.length > 0) await tellWorkers(url, gone);
    const n = gone.conversations.length;
    const whose = o.user !== undefined ? `user ${o.user}` : `workspace ${o.workspace}`;
    const plural = n === 1 ? '' : 's';
    out(
      o.dryRun
        ? `would forget ${n} conversation${plural} of ${whose} in ${redactUrl(url)} (--dry-run: nothing deleted)`
        : `forgot ${n} conversation${plural} of ${whose} in ${redactUrl(url)}, with the images no other conversation uses`,
    );
    return n;
  } finally {
    await kv.disconnect();
  }
}

/**
 * Workers on the store's Redis drop what they derived from the forgotten conversations (KV caches, image embeddings;
 * src/cluster/worker.ts). A SQLite store's bot keeps its caches in its memory, where nothing can reach them: they are
 * of no use without the stored conversation (a follow-up there has no image) and go as new ones push them out.
 */
async function tellWorkers(url: string, gone: Forgotten): Promise<void> {
  if (!/^rediss?:/.test(url)) return;
  const { Redis } = await import('ioredis');
  const redis = new Redis(url, { maxRetriesPerRequest: 1, connectTimeout: 5000, lazyConnect: true });
  redis.on('error', () => {});
  try {
    await publishForgotten(redis, gone);
  } finally {
    redis.disconnect();
  }
}
