import { readFile, stat } from 'node:fs/promises';
import { dirname, isAbsolute, join, normalize, resolve, sep } from 'node:path';
import { CheckpointError } from './errors.js';
import type { TensorSource } from './types.js';
import { MergedSource } from './views.js';

/**
 * Opens a sharded checkpoint from its `*.index.json` (`{"weight_map": {name: shard file}}`), shards relative to the
 * index. Every name of the weight map must be in its shard; the merged source lists the shards' tensors, shard by shard.
 */
export async function openShardedIndex(indexPath: string, openShard: (path: string) => Promise<TensorSource>): Promise<TensorSource> {
  const abs = resolve(indexPath);
  let index: unknown;
  try {
    index = JSON.parse(await readFile(abs, 'utf8'));
  } catch (err) {
    throw new CheckpointError(`cannot read shard index ${abs}: ${(err as Error).message}`, { cause: err });
  }
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
    throw new CheckpointError(`${abs}: shard index has no "weight_map" object`);
  }
  const dir = dirname(abs);
  const byShard = new Map<string, string[]>();
  for (const [name, shard] of Object.entries(weightMap as Record<string, unknown>)) {
    if (typeof shard !== 'string' || shard === '' || isAbsolute(shard) || normalize(shard).split(/[\\/]/).includes('..')) {
      throw new CheckpointError(`${abs}: invalid shard file ${JSON.stringify(shard)} for '${name}'`);
    }
    const list = byShard.get(shard) ?? [];
    list.push(name);
    byShard.set(shard, list);
  }
  if (byShard.size === 0) throw new CheckpointError(`${abs}: shard index "weight_map" is empty`);
  const shardNames = [...byShard.keys()].sort();
  const sources: TensorSource[] = [];
  try {
    for (const shard of shardNames) {
      const p = join(dir, shard);
      if (!resolve(p).startsWith(dir + sep)) throw new CheckpointError(`${abs}: shard ${shard} escapes the index folder`);
      const src = await openShard(p);
      sources.push(src);
      for (const name of byShard.get(shard)!) {
        if (!src.has(name)) {
          throw new CheckpointError(`${abs}: weight_map says '${name}' is in ${shard}, but that shard has no such tensor`);
        }
      }
    }
    return new MergedSource(sources, [abs]);
  } catch (err) {
    await Promise.allSettled(sources.map((s) => s.close()));
    throw err;
  }
}

async function isFile(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isFile();
  } catch {
    return false;
  }
}

/** The weight files looked for in a Hugging Face model folder, in order of preference. */
export const HF_WEIGHT_FILES = [
  'model.safetensors',
  'model.safetensors.index.json',
  'pytorch_model.bin',
  'pytorch_model.bin.index.json',
] as const;

/** Returns the preferred weight file of a Hugging Face model folder, or undefined. */
export async function findHfWeightFile(dir: string): Promise<string | undefined> {
  for (const f of HF_WEIGHT_FILES) {
    const p = join(dir, f);
    if (await isFile(p)) return p;
  }
  return undefined;
}
