// Image embeddings shared by the workers through Redis (ConversationManager's `sharedImages`): a follow-up that
// lands on another worker than the one holding its conversation (that one died, or the follow-up came back after
// the affinity lapsed) skips the vision encoder, which takes seconds on a CPU worker. Entries are the raw
// float32 rows with the image's size, keyed by the image's content hash and the package (embeddings of one model
// mean nothing to another), kept for an hour after their last write.
import type { Redis } from 'ioredis';
import type { EncodedImage, SharedImageCache } from '../conversation/image-input.js';
import { PREFIX } from './protocol.js';

const TTL_S = 3600;

export class RedisImageCache implements SharedImageCache {
  constructor(
    private readonly redis: Redis,
    /** what the embeddings belong to: the package's name and its vision graph's digest */
    private readonly model: string,
  ) {}

  private key(hash: string): string {
    return `${PREFIX}emb:${this.model}:${hash}`;
  }

  async get(hash: string): Promise<EncodedImage | undefined> {
    const b = await this.redis.getBuffer(this.key(hash));
    if (!b || b.length < 8 || (b.length - 8) % 4 !== 0) return undefined;
    const width = b.readUInt32LE(0);
    const height = b.readUInt32LE(4);
    const embeds = new Float32Array((b.length - 8) / 4);
    Buffer.from(embeds.buffer).set(b.subarray(8));
    return { embeds, width, height };
  }

  async set(hash: string, image: EncodedImage): Promise<void> {
    const head = Buffer.alloc(8);
    head.writeUInt32LE(image.width, 0);
    head.writeUInt32LE(image.height, 4);
    const body = Buffer.from(image.embeds.buffer, image.embeds.byteOffset, image.embeds.byteLength);
    await this.redis.set(this.key(hash), Buffer.concat([head, body]), 'EX', TTL_S);
  }

  async delete(hash: string): Promise<void> {
    await this.redis.del(this.key(hash));
  }
}
