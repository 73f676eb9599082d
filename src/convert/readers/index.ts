/**
 * Lazy readers for published checkpoint formats: safetensors (single or sharded), PyTorch `torch.save` zip
 * archives (restricted, non-executing unpickler) and Hugging Face model folders. Tensors are read one at a time
 * with positioned reads; no file is ever loaded whole.
 */
import { readdir, stat } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { resolve } from 'node:path';
import { CheckpointError } from './errors.js';
import { RandomAccessFile } from './file.js';
import { HF_WEIGHT_FILES, findHfWeightFile, openShardedIndex } from './hf.js';
import { openSafetensors } from './safetensors.js';
import { openTorchCheckpoint } from './torch.js';
import type { TensorSource } from './types.js';

export { CheckpointError } from './errors.js';
export type { StorageDType, TensorInfo, TensorSource } from './types.js';
export { DTYPE_ITEMSIZE, bytesToFloat32, halfToFloat, isFloatDType } from './types.js';
export { openSafetensors, SafetensorsSource } from './safetensors.js';
export { openTorchCheckpoint, type TorchCheckpointSource } from './torch.js';
export { unwrapPrefix, MergedSource } from './views.js';
export { openShardedIndex } from './hf.js';

/** The file or folder's stat, or a CheckpointError that names `what` and the reason (ENOENT, EACCES, ...). */
async function statOrThrow(abs: string, what: string): Promise<Stats> {
  try {
    return await stat(abs);
  } catch (err) {
    throw new CheckpointError(`cannot open ${what} ${abs}: ${(err as NodeJS.ErrnoException).code ?? err}`, { cause: err });
  }
}

/**
 * Opens any supported checkpoint, sniffing the format: a zip signature means a torch.save archive, otherwise a
 * safetensors header is expected. A `*.index.json` opens a sharded checkpoint, a folder is opened with openHfWeights.
 */
export async function openCheckpoint(path: string): Promise<TensorSource> {
  const abs = resolve(path);
  const st = await statOrThrow(abs, 'checkpoint');
  if (st.isDirectory()) return openHfWeights(abs);
  if (abs.endsWith('.index.json')) {
    return openShardedIndex(abs, (p) => openCheckpoint(p));
  }
  const f = await RandomAccessFile.open(abs);
  let head: Uint8Array;
  try {
    head = await f.read(0, Math.min(9, f.size), 'file signature');
  } finally {
    await f.close();
  }
  if (head[0] === 0x50 && head[1] === 0x4b && (head[2] === 0x03 || head[2] === 0x05) && (head[3] === 0x04 || head[3] === 0x06)) {
    return openTorchCheckpoint(abs);
  }
  if (head.length >= 2 && head[0] === 0x80 && head[1] <= 5) {
    return openTorchCheckpoint(abs); // raises the "legacy torch format" error
  }
  return openSafetensors(abs);
}

/**
 * Opens the weights of a Hugging Face model folder: model.safetensors | model.safetensors.index.json (sharded) |
 * pytorch_model.bin | pytorch_model.bin.index.json, preferring safetensors. A file path is opened with openCheckpoint.
 */
export async function openHfWeights(dir: string): Promise<TensorSource> {
  const abs = resolve(dir);
  const st = await statOrThrow(abs, 'model folder');
  if (st.isFile()) return openCheckpoint(abs);
  const file = await findHfWeightFile(abs);
  if (!file) {
    let present: string[] = [];
    try {
      present = (await readdir(abs)).filter((n) => /\.(safetensors|bin|pth|pt|json)$/.test(n));
    } catch {
      /* ignore */
    }
    throw new CheckpointError(
      `${abs}: no Hugging Face weights found (looked for ${HF_WEIGHT_FILES.join(', ')}; folder has ${present.length ? present.join(', ') : 'no weight-like files'})`,
    );
  }
  if (file.endsWith('.index.json')) {
    return openShardedIndex(file, file.endsWith('.safetensors.index.json') ? openSafetensors : openTorchCheckpoint);
  }
  return file.endsWith('.safetensors') ? openSafetensors(file) : openTorchCheckpoint(file);
}
