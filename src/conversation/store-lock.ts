// A lock shared by every process that uses the same Redis store, for the store's read-modify-write sections (an
// image's list of users, src/conversation/store.ts). Keyv has no compare-and-set, so without it two front ends
// attaching or detaching the same image at once could each write back the list they read: a user dropped (the
// image then deleted while a conversation still needs it) or kept for ever. The lock is Redis's single-instance
// pattern: SET NX PX with a random token, released only by its holder (a script compares the token), expiring
// by itself if the holder dies.
import { randomUUID } from 'node:crypto';
import type Keyv from 'keyv';
import { KeyedMutex } from '../util/keyed-mutex.js';

/** The raw command interface of the Redis client behind @keyv/redis. */
export interface RawRedis {
  sendCommand(args: string[]): Promise<unknown>;
}

/** The Redis client behind a Keyv on @keyv/redis and its keys' prefix; undefined for other stores. */
export function redisOf(kv: Keyv): { client: () => Promise<RawRedis>; prefix: string } | undefined {
  const adapter = kv.store as { getClient?: () => Promise<unknown>; namespace?: string; keyPrefixSeparator?: string } | undefined;
  if (typeof adapter?.getClient !== 'function') return undefined;
  const getClient = adapter.getClient.bind(adapter);
  return {
    client: async () => {
      const c = (await getClient()) as Partial<RawRedis>;
      if (typeof c.sendCommand !== 'function') throw new Error('the Redis store has no client to send commands with');
      return c as RawRedis;
    },
    prefix: adapter.namespace ? `${adapter.namespace}${adapter.keyPrefixSeparator ?? '::'}` : '',
  };
}

export interface StoreLockOptions {
  /**
   * How long a holder keeps the lock at most: it expires by itself if the holder dies holding it. Holds are
   * one list read and write (and an image's bytes written once), far shorter. Default 5 s.
   */
  ttlMs?: number;
  /**
   * How long to wait for the lock before giving up with LockTimeoutError. Longer than the TTL, so that a lock
   * left by a process that died (a worker killed mid-answer) delays the next writer, never fails it. Default 3x
   * the TTL.
   */
  waitMs?: number;
}

/** The lock could not be taken: Redis failed, or (LockTimeoutError) the lock stayed taken. Nothing ran. */
export class StoreLockError extends Error {}

/** The lock stayed taken for the whole wait (another process is slow or died holding it). */
export class LockTimeoutError extends StoreLockError {}

/** How long a lock lives without its holder (StoreLockOptions.ttlMs's default). */
export const DEFAULT_LOCK_TTL_MS = 5_000;

const RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

export class RedisStoreLock {
  private readonly ttlMs: number;
  private readonly waitMs: number;

  constructor(
    private readonly client: () => Promise<RawRedis>,
    opts: StoreLockOptions = {},
  ) {
    this.ttlMs = opts.ttlMs ?? DEFAULT_LOCK_TTL_MS;
    this.waitMs = opts.waitMs ?? 3 * this.ttlMs;
  }

  /** Runs `fn` holding the lock at Redis key `key` (one holder at a time across every process on this Redis). */
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire(key);
    try {
      return await fn();
    } finally {
      await release();
    }
  }

  /**
   * Takes the lock at `key` if it is free, without waiting: its release (by this holder only; a failed release leaves
   * the lock to expire), or undefined when another holds it. Also for a claim held as long as a piece of work lasts
   * (the TTL bounds it if the holder dies).
   */
  async tryTake(key: string): Promise<(() => Promise<void>) | undefined> {
    const token = randomUUID();
    let redis: RawRedis;
    try {
      redis = await this.client();
      if ((await redis.sendCommand(['SET', key, token, 'NX', 'PX', String(this.ttlMs)])) !== 'OK') return undefined;
    } catch (err) {
      throw new StoreLockError(`cannot take the lock ${key}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
    return async () => {
      await redis.sendCommand(['EVAL', RELEASE, '1', key, token]).catch(() => {});
    };
  }

  /** tryTake, tried again (pauses growing from 2 to 50 ms) until waitMs has passed: then LockTimeoutError. */
  private async acquire(key: string): Promise<() => Promise<void>> {
    const deadline = Date.now() + this.waitMs;
    for (let pause = 2; ; pause = Math.min(pause * 2, 50)) {
      const release = await this.tryTake(key);
      if (release) return release;
      if (Date.now() + pause > deadline) throw new LockTimeoutError(`the lock ${key} stayed taken for ${this.waitMs} ms`);
      await new Promise((r) => setTimeout(r, pause));
    }
  }
}

/** The cross-process lock for a Keyv on Redis (@keyv/redis), or undefined for stores used by one process. */
export function storeLockFor(kv: Keyv, opts: StoreLockOptions = {}): RedisStoreLock | undefined {
  const redis = redisOf(kv);
  return redis && new RedisStoreLock(redis.client, opts);
}

/**
 * A store's read-modify-write sections by name: one at a time in this process, and on Redis (where other processes
 * write the same entries) one at a time across every process using it, under the lock `lockPrefix` + name. A lock
 * that cannot be taken is a StoreLockError and `fn` does not run.
 */
export class StoreSections {
  private readonly local = new KeyedMutex();
  private readonly shared: RedisStoreLock | undefined;

  constructor(
    kv: Keyv,
    private readonly lockPrefix: string,
    opts: StoreLockOptions = {},
  ) {
    this.shared = storeLockFor(kv, opts);
  }

  /** whether the sections lock across processes (the store is Redis) */
  get crossProcess(): boolean {
    return this.shared !== undefined;
  }

  run<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const shared = this.shared;
    return this.local.run(name, () => (shared ? shared.run(this.lockPrefix + name, fn) : fn()));
  }
}
