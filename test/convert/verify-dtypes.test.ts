// `minigpt verify` holds each weight type to its own bounds (DTYPE_BOUNDS): a quantised package of the tiny
// golden model passes against the fp32 PyTorch reference, and the same fp16 package labelled fp32 does not.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DTYPE_BOUNDS, verifyPackage, type VerifyReport } from '../../src/inference/verify.js';
import { convertTinyV2, GOLDEN_V2 } from '../helpers/tiny-package.js';

let work: string;
const reports: Record<string, VerifyReport> = {};

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-verify-dtypes-'));
  for (const dtype of ['fp16', 'int8', 'int4'] as const) {
    await convertTinyV2(join(work, dtype), { dtype });
    reports[dtype] = await verifyPackage(join(work, dtype), GOLDEN_V2, { provider: 'cpu', threads: 1 });
  }
}, 240_000);
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** largest error of the model's stages (preprocessing, measured as a mean against PIL, left out) */
const maxErr = (r: VerifyReport) =>
  Math.max(
    ...Object.values(r.prompts).flatMap((p) =>
      Object.entries(p.stages)
        .filter(([n]) => n !== 'preprocess')
        .map(([, s]) => s.max_abs_err),
    ),
  );

describe('minigpt verify on quantised packages', () => {
  it("reports the weight type and checks it against that type's bounds", () => {
    for (const dtype of ['fp16', 'int8', 'int4'] as const) {
      const r = reports[dtype];
      expect(r.dtype).toBe(dtype);
      expect(r.bounds).toEqual({ tensor: DTYPE_BOUNDS[dtype].tensor, forced_top1: DTYPE_BOUNDS[dtype].forcedTop1 });
      for (const [n, s] of Object.entries(r.stages)) if (n !== 'preprocess') expect(s.tolerance, n).toBe(DTYPE_BOUNDS[dtype].tensor);
      expect(r.ok, `${dtype}: ${JSON.stringify(r.stages)}`).toBe(true);
    }
  });

  it('fp16 is over the fp32 bound but within its own, with every greedy token kept', () => {
    const r = reports.fp16;
    expect(maxErr(r)).toBeGreaterThan(DTYPE_BOUNDS.fp32.tensor);
    expect(maxErr(r)).toBeLessThan(DTYPE_BOUNDS.fp16.tensor);
    for (const p of Object.values(r.prompts)) {
      expect(p.greedy_agreement).toBe(1);
      expect(p.forced_top1).toBe(1);
    }
  });

  it('int8 picks the reference token at 7 of 8 teacher-forced steps at least; int4 reports its agreement', () => {
    for (const p of Object.values(reports.int8.prompts)) {
      // (free-running, one flipped near-tie changes what follows: greedy_agreement is reported, not bounded)
      expect(p.forced_top1).toBeGreaterThanOrEqual(7 / 8);
    }
    for (const p of Object.values(reports.int4.prompts)) {
      for (const share of [p.greedy_agreement, p.forced_top1]) {
        expect(share).toBeGreaterThanOrEqual(0);
        expect(share).toBeLessThanOrEqual(1);
      }
      expect(p.greedy_ids).toHaveLength(p.expected_greedy_ids.length);
    }
    expect(maxErr(reports.int4)).toBeGreaterThan(maxErr(reports.int8));
  });

  it("the same fp16 weights labelled fp32 fail: the bound follows the package's declared type", async () => {
    const meta = JSON.parse(await readFile(join(work, 'fp16', 'model.json'), 'utf8')) as { dtype: string };
    meta.dtype = 'fp32';
    await writeFile(join(work, 'fp16', 'model.json'), JSON.stringify(meta));
    const r = await verifyPackage(join(work, 'fp16'), GOLDEN_V2, { provider: 'cpu', threads: 1 });
    expect(r.dtype).toBe('fp32');
    expect(r.ok).toBe(false);
  });
});
