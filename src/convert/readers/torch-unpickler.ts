// torch.load's restricted semantics (cf. torch's `weights_only` unpickler) as hooks of the non-executing
// unpickler: which globals a checkpoint may name, how `_rebuild_tensor_v2` and its kin become tensor views on
// the archive's storages, and the refusal of anything else. Nothing here reads tensor data: views are checked
// against their storage's declared size, the archive's records are checked by torch.ts.
import { CheckpointError } from './errors.js';
import type { UnpickleHooks } from './pickle.js';
import { PyDict, PyGlobal, isTuple, pyRepr, type PyTuple } from './pickle-values.js';
import { numelOf, type StorageDType } from './types.js';

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
export function torchHooks(file: string, storages: Map<string, StorageRef>): UnpickleHooks {
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
