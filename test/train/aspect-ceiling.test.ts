// models/demo/train/aspect_ceiling.py (issue 7): how often the stretch of an image to the model's square input
// makes an ellipse / rectangle indistinguishable from a circle / square, on splits of the real generator.
import { describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { tempDirPerFile } from '../helpers/temp-dir.js';

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '..', '..');
const PY = process.env.PYTHON ?? '/usr/bin/python3';
const SCRIPT = join(ROOT, 'models/demo/train/aspect_ceiling.py');
let work: string;

interface Ceiling {
  identify_items: number;
  sigma: Record<string, { shapes: Record<string, { items: number; bayes_accuracy: number }>; identify_ceiling: number }>;
}

async function split(name: string, seed: number, count: number, shapes: string) {
  const out = join(work, name);
  await run(
    process.execPath,
    [join(ROOT, 'bin/minigpt.js'), 'demo-data', '--seed', String(seed), '--count', String(count), '--shapes', shapes, '--out', out],
    { cwd: ROOT },
  );
  return out;
}

async function ceiling(reference: string, heldout: string): Promise<Ceiling> {
  const { stdout } = await run(
    PY,
    [SCRIPT, '--scenes', join(reference, 'scenes.json'), '--heldout', heldout, '--sigma', '0.5,2', '--draws', '10'],
    { cwd: ROOT },
  );
  return JSON.parse(stdout) as Ceiling;
}

tempDirPerFile('minigpt-aspect-', (dir) => (work = dir));

describe('aspect_ceiling.py', () => {
  it('classic shapes: some ellipses and rectangles look like stretched circles and squares, more so the coarser the measurement; aspect-safe: none', async () => {
    const [ref, held, refSafe, heldSafe] = await Promise.all([
      split('ref', 31, 300, 'classic'),
      split('held', 32, 60, 'classic'),
      split('ref-safe', 31, 300, 'aspect-safe'),
      split('held-safe', 32, 60, 'aspect-safe'),
    ]);
    const classic = await ceiling(ref, held);
    const fine = classic.sigma['0.5'];
    const coarse = classic.sigma['2.0'];
    expect(Object.keys(fine.shapes).sort()).toEqual(['circle', 'ellipse', 'rectangle', 'square']);
    expect(fine.identify_ceiling).toBeLessThan(1);
    expect(fine.identify_ceiling).toBeGreaterThan(0.8);
    expect(coarse.identify_ceiling).toBeLessThan(fine.identify_ceiling);
    for (const s of ['ellipse', 'rectangle']) expect(fine.shapes[s].bayes_accuracy, s).toBeLessThan(1);

    const safe = await ceiling(refSafe, heldSafe);
    expect(Object.keys(safe.sigma['2.0'].shapes).sort()).toEqual(['circle', 'square']);
    expect(safe.sigma['0.5'].identify_ceiling).toBe(1);
    expect(safe.sigma['2.0'].identify_ceiling).toBe(1);

    // a reference from another shape set would answer the wrong question
    const mixed = await run(PY, [SCRIPT, '--scenes', join(ref, 'scenes.json'), '--heldout', heldSafe], { cwd: ROOT }).catch(
      (e: { stderr: string }) => e,
    );
    expect(mixed).toMatchObject({ stderr: expect.stringContaining('different shape sets (aspect-safe, classic)') });
  }, 120_000);
});
