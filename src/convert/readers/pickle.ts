/**
 * A restricted, non-executing unpickler.
 *
 * Nothing in the pickle is ever called: GLOBAL / STACK_GLOBAL are resolved through `findGlobal`, which must
 * return an inert marker for the handful of allowed names and throw for everything else, and REDUCE / NEWOBJ /
 * BUILD are interpreted by the caller's hooks, which only know how to rebuild plain data (dicts, tensors).
 *
 * This file is the machine: its stack, marks and memo, and what each opcode does with them. The bytes are read
 * by pickle-input.ts, and the values built are pickle-values.ts's.
 */
import { MAX_LONG_BYTES, parseQuoted, PickleInput, unescapeRawUnicode } from './pickle-input.js';
import { isList, isTuple, PyDict, tuple, type PyTuple } from './pickle-values.js';

/** The opcodes whose argument is a length then that many bytes: their names (for errors) and the length's width. */
const COUNTED: ReadonlyMap<number, readonly [name: string, length: 'u8' | 'u32' | 'u64']> = new Map([
  [0x8a, ['LONG1', 'u8']],
  [0x58, ['BINUNICODE', 'u32']],
  [0x8c, ['SHORT_BINUNICODE', 'u8']],
  [0x8d, ['BINUNICODE8', 'u64']],
  [0x55, ['SHORT_BINSTRING', 'u8']],
  [0x42, ['BINBYTES', 'u32']],
  [0x43, ['SHORT_BINBYTES', 'u8']],
  [0x8e, ['BINBYTES8', 'u64']],
  [0x96, ['BYTEARRAY8', 'u64']],
]);

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

/**
 * Unpickles `data` (protocols 0-5) without executing anything.
 * @param where file/entry name used in error messages
 */
export function unpickle(data: Uint8Array, hooks: UnpickleHooks, where: string): unknown {
  const inp: PickleInput = new PickleInput(data, where);
  let stack: unknown[] = [];
  const metastack: unknown[][] = [];
  const memo = new Map<number, unknown>();
  const utf8 = new TextDecoder('utf-8');
  const latin1 = new TextDecoder('latin1');

  const fail: (msg: string, at?: number) => never = (msg, at = inp.pos) => inp.fail(msg, at);
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
  /** The bytes of a COUNTED opcode's argument (a view into the pickle: copy before keeping). */
  const counted = (op: number): Uint8Array => {
    const [name, length] = COUNTED.get(op)!;
    return inp.bytes(inp[length](), name);
  };
  /** What REDUCE and NEWOBJ(_EX) call (a callable or a class) and its argument tuple, popped. */
  const popCall = (opName: string, at: number): [unknown, PyTuple] => {
    const args = pop();
    const callee = pop();
    if (!isTuple(args)) fail(`${opName} arguments are not a tuple`, at);
    return [callee, args as PyTuple];
  };
  const checkString = (v: unknown, what: string): string => {
    if (typeof v !== 'string') fail(`${what} must be a string`);
    return v as string;
  };

  while (true) {
    if (inp.pos >= inp.n) fail('pickle ended without a STOP opcode (truncated?)');
    const at = inp.pos;
    const op = inp.data[inp.pos++];
    switch (op) {
      case 0x80: {
        // PROTO
        const v = inp.u8();
        if (v > 5) fail(`unsupported pickle protocol ${v}`, at);
        break;
      }
      case 0x95: {
        // FRAME (framing is transparent when the whole pickle is in memory)
        const len = inp.u64();
        if (inp.pos + len > inp.n) fail('FRAME extends past the end of the pickle', at);
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
        stack.push(inp.i32());
        break;
      case 0x4b: // BININT1
        stack.push(inp.u8());
        break;
      case 0x4d: // BININT2
        stack.push(inp.u16());
        break;
      case 0x8a: // LONG1
        stack.push(inp.long(counted(op)));
        break;
      case 0x8b: {
        // LONG4
        const k = inp.i32();
        if (k < 0 || k > MAX_LONG_BYTES) fail(`LONG4 length ${k} out of range`, at);
        stack.push(inp.long(inp.bytes(k, 'LONG4')));
        break;
      }
      case 0x49: // INT (text)
        stack.push(inp.textInt(inp.line('INT')));
        break;
      case 0x4c: // LONG (text)
        stack.push(inp.textInt(inp.line('LONG')));
        break;
      case 0x47: {
        // BINFLOAT (big-endian double)
        stack.push(inp.binFloat());
        break;
      }
      case 0x46: {
        // FLOAT (text)
        const s = inp.line('FLOAT').trim();
        const v = Number(s);
        if (Number.isNaN(v) && !/^[-+]?nan$/i.test(s)) fail(`invalid float literal ${JSON.stringify(s)}`, at);
        stack.push(v);
        break;
      }

      // ---- strings / bytes
      case 0x58: // BINUNICODE
      case 0x8c: // SHORT_BINUNICODE
      case 0x8d: // BINUNICODE8
        stack.push(utf8.decode(counted(op)));
        break;
      case 0x56: // UNICODE (raw-unicode-escape text line)
        stack.push(unescapeRawUnicode(inp.line('UNICODE')));
        break;
      case 0x54: {
        // BINSTRING (py2 str, decoded as latin1 like encoding='latin1')
        const k = inp.i32();
        if (k < 0) fail('negative BINSTRING length', at);
        stack.push(latin1.decode(inp.bytes(k, 'BINSTRING')));
        break;
      }
      case 0x55: // SHORT_BINSTRING
        stack.push(latin1.decode(counted(op)));
        break;
      case 0x53: // STRING (quoted text)
        stack.push(parseQuoted(inp.line('STRING'), fail));
        break;
      case 0x42: // BINBYTES
      case 0x43: // SHORT_BINBYTES
      case 0x8e: // BINBYTES8
      case 0x96: // BYTEARRAY8
        stack.push(counted(op).slice());
        break;

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
        memo.set(inp.u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(inp.u32(), top());
        break;
      case 0x70: {
        // PUT (text)
        const k = inp.textInt(inp.line('PUT'));
        if (typeof k !== 'number' || k < 0) fail('invalid PUT index', at);
        memo.set(k as number, top());
        break;
      }
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
        stack.push(memoGet(inp.u8()));
        break;
      case 0x6a: // LONG_BINGET
        stack.push(memoGet(inp.u32()));
        break;
      case 0x67: {
        // GET (text)
        const k = inp.textInt(inp.line('GET'));
        if (typeof k !== 'number') fail('invalid GET index', at);
        stack.push(memoGet(k as number));
        break;
      }

      // ---- globals & object construction (delegated, nothing is executed)
      case 0x63: {
        // GLOBAL "module\nname\n"
        const module = inp.line('GLOBAL module');
        const name = inp.line('GLOBAL name');
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
        const module = inp.line('INST module');
        const name = inp.line('INST name');
        hooks.findGlobal(module, name);
        fail(`INST opcode (old-style instance of ${module}.${name}) is not supported`, at);
        break;
      }
      case 0x6f: // OBJ
        fail('OBJ opcode is not supported', at);
        break;
      case 0x52: // REDUCE
        stack.push(hooks.reduce(...popCall('REDUCE', at)));
        break;
      case 0x81: // NEWOBJ
        stack.push(hooks.newObj(...popCall('NEWOBJ', at)));
        break;
      case 0x92: {
        // NEWOBJ_EX
        const kwargs = pop();
        const [cls, args] = popCall('NEWOBJ_EX', at);
        if (!(kwargs instanceof PyDict) || kwargs.map.size !== 0) fail('NEWOBJ_EX with keyword arguments is not supported', at);
        stack.push(hooks.newObj(cls, args));
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
        stack.push(hooks.persistentLoad(inp.line('PERSID')));
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
