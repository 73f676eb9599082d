// models/demo/train/from_package.py (issue 7): the committed package's weights taken back into the training
// recipe, so the demo model can be fine-tuned (on another shape set, say) without the run that made it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { loadPackage, packageFiles } from '../../src/inference/package.js';
import { trainLog, trainPy } from './helpers.js';

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '..', '..');
const PY = process.env.PYTHON ?? '/usr/bin/python3';
const DEMO = join(ROOT, 'models/demo');
const SCRIPT = join(ROOT, 'models/demo/train/from_package.py');
// model.json aside (its name and provenance say where a package was written)
const PACKAGE_FILES = packageFiles((await loadPackage(DEMO)).meta);
let work: string;

const minigpt = (...args: string[]) => run(process.execPath, [join(ROOT, 'bin/minigpt.js'), ...args], { cwd: ROOT });
const failure = (p: Promise<unknown>) =>
  p.then(
    () => ({ stderr: '' }),
    (e: { stderr: string }) => e,
  );

async function convert(dir: string, out: string) {
  await minigpt(
    'convert',
    '--arch',
    'minigpt-v2',
    '--vit',
    join(dir, 'eva_vit.pth'),
    '--llm',
    join(dir, 'llama'),
    '--ckpt',
    join(dir, 'minigptv2_ckpt.pth'),
    '--vit-heads',
    '4',
    '--image-size',
    '112',
    '--lora-alpha',
    '16',
    '--out',
    out,
  );
}

async function expectSamePackage(dir: string) {
  for (const f of PACKAGE_FILES) expect(Buffer.compare(await readFile(join(dir, f)), await readFile(join(DEMO, f))), f).toBe(0);
}

async function prepared(name: string, shapes: string) {
  const split = join(work, name);
  await minigpt('demo-data', '--seed', '77', '--count', '6', '--shapes', shapes, '--out', split);
  await run(
    process.execPath,
    [join(ROOT, 'models/demo/train/prepare.mjs'), '--data', split, '--out', join(split, 'prep'), '--image-size', '112'],
    { cwd: ROOT },
  );
  return join(split, 'prep');
}

const firstLoss = async (dir: string) => (await trainLog(dir)).find((r) => r.step === 1)!.loss;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-from-package-'));
  await run(PY, [SCRIPT, '--model', DEMO, '--out', join(work, 'fp')], { cwd: ROOT });
}, 120_000);
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('from_package.py', () => {
  it('writes published files that minigpt convert turns back into the committed package, byte for byte', async () => {
    await convert(join(work, 'fp'), join(work, 'back'));
    await expectSamePackage(join(work, 'back'));
    expect(await readFile(join(work, 'fp', 'PROVENANCE.json'), 'utf8')).toBe(await readFile(join(DEMO, 'PROVENANCE.json'), 'utf8'));
  }, 120_000);

  it("its state.pt starts train.py (--init-from): the committed model's loss, not a fresh one's; at lr 0 the package is unchanged", async () => {
    const prep = await prepared('safe', 'aspect-safe'); // the committed model's shape set
    const common = {
      data: prep,
      steps: 1,
      'batch-images': 4,
      'per-image': 4,
      warmup: 1,
      lr: 0,
      'log-every': 1,
      'aux-weight': 1,
      threads: 1,
    };
    await run(PY, trainPy({ ...common, out: join(work, 'ft'), 'init-from': join(work, 'fp', 'state.pt') }), { cwd: ROOT });
    await run(PY, trainPy({ ...common, out: join(work, 'fresh') }), { cwd: ROOT });
    const [tuned, fresh] = [await firstLoss(join(work, 'ft')), await firstLoss(join(work, 'fresh'))];
    expect(tuned).toBeLessThan(1);
    expect(fresh).toBeGreaterThan(5); // ~ln 512: a random model
    await convert(join(work, 'ft'), join(work, 'ft-package'));
    await expectSamePackage(join(work, 'ft-package'));

    // publish.mjs records the fine-tune as starting from the committed package, with how that was made
    const { describeRun } = (await import(join(ROOT, 'models/demo/train/publish.mjs'))) as {
      describeRun: (run: string) => Promise<{ train_args: Record<string, unknown>; started_from?: Record<string, unknown> }>;
    };
    const committed = JSON.parse(await readFile(join(DEMO, 'PROVENANCE.json'), 'utf8')) as Record<string, unknown>;
    const described = await describeRun(join(work, 'ft'));
    expect(described.train_args).toMatchObject({ lr: 0, steps: 1 });
    expect(described.started_from).toMatchObject({
      package: { files: committed.package, heldout: committed.heldout },
      train_args: committed.train_args,
      training: committed.training,
    });
  }, 300_000);

  it('--init-from: heads trained on other object classes start afresh; a stage 1 replaces the vision only when asked for', async () => {
    const classic = await prepared('classic', 'classic');
    const safe = join(work, 'safe', 'prep');
    const common = { steps: 1, 'batch-images': 2, 'per-image': 2, warmup: 1, 'aux-weight': 1, threads: 1 };
    const c1State = join(work, 'c1', 'state.pt');
    await run(PY, trainPy({ ...common, data: classic, out: join(work, 'c1') }), { cwd: ROOT });
    const other = await run(PY, trainPy({ ...common, data: safe, out: join(work, 's1'), 'init-from': c1State }), { cwd: ROOT });
    expect(other.stderr).toContain('aux / name heads start afresh: the earlier run had other object classes');
    const same = await run(PY, trainPy({ ...common, data: classic, out: join(work, 'c2'), 'init-from': c1State }), { cwd: ROOT });
    expect(same.stderr).not.toContain('start afresh');
    expect(same.stderr).not.toContain('stage 1');
    // stage 1 on the loaded vision (--vit-only with --init-from): its own vision_stage1.pt
    const st1 = await run(
      PY,
      trainPy({
        ...common,
        data: safe,
        out: join(work, 'v1'),
        'init-from': join(work, 'fp', 'state.pt'),
        'vit-only': true,
        'vit-steps': 2,
        'vit-batch': 2,
      }),
      { cwd: ROOT },
    );
    expect(st1.stderr).toMatch(/weights from .*state\.pt[\s\S]*stage 1 saved/);
  }, 300_000);

  it('says what is wrong with a folder that is not an fp32 MiniGPT-v2 package', async () => {
    const none = await failure(run(PY, [SCRIPT, '--model', join(work, 'nowhere'), '--out', join(work, 'x1')]));
    expect(none.stderr).toMatch(/--model .*nowhere: no model\.json/);
    const int8 = join(work, 'int8');
    await mkdir(int8);
    const meta = JSON.parse(await readFile(join(DEMO, 'model.json'), 'utf8')) as Record<string, unknown>;
    await writeFile(join(int8, 'model.json'), JSON.stringify({ ...meta, dtype: 'int8' }));
    expect((await failure(run(PY, [SCRIPT, '--model', int8, '--out', join(work, 'x2')]))).stderr).toContain(
      'reads fp32 minigpt-v2 packages only',
    );
    // a package whose weights are not all there
    const partial = join(work, 'partial');
    await mkdir(partial);
    for (const f of ['model.json', ...PACKAGE_FILES.filter((f) => f !== 'decoder.onnx.data')])
      await copyFile(join(DEMO, f), join(partial, f));
    await writeFile(join(partial, 'decoder.onnx.data'), Buffer.alloc(16));
    expect((await failure(run(PY, [SCRIPT, '--model', partial, '--out', join(work, 'x3')]))).stderr).toMatch(
      /decoder\.onnx: initializer \S+ has \d+ bytes/,
    );
  }, 120_000);
});
