// The embedding table's file read into the page cache in the background (src/inference/read-through.ts;
// LoadOptions.readEmbeddingsThrough): every byte of the files, stopped by closing the model, no effect on answers.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cp, mkdtemp, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readThrough } from '../../src/inference/read-through.js';
import { MiniGPT } from '../../src/inference/model.js';

const DEMO = join(import.meta.dirname, '..', '..', 'models', 'demo');

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-read-through-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('readThrough', () => {
  it('reads every byte of each file, in chunks; stops when aborted; refuses a missing file', async () => {
    const a = join(work, 'a.bin');
    const b = join(work, 'b.bin');
    await writeFile(a, Buffer.alloc(10_000, 1));
    await writeFile(b, Buffer.alloc(3, 2));
    expect(await readThrough([a, b], undefined, 4096)).toBe(10_003);
    const aborted = new AbortController();
    aborted.abort();
    expect(await readThrough([a, b], aborted.signal, 4096)).toBe(0);
    await expect(readThrough([join(work, 'none.bin')])).rejects.toThrow(/ENOENT/);
  });
});

describe('MiniGPT.load readEmbeddingsThrough', () => {
  it("reads the embedding graph's data files through in the background; not asked, nothing", async () => {
    const { size } = await stat(join(DEMO, 'embed.onnx.data'));
    const m = await MiniGPT.load(DEMO, { provider: 'cpu', threads: 1, readEmbeddingsThrough: true });
    try {
      expect(await m.tableRead).toBe(size);
    } finally {
      await m.close();
    }
    const plain = await MiniGPT.load(DEMO, { provider: 'cpu', threads: 1 });
    try {
      expect(await plain.tableRead).toBe(0);
    } finally {
      await plain.close();
    }
  });

  it('closing the model stops the read', async () => {
    // the demo package with 1 GiB more (sparse) after its table: onnxruntime reads the table by offset and length
    const pkg = join(work, 'demo-big');
    await cp(DEMO, pkg, { recursive: true });
    const data = join(pkg, 'embed.onnx.data');
    const big = (await stat(data)).size + 2 ** 30;
    await truncate(data, big);
    const m = await MiniGPT.load(pkg, { provider: 'cpu', threads: 1, readEmbeddingsThrough: true });
    await m.close();
    const read = await m.tableRead;
    expect(read).toBeGreaterThanOrEqual(0);
    expect(read).toBeLessThan(big);
  });
});
