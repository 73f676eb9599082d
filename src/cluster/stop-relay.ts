// Stopping an answer that another front end writes (adapters/shared/shared-stops.ts): with several Slack front ends
// a Stop press, an edit or a deletion reaches whichever front end Slack (or the load balancer) picked. Each front end
// marks the answers it writes in Redis (`held:stop:<button>`, `held:asked:<message>`, `held:image:<message>` = its
// id) and listens on its own channel (`stops:<id>`); a front end asked to stop an answer it does not write looks up
// who does and asks it there. The holder acknowledges at once (a holder that died is not waited for: its marks
// expire) and replies once the answer has ended, with what the asker needs (the press's outcome; for an edit, how the
// answer ended).
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { LocalStops, SharedStops } from '../../adapters/shared/shared-stops.js';
import type { StoppedForEdit } from '../../adapters/shared/regenerate.js';
import type { StopOutcome } from '../../adapters/shared/stop-buttons.js';
import { keys } from './protocol.js';

/** A mark outlives its answer at most this long (a front end that died holding it). */
const HOLD_MS = 6 * 3600 * 1000;
/** A holder that has not acknowledged a request within this is gone. */
const ACK_MS = 3_000;
/** How long a stopped answer is waited for (its end is its last Slack writes). */
const DONE_MS = 120_000;
/** Deletes a mark only if it is still this front end's (a later answer may have taken the id). */
const RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

type Request =
  | { kind: 'press'; id: string; user: string; moderator: boolean }
  | { kind: 'edit'; asked: string; user: string }
  | { kind: 'delete'; asked: string };

/** The holder's answers: `ack` at once, then the end (with the press's outcome, or how an edited answer ended). */
interface Reply {
  rid: string;
  ack?: true;
  outcome?: StopOutcome;
  stopped?: StoppedForEdit | null;
}

interface Waiting {
  acked: () => void;
  done: (r: Reply) => void;
}

export interface RedisStopRelayOptions {
  /** this front end */
  owner: string;
  log: (line: string) => void;
}

export class RedisStopRelay implements SharedStops {
  private sub: Redis | undefined;
  private readonly waiting = new Map<string, Waiting>();

  constructor(
    private readonly redis: Redis,
    private readonly opts: RedisStopRelayOptions,
  ) {}

  async serve(local: LocalStops): Promise<void> {
    const sub = this.redis.duplicate();
    this.sub = sub;
    sub.on('message', (_channel: string, message: string) => {
      void this.onMessage(local, message).catch((err: unknown) =>
        this.opts.log(`frontend: a stop request failed: ${(err as Error).message}`),
      );
    });
    await sub.subscribe(keys.stops(this.opts.owner));
  }

  hold(ids: { stop: string; asked?: string; image?: string }): () => Promise<void> {
    const marks = [
      keys.held('stop', ids.stop),
      ...(ids.asked !== undefined ? [keys.held('asked', ids.asked)] : []),
      ...(ids.image !== undefined ? [keys.held('image', ids.image)] : []),
    ];
    const failed = (err: unknown) => this.opts.log(`frontend: could not mark an answer as this front end's: ${(err as Error).message}`);
    const set = Promise.all(marks.map((k) => this.redis.set(k, this.opts.owner, 'PX', HOLD_MS))).catch(failed);
    return async () => {
      await set;
      await Promise.all(marks.map((k) => this.redis.eval(RELEASE, 1, k, this.opts.owner))).catch(failed);
    };
  }

  async press(id: string, user: string, moderator: boolean): Promise<StopOutcome> {
    const r = await this.ask([keys.held('stop', id)], { kind: 'press', id, user, moderator });
    return r?.outcome ?? 'finished';
  }

  async stopForEdit(asked: string, user: string): Promise<StoppedForEdit | undefined> {
    return (await this.ask([keys.held('asked', asked)], { kind: 'edit', asked, user }))?.stopped ?? undefined;
  }

  async stopForDeletion(asked: string): Promise<void> {
    await this.ask([keys.held('asked', asked), keys.held('image', asked)], { kind: 'delete', asked });
  }

  async close(): Promise<void> {
    for (const w of this.waiting.values()) w.done({ rid: '' });
    this.sub?.disconnect();
  }

  /** `req` to each other front end holding one of `marks`, waited for; the last reply (none: nobody held it). */
  private async ask(marks: string[], req: Request): Promise<Reply | undefined> {
    if (!this.sub) return undefined;
    const owners = new Set((await this.redis.mget(...marks)).filter((o): o is string => !!o && o !== this.opts.owner));
    let last: Reply | undefined;
    for (const owner of owners) {
      const rid = randomBytes(8).toString('hex');
      const reply = this.awaitReply(rid);
      await this.redis.publish(keys.stops(owner), JSON.stringify({ ...req, rid, from: this.opts.owner }));
      last = (await reply) ?? last;
    }
    return last;
  }

  private awaitReply(rid: string): Promise<Reply | undefined> {
    return new Promise((resolve) => {
      const end = (r: Reply | undefined) => {
        clearTimeout(timer);
        this.waiting.delete(rid);
        resolve(r);
      };
      let timer = setTimeout(() => end(undefined), ACK_MS);
      this.waiting.set(rid, {
        acked: () => {
          clearTimeout(timer);
          timer = setTimeout(() => end(undefined), DONE_MS);
        },
        done: end,
      });
    });
  }

  private async onMessage(local: LocalStops, message: string): Promise<void> {
    const m = JSON.parse(message) as Partial<Reply & Request & { from: string }>;
    if (typeof m.rid !== 'string') return;
    if (typeof m.from !== 'string') {
      // a reply to one of this front end's requests
      const w = this.waiting.get(m.rid);
      if (m.ack) w?.acked();
      else w?.done(m as Reply);
      return;
    }
    const send = (r: Omit<Reply, 'rid'>) => this.redis.publish(keys.stops(m.from!), JSON.stringify({ ...r, rid: m.rid }));
    await send({ ack: true });
    if (m.kind === 'press' && typeof m.id === 'string' && typeof m.user === 'string') {
      await send({ outcome: local.press(m.id, m.user, m.moderator === true) });
    } else if (m.kind === 'edit' && typeof m.asked === 'string' && typeof m.user === 'string') {
      await send({ stopped: (await local.stopForEdit(m.asked, m.user)) ?? null });
    } else if (m.kind === 'delete' && typeof m.asked === 'string') {
      await local.stopForDeletion(m.asked);
      await send({});
    } else {
      await send({});
    }
  }
}
