import { CheckpointError } from './errors.js';
import { RandomAccessFile } from './file.js';
import { PyDict, PyGlobal, isTuple, pyRepr, unpickle, type PyTuple, type UnpickleHooks } from './pickle.js';
import {
  DTYPE_ITEMSIZE,
  bytesToFloat32,
  describeKeys,
  numelOf,
  type StorageDType,
  type TensorInfo,
  type TensorSource,
} from './types.js';
import { ZipArchive, crc32, type ZipEntry } from './zip.js';

const STORAGE_TYPES: Readonly<Record<string, StorageDType>> = {
  FloatStorage: 'F32',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  DoubleStorage: 'F64',
  LongStorage: 'I64',
  IntStorage: 'I32',
  ShortStorage: 'I16',
  CharStorage: 'I8',
  ByteStorage: 'U8',
  BoolStorage: 'BOOL',
};

/**
 * Every global a checkpoint may reference, as [module, name]. Each becomes an inert marker; nothing is ever
 * imported or called.
 */
const ALLOWED_GLOBALS: ReadonlyArray<readonly [string, string]> = [
  ['collections', 'OrderedDict'],
  ['torch._utils', '_rebuild_tensor_v2'],
  ['torch._utils', '_rebuild_parameter'],
  ['torch._tensor', '_rebuild_from_type_v2'],
  // only usable as the `new_type` argument of _rebuild_from_type_v2
  ['torch._tensor', 'Tensor'],
  ['torch', 'Tensor'],
  ['torch.nn.parameter', 'Parameter'],
  // only usable as the storage type inside a persistent id
  ...Object.keys(STORAGE_TYPES).map((s) => ['torch', s] as const),
];
const ALLOWED_GLOBAL_KEYS = new Set(ALLOWED_GLOBALS.map(([m, n]) => `${m}\n${n}`));

/** A storage (one `data/<key>` record of the archive). */
export class StorageRef {
  constructor(
    readonly key: string,
    readonly dtype: StorageDType,
    /** number of elements */
    readonly numel: number,
    readonly location: string,
  ) {}
}

/** A tensor view on a storage (what `_rebuild_tensor_v2` would build). */
export class TensorRef {
  constructor(
    readonly storage: StorageRef,
    readonly storageOffset: number,
    readonly shape: readonly number[],
    readonly stride: readonly number[],
  ) {}
}

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

function refusal(file: string, what: string): CheckpointError {
  return new CheckpointError(
    `refusing to load ${file}: pickle ${what}; checkpoints may only contain tensors, dicts, lists, tuples and numbers`,
  );
}

function isNonNegInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function emptyHooks(v: unknown): boolean {
  return v === null || (v instanceof PyDict && v.map.size === 0);
}

/** Hooks implementing torch.load's restricted semantics (cf. torch's `weights_only` unpickler). */
function torchHooks(file: string, storages: Map<string, StorageRef>): UnpickleHooks {
  const bad = (msg: string): never => {
    throw new CheckpointError(`corrupt checkpoint ${file}: ${msg}`);
  };

  const rebuildTensorV2 = (args: PyTuple): TensorRef => {
    if (args.length !== 6 && args.length !== 7) bad(`_rebuild_tensor_v2 expects 6 or 7 arguments, got ${args.length}`);
    const [storage, offset, size, stride, , hooks] = args;
    if (!(storage instanceof StorageRef)) return bad('_rebuild_tensor_v2 without a storage');
    if (!isNonNegInt(offset)) return bad(`invalid storage offset ${pyRepr(offset)}`);
    if (!isTuple(size) || !size.every(isNonNegInt)) return bad(`invalid tensor size ${pyRepr(size)}`);
    if (!isTuple(stride) || !stride.every(isNonNegInt) || stride.length !== size.length) {
      return bad(`invalid tensor stride ${pyRepr(stride)} for size ${pyRepr(size)}`);
    }
    if (!emptyHooks(hooks)) bad('tensor has backward hooks');
    const shape = size as number[];
    const numel = numelOf(shape, `${file}: tensor`);
    if (numel > 0) {
      let last = offset;
      for (let i = 0; i < shape.length; i++) last += (shape[i] - 1) * (stride[i] as number);
      if (!Number.isSafeInteger(last) || last >= storage.numel) {
        bad(
          `tensor view (offset ${offset}, size ${pyRepr(size)}, stride ${pyRepr(stride)}) reaches element ${last} of storage '${storage.key}' with only ${storage.numel} elements`,
        );
      }
    }
    return new TensorRef(storage, offset, [...shape], [...(stride as number[])]);
  };

  const call = (fn: unknown, args: PyTuple): unknown => {
    if (!(fn instanceof PyGlobal)) return bad(`REDUCE on a non-callable ${pyRepr(fn)}`);
    switch (fn.qualifiedName) {
      case 'collections.OrderedDict':
        // torch pickles OrderedDict() and fills it with SETITEMS
        if (args.length !== 0) bad('OrderedDict() with arguments is not supported');
        return new PyDict(true);
      case 'torch._utils._rebuild_tensor_v2':
        return rebuildTensorV2(args);
      case 'torch._utils._rebuild_parameter': {
        if (args.length !== 3) bad('_rebuild_parameter expects 3 arguments');
        if (!(args[0] instanceof TensorRef)) bad('_rebuild_parameter without a tensor');
        if (!emptyHooks(args[2])) bad('parameter has backward hooks');
        return args[0];
      }
      case 'torch._tensor._rebuild_from_type_v2': {
        if (args.length !== 4) bad('_rebuild_from_type_v2 expects 4 arguments');
        const [func, newType, innerArgs, state] = args;
        if (
          !(newType instanceof PyGlobal) ||
          !['torch._tensor.Tensor', 'torch.Tensor', 'torch.nn.parameter.Parameter'].includes(newType.qualifiedName)
        ) {
          throw refusal(file, `rebuilds a tensor of type ${pyRepr(newType)}`);
        }
        if (!isTuple(innerArgs)) bad('_rebuild_from_type_v2 arguments are not a tuple');
        const t = call(func, innerArgs as PyTuple);
        if (!(t instanceof TensorRef)) bad('_rebuild_from_type_v2 did not rebuild a tensor');
        if (!(state === null || (state instanceof PyDict && state.map.size === 0))) {
          bad('tensor carries Python attributes (unsupported)');
        }
        return t;
      }
      default:
        throw refusal(file, `calls '${fn.qualifiedName}'`);
    }
  };

  return {
    findGlobal(module, name) {
      if (!ALLOWED_GLOBAL_KEYS.has(`${module}\n${name}`)) {
        throw refusal(file, `references global '${module}.${name}'`);
      }
      return new PyGlobal(module, name);
    },
    reduce: call,
    newObj(cls, args) {
      if (cls instanceof PyGlobal && cls.qualifiedName === 'collections.OrderedDict' && args.length === 0) {
        return new PyDict(true);
      }
      throw refusal(file, `instantiates ${pyRepr(cls)}`);
    },
    build(obj, state) {
      if (obj instanceof PyDict) {
        // torch pickles a state_dict's `_metadata` attribute this way; keep it aside, never as items
        if (state === null || state instanceof PyDict || isTuple(state)) {
          obj.state = state;
          return;
        }
      }
      if (obj instanceof TensorRef && (state === null || (state instanceof PyDict && state.map.size === 0))) return;
      bad(`BUILD with state ${pyRepr(state)} on ${pyRepr(obj)}`);
    },
    persistentLoad(pid) {
      if (!isTuple(pid) || pid.length !== 5 || pid[0] !== 'storage') {
        return bad(`unsupported persistent id ${pyRepr(pid)}`);
      }
      const [, type, key, location, numel] = pid;
      if (!(type instanceof PyGlobal) || type.module !== 'torch' || !Object.hasOwn(STORAGE_TYPES, type.name)) {
        return bad(`unsupported storage type ${pyRepr(type)}`);
      }
      const keyStr = typeof key === 'number' ? String(key) : key;
      if (typeof keyStr !== 'string' || !/^[A-Za-z0-9_.-]+$/.test(keyStr)) return bad(`invalid storage key ${pyRepr(key)}`);
      if (!isNonNegInt(numel)) return bad(`invalid storage size ${pyRepr(numel)}`);
      const dtype = STORAGE_TYPES[type.name];
      const prev = storages.get(keyStr);
      if (prev) {
        if (prev.dtype !== dtype || prev.numel !== numel) bad(`storage '${keyStr}' is declared twice with different types`);
        return prev;
      }
      const s = new StorageRef(keyStr, dtype, numel, typeof location === 'string' ? location : '');
      storages.set(keyStr, s);
      return s;
    },
  };
}

function keyString(k: unknown): string {
  if (typeof k === 'string') return k;
  if (typeof k === 'number' || typeof k === 'bigint') return String(k);
  return pyRepr(k);
}

function joinName(prefix: string, key: string): string {
  return prefix === '' ? key : `${prefix}.${key}`;
}

/** Deepest nesting of dicts/lists we follow (real checkpoints nest a handful of levels). */
const MAX_DEPTH = 256;

/**
 * Flattens nested dicts/lists into '.'-joined names. `budget` caps the number of nodes visited, so that shared
 * references (a "billion laughs" pickle) cannot make this explode; exceeding it or MAX_DEPTH is a CheckpointError.
 */
export function flattenPickled(
  root: unknown,
  file: string,
  budget = 1_000_000,
): { tensors: Map<string, TensorRef>; extras: Map<string, unknown>; topLevelKeys: string[] } {
  const tensors = new Map<string, TensorRef>();
  const extras = new Map<string, unknown>();
  let visits = 0;
  const visit = (depth: number): void => {
    if (++visits > budget) {
      throw new CheckpointError(`${file}: pickled structure is too large (more than ${budget} nodes after expansion)`);
    }
    if (depth > MAX_DEPTH) throw new CheckpointError(`${file}: pickled structure is nested too deeply`);
  };

  // which containers hold tensors (memoised; containers on the current path count as tensor-free)
  const holds = new Map<object, boolean>();
  const hasTensor = (v: unknown, depth: number): boolean => {
    if (v instanceof TensorRef) return true;
    if (!(v instanceof PyDict) && !Array.isArray(v)) return false;
    const known = holds.get(v);
    if (known !== undefined) return known;
    visit(depth);
    holds.set(v, false);
    let found = false;
    for (const x of v instanceof PyDict ? v.map.values() : v) {
      if (hasTensor(x, depth + 1)) {
        found = true;
        break;
      }
    }
    holds.set(v, found);
    return found;
  };

  const onPath = new Set<unknown>();
  const toPlain = (v: unknown, depth: number): unknown => {
    if (typeof v !== 'object' || v === null || v instanceof Uint8Array) return v;
    visit(depth);
    if (onPath.has(v)) return '<recursive>';
    onPath.add(v);
    try {
      if (v instanceof PyDict) {
        const o: Record<string, unknown> = {};
        for (const [k, x] of v.map) o[keyString(k)] = toPlain(x, depth + 1);
        return o;
      }
      if (Array.isArray(v)) return v.map((x) => toPlain(x, depth + 1));
      if (v instanceof Set) return [...v].map((x) => toPlain(x, depth + 1));
      return pyRepr(v);
    } finally {
      onPath.delete(v);
    }
  };

  const walk = (v: unknown, name: string, depth: number): void => {
    visit(depth);
    if (v instanceof TensorRef) {
      if (tensors.has(name)) throw new CheckpointError(`${file}: two tensors flatten to the same name '${name}'`);
      tensors.set(name, v);
      return;
    }
    if ((v instanceof PyDict || Array.isArray(v)) && hasTensor(v, depth)) {
      if (onPath.has(v)) return; // recursive structure
      onPath.add(v);
      if (v instanceof PyDict) for (const [k, x] of v.map) walk(x, joinName(name, keyString(k)), depth + 1);
      else (v as unknown[]).forEach((x, i) => walk(x, joinName(name, String(i)), depth + 1));
      onPath.delete(v);
      return;
    }
    extras.set(name, toPlain(v, depth));
  };
  walk(root, '', 0);
  const topLevelKeys = root instanceof PyDict ? [...root.map.keys()].map(keyString) : [];
  return { tensors, extras, topLevelKeys };
}

function isCContiguous(shape: readonly number[], stride: readonly number[]): boolean {
  let expected = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] !== 1 && stride[i] !== expected) return false;
    expected *= shape[i];
  }
  return true;
}

type WordArray = Uint8Array | Uint16Array | Uint32Array;
function wordView(b: Uint8Array, word: number): WordArray {
  if (word === 1) return b;
  if (word === 2) return new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2);
  return new Uint32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}

/**
 * Gathers a strided view into contiguous C order. `src` holds the storage elements starting at the view's
 * storage offset (must own an aligned buffer); strides are in elements.
 */
export function gatherStrided(
  src: Uint8Array,
  shape: readonly number[],
  stride: readonly number[],
  itemsize: number,
): Uint8Array {
  const numel = shape.reduce((a, b) => a * b, 1);
  const out = new Uint8Array(numel * itemsize);
  if (numel === 0) return out;
  const word = itemsize === 8 ? 4 : itemsize;
  const wpe = itemsize / word;
  const s = wordView(src, word);
  const o = wordView(out, word);
  const nd = shape.length;
  const inner = shape[nd - 1];
  const innerStride = stride[nd - 1];
  const rows = numel / inner;
  const idx = new Array<number>(Math.max(0, nd - 1)).fill(0);
  let base = 0;
  let w = 0;
  for (let r = 0; r < rows; r++) {
    if (innerStride === 1) {
      o.set(s.subarray(base * wpe, (base + inner) * wpe), w);
      w += inner * wpe;
    } else {
      for (let j = 0; j < inner; j++) {
        const e = (base + j * innerStride) * wpe;
        for (let k = 0; k < wpe; k++) o[w++] = s[e + k];
      }
    }
    for (let d = nd - 2; d >= 0; d--) {
      idx[d]++;
      base += stride[d];
      if (idx[d] < shape[d]) break;
      base -= stride[d] * shape[d];
      idx[d] = 0;
    }
  }
  return out;
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
