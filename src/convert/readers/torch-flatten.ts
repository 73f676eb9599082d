// From the unpickled structure to names: a state dict's nested dicts and lists flattened into the '.'-joined
// tensor names a converter looks up ('model.llama_proj.weight'), and everything else kept aside as plain values.
import { CheckpointError } from './errors.js';
import { PyDict, pyRepr } from './pickle-values.js';
import { TensorRef } from './torch-unpickler.js';

/** A checkpoint's pickle, flattened (torch.ts: TorchCheckpointSource). */
export interface FlattenedPickle {
  tensors: Map<string, TensorRef>;
  extras: Map<string, unknown>;
  topLevelKeys: string[];
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
export function flattenPickled(root: unknown, file: string, budget = 1_000_000): FlattenedPickle {
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
