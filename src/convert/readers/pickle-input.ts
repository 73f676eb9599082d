// The byte side of the unpickler: a cursor over the pickle with the argument readers its opcodes use
// (little-endian integers, lengths checked against what remains, newline-terminated text arguments) and the
// decoding of Python's integer and string literals. Every malformed input ends in a CheckpointError that names
// the file and the byte, so a corrupt checkpoint is reported rather than misread.
import { CheckpointError } from './errors.js';

/** Longest LONG4 integer we accept (bytes); checkpoints never need more. */
export const MAX_LONG_BYTES = 1024;

export class PickleInput {
  /** the next byte to read */
  pos = 0;
  readonly n: number;
  private readonly dv: DataView;
  private readonly latin1 = new TextDecoder('latin1');

  /** @param where file/entry name used in error messages */
  constructor(
    readonly data: Uint8Array,
    private readonly where: string,
  ) {
    this.dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    this.n = data.byteLength;
  }

  fail(msg: string, at: number = this.pos): never {
    throw new CheckpointError(`corrupt or unsupported pickle in ${this.where}: ${msg} (at byte ${at})`);
  }

  need(k: number, what: string): void {
    if (!Number.isSafeInteger(k) || k < 0 || this.pos + k > this.n) {
      this.fail(`${what} needs ${k} bytes but only ${this.n - this.pos} remain (truncated?)`);
    }
  }

  u8(): number {
    this.need(1, 'opcode argument');
    return this.data[this.pos++];
  }

  u16(): number {
    return this.take(2, 'opcode argument', (at) => this.dv.getUint16(at, true));
  }

  u32(): number {
    return this.take(4, 'opcode argument', (at) => this.dv.getUint32(at, true));
  }

  i32(): number {
    return this.take(4, 'opcode argument', (at) => this.dv.getInt32(at, true));
  }

  /** An 8-byte length: no length can exceed the pickle itself, which also keeps it a safe integer. */
  u64(): number {
    const v = this.take(8, 'opcode argument', (at) => this.dv.getBigUint64(at, true));
    if (v > BigInt(this.n)) this.fail(`length ${v} exceeds the pickle size`);
    return Number(v);
  }

  /** BINFLOAT's argument: a big-endian double, unlike every other binary argument. */
  binFloat(): number {
    return this.take(8, 'BINFLOAT', (at) => this.dv.getFloat64(at, false));
  }

  /** `k` bytes, a view into the pickle (copy before keeping). */
  bytes(k: number, what: string): Uint8Array {
    return this.take(k, what, (at) => this.data.subarray(at, at + k));
  }

  /** `size` bytes read by `read` from the current position, which then moves past them. */
  private take<T>(size: number, what: string, read: (at: number) => T): T {
    this.need(size, what);
    const v = read(this.pos);
    this.pos += size;
    return v;
  }

  /** A text argument up to its newline (protocol 0 opcodes, GLOBAL). */
  line(what: string): string {
    const end = this.data.indexOf(0x0a, this.pos);
    if (end < 0) this.fail(`unterminated ${what}`);
    const s = this.latin1.decode(this.data.subarray(this.pos, end));
    this.pos = end + 1;
    return s;
  }

  /** LONG1 / LONG4's little-endian two's-complement integer: a number where it is safe, else a bigint. */
  long(b: Uint8Array): number | bigint {
    if (b.length === 0) return 0;
    let hexDigits = '';
    for (let i = b.length - 1; i >= 0; i--) hexDigits += b[i].toString(16).padStart(2, '0');
    let v = BigInt(`0x${hexDigits}`);
    if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
    return toNumberIfSafe(v);
  }

  /** INT / LONG / PUT / GET's decimal literal; protocol 0 writes True and False as INT 01 and 00. */
  textInt(s: string): number | bigint | boolean {
    const t = s.trim().replace(/L$/, '');
    if (t === '01') return true;
    if (t === '00') return false;
    if (t.length > 2 * MAX_LONG_BYTES || !/^[-+]?\d+$/.test(t)) this.fail(`invalid integer literal ${JSON.stringify(s.slice(0, 40))}`);
    return toNumberIfSafe(BigInt(t));
  }
}

function toNumberIfSafe(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

/** UNICODE's raw-unicode-escape: only \uXXXX and \UXXXXXXXX are escapes. */
export function unescapeRawUnicode(s: string): string {
  return s.replace(/\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g, (_m, a: string | undefined, b: string | undefined) =>
    String.fromCodePoint(parseInt((a ?? b)!, 16)),
  );
}

/** STRING's Python-quoted literal (protocol 0), with its backslash escapes. */
export function parseQuoted(s: string, fail: (msg: string) => never): string {
  const t = s.trimEnd();
  const q = t[0];
  if (t.length < 2 || (q !== "'" && q !== '"') || t[t.length - 1] !== q) fail('invalid STRING literal');
  const body = t.slice(1, -1);
  return body.replace(/\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)/g, (_m, e: string) => {
    if (e[0] === 'x') return String.fromCharCode(parseInt(e.slice(1), 16));
    if (/^[0-7]/.test(e)) return String.fromCharCode(parseInt(e, 8));
    const map: Record<string, string> = {
      n: '\n',
      r: '\r',
      t: '\t',
      '\\': '\\',
      "'": "'",
      '"': '"',
      a: '\x07',
      b: '\b',
      f: '\f',
      v: '\v',
      '0': '\0',
    };
    return map[e] ?? `\\${e}`;
  });
}
