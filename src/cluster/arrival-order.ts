// The order of a conversation's requests across front ends (docs/scaling.md, "Order"). A worker answers a
// conversation's requests in the order of their numbers, and a front end numbers a request only when it hands it
// over, after its own preparation (an image download): on Slack, whose events of one thread may reach two front
// ends (Socket Mode spreads them over the app's connections; HTTP mode over a load balancer), a follow-up sent
// right after an image would be numbered first and answered about the image before it.
//
// So each event that may become a request registers at once, when it arrives, in a sorted set of its conversation,
// scored by where the platform put it (Slack's message ts); before going on, a turn waits until no other front
// end's turn with an earlier place is left, i.e. until those requests are numbered (or turned out not to be
// requests). A front end's own turns are ordered by its ArrivalOrder and are not waited for here. A turn is waited
// for at most its `maxWaitMs` from when it registered (a front end that died leaves it), and waits itself at most
// its own `maxWaitMs`, as a local turn does.
//
// What this cannot see: an earlier event that reaches its front end only after the later one was numbered (Slack
// delivering the first message of two much later than the second).
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { NO_TURN, type ArrivalTurn, type SharedArrivalOrder } from '../../adapters/shared/arrival-order.js';
import { keys } from './protocol.js';

/** How often a waiting turn looks again (only turns with an earlier event of another front end wait at all). */
const POLL_MS = 25;
/** a place as the platforms give it: Slack's ts, seconds with microseconds */
const PLACE = /^\d{1,12}(\.\d{1,9})?$/;

export interface RedisArrivalOrderOptions {
  /** this front end (its own turns are not waited for) */
  owner: string;
  log: (line: string) => void;
}

export class RedisArrivalOrder implements SharedArrivalOrder {
  private warnedAt = -Infinity;

  constructor(
    private readonly redis: Redis,
    private readonly opts: RedisArrivalOrderOptions,
  ) {}

  take(key: string, place: string, maxWaitMs: number): ArrivalTurn {
    if (!PLACE.test(place)) return NO_TURN;
    const set = keys.arrivals(key);
    const registeredAt = Date.now();
    // (a member says whose it is and until when it is waited for)
    const member = `${this.opts.owner}|${registeredAt + maxWaitMs}|${randomBytes(6).toString('hex')}`;
    // Sent now, before the caller awaits anything: the registration is what the other front ends see.
    const registered = this.redis
      .multi()
      .zadd(set, place, member)
      .pexpire(set, 2 * maxWaitMs)
      .exec()
      .then(
        () => true,
        (err: unknown) => this.trouble(err),
      );
    let waiting: Promise<void> | undefined;
    let released = false;
    return {
      ready: () => (waiting ??= this.wait(set, place, registered, registeredAt + maxWaitMs)),
      release: () => {
        if (released) return;
        released = true;
        void registered.then((ok) => (ok ? this.redis.zrem(set, member) : 0)).catch((err: unknown) => this.trouble(err));
      },
    };
  }

  /** Until no other front end's live turn of the conversation has an earlier place. */
  private async wait(set: string, place: string, registered: Promise<boolean>, until: number): Promise<void> {
    if (!(await registered)) return;
    try {
      for (;;) {
        const now = Date.now();
        const before = (await this.redis.zrangebyscore(set, '-inf', `(${place}`)).filter((m) => this.waitsFor(m, now));
        if (before.length === 0) return;
        if (now >= until) {
          this.opts.log('frontend: a request waited too long for an earlier one of its conversation on another front end; going on');
          return;
        }
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      }
    } catch (err) {
      this.trouble(err);
    }
  }

  /** Another front end's turn, still waited for. */
  private waitsFor(member: string, now: number): boolean {
    const [owner, until] = member.split('|');
    return owner !== this.opts.owner && now < Number(until);
  }

  /** Redis out of reach: the order between front ends is not kept (the request itself then fails or goes on). */
  private trouble(err: unknown): false {
    if (Date.now() - this.warnedAt > 60_000) {
      this.warnedAt = Date.now();
      this.opts.log(`frontend: cannot keep the order of requests across front ends: ${(err as Error).message}`);
    }
    return false;
  }
}
