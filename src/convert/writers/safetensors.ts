// Streaming safetensors writer: the header is computed up front from the shapes, then the data is written
// tensor by tensor (chunk by chunk) as a generator produces it. Sharded checkpoints follow Hugging Face's layout:
// `model-00001-of-00003.safetensors` ... plus `model.safetensors.index.json`.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CheckpointError } from '../readers/errors.js';
import { withOutputFile } from './output.js';
import { checkUniqueNames, checkedChunks, tensorByteLength, type TensorSpec, type TensorStream } from './types.js';

const enc = new TextEncoder();

/**
 * The 8-byte length + JSON header of a safetensors file holding `specs` in that order, padded with spaces to a
 * multiple of 8 bytes as the reference implementation does (so every tensor's data starts 8-byte aligned).
 */
export function safetensorsHeader(specs: readonly TensorSpec[], metadata?: Readonly<Record<string, string>>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new CheckpointError(`safetensors metadata value for '${k}' must be a string`);
    }
    header.__metadata__ = metadata;
  }
  let off = 0;
  for (const s of specs) {
    if (s.name === '__metadata__') throw new CheckpointError("a tensor cannot be called '__metadata__' in safetensors");
    const len = tensorByteLength(s);
    header[s.name] = { dtype: s.dtype, shape: s.shape, data_offsets: [off, off + len] };
    off += len;
  }
  const json = enc.encode(JSON.stringify(header));
  const padded = Math.ceil(json.byteLength / 8) * 8;
  const out = new Uint8Array(8 + padded).fill(0x20);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  return out;
}

/** Total size of the safetensors file for `specs`. */
export function safetensorsFileSize(specs: readonly TensorSpec[], metadata?: Readonly<Record<string, string>>): number {
  return safetensorsHeader(specs, metadata).byteLength + specs.reduce((a, s) => a + tensorByteLength(s), 0);
}

export interface SafetensorsWriteOptions {
  /** the optional "__metadata__" string map, e.g. {format: 'pt'} as transformers writes */
  metadata?: Record<string, string>;
}

/** Writes one safetensors file; `data` yields the tensors' bytes in the order of `specs`. Returns the file size. */
export async function writeSafetensors(
  path: string,
  specs: readonly TensorSpec[],
  data: TensorStream,
  opts: SafetensorsWriteOptions = {},
): Promise<number> {
  checkUniqueNames(specs, path);
  const header = safetensorsHeader(specs, opts.metadata);
  return withOutputFile(path, async (f) => {
    await f.write(header);
    for await (const { bytes } of checkedChunks(specs, data, path)) await f.write(bytes);
    return f.position;
  });
}

export interface ShardPlanOptions {
  /** exact number of shards (tensors split into contiguous runs of about equal size) */
  shards?: number;
  /** largest shard data size in bytes, filled greedily as transformers does (default 10 GB, transformers' "10GB") */
  maxShardBytes?: number;
}

/** Splits `specs` (kept in order) into contiguous shards. Every shard gets at least one tensor. */
export function planShards(specs: readonly TensorSpec[], opts: ShardPlanOptions = {}): TensorSpec[][] {
  if (specs.length === 0) throw new CheckpointError('cannot shard an empty checkpoint');
  const sizes = specs.map(tensorByteLength);
  const shards: TensorSpec[][] = [];
  if (opts.shards !== undefined) {
    const n = opts.shards;
    if (!Number.isInteger(n) || n < 1) throw new CheckpointError(`shard count must be a positive integer, got ${n}`);
    if (n > specs.length) throw new CheckpointError(`cannot split ${specs.length} tensors into ${n} shards`);
    const total = sizes.reduce((a, b) => a + b, 0);
    let i = 0;
    let acc = 0;
    for (let k = 0; k < n; k++) {
      const shard: TensorSpec[] = [];
      const target = (total * (k + 1)) / n;
      // take at least one tensor; stop once the running total reaches this shard's share, leaving one tensor per later shard
      do {
        shard.push(specs[i]);
        acc += sizes[i];
        i++;
      } while (i < specs.length - (n - 1 - k) && (k === n - 1 || acc + sizes[i] / 2 <= target));
      shards.push(shard);
    }
    return shards;
  }
  const max = opts.maxShardBytes ?? 10_000_000_000;
  if (!(max > 0)) throw new CheckpointError(`maxShardBytes must be positive, got ${max}`);
  let cur: TensorSpec[] = [];
  let curSize = 0;
  specs.forEach((s, i) => {
    if (cur.length > 0 && curSize + sizes[i] > max) {
      shards.push(cur);
      cur = [];
      curSize = 0;
    }
    cur.push(s);
    curSize += sizes[i];
  });
  shards.push(cur);
  return shards;
}

/** Hugging Face shard file name: `model-00001-of-00003.safetensors`. */
export function shardFileName(prefix: string, index: number, count: number): string {
  const pad = (n: number) => String(n).padStart(5, '0');
  return `${prefix}-${pad(index + 1)}-of-${pad(count)}.safetensors`;
}

export interface ShardedWriteOptions extends ShardPlanOptions, SafetensorsWriteOptions {
  /** file name stem: `model` gives model-0000k-of-0000n.safetensors and model.safetensors.index.json */
  prefix?: string;
}

export interface ShardedWriteResult {
  indexPath: string;
  files: { path: string; bytes: number; tensors: number }[];
  /** sum of the tensors' data bytes (the index's metadata.total_size) */
  totalSize: number;
}

/**
 * Writes a sharded safetensors checkpoint into `dir` from one stream of tensors (in the order of `specs`), one
 * shard after the other, then the index `{metadata: {total_size}, weight_map: {name: shard}}` (names sorted, as
 * transformers writes it).
 */
export async function writeShardedSafetensors(
  dir: string,
  specs: readonly TensorSpec[],
  data: TensorStream,
  opts: ShardedWriteOptions = {},
): Promise<ShardedWriteResult> {
  const prefix = opts.prefix ?? 'model';
  checkUniqueNames(specs, dir);
  const shards = planShards(specs, opts);
  const names = shards.map((_, i) => shardFileName(prefix, i, shards.length));
  const iterator = checkedChunks(specs, data, dir)[Symbol.asyncIterator]();
  const files: ShardedWriteResult['files'] = [];
  const weightMap: Record<string, string> = {};
  try {
    for (let k = 0; k < shards.length; k++) {
      const shard = shards[k];
      const path = join(dir, names[k]);
      const last = shard[shard.length - 1].name;
      // this shard's share of the one stream: chunks up to and including the end of its last tensor
      async function* part(): AsyncGenerator<{ name: string; data: Uint8Array }> {
        if (shard.every((s) => tensorByteLength(s) === 0)) return;
        while (true) {
          const r = await iterator.next();
          if (r.done) return;
          yield { name: r.value.spec.name, data: r.value.bytes };
          if (r.value.last && r.value.spec.name === last) return;
          // an empty last tensor never has a chunk: stop after the last non-empty one
          if (r.value.last && shard.slice(shard.indexOf(r.value.spec) + 1).every((s) => tensorByteLength(s) === 0)) return;
        }
      }
      const bytes = await writeSafetensors(path, shard, part(), { metadata: opts.metadata });
      files.push({ path, bytes, tensors: shard.length });
      for (const s of shard) weightMap[s.name] = names[k];
    }
    const rest = await iterator.next();
    if (!rest.done) throw new CheckpointError(`${dir}: got data for '${rest.value.spec.name}' after the last shard`);
  } finally {
    await iterator.return?.(undefined);
  }
  const totalSize = specs.reduce((a, s) => a + tensorByteLength(s), 0);
  const sorted: Record<string, string> = {};
  for (const n of Object.keys(weightMap).sort()) sorted[n] = weightMap[n];
  const indexPath = join(dir, `${prefix}.safetensors.index.json`);
  await writeFile(indexPath, `${JSON.stringify({ metadata: { total_size: totalSize }, weight_map: sorted }, null, 2)}\n`);
  return { indexPath, files, totalSize };
}
