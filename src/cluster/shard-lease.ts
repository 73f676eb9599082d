// Discord shards held in Redis by the front end that connects them (adapters/shared/shard-lease.ts says why): one
// hash per bot, shard id -> the hold (its front end's token, the bot's shard count, when it lapses, who holds
// it). Claiming and renewing are the same script, atomic in Redis and timed by Redis's clock: holds that lapsed
// are dropped, then the shards are taken unless a live hold of another front end has one of them or splits the
// bot into another count. A holder renews every third of the hold's life; one that dies (SIGKILL, power loss)
// leaves holds that lapse within `ttlMs`, and a front end starting meanwhile waits for that.
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Redis } from 'ioredis';
import { ShardsTakenError, type ShardClaim, type ShardLease, type ShardLeases } from '../../adapters/shared/shard-lease.js';
import { keys } from './protocol.js';

const CLAIM = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, count, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local want = {}
for i = 5, #ARGV do want[ARGV[i]] = true end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local hold = cjson.decode(all[i + 1])
  if hold.expires <= now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif hold.token ~= me and (hold.count ~= count or want[all[i]]) then
    return cjson.encode({ shard = tonumber(all[i]), count = hold.count, holder = hold.holder, left = hold.expires - now })
  end
end
local value = cjson.encode({ token = me, count = count, expires = now + ttl, holder = cjson.decode(ARGV[4]) })
for i = 5, #ARGV do redis.call('HSET', KEYS[1], ARGV[i], value) end
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 'OK'`;

const RELEASE = `local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if cjson.decode(all[i + 1]).token == ARGV[1] then redis.call('HDEL', KEYS[1], all[i]) end
end
return 1`;

/** Who holds shards, as `minigpt status` and the error messages show it. */
export interface ShardHolder {
  host: string;
  pid: number;
  /** the holder's shards, as ids and ranges (`0-3,6`) */
  shards: string;
  /** ISO time of its first claim */
  since: string;
}

/** Another front end's live hold in the way of a claim. */
interface Conflict {
  shard: number;
  count: number;
  holder: ShardHolder;
  /** ms until it lapses unless renewed */
  left: number;
}

export interface RedisShardLeasesOptions {
  /** how long a hold lasts without renewal (default 15 s); renewed every third of it */
  ttlMs?: number;
  /** how long a claim waits for another front end's holds to lapse (default a third more than ttlMs) */
  waitMs?: number;
  /** how often a waiting claim tries again (default 1 s) */
  retryMs?: number;
  log?: (line: string) => void;
}

/** `0,1,2,3,6` -> `0-3,6` */
export function shardRanges(ids: readonly number[]): string {
  const sorted = [...new Set(ids)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j++;
    parts.push(i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return parts.join(',');
}

function describeHolder(h: ShardHolder, count: number): string {
  return `host ${h.host}, pid ${h.pid}, shards ${h.shards} of ${count}, since ${h.since}`;
}

function conflictError(c: Conflict, claim: ShardClaim): ShardsTakenError {
  const holder = describeHolder(c.holder, c.count);
  if (c.count !== claim.count)
    return new ShardsTakenError(
      `another front end splits this Discord bot into ${c.count} shards (${holder}), this one into ${claim.count}: every front end of a bot must use the same DISCORD_SHARD_COUNT`,
      { kind: 'count', shard: c.shard, count: c.count, holder },
    );
  return new ShardsTakenError(
    `Discord shard ${c.shard} of ${c.count} is connected by another front end (${holder}): each shard must be connected by one front end only, or both answer every message; stop that one, or give this one other shards (DISCORD_SHARDS)`,
    { kind: 'taken', shard: c.shard, count: c.count, holder },
  );
}

export class RedisShardLeases implements ShardLeases {
  private readonly ttlMs: number;
  private readonly waitMs: number;
  private readonly retryMs: number;
  private readonly log: (line: string) => void;

  constructor(
    private readonly redis: Redis,
    opts: RedisShardLeasesOptions = {},
  ) {
    this.ttlMs = opts.ttlMs ?? 15_000;
    this.waitMs = opts.waitMs ?? Math.round((this.ttlMs * 4) / 3);
    this.retryMs = opts.retryMs ?? 1_000;
    this.log = opts.log ?? (() => {});
  }

  async claim(claim: ShardClaim): Promise<ShardLease> {
    if (claim.ids.length === 0 || claim.ids.some((id) => !Number.isInteger(id) || id < 0 || id >= claim.count))
      throw new Error(`no valid shards to claim: [${claim.ids.join(',')}] of ${claim.count}`);
    const token = randomUUID();
    const holder: ShardHolder = { host: hostname(), pid: process.pid, shards: shardRanges(claim.ids), since: new Date().toISOString() };
    const attempt = () => this.attempt(claim, token, holder);
    const deadline = Date.now() + this.waitMs;
    let told = false;
    for (;;) {
      let conflict: Conflict | undefined;
      try {
        conflict = await attempt();
      } catch (err) {
        throw new Error(`could not hold the Discord shards in Redis (REDIS_URL): ${(err as Error).message}`);
      }
      if (!conflict) break;
      // A hold that is not renewed lapses in `left` ms: worth waiting for only if that is before the deadline.
      if (Date.now() + Math.min(conflict.left, this.retryMs) > deadline) throw conflictError(conflict, claim);
      if (!told) {
        this.log(
          `discord: shard ${conflict.shard} is held by another front end (${describeHolder(conflict.holder, conflict.count)}) for ${Math.ceil(conflict.left / 1000)} s more unless it renews; waiting up to ${Math.round((deadline - Date.now()) / 1000)} s`,
        );
        told = true;
      }
      await new Promise((r) => setTimeout(r, Math.min(this.retryMs, conflict.left + 50)));
    }
    return new HeldShards(this.redis, claim, token, attempt, this.ttlMs, this.log);
  }

  /** undefined: held; else the hold in the way */
  private async attempt(claim: ShardClaim, token: string, holder: ShardHolder): Promise<Conflict | undefined> {
    const out = await this.redis.eval(
      CLAIM,
      1,
      keys.discordShards(claim.bot),
      token,
      claim.count,
      this.ttlMs,
      JSON.stringify(holder),
      ...claim.ids.map(String),
    );
    return out === 'OK' ? undefined : (JSON.parse(String(out)) as Conflict);
  }
}

/** Holds renewed until released or lost. */
class HeldShards implements ShardLease {
  readonly lost: Promise<string>;
  private lose: (reason: string) => void = () => {};
  private readonly timer: NodeJS.Timeout;
  private failing = false;
  private done = false;

  constructor(
    private readonly redis: Redis,
    private readonly claim: ShardClaim,
    private readonly token: string,
    private readonly attempt: () => Promise<Conflict | undefined>,
    ttlMs: number,
    private readonly log: (line: string) => void,
  ) {
    this.lost = new Promise((resolve) => (this.lose = resolve));
    this.timer = setInterval(() => void this.renew(), Math.max(50, Math.floor(ttlMs / 3)));
    this.timer.unref();
  }

  private async renew(): Promise<void> {
    if (this.done) return;
    let conflict: Conflict | undefined;
    try {
      conflict = await this.attempt();
    } catch (err) {
      // Redis down: nobody else can take the shards either; they are taken back if still free when it returns.
      if (!this.failing)
        this.log(`discord: could not renew the hold on shards ${shardRanges(this.claim.ids)} in Redis: ${(err as Error).message}`);
      this.failing = true;
      return;
    }
    if (this.done) return;
    if (this.failing) this.log(`discord: the hold on shards ${shardRanges(this.claim.ids)} is renewed again`);
    this.failing = false;
    if (!conflict) return;
    this.stop();
    this.lose(
      `another front end (${describeHolder(conflict.holder, conflict.count)}) took Discord shard ${conflict.shard} while this one could not renew its hold in Redis: disconnecting from Discord, or both would answer`,
    );
  }

  private stop(): void {
    this.done = true;
    clearInterval(this.timer);
  }

  async release(): Promise<void> {
    if (this.done) return;
    this.stop();
    try {
      await this.redis.eval(RELEASE, 1, keys.discordShards(this.claim.bot), this.token);
    } catch (err) {
      this.log(
        `discord: could not release shards ${shardRanges(this.claim.ids)} in Redis (they lapse on their own): ${(err as Error).message}`,
      );
    }
  }
}

/** Every bot's live holds (`minigpt status`): bot -> shard id -> holder. */
export async function listShardHolders(redis: Redis): Promise<{ bot: string; count: number; shard: number; holder: ShardHolder }[]> {
  const [secs, micros] = await redis.time();
  const now = Number(secs) * 1000 + Math.floor(Number(micros) / 1000);
  const prefix = keys.discordShards('');
  const out: { bot: string; count: number; shard: number; holder: ShardHolder }[] = [];
  let cursor = '0';
  do {
    const [next, found] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    cursor = next;
    for (const key of found) {
      for (const [shard, raw] of Object.entries(await redis.hgetall(key))) {
        const hold = JSON.parse(raw) as { count: number; expires: number; holder: ShardHolder };
        if (hold.expires > now) out.push({ bot: key.slice(prefix.length), count: hold.count, shard: Number(shard), holder: hold.holder });
      }
    }
  } while (cursor !== '0');
  return out.sort((a, b) => a.bot.localeCompare(b.bot) || a.shard - b.shard);
}
