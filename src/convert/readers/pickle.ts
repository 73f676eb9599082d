/**
 * A restricted, non-executing unpickler.
 *
 * Nothing in the pickle is ever called: GLOBAL / STACK_GLOBAL are resolved through `findGlobal`, which must
 * return an inert marker for the handful of allowed names and throw for everything else, and REDUCE / NEWOBJ /
 * BUILD are interpreted by the caller's hooks, which only know how to rebuild plain data (dicts, tensors).
 */
import { CheckpointError } from './errors.js';

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

export interface UnpickleHooks {
  /** Returns an inert marker for allowed globals; must throw CheckpointError for anything else. */
  findGlobal(module: string, name: string): unknown;
  /** REDUCE: `callable(*args)`; `callable` is whatever findGlobal returned (or another stack value). */
  reduce(callable: unknown, args: PyTuple): unknown;
  /** NEWOBJ / NEWOBJ_EX: `cls.__new__(cls, *args)`. */
  newObj(cls: unknown, args: PyTuple): unknown;
  /** BUILD: `obj.__setstate__(state)`; returns nothing, may mutate obj. */
  build(obj: unknown, state: unknown): void;
  /** BINPERSID / PERSID */
  persistentLoad(pid: unknown): unknown;
}

/** Longest LONG4 integer we accept (bytes); checkpoints never need more. */
const MAX_LONG_BYTES = 1024;

/**
 * Unpickles `data` (protocols 0-5) without executing anything.
 * @param where file/entry name used in error messages
 */
export function unpickle(data: Uint8Array, hooks: UnpickleHooks, where: string): unknown {
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const n = data.byteLength;
  let pos = 0;
  let stack: unknown[] = [];
  const metastack: unknown[][] = [];
  const memo = new Map<number, unknown>();
  const utf8 = new TextDecoder('utf-8');
  const latin1 = new TextDecoder('latin1');

  const fail: (msg: string, at?: number) => never = (msg, at = pos) => {
    throw new CheckpointError(`corrupt or unsupported pickle in ${where}: ${msg} (at byte ${at})`);
  };
  const need = (k: number, what: string): void => {
    if (!Number.isSafeInteger(k) || k < 0 || pos + k > n) {
      fail(`${what} needs ${k} bytes but only ${n - pos} remain (truncated?)`);
    }
  };
  const u8 = (): number => {
    need(1, 'opcode argument');
    return data[pos++];
  };
  const u16 = (): number => {
    need(2, 'opcode argument');
    const v = dv.getUint16(pos, true);
    pos += 2;
    return v;
  };
  const u32 = (): number => {
    need(4, 'opcode argument');
    const v = dv.getUint32(pos, true);
    pos += 4;
    return v;
  };
  const i32 = (): number => {
    need(4, 'opcode argument');
    const v = dv.getInt32(pos, true);
    pos += 4;
    return v;
  };
  const u64 = (): number => {
    need(8, 'opcode argument');
    const v = dv.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(n)) fail(`length ${v} exceeds the pickle size`);
    return Number(v);
  };
  const bytes = (k: number, what: string): Uint8Array => {
    need(k, what);
    const b = data.subarray(pos, pos + k);
    pos += k;
    return b;
  };
  const line = (what: string): string => {
    const end = data.indexOf(0x0a, pos);
    if (end < 0) fail(`unterminated ${what}`);
    const s = latin1.decode(data.subarray(pos, end));
    pos = end + 1;
    return s;
  };
  const pop = (): unknown => {
    if (stack.length === 0) fail('stack underflow');
    return stack.pop();
  };
  const top = (): unknown => {
    if (stack.length === 0) fail('stack underflow');
    return stack[stack.length - 1];
  };
  const popMark = (): unknown[] => {
    const items = stack;
    const prev = metastack.pop();
    if (prev === undefined) fail('MARK expected but none on the stack');
    stack = prev!;
    return items;
  };
  const tuple = (items: unknown[]): PyTuple => Object.freeze(items);
  const memoGet = (idx: number): unknown => {
    if (!memo.has(idx)) fail(`memo key ${idx} is not defined`);
    return memo.get(idx);
  };
  const setItems = (d: unknown, items: unknown[]): void => {
    if (!(d instanceof PyDict)) fail('SETITEM(S) on something that is not a dict');
    if (items.length % 2 !== 0) fail('SETITEMS with an odd number of items');
    for (let i = 0; i < items.length; i += 2) (d as PyDict).map.set(dictKey(items[i]), items[i + 1]);
  };
  const append = (l: unknown, items: unknown[]): void => {
    if (!isList(l)) fail('APPEND(S) on something that is not a list');
    for (const x of items) (l as unknown[]).push(x);
  };
  const dictKey = (k: unknown): unknown => {
    if (k instanceof PyDict || isList(k) || k instanceof Set) fail('unhashable dict key');
    return k;
  };
  const decodeLong = (b: Uint8Array): number | bigint => {
    if (b.length === 0) return 0;
    let hexDigits = '';
    for (let i = b.length - 1; i >= 0; i--) hexDigits += b[i].toString(16).padStart(2, '0');
    let v = BigInt(`0x${hexDigits}`);
    if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
    return toNumberIfSafe(v);
  };
  const textInt = (s: string): number | bigint | boolean => {
    const t = s.trim().replace(/L$/, '');
    if (t === '01') return true;
    if (t === '00') return false;
    if (t.length > 2 * MAX_LONG_BYTES || !/^[-+]?\d+$/.test(t)) fail(`invalid integer literal ${JSON.stringify(s.slice(0, 40))}`);
    return toNumberIfSafe(BigInt(t));
  };
  const checkString = (v: unknown, what: string): string => {
    if (typeof v !== 'string') fail(`${what} must be a string`);
    return v as string;
  };

  while (true) {
    if (pos >= n) fail('pickle ended without a STOP opcode (truncated?)');
    const at = pos;
    const op = data[pos++];
    switch (op) {
      case 0x80: {
        // PROTO
        const v = u8();
        if (v > 5) fail(`unsupported pickle protocol ${v}`, at);
        break;
      }
      case 0x95: {
        // FRAME (framing is transparent when the whole pickle is in memory)
        const len = u64();
        if (pos + len > n) fail('FRAME extends past the end of the pickle', at);
        break;
      }
      case 0x2e: // STOP (like Python, returns the top of the stack)
        if (metastack.length !== 0) fail('STOP inside an unterminated MARK', at);
        if (stack.length === 0) fail('STOP with an empty stack', at);
        return stack[stack.length - 1];
      case 0x28: // MARK
        metastack.push(stack);
        stack = [];
        break;
      case 0x30: // POP
        if (stack.length === 0) {
          // Python's POP also pops a mark
          popMark();
        } else stack.pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;

      // ---- constants
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x4a: // BININT
        stack.push(i32());
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x8a: {
        // LONG1
        const k = u8();
        stack.push(decodeLong(bytes(k, 'LONG1')));
        break;
      }
      case 0x8b: {
        // LONG4
        const k = i32();
        if (k < 0 || k > MAX_LONG_BYTES) fail(`LONG4 length ${k} out of range`, at);
        stack.push(decodeLong(bytes(k, 'LONG4')));
        break;
      }
      case 0x49: // INT (text)
        stack.push(textInt(line('INT')));
        break;
      case 0x4c: // LONG (text)
        stack.push(textInt(line('LONG')));
        break;
      case 0x47: {
        // BINFLOAT (big-endian double)
        need(8, 'BINFLOAT');
        stack.push(dv.getFloat64(pos, false));
        pos += 8;
        break;
      }
      case 0x46: {
        // FLOAT (text)
        const s = line('FLOAT').trim();
        const v = Number(s);
        if (Number.isNaN(v) && !/^[-+]?nan$/i.test(s)) fail(`invalid float literal ${JSON.stringify(s)}`, at);
        stack.push(v);
        break;
      }

      // ---- strings / bytes
      case 0x58: {
        // BINUNICODE
        const k = u32();
        stack.push(utf8.decode(bytes(k, 'BINUNICODE')));
        break;
      }
      case 0x8c: {
        // SHORT_BINUNICODE
        const k = u8();
        stack.push(utf8.decode(bytes(k, 'SHORT_BINUNICODE')));
        break;
      }
      case 0x8d: {
        // BINUNICODE8
        const k = u64();
        stack.push(utf8.decode(bytes(k, 'BINUNICODE8')));
        break;
      }
      case 0x56: // UNICODE (raw-unicode-escape text line)
        stack.push(unescapeRawUnicode(line('UNICODE')));
        break;
      case 0x54: {
        // BINSTRING (py2 str, decoded as latin1 like encoding='latin1')
        const k = i32();
        if (k < 0) fail('negative BINSTRING length', at);
        stack.push(latin1.decode(bytes(k, 'BINSTRING')));
        break;
      }
      case 0x55: {
        // SHORT_BINSTRING
        const k = u8();
        stack.push(latin1.decode(bytes(k, 'SHORT_BINSTRING')));
        break;
      }
      case 0x53: // STRING (quoted text)
        stack.push(parseQuoted(line('STRING'), fail));
        break;
      case 0x42: {
        // BINBYTES
        const k = u32();
        stack.push(bytes(k, 'BINBYTES').slice());
        break;
      }
      case 0x43: {
        // SHORT_BINBYTES
        const k = u8();
        stack.push(bytes(k, 'SHORT_BINBYTES').slice());
        break;
      }
      case 0x8e: {
        // BINBYTES8
        const k = u64();
        stack.push(bytes(k, 'BINBYTES8').slice());
        break;
      }
      case 0x96: {
        // BYTEARRAY8
        const k = u64();
        stack.push(bytes(k, 'BYTEARRAY8').slice());
        break;
      }

      // ---- containers
      case 0x7d: // EMPTY_DICT
        stack.push(new PyDict(false));
        break;
      case 0x64: {
        // DICT
        const items = popMark();
        const d = new PyDict(false);
        setItems(d, items);
        stack.push(d);
        break;
      }
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x6c: {
        // LIST (pop the mark before touching `stack`: popMark replaces it)
        const items = popMark();
        stack.push([...items]);
        break;
      }
      case 0x29: // EMPTY_TUPLE
        stack.push(tuple([]));
        break;
      case 0x74: {
        // TUPLE
        const items = popMark();
        stack.push(tuple([...items]));
        break;
      }
      case 0x85: {
        // TUPLE1
        const a = pop();
        stack.push(tuple([a]));
        break;
      }
      case 0x86: {
        // TUPLE2
        const b = pop();
        const a = pop();
        stack.push(tuple([a, b]));
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop();
        const b = pop();
        const a = pop();
        stack.push(tuple([a, b, c]));
        break;
      }
      case 0x8f: // EMPTY_SET
        stack.push(new Set());
        break;
      case 0x90: {
        // ADDITEMS
        const items = popMark();
        const s = top();
        if (!(s instanceof Set)) fail('ADDITEMS on something that is not a set', at);
        for (const x of items) (s as Set<unknown>).add(dictKey(x));
        break;
      }
      case 0x91: {
        // FROZENSET
        const items = popMark();
        stack.push(new Set(items));
        break;
      }
      case 0x73: {
        // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x61: {
        // APPEND
        const v = pop();
        append(top(), [v]);
        break;
      }
      case 0x65: {
        // APPENDS
        const items = popMark();
        append(top(), items);
        break;
      }

      // ---- memo
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x70: {
        // PUT (text)
        const k = textInt(line('PUT'));
        if (typeof k !== 'number' || k < 0) fail('invalid PUT index', at);
        memo.set(k as number, top());
        break;
      }
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
        stack.push(memoGet(u8()));
        break;
      case 0x6a: // LONG_BINGET
        stack.push(memoGet(u32()));
        break;
      case 0x67: {
        // GET (text)
        const k = textInt(line('GET'));
        if (typeof k !== 'number') fail('invalid GET index', at);
        stack.push(memoGet(k as number));
        break;
      }

      // ---- globals & object construction (delegated, nothing is executed)
      case 0x63: {
        // GLOBAL "module\nname\n"
        const module = line('GLOBAL module');
        const name = line('GLOBAL name');
        stack.push(hooks.findGlobal(module, name));
        break;
      }
      case 0x93: {
        // STACK_GLOBAL
        const name = checkString(pop(), 'STACK_GLOBAL name');
        const module = checkString(pop(), 'STACK_GLOBAL module');
        stack.push(hooks.findGlobal(module, name));
        break;
      }
      case 0x69: {
        // INST "module\nname\n" + MARK args: check the global first so refusals name it
        const module = line('INST module');
        const name = line('INST name');
        hooks.findGlobal(module, name);
        fail(`INST opcode (old-style instance of ${module}.${name}) is not supported`, at);
        break;
      }
      case 0x6f: // OBJ
        fail('OBJ opcode is not supported', at);
        break;
      case 0x52: {
        // REDUCE
        const args = pop();
        const fn = pop();
        if (!isTuple(args)) fail('REDUCE arguments are not a tuple', at);
        stack.push(hooks.reduce(fn, args as PyTuple));
        break;
      }
      case 0x81: {
        // NEWOBJ
        const args = pop();
        const cls = pop();
        if (!isTuple(args)) fail('NEWOBJ arguments are not a tuple', at);
        stack.push(hooks.newObj(cls, args as PyTuple));
        break;
      }
      case 0x92: {
        // NEWOBJ_EX
        const kwargs = pop();
        const args = pop();
        const cls = pop();
        if (!isTuple(args)) fail('NEWOBJ_EX arguments are not a tuple', at);
        if (!(kwargs instanceof PyDict) || kwargs.map.size !== 0) fail('NEWOBJ_EX with keyword arguments is not supported', at);
        stack.push(hooks.newObj(cls, args as PyTuple));
        break;
      }
      case 0x62: {
        // BUILD
        const state = pop();
        hooks.build(top(), state);
        break;
      }
      case 0x51: {
        // BINPERSID
        const pid = pop();
        stack.push(hooks.persistentLoad(pid));
        break;
      }
      case 0x50: // PERSID (text)
        stack.push(hooks.persistentLoad(line('PERSID')));
        break;
      case 0x82:
      case 0x83:
      case 0x84:
        fail('EXT opcodes (copyreg extension registry) are not supported', at);
        break;
      case 0x97:
      case 0x98:
        fail('out-of-band buffers (NEXT_BUFFER / READONLY_BUFFER) are not supported', at);
        break;
      default:
        fail(`unknown pickle opcode 0x${op.toString(16).padStart(2, '0')}`, at);
    }
  }
}

function toNumberIfSafe(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

function unescapeRawUnicode(s: string): string {
  return s.replace(/\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g, (_m, a: string | undefined, b: string | undefined) =>
    String.fromCodePoint(parseInt((a ?? b)!, 16)),
  );
}

function parseQuoted(s: string, fail: (msg: string) => never): string {
  const t = s.trimEnd();
  const q = t[0];
  if (t.length < 2 || (q !== "'" && q !== '"') || t[t.length - 1] !== q) fail('invalid STRING literal');
  const body = t.slice(1, -1);
  return body.replace(/\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)/g, (_m, e: string) => {
    if (e[0] === 'x') return String.fromCharCode(parseInt(e.slice(1), 16));
    if (/^[0-7]/.test(e)) return String.fromCharCode(parseInt(e, 8));
    const map: Record<string, string> = { n: '\n', r: '\r', t: '\t', '\\': '\\', "'": "'", '"': '"', a: '\x07', b: '\b', f: '\f', v: '\v', '0': '\0' };
    return map[e] ?? `\\${e}`;
  });
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
    const inner = v.slice(0, 8).map((x) => pyRepr(x, depth + 1)).join(', ') + (v.length > 8 ? ', ...' : '');
    return isTuple(v) ? `(${inner}${v.length === 1 ? ',' : ''})` : `[${inner}]`;
  }
  if (v instanceof PyDict) return `{${v.map.size} items}`;
  if (v instanceof Uint8Array) return `<${v.byteLength} bytes>`;
  if (v instanceof Set) return `{set of ${v.size}}`;
  return Object.prototype.toString.call(v);
}
