// gpu.sh, the script that trained the committed demo model on a lent GPU (models/demo/train/README.md, "The
// second GPU run"), run here on the CPU at toy size (its DEVICE=cpu mode): a first call that generates the
// shards, trains one run, converts and evaluates it and returns its files, and a second call on the same WORK
// that continues it (`--init-from @NAME`, gpu-continue.txt), as the committed model's recipe does; a third with
// each run's own stage 1 (STAGE1=per-run), as that recipe's first call had.
import { describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { tempDirPerFile } from '../helpers/temp-dir.js';

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '..', '..');
const SCRIPT = join(ROOT, 'models/demo/train/gpu.sh');
const PY = process.env.PYTHON ?? '/usr/bin/python3';
let work: string;

tempDirPerFile('minigpt-gpush-', (dir) => (work = dir));

/** One gpu.sh call on the CPU: RUNS holds `runs`, 1 shard of 4 images, 0.02 min of training per run, held-out splits of 8 and 4 images. */
async function gpuSh(out: string, runs: string, extra: Record<string, string> = {}) {
  const file = join(work, `${out}.txt`);
  await writeFile(file, runs);
  const env = {
    ...process.env,
    PYTHON: PY,
    DEVICE: 'cpu',
    VIT_MINUTES: '0.05',
    VIT_BATCH: '8',
    WORK: join(work, 'w'),
    EVAL_ITEMS: '4',
    VAL_IMAGES: '8',
    HELDOUT_IMAGES: '4',
    RUNS: file,
    ...extra,
  };
  return run('bash', [SCRIPT, join(work, out), '0.02', '1', '4'], { cwd: ROOT, env, maxBuffer: 1 << 26 });
}

/** A run's options that keep it small here: 4 images a step, and --fit-minutes timing 6 steps instead of 40. */
const SMALL = '--batch-images 4 --micro 16 --fit-probe 6';

const tarList = async (archive: string) => (await run('tar', ['-tJf', archive])).stdout.split('\n').filter(Boolean);

describe('models/demo/train/gpu.sh (DEVICE=cpu, toy size)', () => {
  it('trains, converts, evaluates and returns a run; a second call continues it with --init-from @NAME', async () => {
    const first = await gpuSh('out1', `a1 112 --attn-sup 1 --name-sup 1 --sup-about ${SMALL}\n`, { STAGE1_OPTS: '--vit-augment' });
    expect(first.stdout).toMatch(/data: 1 shards x 4 images \(aspect-safe shapes\) prepared at 112 px/);
    for (const f of ['eva_vit.pth', 'minigptv2_ckpt.pth', 'pytorch_model.bin']) {
      expect((await stat(join(work, 'out1', 'a1', f))).size, f).toBeGreaterThan(100_000);
    }
    // the metadata comes back small: no weights, no state files, no stage-1 file (the device tool returns at
    // most 16 MiB a file: a stage-1 file in it once lost the whole archive)
    const meta = await tarList(join(work, 'out1', 'meta.tar.xz'));
    expect(meta).toEqual(
      expect.arrayContaining([
        './a1/train_args.json',
        './a1/train_log.jsonl',
        './a1/eval-refer.json',
        './a1/llama/tokenizer.json',
        './sweep.json',
      ]),
    );
    expect(meta.filter((f) => /\.(pt|pth|bin)$/.test(f))).toEqual([]);
    // stage 1 ran once for the image size (STAGE1=shared, the default) and the run loaded it
    expect(first.stdout).toMatch(/stage 1 at 112 px: vit step \d+\/\d+/);
    expect(first.stdout).toMatch(/stage 1 at 112 px: stage 1 held-out: colour \d\.\d{3} shape/);
    expect((await stat(join(work, 'w', 'runs', 'stage1-112', 'vision_stage1.pt'))).size).toBeGreaterThan(100_000);
    expect(JSON.parse(await readFile(join(work, 'w', 'runs', 'stage1-112', 'train_args.json'), 'utf8'))).toMatchObject({
      vit_only: true,
      vit_augment: true,
    });
    expect(await readFile(join(work, 'w', 'runs', 'a1.log'), 'utf8')).toContain(
      `stage 1 loaded from ${join(work, 'w', 'runs', 'stage1-112', 'vision_stage1.pt')}`,
    );
    expect(meta).toEqual(expect.arrayContaining(['./stage1-112/train_log.jsonl']));
    const sweep = JSON.parse(await readFile(join(work, 'w', 'runs', 'sweep.json'), 'utf8')) as {
      scores: Record<string, { refer: number | null }>;
      returned: string[];
    };
    expect(Object.keys(sweep.scores)).toEqual(['a1']);
    expect(sweep.returned).toEqual(['a1']);
    expect(typeof sweep.scores.a1?.refer).toBe('number');

    await gpuSh('out2', `c1 112 --attn-sup 1 --name-sup 1 --sup-about --lr 1e-3 --init-from @a1 ${SMALL}\n`);
    const log = await readFile(join(work, 'w', 'runs', 'c1.log'), 'utf8');
    expect(log).toContain(`weights from ${join(work, 'w', 'runs', 'a1.state.pt')}`);
    expect(log).not.toMatch(/^stage 1/m);
    const args = JSON.parse(await readFile(join(work, 'w', 'runs', 'c1', 'train_args.json'), 'utf8')) as Record<string, unknown>;
    expect(args).toMatchObject({ lr: 1e-3, init_from: join(work, 'w', 'runs', 'a1.state.pt') });
    // publish.mjs follows the continuation back to the run it started from
    const { describeRun } = (await import(join(ROOT, 'models/demo/train/publish.mjs'))) as {
      describeRun: (run: string) => Promise<{
        train_args: Record<string, unknown>;
        started_from?: { train_args: Record<string, unknown>; training: { stage1: unknown } };
      }>;
    };
    const described = await describeRun(join(work, 'w', 'runs', 'c1'));
    expect(described.train_args).toMatchObject({ lr: 1e-3 });
    expect(described.started_from?.train_args).toMatchObject({ lr: 2e-3, attn_sup: 1, name_sup: 1 });
    // the shared stage 1's record, found beside the run as it would be in a sweep brought back from the GPU
    expect(described.started_from?.training.stage1).toMatchObject({ vit_step: expect.any(Number) });

    // STAGE1=per-run (the committed model's first call): the run trains its own stage 1, and no shared one is made
    const third = await gpuSh('out3', `p1 224 --attn-sup 1 ${SMALL}\n`, { STAGE1: 'per-run' });
    expect(third.stdout).not.toMatch(/stage 1 at/);
    expect((await stat(join(work, 'w', 'runs', 'p1', 'vision_stage1.pt'))).size).toBeGreaterThan(100_000);
    await expect(stat(join(work, 'w', 'runs', 'stage1-224'))).rejects.toThrow();

    // a WORK holds the splits of one shape set: another set is refused before anything runs
    const otherSet = await gpuSh('out4', `s1 112 ${SMALL}\n`, { SHAPES: 'classic' }).catch((e: { code: number; stderr: string }) => e);
    expect(otherSet).toMatchObject({ code: 2, stderr: expect.stringContaining('holds splits of shape set aspect-safe, not classic') });

    // --vit-only is stage 1 and nothing else: without a stage 1 to run it is refused
    const refused = await run(
      PY,
      [
        join(ROOT, 'models/demo/train/train.py'),
        '--data',
        join(work, 'w', 'shard1', 'prep112'),
        '--out',
        join(work, 'v0'),
        '--aux-weight',
        '1',
        '--vit-only',
      ],
      { cwd: ROOT },
    ).catch((e: { stderr: string }) => e);
    expect(refused.stderr).toMatch(/--vit-only needs --vit-steps or --vit-fit-minutes/);
  }, 600_000);

  it('--init-from @package fine-tunes the committed models/demo (from_package.py), with a stage 1 of its own, after a STOP_AFTER=data call', async () => {
    const opts = `--init-from @package --vit-steps 2 --vit-batch 4 --attn-sup 1 --name-sup 1 --sup-about ${SMALL}`;
    // the first of the two device calls (STOP_AFTER=data): the splits, and nothing that needs the package
    const dataOnly = await gpuSh('out5', `f1 112 ${opts}\n`, { WORK: join(work, 'w5'), STOP_AFTER: 'data' });
    expect(dataOnly.stdout).toMatch(/STOP_AFTER=data: Node, the packages and the splits are in place/);
    const split = join(work, 'w5', 'shard1', 'prep112', 'meta.json');
    const prepared = (await stat(split)).mtimeMs;
    await expect(stat(join(work, 'w5', 'runs'))).rejects.toThrow();
    const out = await gpuSh('out5', `f1 112 ${opts}\n`, { SHAPES: 'aspect-safe', WORK: join(work, 'w5') });
    expect((await stat(split)).mtimeMs).toBe(prepared); // the second call trains on the first one's splits
    expect(out.stdout).toMatch(/data: 1 shards x 4 images \(aspect-safe shapes\)/);
    expect(out.stdout).not.toMatch(/stage 1 at/); // no shared stage 1: the only run starts from the package
    const log = await readFile(join(work, 'w5', 'runs', 'f1.log'), 'utf8');
    expect(log).toContain(`weights from ${join(work, 'w5', 'runs', 'package.state.pt')}`);
    expect(log).toMatch(/^vit step 2\/2 /m);
    expect((await stat(join(work, 'out5', 'f1', 'eva_vit.pth'))).size).toBeGreaterThan(100_000);
    expect(await tarList(join(work, 'out5', 'meta.tar.xz'))).toEqual(
      expect.arrayContaining(['./package/PROVENANCE.json', './package/train_args.json', './f1/train_args.json']),
    );
    const sweep = JSON.parse(await readFile(join(work, 'w5', 'runs', 'sweep.json'), 'utf8')) as { returned: string[] };
    expect(sweep.returned).toEqual(['f1']);
    // publish.mjs records where the fine-tune started: the committed package and how it was made
    const { describeRun } = (await import(join(ROOT, 'models/demo/train/publish.mjs'))) as {
      describeRun: (run: string) => Promise<{ started_from?: { package?: { files: unknown } } }>;
    };
    const committed = JSON.parse(await readFile(join(ROOT, 'models/demo/PROVENANCE.json'), 'utf8')) as { package: unknown };
    expect((await describeRun(join(work, 'w5', 'runs', 'f1'))).started_from?.package?.files).toEqual(committed.package);
  }, 600_000);
});
