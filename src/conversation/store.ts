// Conversation persistence on keyv. Layout (under the keyv namespace, `minigpt` for createStore's stores):
//   conv:<conversation id>  -> ConversationState (turns reference the image by hash)
//   img:<sha256>            -> { data: base64, width, height, bytes }, written once per distinct image
//   imgref:<sha256>         -> conversation ids using that image; the image is deleted with its last user
import { mkdir } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { createHash } from 'node:crypto';
import Keyv from 'keyv';
import type { ConversationKey, ConversationState, ImageRef } from './types.js';
import { type RawRedis, redisOf, StoreLockError, type StoreLockOptions, StoreSections } from './store-lock.js';

export const STORE_NAMESPACE = 'minigpt';
/** The key of the store lock (or the prefix of the locks) named `name`: every process on a Redis store takes the same. */
export const lockKey = (name: string): string => `${STORE_NAMESPACE}:lock:${name}`;
/** Set (to the retention time, for a day) when a pass of ConversationStore.expireUnlimited is complete. */
export const UNLIMITED_SCAN_MARKER = `${STORE_NAMESPACE}:scanned:no-expiry`;
const DAY_MS = 24 * 3600 * 1000;

export class StoreUrlError extends Error {}

/**
 * Opens the conversation store named by `STORE_URL`: unset or empty (or `memory://`) = in memory,
 * `redis://host:port[/db]` = Redis (see openRedisStore), `sqlite://path` = a SQLite file (`sqlite:///abs/path` or `sqlite://relative/path`; its folder is
 * created). Store failures throw (keyv `throwOnErrors`) rather than silently losing history; the file is
 * opened here so that a bad path fails at startup.
 */
export async function createStore(url: string | undefined): Promise<Keyv> {
  const u = (url ?? '').trim();
  if (u === '' || u === 'memory' || u === 'memory://') {
    return new Keyv({ namespace: STORE_NAMESPACE, throwOnErrors: true });
  }
  if (/^rediss?:\/\//.test(u)) return openRedisStore(u);
  if (!u.startsWith('sqlite://')) {
    throw new StoreUrlError(
      `STORE_URL "${u}" is not supported: use sqlite://path/to/file.sqlite, redis://host:port (or rediss:// for TLS), or leave it unset to keep conversations in memory`,
    );
  }
  const path = u.slice('sqlite://'.length);
  if (path === '') throw new StoreUrlError('STORE_URL sqlite:// needs a file path, e.g. sqlite://data/conversations.sqlite');
  if (path !== ':memory:') await mkdir(dirname(resolve(path)), { recursive: true });
  // Loaded on demand: the native sqlite3 addon is only needed for a sqlite:// store.
  const { KeyvSqlite } = await import('@keyv/sqlite');
  const adapter = new KeyvSqlite({ uri: `sqlite://${path}`, busyTimeout: 5000 });
  // The adapter rejects its queries on a connection failure; this keeps that from also surfacing as an
  // unhandled 'error' event.
  adapter.on('error', () => {});
  const kv = new Keyv({ store: adapter, namespace: STORE_NAMESPACE, throwOnErrors: true });
  try {
    await kv.get('__probe__');
  } catch (err) {
    await kv.disconnect().catch(() => {});
    throw new StoreUrlError(`cannot open the conversation store ${u}: ${(err as Error).message}`, { cause: err });
  }
  return kv;
}

/** The URL with its password (if any) hidden, for messages. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.href;
  } catch {
    return url.replace(/\/\/[^@/]*@/, '//***@');
  }
}

/**
 * A Redis store (`@keyv/redis`), shared by every process that names the same Redis: what lets several front
 * ends and workers serve one set of conversations. Commands fail at once while Redis is unreachable (no
 * offline queue: a user gets an error to retry instead of a silent wait); the client reconnects by itself.
 */
async function openRedisStore(url: string): Promise<Keyv> {
  const { default: KeyvRedis } = await import('@keyv/redis');
  const adapter = new KeyvRedis(
    {
      url,
      disableOfflineQueue: true,
      socket: { connectTimeout: 5000, reconnectStrategy: (attempts: number) => Math.min(100 * 2 ** attempts, 2000) },
    },
    { namespace: STORE_NAMESPACE, throwOnConnectError: true, throwOnErrors: true, connectionTimeout: 5000 },
  );
  // Failures reach the caller as rejected operations; this keeps them from also being unhandled 'error' events.
  adapter.on('error', () => {});
  const kv = new Keyv({ store: adapter, namespace: STORE_NAMESPACE, useKeyPrefix: false, throwOnErrors: true });
  try {
    await kv.get('__probe__');
  } catch (err) {
    await kv.disconnect().catch(() => {});
    throw new StoreUrlError(`cannot reach the conversation store ${redactUrl(url)}: ${(err as Error).message}`, { cause: err });
  }
  return kv;
}

/** A store key for a conversation: readable when short, hashed when long. */
export function conversationId(key: ConversationKey): string {
  const parts = [key.workspace, key.channel, key.thread].map((p) => encodeURIComponent(p));
  const id = `${key.platform}:${parts.join(':')}`;
  if (id.length <= 180) return id;
  return `${key.platform}:h:${createHash('sha256')
    .update(JSON.stringify([key.workspace, key.channel, key.thread]))
    .digest('hex')}`;
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

interface StoredImageRecord {
  v: 1;
  data: string;
  width: number;
  height: number;
  bytes: number;
}

export interface StoredImage extends ImageRef {
  data: Uint8Array;
}

/** The store failed (e.g. Redis unreachable): nothing was lost, the request can be tried again. */
export class StoreUnavailableError extends Error {}

/** `err` (a failed store operation or lock) as the StoreUnavailableError the manager tells from a bug. */
function unavailable(err: unknown): StoreUnavailableError {
  return new StoreUnavailableError(`the conversation store failed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}

export interface ConversationStoreOptions {
  /**
   * Forget a conversation this long after its last turn (ms; runtime.conversation_ttl_days); absent or 0: keep
   * it until it is reset. Its image is kept as long as a conversation using it, and at most twice this long after
   * the last one's last turn: an image's hold is renewed (its bytes written again) only when it runs short, not
   * at every turn.
   */
  ttlMs?: number;
  /** on Redis, the lock of an image's user list (its own TTL and wait, not the retention time above) */
  lock?: StoreLockOptions;
}

export class ConversationStore {
  /** an image's user list is read and written back alone (on Redis every process shares the lists) */
  private readonly refs: StoreSections;
  readonly kv: Keyv;
  private readonly ttlMs: number | undefined;
  /** Redis: entries expire on their own (no sweeping needed) */
  readonly expiresByItself: boolean;
  /** the Redis behind the store, if it is one */
  private readonly redis: ReturnType<typeof redisOf>;

  constructor(kv: Keyv, opts: ConversationStoreOptions = {}) {
    this.ttlMs = opts.ttlMs && opts.ttlMs > 0 ? opts.ttlMs : undefined;
    this.redis = redisOf(kv);
    this.refs = new StoreSections(kv, lockKey('imgref:'), opts.lock);
    this.expiresByItself = this.refs.crossProcess;
    // Every operation's failure is a StoreUnavailableError, so that the manager can tell it from a bug.
    this.kv = new Proxy(kv, {
      get(target, prop, receiver) {
        const v = Reflect.get(target, prop, receiver) as unknown;
        if (typeof v !== 'function' || !['get', 'set', 'delete', 'has'].includes(prop as string)) return v;
        return (...args: unknown[]) =>
          (v as (...a: unknown[]) => Promise<unknown>).apply(target, args).catch((err: unknown) => {
            throw unavailable(err);
          });
      },
    });
  }

  async getConversation(id: string): Promise<ConversationState | undefined> {
    return asConversation(await this.kv.get(`conv:${id}`));
  }

  /** Every entry of a store that can be walked (SQLite, memory: keyv's iterator, which drops expired ones); else undefined. */
  private entries(): AsyncGenerator<[string, unknown]> | undefined {
    const kv = this.kv as Keyv & { iterator?: (namespace?: string) => AsyncGenerator<[string, unknown]> };
    return typeof kv.iterator === 'function' ? kv.iterator(kv.namespace) : undefined;
  }

  /** Deletes a conversation and drops its use of its image (the image goes with its last user: then true). */
  private async forget(id: string, image: string): Promise<boolean> {
    await this.deleteConversation(id);
    return this.detachImage(image, id);
  }

  /**
   * Writes the conversation (to be forgotten ttlMs after this, with a retention time). Its image's hold is renewed
   * first when it would end less than ttlMs from now, so that the image outlives the conversation.
   */
  async putConversation(id: string, state: ConversationState): Promise<void> {
    let put = state;
    if (this.ttlMs) {
      const now = Date.now();
      if (state.image.until === undefined || state.image.until - now < this.ttlMs) {
        const until = await this.holdImage(state.image.hash, now);
        if (until !== undefined) put = { ...state, image: { ...state.image, until } };
      }
    }
    await this.kv.set(`conv:${id}`, put, this.ttlMs);
  }

  /** How long an image is held from `now`: twice the retention time (see ConversationStoreOptions.ttlMs). */
  private imageHold(now: number): { ttl: number; until: number } | undefined {
    return this.ttlMs ? { ttl: 2 * this.ttlMs, until: now + 2 * this.ttlMs } : undefined;
  }

  /** Renews the hold on a stored image and its user list; the new end, or undefined if the image is gone. */
  private async holdImage(hash: string, now: number): Promise<number | undefined> {
    const hold = this.imageHold(now)!;
    let held = false;
    await this.withRefs(hash, async () => {
      const record = await this.kv.get(`img:${hash}`);
      if (record === undefined) return;
      await this.kv.set(`img:${hash}`, record, hold.ttl);
      const users = await this.kv.get(`imgref:${hash}`);
      if (users !== undefined) await this.kv.set(`imgref:${hash}`, users, hold.ttl);
      held = true;
    });
    return held ? hold.until : undefined;
  }

  /**
   * Deletes what has outlived its retention time from a store that does not expire entries by itself (SQLite, the
   * in-memory store: keyv drops an expired entry only when it is read); Redis expires them on its own. A conversation
   * written before a retention time was set has no expiry of its own: it goes (with its use of its image) once its
   * last turn is older than the retention time. Returns how many live entries it walked past (a store's size, give
   * or take what it deleted), or undefined for a store that cannot be walked.
   */
  async sweepExpired(): Promise<number | undefined> {
    const entries = this.entries();
    if (!entries) return undefined;
    const old: { id: string; image: string }[] = [];
    let left = 0;
    // keyv's iterator deletes each expired entry it reads, and yields the others
    for await (const [key, value] of entries) {
      const state = value as Partial<ConversationState> | undefined;
      if (this.ttlMs && key.startsWith('conv:') && state?.image?.hash && Date.parse(state.updatedAt ?? '') + this.ttlMs < Date.now())
        old.push({ id: key.slice('conv:'.length), image: state.image.hash });
      else left++;
    }
    for (const c of old) await this.forget(c.id, c.image);
    return left;
  }

  /**
   * On Redis, which expires entries by itself but is never swept: what was written before a retention time was
   * set has no expiry of its own and would be kept for ever. Each such conversation gets one, counted from its last
   * turn; one already older than the retention time is forgotten now, with its use of its image; images and their
   * user lists without an expiry get the image hold from now (twice the retention time, so no conversation
   * outlives its image). Keys written meanwhile with an expiry are left alone. The whole store is walked (SCAN): a
   * pass done for this retention time is not done again for a day (UNLIMITED_SCAN_MARKER), however many processes
   * start meanwhile (every worker of a cluster does this at its start). Undefined for other stores or without a
   * retention time.
   */
  async expireUnlimited(): Promise<{ kept: number; forgotten: number; images: number } | undefined> {
    if (!this.redis || !this.ttlMs) return undefined;
    const redis = await this.redis.client();
    const prefix = this.redis.prefix;
    const ttlMs = this.ttlMs;
    const done = { kept: 0, forgotten: 0, images: 0 };
    if ((await redis.sendCommand(['GET', UNLIMITED_SCAN_MARKER])) === String(ttlMs)) return done;
    for await (const key of keysWithoutExpiry(redis, `${prefix}conv:*`)) {
      const id = key.slice(`${prefix}conv:`.length);
      const state = await this.getConversation(id);
      if (!state) continue; // not a conversation: not ours to judge
      const last = Date.parse(state.updatedAt);
      const left = (Number.isFinite(last) ? last : Date.now()) + ttlMs - Date.now();
      if (left > 0) {
        if ((await redis.sendCommand(['EVAL', EXPIRE_IF_NONE, '1', key, String(Math.ceil(left))])) === 1) done.kept++;
      } else if ((await redis.sendCommand(['EVAL', DELETE_IF_NO_EXPIRY, '1', key])) === 1) {
        done.forgotten++;
        await this.detachImage(state.image.hash, id);
      }
    }
    const hold = String(2 * ttlMs);
    for (const pattern of ['img:*', 'imgref:*']) {
      for await (const key of keysWithoutExpiry(redis, `${prefix}${pattern}`)) {
        if ((await redis.sendCommand(['EVAL', EXPIRE_IF_NONE, '1', key, hold])) === 1 && pattern === 'img:*') done.images++;
      }
    }
    // (only once the pass is complete: a process stopped during it leaves the rest to the next start)
    await redis.sendCommand(['SET', UNLIMITED_SCAN_MARKER, String(ttlMs), 'PX', String(DAY_MS)]);
    return done;
  }

  /**
   * Forgets every stored conversation that `match` picks (its image goes with its last user), walking the whole
   * store: Redis with SCAN, SQLite and the memory store with keyv's iterator. `dryRun`: picks only. Returns the ids
   * of the conversations it picked and of the images that went with them; undefined for a store that cannot be walked.
   */
  async forgetWhere(match: (state: ConversationState) => boolean, opts: { dryRun?: boolean } = {}): Promise<Forgotten | undefined> {
    // conversation id -> its image (a Map: SCAN may return a key twice)
    const picked = new Map<string, string>();
    const consider = (id: string, value: unknown) => {
      const state = asConversation(value);
      if (state?.key && state.image.hash && match(state)) picked.set(id, state.image.hash);
    };
    if (this.redis) {
      const redis = await this.redis.client();
      const prefix = `${this.redis.prefix}conv:`;
      for await (const key of scanKeys(redis, `${prefix}*`)) {
        const id = key.slice(prefix.length);
        consider(id, await this.kv.get(`conv:${id}`));
      }
    } else {
      const entries = this.entries();
      if (!entries) return undefined;
      for await (const [key, value] of entries) if (key.startsWith('conv:')) consider(key.slice('conv:'.length), value);
    }
    const images: string[] = [];
    if (!opts.dryRun) for (const [id, image] of picked) if (await this.forget(id, image)) images.push(image);
    return { conversations: [...picked.keys()], images };
  }

  async deleteConversation(id: string): Promise<boolean> {
    return this.kv.delete(`conv:${id}`);
  }

  async getImage(hash: string): Promise<StoredImage | undefined> {
    const r = (await this.kv.get(`img:${hash}`)) as StoredImageRecord | undefined;
    if (!r || typeof r.data !== 'string') return undefined;
    const buf = Buffer.from(r.data, 'base64');
    return { hash, width: r.width, height: r.height, bytes: r.bytes, data: new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength) };
  }

  /** `fn` alone with the image's user list: in this process, and on Redis across every process using it. */
  private async withRefs(hash: string, fn: () => Promise<void>): Promise<void> {
    try {
      await this.refs.run(hash, fn);
    } catch (err) {
      // the lock could not be taken (Redis unreachable, or held too long elsewhere): nothing was written
      if (err instanceof StoreLockError) throw unavailable(err);
      throw err;
    }
  }

  /**
   * Records that conversation `convId` uses the image; writes the bytes only if no conversation had them. Returns
   * until when the image is held (with a retention time, when it wrote the bytes), for the conversation's ImageRef.
   */
  async attachImage(image: StoredImage, convId: string): Promise<number | undefined> {
    const hold = this.imageHold(Date.now());
    let until: number | undefined;
    await this.withRefs(image.hash, async () => {
      const users = ((await this.kv.get(`imgref:${image.hash}`)) as string[] | undefined) ?? [];
      if (!(await this.kv.has(`img:${image.hash}`))) {
        const record: StoredImageRecord = {
          v: 1,
          data: Buffer.from(image.data.buffer, image.data.byteOffset, image.data.byteLength).toString('base64'),
          width: image.width,
          height: image.height,
          bytes: image.data.byteLength,
        };
        await this.kv.set(`img:${image.hash}`, record, hold?.ttl);
        until = hold?.until;
      }
      const next = users.includes(convId) ? users : [...users, convId];
      // (a user list whose image was written anew gets the image's hold)
      if (next !== users || until !== undefined) await this.kv.set(`imgref:${image.hash}`, next, hold?.ttl);
    });
    return until;
  }

  /** Drops conversation `convId`'s use of the image; deletes the image when nobody uses it any more. */
  async detachImage(hash: string, convId: string): Promise<boolean> {
    let deleted = false;
    await this.withRefs(hash, async () => {
      const users = ((await this.kv.get(`imgref:${hash}`)) as string[] | undefined) ?? [];
      const rest = users.filter((u) => u !== convId);
      if (rest.length > 0) {
        await this.kv.set(`imgref:${hash}`, rest);
      } else {
        await this.kv.delete(`imgref:${hash}`);
        await this.kv.delete(`img:${hash}`);
        deleted = true;
      }
    });
    return deleted;
  }
}

/** A stored value as a conversation, if it is one (this version's). */
function asConversation(value: unknown): ConversationState | undefined {
  const s = value as ConversationState | undefined;
  return s && s.v === 1 && s.image && Array.isArray(s.turns) ? s : undefined;
}

/** Sets an expiry (ms) on a key that has none: a key written meanwhile with its own is left alone. */
export const EXPIRE_IF_NONE = "if redis.call('PTTL', KEYS[1]) == -1 then return redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return 0";
/** Deletes a key that still has no expiry (one that a new turn rewrote meanwhile has one, and stays). */
const DELETE_IF_NO_EXPIRY = "if redis.call('PTTL', KEYS[1]) == -1 then return redis.call('DEL', KEYS[1]) end return 0";

/** The keys matching `pattern`, a batch at a time, walked with SCAN (Redis serves others meanwhile). */
async function* scanBatches(redis: RawRedis, pattern: string): AsyncGenerator<string[]> {
  let cursor = '0';
  do {
    const [next, keys] = (await redis.sendCommand(['SCAN', cursor, 'MATCH', pattern, 'COUNT', '500'])) as [string, string[]];
    if (keys.length > 0) yield keys;
    cursor = next;
  } while (cursor !== '0');
}

/** The keys matching `pattern` (SCAN: a key may come twice, SCAN's own rule). */
async function* scanKeys(redis: RawRedis, pattern: string): AsyncGenerator<string> {
  for await (const keys of scanBatches(redis, pattern)) yield* keys;
}

/** The keys matching `pattern` that have no expiry. */
async function* keysWithoutExpiry(redis: RawRedis, pattern: string): AsyncGenerator<string> {
  for await (const keys of scanBatches(redis, pattern)) {
    const ttls = await Promise.all(keys.map((k) => redis.sendCommand(['PTTL', k])));
    for (const [i, key] of keys.entries()) if (Number(ttls[i]) === -1) yield key;
  }
}

/** Picks the conversations of a platform's workspace (with `channel`: of that channel, its threads included). */
/** Which workspaces a forget takes: one, or each that the function picks. */
export type Workspaces = string | ((workspace: string) => boolean);

export function inPlace(
  platform: ConversationKey['platform'],
  workspace: Workspaces,
  channel?: string,
): (state: ConversationState) => boolean {
  const picked = typeof workspace === 'string' ? (w: string) => w === workspace : workspace;
  return (s) => s.key.platform === platform && picked(s.key.workspace) && (channel === undefined || s.key.channel === channel);
}

/** What a forget deleted: conversation ids, and the hashes of the images that went with their last conversation. */
export interface Forgotten {
  conversations: string[];
  images: string[];
}
