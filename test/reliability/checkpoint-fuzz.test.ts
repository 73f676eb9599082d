// Checkpoint and package fuzzing (issue 9): `.pth`, `.safetensors` and `model.json` files mutated many ways
// (seeded, so a failure names a reproducible case). The readers must never run code, never hang, never
// allocate beyond the file's size, and say what is wrong (a CheckpointError / ModelPackageError naming the
// file), whatever the bytes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CheckpointError, DTYPE_ITEMSIZE, openCheckpoint, type TensorSource } from '../../src/convert/readers/index.js';
import { crc32 } from '../../src/convert/readers/zip.js';
import { loadPackage, ModelPackageError, packageFiles } from '../../src/inference/package.js';
import { MiniGPT } from '../../src/inference/model.js';
import { buildTorchZip, buildZip, PickleWriter, rawSafetensors } from '../convert/readers-helpers.js';
import { rng } from '../helpers/rng.js';

const ROOT = join(import.meta.dirname, '..', '..');
const FX = join(ROOT, 'test', 'fixtures', 'minigptv2-tiny');
const DEMO = join(ROOT, 'models', 'demo');
const CASE_TIMEOUT_MS = 3000;

let tmp: string;
let marker: string;
/** the largest growth of ArrayBuffer memory seen while a reader ran, relative to its input's size */
const growth: Array<{ label: string; size: number; mb: number }> = [];

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'minigpt-fuzz-'));
  marker = join(tmp, 'PWNED');
});

afterAll(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** Runs `fn` while sampling ArrayBuffer memory; records the peak growth against `size`. */
async function measured<T>(label: string, size: number, fn: () => Promise<T>): Promise<T> {
  const base = process.memoryUsage().arrayBuffers;
  let peak = base;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().arrayBuffers)), 1);
  try {
    return await fn();
  } finally {
    clearInterval(timer);
    peak = Math.max(peak, process.memoryUsage().arrayBuffers);
    growth.push({ label, size, mb: (peak - base) / 1e6 });
  }
}

function withTimeout<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p,
    new Promise<never>(
      (_, reject) => (timer = setTimeout(() => reject(new Error(`HANG: ${what} took over ${CASE_TIMEOUT_MS} ms`)), CASE_TIMEOUT_MS)),
    ),
  ]).finally(() => clearTimeout(timer));
}

interface Result {
  ok: boolean;
  error?: Error;
  tensors: number;
}

/**
 * Opens a checkpoint, lists it and reads every tensor. Every failure must be a CheckpointError that names the
 * file; nothing read may be larger than the file.
 */
async function exercise(path: string, size: number, label: string): Promise<Result> {
  return measured(label, size, () =>
    withTimeout(
      (async () => {
        let src: TensorSource | undefined;
        try {
          src = await openCheckpoint(path);
        } catch (e) {
          expect(e, `${label}: ${String(e)}`).toBeInstanceOf(CheckpointError);
          expect((e as Error).message, label).toContain(path);
          expect((e as Error).message.length, label).toBeLessThan(2000);
          return { ok: false, error: e as Error, tensors: 0 };
        }
        let tensors = 0;
        let error: Error | undefined;
        try {
          for (const t of src.list()) {
            const numel = t.shape.reduce((a, b) => a * b, 1);
            expect(numel * DTYPE_ITEMSIZE[t.dtype], `${label}: tensor ${t.name} claims more bytes than the file`).toBeLessThanOrEqual(size);
            try {
              const raw = await src.readRaw(t.name);
              expect(raw.byteLength, label).toBeLessThanOrEqual(size);
              tensors++;
            } catch (e) {
              expect(e, `${label}: reading ${t.name}: ${String(e)}`).toBeInstanceOf(CheckpointError);
              error = e as Error;
            }
          }
        } finally {
          await src.close();
        }
        return { ok: !error, error, tensors };
      })(),
      label,
    ),
  );
}

function mutateBytes(orig: Uint8Array, r: () => number, region?: [number, number]): { bytes: Uint8Array; how: string } {
  const [lo, hi] = region ?? [0, orig.byteLength];
  const at = () => lo + Math.floor(r() * Math.max(1, hi - lo));
  const kind = Math.floor(r() * 7);
  const b = orig.slice();
  const interesting = [0x00, 0xff, 0x7f, 0x80, 0x01, 0xfe, 0x2e, 0x28, 0x58, 0x8d, 0x95];
  switch (kind) {
    case 0: {
      const p = at();
      b[p] ^= 1 << Math.floor(r() * 8);
      return { bytes: b, how: `bit flip at ${p}` };
    }
    case 1: {
      const p = at();
      b[p] = interesting[Math.floor(r() * interesting.length)];
      return { bytes: b, how: `interesting byte at ${p}` };
    }
    case 2: {
      const p = at();
      const n = 1 + Math.floor(r() * 8);
      for (let i = 0; i < n && p + i < b.length; i++) b[p + i] = Math.floor(r() * 256);
      return { bytes: b, how: `${n} random bytes at ${p}` };
    }
    case 3: {
      // a 32/64-bit field set to a huge value
      const p = Math.min(at(), b.length - 8);
      const dv = new DataView(b.buffer);
      if (p >= 0) r() < 0.5 ? dv.setUint32(p, 0xffffffff, true) : dv.setBigUint64(p, 0x7fffffffffffffffn, true);
      return { bytes: b, how: `huge integer at ${p}` };
    }
    case 4: {
      const cut = at();
      return { bytes: orig.slice(0, cut), how: `truncated at ${cut}` };
    }
    case 5: {
      const p = at();
      const n = 1 + Math.floor(r() * 64);
      const out = new Uint8Array(orig.byteLength + n);
      out.set(orig.subarray(0, p));
      for (let i = 0; i < n; i++) out[p + i] = Math.floor(r() * 256);
      out.set(orig.subarray(p), p + n);
      return { bytes: out, how: `${n} bytes inserted at ${p}` };
    }
    default: {
      const p = at();
      const n = Math.min(b.length - p, 1 + Math.floor(r() * 256));
      b.fill(0, p, p + n);
      return { bytes: b, how: `${n} bytes zeroed at ${p}` };
    }
  }
}

/** Where data.pkl's bytes are in a STORED torch archive (from its central directory entry and local header). */
function pickleRegion(b: Uint8Array): { start: number; length: number; cd: number; local: number } {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let cd = -1;
  for (let p = b.byteLength - 22; p >= 0 && cd < 0; p--) {
    if (dv.getUint32(p, true) !== 0x02014b50) continue;
    const n = dv.getUint16(p + 28, true);
    const name = new TextDecoder().decode(b.subarray(p + 46, p + 46 + n));
    if (name.endsWith('/data.pkl')) cd = p;
  }
  if (cd < 0) throw new Error('no data.pkl');
  const local = dv.getUint32(cd + 42, true);
  const start = local + 30 + dv.getUint16(local + 26, true) + dv.getUint16(local + 28, true);
  return { start, length: dv.getUint32(cd + 24, true), cd, local };
}

/** `bytes` written to `name` in the temporary folder, then exercised as a checkpoint file. */
async function exerciseBytes(name: string, bytes: Uint8Array, label: string): Promise<Result> {
  const p = join(tmp, name);
  await writeFile(p, bytes);
  return exercise(p, bytes.byteLength, label);
}

async function fuzzFile(
  ext: string,
  cases: number,
  seed: number,
  mutate: (r: () => number) => { bytes: Uint8Array; how: string },
): Promise<Result[]> {
  const r = rng(seed);
  const out: Result[] = [];
  for (let i = 0; i < cases; i++) {
    const { bytes, how } = mutate(r);
    const name = `fuzz-${seed}-${i}.${ext}`;
    out.push(await exerciseBytes(name, bytes, `seed ${seed} case ${i} (${how})`));
    await rm(join(tmp, name));
  }
  return out;
}

describe('.pth fuzzing', () => {
  let orig: Uint8Array;
  beforeAll(async () => {
    orig = new Uint8Array(await readFile(join(FX, 'minigptv2_ckpt.pth')));
    // sanity: the original reads whole
    const ok = await exercise(join(FX, 'minigptv2_ckpt.pth'), orig.byteLength, 'original');
    expect(ok.ok).toBe(true);
    expect(ok.tensors).toBeGreaterThan(10);
  });

  it('raw mutations anywhere in the archive', async () => {
    const res = await fuzzFile('pth', 200, 1, (r) => mutateBytes(orig, r));
    expect(res.filter((x) => !x.ok).length).toBeGreaterThan(20);
  });

  it('mutations of the archive structure (central directory, end record)', async () => {
    const { cd } = pickleRegion(orig);
    const cdStart = Math.min(cd, orig.byteLength - 400);
    await fuzzFile('pth', 200, 2, (r) => mutateBytes(orig, r, [cdStart, orig.byteLength]));
  });

  it('mutations inside data.pkl with its CRC kept valid, so the unpickler sees them', async () => {
    const reg = pickleRegion(orig);
    const res = await fuzzFile('pth', 400, 3, (r) => {
      const m = mutateBytes(orig, r, [reg.start, reg.start + reg.length]);
      if (m.bytes.byteLength !== orig.byteLength) return m; // truncations/insertions: the archive is simply broken
      const c = crc32(m.bytes.subarray(reg.start, reg.start + reg.length));
      const dv = new DataView(m.bytes.buffer);
      dv.setUint32(reg.local + 14, c, true);
      dv.setUint32(reg.cd + 16, c, true);
      return m;
    });
    const errors = res.filter((x) => x.error).map((x) => x.error!.message);
    // The unpickler itself says what is wrong (not only "CRC mismatch").
    expect(errors.some((m) => /pickle|opcode|storage|tensor|refusing/.test(m))).toBe(true);
  });

  it('never runs code: pickles that would call os.system and friends are refused, and nothing happens', async () => {
    const evil: Array<[string, (w: PickleWriter) => PickleWriter]> = [
      ['os.system', (w) => w.global('os', 'system').mark().str(`touch ${marker}`).raw(0x74, 0x52)],
      ['posix.system', (w) => w.global('posix', 'system').mark().str(`touch ${marker}`).raw(0x74, 0x52)],
      ['subprocess.Popen', (w) => w.stackGlobal('subprocess', 'Popen').mark().mark().str('touch').str(marker).raw(0x6c).raw(0x74, 0x52)],
      [
        'builtins.exec',
        (w) =>
          w
            .stackGlobal('builtins', 'exec')
            .mark()
            .str(`open(${JSON.stringify(marker)}, 'w')`)
            .raw(0x74, 0x52),
      ],
      ['builtins.eval', (w) => w.global('builtins', 'eval').mark().str('1+1').raw(0x74, 0x52)],
      ['__builtin__.__import__', (w) => w.global('__builtin__', '__import__').mark().str('os').raw(0x74, 0x52)],
      ['numpy reconstruct', (w) => w.global('numpy.core.multiarray', '_reconstruct').mark().raw(0x74, 0x52)],
      ['torch.load', (w) => w.global('torch', 'load').mark().str(marker).raw(0x74, 0x52)],
      ['INST os.system', (w) => w.mark().str(`touch ${marker}`).raw(0x69).text('os\nsystem\n')],
      ['OrderedDict via NEWOBJ of os', (w) => w.global('os', 'popen').raw(0x29, 0x81)],
      ['BUILD with __setstate__', (w) => w.orderedDict().global('os', 'system').raw(0x62)],
      ['EXT1', (w) => w.raw(0x82, 1)],
    ];
    for (const [label, build] of evil) {
      const pkl = build(new PickleWriter().proto(2)).stop().bytes();
      const r = await exerciseBytes(`evil-${label.replace(/\W/g, '_')}.pth`, buildTorchZip('archive', pkl, {}), label);
      expect(r.ok, label).toBe(false);
      expect(r.error!.message, label).toMatch(/refusing to load|not supported|EXT opcodes/);
    }
    expect(existsSync(marker)).toBe(false);
  });

  it('an expanded view (stride 0) claiming more than the file, and a compressed zip bomb, are refused', async () => {
    const w = new PickleWriter().proto(2).orderedDict().mark();
    w.str('big').tensor('FloatStorage', '0', 1, 0, [1 << 20, 1 << 20], [0, 0]);
    const pkl = w.setItems().stop().bytes();
    const r = await exerciseBytes('expanded.pth', buildTorchZip('archive', pkl, { '0': new Uint8Array(4) }), 'expanded view');
    expect(r.error?.message).toMatch(/tensor 'big' .*more than the whole file.*stride 0/);

    // data.pkl compressed: a pickle padded with 64 MB of zeros inside a BINBYTES, deflated to ~64 KB
    const pad = new Uint8Array(64 << 20);
    const head = new PickleWriter()
      .proto(2)
      .raw(0x42, ...[0, 0, 0, 4])
      .bytes(); // BINBYTES of 64 MiB
    const bomb = new Uint8Array(head.byteLength + pad.byteLength + 1);
    bomb.set(head);
    bomb[bomb.length - 1] = 0x2e;
    const zipped = buildZip([
      { name: 'archive/data.pkl', data: bomb, deflate: true },
      { name: 'archive/version', data: new TextEncoder().encode('3\n') },
    ]);
    expect(zipped.byteLength).toBeLessThan(200_000);
    const z = await exerciseBytes('zipbomb.pth', zipped, 'zip bomb');
    expect(z.error?.message).toMatch(/more than the whole archive|zip bomb/);
  });
});

describe('.safetensors fuzzing', () => {
  let orig: Uint8Array;
  let header: Record<string, unknown>;
  let headerLen: number;
  beforeAll(async () => {
    orig = new Uint8Array(await readFile(join(FX, 'lora_merged_qv.safetensors')));
    headerLen = Number(new DataView(orig.buffer).getBigUint64(0, true));
    header = JSON.parse(new TextDecoder().decode(orig.subarray(8, 8 + headerLen))) as Record<string, unknown>;
    const ok = await exercise(join(FX, 'lora_merged_qv.safetensors'), orig.byteLength, 'original');
    expect(ok.ok).toBe(true);
  });

  it('raw mutations, in the header and anywhere', async () => {
    await fuzzFile('safetensors', 150, 4, (r) => mutateBytes(orig, r, r() < 0.7 ? [0, 8 + headerLen] : undefined));
  });

  it('header fields set to hostile values (sizes, offsets, types), with a consistent header length', async () => {
    const hostile: unknown[] = [
      -1,
      0,
      1,
      2 ** 31,
      2 ** 32,
      2 ** 53,
      2 ** 53 + 2,
      1e300,
      -1e300,
      0.5,
      '12',
      null,
      true,
      [],
      {},
      [1e9, 1e9],
      [0, 2 ** 62],
      [[1]],
      'F32',
      'F8_E4M3',
      'U64',
      'object',
    ];
    const names = Object.keys(header).filter((k) => k !== '__metadata__');
    const data = orig.subarray(8 + headerLen);
    await fuzzFile('safetensors', 250, 5, (r) => {
      const h = JSON.parse(JSON.stringify(header)) as Record<string, Record<string, unknown>>;
      const name = names[Math.floor(r() * names.length)];
      const field = ['dtype', 'shape', 'data_offsets', 'shape', 'data_offsets'][Math.floor(r() * 5)];
      const v = hostile[Math.floor(r() * hostile.length)];
      const entry = h[name];
      if (field === 'dtype' || r() < 0.3) entry[field] = v;
      else if (Array.isArray(entry[field]) && (entry[field] as unknown[]).length > 0) {
        const arr = entry[field] as unknown[];
        arr[Math.floor(r() * arr.length)] = v;
      } else entry[field] = v;
      if (r() < 0.1) h[`dup${Math.floor(r() * 1000)}`] = { ...entry };
      const json = new TextEncoder().encode(JSON.stringify(h));
      const len = new Uint8Array(8);
      new DataView(len.buffer).setBigUint64(0, BigInt(json.byteLength), true);
      const bytes = new Uint8Array(8 + json.byteLength + data.byteLength);
      bytes.set(len);
      bytes.set(json, 8);
      bytes.set(data, 8 + json.byteLength);
      return { bytes, how: `${name}.${field} = ${JSON.stringify(v)}` };
    });
  });

  it('a header that claims a huge tensor over a few bytes is refused without allocating it', async () => {
    const json = JSON.stringify({ w: { dtype: 'F32', shape: [1 << 20, 1 << 20], data_offsets: [0, 4] } }).padEnd(40, ' ');
    const r = await exerciseBytes('huge.safetensors', rawSafetensors(json, new Uint8Array(4)), 'huge claim');
    expect(r.error?.message).toMatch(/span 4 bytes but F32\[1048576, 1048576\] needs/);
  });
});

describe('model.json fuzzing', () => {
  let pkgDir: string;
  let meta: Record<string, unknown>;
  let metaText: string;
  beforeAll(async () => {
    pkgDir = join(tmp, 'pkg');
    await mkdir(pkgDir);
    metaText = await readFile(join(DEMO, 'model.json'), 'utf8');
    meta = JSON.parse(metaText) as Record<string, unknown>;
    for (const f of packageFiles((await loadPackage(DEMO)).meta)) await copyFile(join(DEMO, f), join(pkgDir, f));
  });

  async function tryMeta(text: string, label: string): Promise<'loaded' | 'refused'> {
    await writeFile(join(pkgDir, 'model.json'), text);
    return measured(label, text.length, () =>
      withTimeout(
        loadPackage(pkgDir).then(
          () => 'loaded' as const,
          (e: unknown) => {
            expect(e, `${label}: ${String(e)}`).toBeInstanceOf(ModelPackageError);
            expect((e as Error).message, label).toContain(pkgDir);
            return 'refused' as const;
          },
        ),
        label,
      ),
    );
  }

  /** Every leaf path of the JSON tree. */
  function paths(v: unknown, prefix: Array<string | number> = []): Array<Array<string | number>> {
    if (v === null || typeof v !== 'object') return [prefix];
    const out: Array<Array<string | number>> = Array.isArray(v) ? [] : [prefix];
    for (const [k, x] of Object.entries(v)) out.push(...paths(x, [...prefix, Array.isArray(v) ? Number(k) : k]));
    return out;
  }

  it('every field set to hostile values: refused with the field named, or still a sane package', async () => {
    const hostile: unknown[] = [
      -1,
      0,
      1e9,
      2 ** 53,
      1e308,
      0.5,
      '',
      '../../../../etc/passwd',
      '/etc/passwd',
      'C:\\x',
      'a\u0000b',
      null,
      true,
      [],
      {},
      'x'.repeat(5000),
    ];
    const all = paths(meta).filter((p) => p.length > 0);
    const r = rng(6);
    let refused = 0;
    const loaded: string[] = [];
    for (let i = 0; i < 400; i++) {
      const m = JSON.parse(metaText) as Record<string, unknown>;
      const path = all[Math.floor(r() * all.length)];
      const v = hostile[Math.floor(r() * hostile.length)];
      let o = m as Record<string | number, unknown>;
      for (const k of path.slice(0, -1)) o = o[k] as Record<string | number, unknown>;
      if (r() < 0.15) delete o[path.at(-1)!];
      else o[path.at(-1)!] = v;
      const label = `${path.join('.')} = ${JSON.stringify(v)?.slice(0, 40)}`;
      const outcome = await tryMeta(JSON.stringify(m), label);
      if (outcome === 'refused') refused++;
      else loaded.push(JSON.stringify(m));
    }
    expect(refused).toBeGreaterThan(200);
    // What passes validation is within the bounds the loader allocates by.
    for (const text of loaded) {
      const m = JSON.parse(text) as {
        llm: { layers: number; vocabSize: number };
        tokenizer: string;
        graphs: Record<string, { file: string }>;
      };
      expect(m.llm.layers).toBeLessThanOrEqual(1024);
      expect(m.llm.vocabSize).toBeLessThanOrEqual(1 << 22);
      for (const f of [m.tokenizer, ...Object.values(m.graphs).map((g) => g.file)]) expect(f).not.toMatch(/\.\.|^\//);
    }
  });

  it('raw byte mutations of the file', async () => {
    const orig = new TextEncoder().encode(metaText);
    const r = rng(7);
    for (let i = 0; i < 150; i++) {
      const { bytes, how } = mutateBytes(orig, r);
      await tryMeta(new TextDecoder().decode(bytes), how);
    }
  });

  it('says what is wrong: oversized shapes, paths out of the package, ids past the vocabulary', async () => {
    const cases: Array<[(m: any) => void, RegExp]> = [
      [(m) => (m.llm.layers = 1e9), /llm\.layers/],
      [(m) => (m.tokenizer = '../../../../etc/passwd'), /tokenizer: must be a relative path inside the package folder/],
      [(m) => (m.graphs.decoder.file = '/etc/passwd'), /graphs\.decoder\.file/],
      [(m) => (m.graphs.vision.data = ['..\\..\\secret.bin']), /graphs\.vision\.data\.0/],
      [(m) => (m.llm.eosId = 1e6), /below vocabSize/],
      [(m) => (m.vision.std = [0, 1, 1]), /vision\.std/],
      [(m) => (m.format = 'something-else'), /format/],
    ];
    for (const [edit, re] of cases) {
      const m = JSON.parse(metaText);
      edit(m);
      await writeFile(join(pkgDir, 'model.json'), JSON.stringify(m));
      await expect(loadPackage(pkgDir)).rejects.toThrow(re);
    }
    await writeFile(join(pkgDir, 'model.json'), '{"format": "minigpt-package", ');
    await expect(loadPackage(pkgDir)).rejects.toThrow(/not valid JSON/);
  });

  it('mutations that still validate load (or fail to load) without hanging or running away', async () => {
    const r = rng(8);
    const edits: Array<(m: any) => void> = [
      (m) => (m.llm.maxPositions = 1 + Math.floor(r() * 100000)),
      (m) => (m.vision.imageTokens = 1 + Math.floor(r() * 1000)),
      (m) => (m.llm.layers = 1 + Math.floor(r() * 1000)),
      (m) => (m.prompt.imageToken = 'x'),
      (m) => (m.prompt.stopIds = [Math.floor(r() * 512)]),
      (m) => (m.name = 'z'.repeat(200)),
    ];
    for (let i = 0; i < edits.length; i++) {
      const m = JSON.parse(metaText);
      edits[i](m);
      await writeFile(join(pkgDir, 'model.json'), JSON.stringify(m));
      const model = await withTimeout(
        MiniGPT.load(pkgDir, { provider: 'cpu', threads: 1 }).catch((e: unknown) => {
          expect(e, String(e)).toBeInstanceOf(Error);
          return undefined;
        }),
        `load with edit ${i}`,
      );
      await model?.close();
    }
    await writeFile(join(pkgDir, 'model.json'), metaText);
  });
});

describe('bounds over the whole run', () => {
  it('no reader run allocated beyond a small multiple of its input (a 64 MB zip bomb or a 4 TB view would show)', () => {
    expect(growth.length).toBeGreaterThan(1500);
    const worst = growth.map((g) => ({ ...g, over: g.mb - (3 * g.size) / 1e6 })).sort((a, b) => b.over - a.over)[0];
    // ArrayBuffer memory is sampled every millisecond while each case runs; garbage from earlier cases only lowers it.
    expect(worst.over, `${worst.label}: +${worst.mb.toFixed(1)} MB for a ${worst.size}-byte input`).toBeLessThan(8);
  });
});
