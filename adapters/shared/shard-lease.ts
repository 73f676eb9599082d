// Gateway shards held by one front end at a time. Every gateway connection of a Discord bot receives every event
// of its shard, so two front ends connecting the same shard would both answer each message. Front ends on Redis
// claim their shards there before connecting (src/cluster/shard-lease.ts); a single process has nothing to share
// them with and claims nothing.

/**
 * Another front end holds one of the shards (`shard` of `count`), or splits the bot into another `count`; `holder`
 * says which front end. `message` ends with advice for a front end that was given its shards.
 */
export class ShardsTakenError extends Error {
  constructor(
    message: string,
    readonly why: { kind: 'taken' | 'count'; shard: number; count: number; holder: string },
  ) {
    super(message);
  }
}

/** The shards a front end is about to connect. */
export interface ShardClaim {
  /** which bot (a digest of its token: front ends of different bots never conflict) */
  bot: string;
  /** this front end's shard ids, each below `count` */
  ids: readonly number[];
  /** how many shards the bot's guilds are split into (every front end of one bot must use the same) */
  count: number;
}

/** Shards held until `release()`. */
export interface ShardLease {
  /**
   * Resolves, with the reason as one sentence, if another front end took one of the shards (it claimed it while
   * this one could not renew its hold, e.g. could not reach Redis for longer than the hold lasts); never otherwise.
   * The front end must then disconnect, or both would answer.
   */
  readonly lost: Promise<string>;
  /** gives the shards up (a front end stopping), so that another may connect them at once */
  release(): Promise<void>;
}

export interface ShardLeases {
  /**
   * Holds the shards for this front end, waiting a while for a hold that its holder stopped renewing (a front
   * end that died) to lapse; rejects with ShardsTakenError, a sentence naming the holder, if another front end
   * keeps any of them or splits the bot into another count (with another error if the holds cannot be read).
   */
  claim(claim: ShardClaim): Promise<ShardLease>;
}
