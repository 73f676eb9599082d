// The training recipe of the demo model (models/demo/train, issue 7) as a smoke test: a tiny split, three
// training steps in PyTorch (Debian's python3-torch, which npm test installs first: scripts/test-tools.sh), the published files converted
// by `minigpt convert`, the ONNX package checked against PyTorch on the same inputs, an eval run; the run
// published with its PROVENANCE.json (publish.mjs) and checked against it; and two runs with the same seed
// writing identical files.
import { describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { sha256Hex } from '../../src/conversation/store.js';
import { TASKS, expectRecordedFiles, expectRecordedScores } from '../helpers/provenance.js';
import { trainLog, trainProbe, trainPy } from './helpers.js';
import { tempDirPerFile } from '../helpers/temp-dir.js';

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '..', '..');
const PY = process.env.PYTHON ?? '/usr/bin/python3';
let work: string;

tempDirPerFile('minigpt-train-', (dir) => (work = dir));

const sha256 = async (p: string) => sha256Hex(await readFile(p));

/** The batches and model options of run r1 (the determinism test's), which the run started from its weights shares. */
const R1_BATCHES_AND_MODEL = {
  'batch-images': 2,
  'per-image': 2,
  warmup: 1,
  'aux-weight': 1,
  'coord-init': true,
  'pos-init-scale': 4,
} as const;

/** A train.py command line with option `flag` set to `value` (replaced where it is, else added). */
function withOpt(args: readonly string[], flag: string, value: string): string[] {
  const i = args.indexOf(flag);
  return i < 0 ? [...args, flag, value] : [...args.slice(0, i + 1), value, ...args.slice(i + 2)];
}

/** A train.py command line without option `flag` and its value. */
function withoutOpt(args: readonly string[], flag: string): string[] {
  const i = args.indexOf(flag);
  if (i < 0) throw new Error(`${flag} is not in ${args.join(' ')}`);
  return [...args.slice(0, i), ...args.slice(i + 2)];
}

/** The published files of run `dir` are byte-identical to those of run `reference`. */
async function expectSamePublished(dir: string, reference: string) {
  for (const f of ['eva_vit.pth', 'minigptv2_ckpt.pth', 'llama/pytorch_model.bin']) {
    expect(await sha256(join(dir, f)), f).toBe(await sha256(join(reference, f)));
  }
}

interface CheckReport {
  ok: boolean;
  samples: Array<{
    image_embeds_max_abs_err: number;
    first_logits_max_abs_err: number;
    greedy_ids: number[];
    expected_ids: number[];
    ok: boolean;
  }>;
}

describe('models/demo/train', () => {
  it('smoke.sh: trains 3 steps, converts the published files, and the package matches PyTorch', async () => {
    const { stdout } = await run('bash', [join(ROOT, 'models/demo/train/smoke.sh'), join(work, 'smoke')], {
      cwd: ROOT,
      env: { ...process.env, PYTHON: PY },
      maxBuffer: 64 << 20,
    });
    expect(stdout).toMatch(/smoke test passed/);
    const report = JSON.parse(await readFile(join(work, 'smoke', 'check.json'), 'utf8')) as CheckReport;
    expect(report.ok).toBe(true);
    expect(report.samples).toHaveLength(3);
    for (const s of report.samples) {
      expect(s.image_embeds_max_abs_err).toBeLessThan(1e-3);
      expect(s.first_logits_max_abs_err).toBeLessThan(1e-3);
      expect(s.greedy_ids).toEqual(s.expected_ids);
    }
    // stage 1 (the ViT alone on the auxiliary task) ran first and saved its state; the auxiliary head then kept
    // training with the language model (its loss is logged) and is not part of the published ViT file
    const log = await trainLog(join(work, 'smoke', 'run'));
    const stage1 = log.filter((r) => typeof r.vit_step === 'number');
    expect(stage1.map((r) => r.vit_step)).toEqual([1, 2]);
    for (const r of stage1) for (const k of ['aux_loss', 'colour_acc', 'shape_acc']) expect(Number.isFinite(r[k]), k).toBe(true);
    expect(log.filter((r) => typeof r.step === 'number' && typeof r.aux_loss === 'number')).toHaveLength(3);
    const { stdout: stage1Keys } = await run(PY, [
      '-c',
      `import torch; s = torch.load('${join(work, 'smoke', 'run', 'vision_stage1.pt')}'); print(sorted(s))`,
    ]);
    expect(stage1Keys.trim()).toBe("['aux_head', 'visual_encoder']");
    const { stdout: keys } = await run(PY, [
      '-c',
      `import torch; print('\\n'.join(torch.load('${join(work, 'smoke', 'run', 'eva_vit.pth')}').keys()))`,
    ]);
    expect(keys).toMatch(/^patch_embed\.proj\.weight$/m);
    expect(keys).not.toMatch(/aux/);
  }, 300_000);

  it("probe_vision.py: linear probes of the colour and shape of each object on the vision of a run's published files", async () => {
    const prepared = join(work, 'smoke', 'prepared');
    const { stdout } = await run(
      PY,
      [
        join(ROOT, 'models/demo/train/probe_vision.py'),
        '--run',
        join(work, 'smoke', 'run'),
        '--train',
        prepared,
        '--val',
        prepared,
        '--threads',
        '1',
      ],
      { cwd: ROOT },
    );
    const r = JSON.parse(stdout) as Record<string, number | Record<string, number>>;
    const objects = (JSON.parse(await readFile(join(prepared, 'objects.json'), 'utf8')) as unknown[][]).flat().length;
    // every object whose box holds a patch centre (the smallest may hold none on the 8 x 8 grid)
    expect(r.train_objects).toBeLessThanOrEqual(objects);
    expect(r.train_objects).toBeGreaterThan(objects / 2);
    expect(r.val_objects).toBe(r.train_objects);
    for (const k of ['patches_colour', 'patches_shape', 'tokens_colour', 'tokens_shape']) {
      const p = r[k] as Record<string, number>;
      // fitted and scored on the same objects: "held-out" is the fit
      expect(p.val, k).toBeCloseTo(p.train, 3);
    }
    // a handful of objects in 192 dimensions: the colours are linearly separable
    expect((r.patches_colour as Record<string, number>).train).toBe(1);
  }, 120_000);

  it('publish.mjs records the run: package files, the published files they came from, re-computable held-out scores', async () => {
    const heldout = join(work, 'heldout');
    // an aspect-safe split: the record names the shape set and the check scenes are drawn from it again
    await run(
      process.execPath,
      [join(ROOT, 'bin/minigpt.js'), 'demo-data', '--seed', '1000', '--count', '2', '--shapes', 'aspect-safe', '--out', heldout],
      { cwd: ROOT },
    );
    const pkg = join(work, 'published');
    await mkdir(pkg);
    await run(
      process.execPath,
      [
        join(ROOT, 'models/demo/train/publish.mjs'),
        '--run',
        join(work, 'smoke', 'run'),
        '--heldout',
        heldout,
        '--out',
        pkg,
        '--check-images',
        '3',
        '--data',
        'smoke split',
      ],
      {
        cwd: ROOT,
        maxBuffer: 64 << 20,
      },
    );
    const record = await expectRecordedFiles(pkg);
    expect(record.heldout).toMatchObject({ seed: 1000, images: 2, shapes: 'aspect-safe' });
    for (const t of TASKS) expect(record.heldout.eval[t].n, t).toBeGreaterThan(0);
    expect(record.published['eva_vit.pth'].sha256).toBe(await sha256(join(work, 'smoke', 'run', 'eva_vit.pth')));
    expect(record.train_args).toMatchObject({ aux_weight: 1, coord_init: true, pos_init_scale: 4, vit_steps: 2 });
    expect(record.train_args).not.toHaveProperty('data');
    await expectRecordedScores(pkg, record, work);
    // a package file that is not the recorded one is caught
    const data = await readFile(join(pkg, 'decoder.onnx.data'));
    data[data.length - 1] ^= 1;
    await writeFile(join(pkg, 'decoder.onnx.data'), data);
    await expect(expectRecordedFiles(pkg)).rejects.toThrow(/decoder\.onnx\.data/);
  }, 300_000);

  it('is deterministic on the CPU: the same seed writes the same published files', async () => {
    const prepared = join(work, 'smoke', 'prepared');
    const args = (out: string) =>
      trainPy({
        data: prepared,
        out,
        steps: 2,
        ...R1_BATCHES_AND_MODEL,
        'vit-steps': 2,
        'vit-batch': 2,
        threads: 1,
      });
    await run(PY, args(join(work, 'r1')), { cwd: ROOT });
    await run(PY, args(join(work, 'r2')), { cwd: ROOT });
    await expectSamePublished(join(work, 'r2'), join(work, 'r1'));
  }, 300_000);

  it('--object-curriculum: one-object scenes first, then up to two, ...; a stopped and resumed run replays the same order', async () => {
    // the sampler alone: 8 scenes of 1, 2 or 3 objects, the cap rising every 2 steps
    const probe = trainProbe([
      'import json, random, train',
      'counts = [1, 2, 3, 1, 2, 3, 1, 2]',
      'o = train.ImageOrder(8, random.Random(0), counts, 2)',
      'print(json.dumps([[counts[i] for i in o.take(s, 3)] for s in range(6)]))',
    ]);
    const { stdout } = await run(PY, probe, { cwd: ROOT });
    const caps = JSON.parse(stdout) as number[][];
    expect(
      caps
        .slice(0, 2)
        .flat()
        .every((c) => c === 1),
    ).toBe(true);
    expect(
      caps
        .slice(2, 4)
        .flat()
        .every((c) => c <= 2),
    ).toBe(true);
    expect(caps.slice(2, 4).flat()).toContain(2);
    expect(caps.slice(4).flat()).toContain(3);

    const prepared = join(work, 'smoke', 'prepared');
    const args = (out: string, ...more: string[]) => [
      ...trainPy({
        data: prepared,
        out,
        steps: 3,
        'batch-images': 2,
        'per-image': 2,
        warmup: 1,
        'aux-weight': 1,
        'object-curriculum': 1,
        threads: 1,
      }),
      ...more,
    ];
    await run(PY, args(join(work, 'c1')), { cwd: ROOT });
    await run(PY, args(join(work, 'c2'), '--stop-at', '1'), { cwd: ROOT });
    await run(PY, args(join(work, 'c2'), '--resume'), { cwd: ROOT });
    await expectSamePublished(join(work, 'c2'), join(work, 'c1'));
  }, 300_000);
  it('--attn-sup / --name-sup: the answer positions of [refer] / [identify] samples (--sup-about: every sample about one object) target the image tokens, the colour and the shape of that object', async () => {
    const prepared = join(work, 'smoke', 'prepared');
    const probe = trainProbe([
      'import json, random, types',
      'import numpy as np, torch, train',
      // the 4-concat groups patches (r, 4h..4h+3): on an 8 x 8 grid the top-left quarter is tokens 0, 2, 4, 6
      'geometry = [train.box_tokens([0, 0, 0.5, 0.5], 8), train.box_tokens([0.3, 0.3, 0.31, 0.31], 8)]',
      // --attn-sup-layers: 'L' is the first --attn-sup-heads heads of layer L, 'L:H' one head
      'heads = train.parse_heads("1, 2:3, 1:0", 2, 4, 4)',
      'try:',
      '    train.parse_heads("4:0", 1, 4, 4); bad = None',
      'except SystemExit as e:',
      '    bad = str(e)',
      `d = train.Prepared(${JSON.stringify(prepared)})`,
      `a = types.SimpleNamespace(**json.load(open(${JSON.stringify(join(work, 'r1', 'train_args.json'))})))`,
      'model = train.MiniGPTv2(a)',
      'sc = train.TaskScorer(d.tokenizer_json)',
      'ids = list(range(d.meta["images"]))',
      'classes = train.object_classes(d.objects)',
      'rows = []',
      'with torch.no_grad():',
      '    for x, pad, y, n, A, names, group in train.make_batch(model, d, ids, random.Random(0), 1 << 30, 16, 8, with_items=True, attn_sup=sc, name_classes=classes)[0]:',
      '        for r, (length, b, s, n_prompt) in enumerate(group):',
      '            p0 = len(s["pre"])',
      '            marked = A[r].sum(-1).nonzero().flatten().tolist()',
      '            keys = sorted({int(k) - p0 for k in A[r].nonzero()[:, 1].tolist()})',
      '            box = train.referred_box(s, sc)',
      '            objs = d.objects[ids[b]]',
      '            best = max(objs, key=lambda o: train.box_iou(o["box"], box)) if box else None',
      '            named = names[r][names[r, :, 0] >= 0].tolist()',
      '            rows.append({"task": sc.task(s), "marked": marked, "answer": list(range(n_prompt - 1, length - 1)), "keys": keys,',
      '                         "iou": train.box_iou(best["box"], box) if best else None, "obj": best["box"] if best else None,',
      '                         "named_at": names[r, :, 0].ge(0).nonzero().flatten().tolist(), "named": [classes[0][c] + " " + classes[1][h] for c, h in named],',
      '                         "name": best["colour"] + " " + best["shape"] if best else None})',
      // --sup-about: every sample whose answer is about one object (prepare.mjs's "about"), in any task
      'about = []',
      'with torch.no_grad():',
      '    for x, pad, y, n, A, names, group in train.make_batch(model, d, ids, random.Random(0), 1 << 30, 16, 8, with_items=True, attn_sup=sc, name_classes=classes, about=True)[0]:',
      '        for r, (length, b, s, n_prompt) in enumerate(group):',
      '            o = d.objects[ids[b]][s["about"]] if "about" in s else None',
      '            about.append({"task": sc.task(s), "has": o is not None, "marked": A[r].sum(-1).nonzero().flatten().tolist(), "answer": list(range(n_prompt - 1, length - 1)),',
      '                          "keys": sorted({int(k) - len(s["pre"]) for k in A[r].nonzero()[:, 1].tolist()}), "want": train.box_tokens(o["box"], 8) if o else [],',
      '                          "named": sorted({classes[0][c] + " " + classes[1][h] for c, h in names[r][names[r, :, 0] >= 0].tolist()}), "name": [o["colour"] + " " + o["shape"]] if o else []})',
      // the loss: all weight on the target tokens -> 0; uniform over the L keys -> -log(k / L)
      'A = torch.zeros(1, 5, 5); A[0, 3, 1] = A[0, 3, 2] = 1',
      'layer = model.llama_model.model.layers[1].self_attn',
      'layer.kept = (A / A.sum(-1, keepdim=True).clamp_min(1))[:, None]',
      'zero = train.attention_loss_sum(model, A)',
      'layer.kept = torch.full((1, 1, 5, 5), 0.2)',
      'uniform = train.attention_loss_sum(model, A)',
      // the name loss: a head with zero weights -> 0.5 (log C + log S) per term; one whose bias picks the right classes -> ~0
      'model.name_classes = (["red", "blue", "green"], ["star", "cross"])',
      'model.name_head = torch.nn.ModuleDict({"1_0": torch.nn.Linear(layer.head_dim, 5)})',
      'torch.nn.init.zeros_(model.name_head["1_0"].weight); torch.nn.init.zeros_(model.name_head["1_0"].bias)',
      'layer.keep_heads = [0]; layer.kept_out = torch.randn(1, 1, 5, layer.head_dim)',
      'N = torch.full((1, 5, 2), -100, dtype=torch.long); N[0, 3] = torch.tensor([1, 0]); N[0, 4] = torch.tensor([1, 0])',
      'flat = train.name_loss_sum(model, N)',
      'with torch.no_grad(): model.name_head["1_0"].bias.copy_(torch.tensor([0., 30., 0., 30., 0.]))',
      'sure = train.name_loss_sum(model, N)',
      'print(json.dumps({"geometry": geometry, "heads": heads, "bad": bad, "rows": rows, "zero": [float(zero[0]), zero[1]], "uniform": [float(uniform[0]), uniform[1]],',
      '                  "flat": [float(flat[0]), flat[1]], "sure": [float(sure[0]), sure[1]], "about": about}))',
    ]);
    const { stdout } = await run(PY, probe, { cwd: ROOT, maxBuffer: 64 << 20 });
    const out = JSON.parse(stdout) as {
      geometry: number[][];
      heads: number[][];
      bad: string | null;
      rows: Array<{
        task: string;
        marked: number[];
        answer: number[];
        keys: number[];
        iou: number | null;
        obj: number[] | null;
        named_at: number[];
        named: string[];
        name: string | null;
      }>;
      zero: [number, number];
      uniform: [number, number];
      flat: [number, number];
      sure: [number, number];
      about: Array<{
        task: string;
        has: boolean;
        marked: number[];
        answer: number[];
        keys: number[];
        want: number[];
        named: string[];
        name: string[];
      }>;
    };
    expect(out.geometry).toEqual([[0, 2, 4, 6], [4]]);
    expect(out.heads).toEqual([
      [1, 0],
      [1, 1],
      [2, 3],
    ]);
    expect(out.bad).toMatch(/"4:0".*4 layers of 4 heads/);
    const supervised = out.rows.filter((r) => r.task === 'refer' || r.task === 'identify');
    expect(supervised.length).toBeGreaterThan(10);
    for (const r of supervised) {
      expect(r.marked).toEqual(r.answer); // every answer position, nothing else
      expect(r.iou).toBeGreaterThan(0.5); // the box names one object of the scene (up to the 0..100 grid: small objects lose most)
      // every marked token overlaps that object (tokens are 4 patches of 1/8 wide, 1/8 high), and the token under its centre is marked
      const [x1, y1, x2, y2] = r.obj!;
      for (const t of r.keys) {
        const row = Math.floor(t / 2),
          left = (t % 2) * 0.5;
        expect(left < x2 && left + 0.5 > x1 && row / 8 < y2 && (row + 1) / 8 > y1).toBe(true);
      }
      const cx = (x1 + x2) / 2,
        cy = (y1 + y2) / 2;
      expect(r.keys).toContain(Math.min(7, Math.floor(cy * 8)) * 2 + (cx >= 0.5 ? 1 : 0));
      // --name-sup: the same positions are told that object's colour and shape
      expect(r.named_at).toEqual(r.answer);
      expect(new Set(r.named)).toEqual(new Set([r.name]));
    }
    expect(supervised.filter((r) => r.task === 'identify').length).toBeGreaterThan(3); // both tasks were covered
    for (const r of out.rows.filter((r) => r.task !== 'refer' && r.task !== 'identify')) {
      expect(r.marked).toEqual([]);
      expect(r.named_at).toEqual([]);
    }
    for (const r of out.about) {
      expect(r.marked).toEqual(r.has ? r.answer : []);
      expect(r.keys).toEqual(r.want);
      expect(r.named).toEqual(r.name);
    }
    expect(new Set(out.about.filter((r) => r.has).map((r) => r.task))).toEqual(new Set(['refer', 'identify', 'vqa']));
    expect(out.about.filter((r) => r.task === 'vqa' && r.has).length).toBeGreaterThan(3);
    expect(out.flat[0]).toBeCloseTo(2 * 0.5 * (Math.log(3) + Math.log(2)), 4);
    expect(out.flat[1]).toBe(2);
    expect(out.sure[0]).toBeCloseTo(0, 5);
    expect(out.zero[0]).toBeCloseTo(0, 5);
    expect(out.zero[1]).toBe(1);
    expect(out.uniform[0]).toBeCloseTo(-Math.log(2 / 5), 5);

    // a run with it logs the attention loss; the published files are the usual ones
    const args = trainPy({
      data: prepared,
      out: join(work, 'a1'),
      steps: 2,
      'batch-images': 4,
      'per-image': 4,
      warmup: 1,
      'log-every': 1,
      'attn-sup': 1,
      threads: 1,
    });
    await run(PY, args, { cwd: ROOT });
    const log = await trainLog(join(work, 'a1'));
    for (const rec of log) expect(rec.attn_loss).toBeGreaterThan(0);
    const keys = async (dir: string) =>
      (await run(PY, ['-c', `import torch; print(sorted(torch.load('${join(dir, 'llama', 'pytorch_model.bin')}')))`])).stdout;
    expect(await keys(join(work, 'a1'))).toBe(await keys(join(work, 'r1')));
    // --name-sup alone (the heads of --attn-sup-layers, without their attention loss): its loss is logged, the
    // name heads stay out of the published files, and they are saved for --resume
    await run(PY, [...withoutOpt(withOpt(args, '--out', join(work, 'a2')), '--attn-sup'), '--name-sup', '1'], { cwd: ROOT });
    const log2 = await trainLog(join(work, 'a2'));
    for (const rec of log2) {
      expect(rec.name_loss).toBeGreaterThan(0);
      expect(rec).not.toHaveProperty('attn_loss');
    }
    expect(await keys(join(work, 'a2'))).toBe(await keys(join(work, 'r1')));
    const { stdout: saved } = await run(PY, [
      '-c',
      `import torch; print(sorted(k for k in torch.load('${join(work, 'a2', 'state.pt')}')['model'] if k.startswith('name_head')))`,
    ]);
    expect(saved.trim()).toBe("['name_head.1_0.bias', 'name_head.1_0.weight', 'name_head.2_0.bias', 'name_head.2_0.weight']");
  }, 300_000);

  it("--init-from starts from an earlier run's weights (a new schedule: at lr 0 the published files are unchanged)", async () => {
    const prepared = join(work, 'smoke', 'prepared');
    const args = trainPy({
      data: prepared,
      out: join(work, 'i1'),
      steps: 1,
      ...R1_BATCHES_AND_MODEL,
      lr: 0,
      threads: 1,
      'init-from': join(work, 'r1', 'state.pt'),
    });
    await run(PY, args, { cwd: ROOT });
    await expectSamePublished(join(work, 'i1'), join(work, 'r1'));
    // a name head the earlier run did not have starts afresh; the rest is loaded as before
    await run(PY, [...withOpt(args, '--out', join(work, 'i2')), '--name-sup', '1'], { cwd: ROOT });
    await expectSamePublished(join(work, 'i2'), join(work, 'r1'));
    const { stderr } = await run(PY, withOpt(args, '--init-from', join(work, 'missing.pt')), { cwd: ROOT }).catch(
      (e: { stderr: string }) => e,
    );
    expect(stderr).toMatch(/--init-from .*missing\.pt: no such file/);

    // publish.mjs records the runs it came from, back to the first
    const { describeRun } = (await import(join(ROOT, 'models/demo/train/publish.mjs'))) as {
      describeRun: (run: string) => Promise<{
        train_args: Record<string, unknown>;
        training: { last: { step: number } };
        started_from?: { train_args: Record<string, unknown>; started_from?: unknown };
      }>;
    };
    const described = await describeRun(join(work, 'i1'));
    expect(described.train_args).toMatchObject({ lr: 0, steps: 1 });
    expect(described.train_args).not.toHaveProperty('init_from');
    expect(described.training.last.step).toBe(1);
    expect(described.started_from?.train_args).toMatchObject({ coord_init: true, pos_init_scale: 4, vit_steps: 2, steps: 2 });
    expect(described.started_from).not.toHaveProperty('started_from');
  }, 300_000);

  it('--vit-augment: stage 1 sees each batch under a symmetry of the square, its targets moved exactly; --vit-only stops after stage 1', async () => {
    const { stdout } = await run(PY, [join(ROOT, 'test/helpers/dihedral_check.py'), join(ROOT, 'models/demo/train')]);
    expect(stdout).toContain('agree 8 of 8, 8 different images');
    const prepared = join(work, 'smoke', 'prepared');
    const stage1 = (out: string, ...extra: string[]) =>
      run(
        PY,
        [
          ...trainPy({
            data: prepared,
            out: join(work, out),
            'aux-weight': 1,
            'pos-init-scale': 4,
            'vit-only': true,
            'vit-steps': 2,
            'vit-batch': 4,
            'log-every': 1,
            threads: 1,
          }),
          ...extra,
        ],
        { cwd: ROOT },
      );
    const plain = await stage1('v0');
    const augmented = await stage1('v1', '--vit-augment', '--val', prepared);
    expect(augmented.stderr).toContain(`stage 1 saved: ${join(work, 'v1', 'vision_stage1.pt')}`);
    // with --val, the auxiliary head is also scored on held-out images (what stage 1 learnt, not what it memorised)
    expect(augmented.stderr).toMatch(/stage 1 held-out: colour \d\.\d{3} shape \d\.\d{3} box err \d+\.\d\d bins/);
    await expect(readFile(join(work, 'v1', 'eva_vit.pth'))).rejects.toThrow(); // nothing of stage 2
    const records = (out: string) => trainLog(join(work, out));
    const losses = async (out: string) => (await records(out)).filter((r) => 'vit_step' in r).map((r) => r.aux_loss);
    expect((await records('v1')).at(-1)).toMatchObject({
      vit_val_step: 2,
      val_colour_acc: expect.any(Number),
      val_shape_acc: expect.any(Number),
    });
    const [p, a] = [await losses('v0'), await losses('v1')];
    expect(p).toHaveLength(2);
    expect(a).toHaveLength(2);
    expect(a).not.toEqual(p); // the same images in the same order, moved
    expect(plain.stderr).not.toContain('Traceback');
  }, 300_000);

  it('publish.mjs finds the run a GPU sweep run started from (runs/NAME.state.pt beside runs/NAME/, paths of another machine)', async () => {
    const { describeRun } = (await import(join(ROOT, 'models/demo/train/publish.mjs'))) as {
      describeRun: (
        run: string,
      ) => Promise<{ train_args: Record<string, unknown>; started_from?: { train_args: Record<string, unknown> } }>;
    };
    const sweep = join(work, 'sweep');
    const log = await readFile(join(work, 'r1', 'train_log.jsonl'), 'utf8');
    const args = JSON.parse(await readFile(join(work, 'r1', 'train_args.json'), 'utf8')) as Record<string, unknown>;
    for (const [name, extra] of [
      ['b112', { batch_images: 256 }],
      ['c112', { lr: 1.5e-3, init_from: '/tmp/demo-train/runs/b112.state.pt' }],
    ] as const) {
      await mkdir(join(sweep, name), { recursive: true });
      await writeFile(join(sweep, name, 'train_args.json'), JSON.stringify({ ...args, ...extra }));
      await writeFile(join(sweep, name, 'train_log.jsonl'), log);
    }
    const described = await describeRun(join(sweep, 'c112'));
    expect(described.train_args).toMatchObject({ lr: 1.5e-3 });
    expect(described.started_from?.train_args).toMatchObject({ batch_images: 256 });
    // a state file whose run is nowhere to be found is an error, not a record without its origin
    await writeFile(join(sweep, 'c112', 'train_args.json'), JSON.stringify({ ...args, init_from: '/tmp/demo-train/runs/x9.state.pt' }));
    await expect(describeRun(join(sweep, 'c112'))).rejects.toThrow(
      /started from \/tmp\/demo-train\/runs\/x9\.state\.pt: no train_args\.json/,
    );
  });
});
