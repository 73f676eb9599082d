// The Python values an unpickled checkpoint is made of, as plain JavaScript: dicts keep their insertion order and
// their BUILD state apart, globals are inert names (never imported or called), tuples are frozen arrays so that
// they stay distinguishable from lists (torch's tensor arguments must be tuples).

/** A Python dict (plain or OrderedDict). Keys are JS primitives (strings, numbers, bigints, booleans, null) or tuples. */
export class PyDict {
  readonly map = new Map<unknown, unknown>();
  /** instance state set by BUILD (e.g. torch's state_dict `_metadata`); never merged into the items */
  state: unknown = undefined;
  constructor(readonly ordered: boolean) {}
}

/** An inert reference to an allowed global (module + qualified name). */
export class PyGlobal {
  constructor(
    readonly module: string,
    readonly name: string,
  ) {}
  get qualifiedName(): string {
    return `${this.module}.${this.name}`;
  }
}

/** Python tuples are frozen JS arrays; lists are ordinary arrays; sets are Set. */
export type PyTuple = readonly unknown[];

export function isTuple(v: unknown): v is PyTuple {
  return Array.isArray(v) && Object.isFrozen(v);
}

export function isList(v: unknown): v is unknown[] {
  return Array.isArray(v) && !Object.isFrozen(v);
}

/** A tuple as the unpickler builds it (frozen: see isTuple). */
export function tuple(items: unknown[]): PyTuple {
  return Object.freeze(items);
}

/** Short human-readable rendering of an unpickled value (for error messages / non-tensor metadata). */
export function pyRepr(v: unknown, depth = 0): string {
  if (v === null) return 'None';
  if (v === true) return 'True';
  if (v === false) return 'False';
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'number' || typeof v === 'bigint') return String(v);
  if (v instanceof PyGlobal) return v.qualifiedName;
  if (depth > 2) return '...';
  if (Array.isArray(v)) {
    const inner =
      v
        .slice(0, 8)
        .map((x) => pyRepr(x, depth + 1))
        .join(', ') + (v.length > 8 ? ', ...' : '');
    return isTuple(v) ? `(${inner}${v.length === 1 ? ',' : ''})` : `[${inner}]`;
  }
  if (v instanceof PyDict) return `{${v.map.size} items}`;
  if (v instanceof Uint8Array) return `<${v.byteLength} bytes>`;
  if (v instanceof Set) return `{set of ${v.size}}`;
  return Object.prototype.toString.call(v);
}
