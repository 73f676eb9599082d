// PyTorch checkpoints (torch.save's zip format, torch >= 1.6): the archive's data.pkl unpickled without executing
// anything (torch-unpickler.ts), flattened to tensor names (torch-flatten.ts), and each tensor read from its
// storage record on demand (strided views gathered by strided.ts).
import { CheckpointError } from './errors.js';
import { RandomAccessFile } from './file.js';
import { unpickle } from './pickle.js';
import { gatherStrided, isCContiguous } from './strided.js';
import { flattenPickled } from './torch-flatten.js';
import { torchHooks, type StorageRef, type TensorRef } from './torch-unpickler.js';
import { DTYPE_ITEMSIZE, bytesToFloat32, describeKeys, numelOf, type TensorInfo, type TensorSource } from './types.js';
import { ZipArchive, crc32, type ZipEntry } from './zip.js';

export interface TorchCheckpointSource extends TensorSource {
  /** keys of the top-level dict (e.g. ['model'] for MiniGPT checkpoints; [] when the root is not a dict) */
  readonly topLevelKeys: string[];
  /**
   * Non-tensor leaves of the pickled structure, flattened with '.' like the tensor names, as plain JS values
   * (dicts without tensors become plain objects, tuples/lists arrays, None null, big ints bigint). E.g. 'epoch' -> 3.
   */
  readonly extras: ReadonlyMap<string, unknown>;
  /** archive folder name inside the zip (e.g. 'archive', 'eva_vit') */
  readonly archiveName: string;
}

class TorchZipSource implements TorchCheckpointSource {
  readonly files: string[];
  private readonly order: string[];

  constructor(
    private readonly zip: ZipArchive,
    private readonly prefix: string,
    private readonly tensors: Map<string, TensorRef>,
    readonly extras: ReadonlyMap<string, unknown>,
    readonly topLevelKeys: string[],
  ) {
    this.files = [zip.file.path];
    this.order = [...tensors.keys()];
  }

  get archiveName(): string {
    return this.prefix.replace(/\/$/, '');
  }

  list(): TensorInfo[] {
    return this.order.map((n) => this.makeInfo(n, this.tensors.get(n)!));
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    return this.makeInfo(name, this.tensor(name));
  }

  async readRaw(name: string): Promise<Uint8Array> {
    const t = this.tensor(name);
    const itemsize = DTYPE_ITEMSIZE[t.storage.dtype];
    const numel = numelOf(t.shape as number[], name);
    if (numel === 0) return new Uint8Array(0);
    const entry = this.storageEntry(t.storage);
    if (isCContiguous(t.shape, t.stride)) {
      return this.zip.read(entry, t.storageOffset * itemsize, numel * itemsize);
    }
    let last = 0;
    for (let i = 0; i < t.shape.length; i++) last += (t.shape[i] - 1) * t.stride[i];
    const span = await this.zip.read(entry, t.storageOffset * itemsize, (last + 1) * itemsize);
    return gatherStrided(span, t.shape, t.stride, itemsize);
  }

  async readFloat32(name: string): Promise<Float32Array> {
    const t = this.tensor(name);
    const raw = await this.readRaw(name);
    return bytesToFloat32(raw, t.storage.dtype, `${this.zip.file.path}: tensor '${name}'`);
  }

  close(): Promise<void> {
    return this.zip.file.close();
  }

  private makeInfo(name: string, t: TensorRef): TensorInfo {
    return { name, dtype: t.storage.dtype, shape: [...t.shape] };
  }

  private tensor(name: string): TensorRef {
    const t = this.tensors.get(name);
    if (!t) throw new CheckpointError(`tensor '${name}' not found in ${this.zip.file.path} (${describeKeys(this.order)})`);
    return t;
  }

  private storageEntry(s: StorageRef): ZipEntry {
    const e = this.zip.get(`${this.prefix}data/${s.key}`);
    if (!e) throw new CheckpointError(`${this.zip.file.path}: storage record '${this.prefix}data/${s.key}' is missing`);
    return e;
  }
}

export async function openTorchCheckpoint(path: string): Promise<TorchCheckpointSource> {
  const file = await RandomAccessFile.open(path);
  try {
    const head = file.size >= 4 ? await file.read(0, 4, 'file signature') : new Uint8Array(0);
    if (!(head[0] === 0x50 && head[1] === 0x4b)) {
      if (head[0] === 0x80) {
        throw new CheckpointError(
          `${file.path}: this is a legacy (pre-1.6, non-zip) torch.save file, which is not supported; re-save it with torch>=1.6 (torch.save(torch.load(f), f2))`,
        );
      }
      throw new CheckpointError(`${file.path}: not a PyTorch zip checkpoint (no zip signature)`);
    }
    const zip = await ZipArchive.open(file);
    return await openTorchZip(zip);
  } catch (err) {
    await file.close().catch(() => undefined);
    throw err;
  }
}

/** Upper bound for data.pkl (the pickle holds only structure; a 14 GB state dict has a pickle of a few MB). */
const MAX_PICKLE_BYTES = 1 << 30;

async function openTorchZip(zip: ZipArchive): Promise<TorchCheckpointSource> {
  const where = zip.file.path;
  const pkls = [...zip.entries.keys()].filter((n) => n === 'data.pkl' || n.endsWith('/data.pkl'));
  if (pkls.length === 0) {
    throw new CheckpointError(`${where}: zip archive has no '<archive>/data.pkl'; not a torch.save checkpoint`);
  }
  // prefer the shallowest data.pkl (torch writes exactly one, at '<archive>/data.pkl')
  pkls.sort((a, b) => a.split('/').length - b.split('/').length || a.localeCompare(b));
  if (pkls.length > 1 && pkls[0].split('/').length === pkls[1].split('/').length) {
    throw new CheckpointError(`${where}: ambiguous checkpoint, several data.pkl records (${pkls.join(', ')})`);
  }
  const pklName = pkls[0];
  const prefix = pklName.slice(0, pklName.length - 'data.pkl'.length);
  if (prefix.endsWith('.data/') || pklName.startsWith('code/')) {
    throw new CheckpointError(`${where}: unsupported archive layout (${pklName})`);
  }
  const bo = zip.get(`${prefix}byteorder`);
  if (bo) {
    const order = new TextDecoder().decode(await zip.read(bo)).trim();
    if (order !== 'little') {
      throw new CheckpointError(`${where}: checkpoint byte order is '${order}'; only little-endian checkpoints are supported`);
    }
  }
  const pklEntry = zip.get(pklName)!;
  if (pklEntry.uncompressedSize > MAX_PICKLE_BYTES) {
    throw new CheckpointError(`${where}: ${pklName} is implausibly large (${pklEntry.uncompressedSize} bytes)`);
  }
  const pkl = await zip.read(pklEntry);
  if (crc32(pkl) !== pklEntry.crc32) {
    throw new CheckpointError(`${where}: CRC mismatch in ${pklName}; the file is corrupt`);
  }
  const storages = new Map<string, StorageRef>();
  const root = unpickle(pkl, torchHooks(where, storages), `${where} (${pklName})`);
  for (const s of storages.values()) {
    const name = `${prefix}data/${s.key}`;
    const e = zip.get(name);
    if (!e) throw new CheckpointError(`${where}: storage record '${name}' is missing; the archive is incomplete`);
    const need = s.numel * DTYPE_ITEMSIZE[s.dtype];
    if (e.uncompressedSize < need) {
      throw new CheckpointError(
        `${where}: storage record '${name}' has ${e.uncompressedSize} bytes but ${s.dtype} x ${s.numel} needs ${need}`,
      );
    }
  }
  // every legitimate node costs at least a couple of pickle bytes; expansion far beyond that is an attack
  const { tensors, extras, topLevelKeys } = flattenPickled(root, where, 4 * pkl.byteLength + 100_000);
  // A view is materialised contiguous when read: an expanded or self-overlapping view (stride 0) can claim far
  // more elements than its storage holds. Nothing read may be larger than the file itself.
  for (const [name, t] of tensors) {
    const bytes = numelOf(t.shape as number[], `${where}: tensor '${name}'`) * DTYPE_ITEMSIZE[t.storage.dtype];
    if (bytes > zip.file.size) {
      throw new CheckpointError(
        `${where}: tensor '${name}' [${t.shape.join(', ')}] would take ${bytes} bytes, more than the whole file (${zip.file.size}): ` +
          'an expanded or overlapping view (stride 0); re-save the checkpoint with contiguous tensors (.contiguous() / .clone())',
      );
    }
  }
  return new TorchZipSource(zip, prefix, tensors, extras, topLevelKeys);
}
