// Reading the golden folders' tensors (manifest.json + raw files) and comparing outputs with them.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'vitest';

/** The raw bytes of golden tensor `name` of folder `dir`. */
export async function goldenTensor(dir: string, name: string): Promise<Buffer> {
  const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as { tensors: Record<string, { file: string }> };
  const t = manifest.tensors[name];
  if (!t) throw new Error(`${dir}: no golden tensor ${name}`);
  return readFile(join(dir, t.file));
}

/** An int64 golden tensor as numbers (token ids). */
export async function goldenIds(dir: string, name: string): Promise<number[]> {
  const b = await goldenTensor(dir, name);
  return Array.from(new BigInt64Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)), Number);
}

/** Largest absolute difference of two equally long arrays; NaN anywhere counts as infinitely far. */
export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Number.POSITIVE_INFINITY : d;
  }
  return m;
}
