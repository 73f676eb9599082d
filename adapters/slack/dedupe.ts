// "Seen" marks in the conversation store (keyv): Slack retries an event that was not acknowledged in time,
// and delivers a message with a mention twice (app_mention and message); each is answered once, also across
// a restart when the store persists.
import type Keyv from 'keyv';
import { lockKey } from '../../src/conversation/store.js';
import { StoreSections } from '../../src/conversation/store-lock.js';

const LOCAL_LIMIT = 20_000;

export class SeenSet {
  /** claimed here: key -> expiry (ms since epoch) */
  private readonly local = new Map<string, number>();
  /** a claim's read and write, alone (on Redis, across front ends: Slack may send a message's two events to two at once) */
  private readonly claims: StoreSections | undefined;

  constructor(
    private readonly store: Keyv | undefined,
    private readonly prefix: string,
    private readonly ttlMs: number,
    private readonly log: (line: string) => void,
  ) {
    this.claims = store && new StoreSections(store, lockKey(prefix));
  }

  /**
   * True for the first claim of `id` (within the TTL, in this process or, through the store, any earlier
   * one); false for every later claim. A store failure does not drop the event: the local mark decides.
   */
  async claim(id: string): Promise<boolean> {
    const now = Date.now();
    const expiry = this.local.get(id);
    if (expiry !== undefined && expiry > now) return false;
    this.local.set(id, now + this.ttlMs);
    this.prune(now);
    const store = this.store;
    if (!store || !this.claims) return true;
    const key = `${this.prefix}${id}`;
    try {
      return await this.claims.run(id, async () => {
        if ((await store.get(key)) !== undefined) return false;
        await store.set(key, now, this.ttlMs);
        return true;
      });
    } catch (err) {
      this.log(`slack: the store failed while marking ${this.prefix}${id} as seen: ${(err as Error).message}`);
      return true;
    }
  }

  /** Marks without asking (e.g. a thread the bot answered in). */
  async mark(id: string): Promise<void> {
    this.local.set(id, Date.now() + this.ttlMs);
    this.prune(Date.now());
    if (!this.store) return;
    try {
      await this.store.set(`${this.prefix}${id}`, Date.now(), this.ttlMs);
    } catch (err) {
      this.log(`slack: the store failed while writing ${this.prefix}${id}: ${(err as Error).message}`);
    }
  }

  async has(id: string): Promise<boolean> {
    const expiry = this.local.get(id);
    if (expiry !== undefined && expiry > Date.now()) return true;
    if (!this.store) return false;
    try {
      return (await this.store.get(`${this.prefix}${id}`)) !== undefined;
    } catch (err) {
      this.log(`slack: the store failed while reading ${this.prefix}${id}: ${(err as Error).message}`);
      return false;
    }
  }

  private prune(now: number): void {
    if (this.local.size <= LOCAL_LIMIT) return;
    for (const [k, exp] of this.local) {
      if (exp <= now || this.local.size > LOCAL_LIMIT) this.local.delete(k);
      if (this.local.size <= LOCAL_LIMIT * 0.9) break;
    }
  }
}
