// `minigpt convert --config F`: a config's model section names the downloads, the package and the settings,
// flags override it; the package it builds from the tiny golden checkpoints passes `minigpt verify`; bad
// configs fail with a clear message and exit code 1. Real binary, real files, no mocks.
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tempDirPerFile } from '../helpers/temp-dir.js';

const ROOT = join(import.meta.dirname, '..', '..');
const BIN = join(ROOT, 'bin', 'minigpt.js');
const V2 = join(ROOT, 'test', 'fixtures', 'minigptv2-tiny');
const V4 = join(ROOT, 'test', 'fixtures', 'minigpt4-tiny');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function minigpt(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: ROOT });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

let work: string;

/** A config in <work>/<name>/configs/, so its relative package paths resolve under <work>/<name>. */
async function config(name: string, model: string): Promise<{ file: string; root: string }> {
  const root = join(work, name);
  await mkdir(join(root, 'configs'), { recursive: true });
  const file = join(root, 'configs', `${name}.yaml`);
  await writeFile(file, `model:\n${model.replace(/^\n/, '').replace(/^/gm, '  ')}\nruntime:\n  execution_provider: cpu\n`);
  return { file, root };
}

/** A MiniGPT-v2 model section with low_resource on, for the tiny golden files, plus `extra` lines. */
function lowResource(extra: string): string {
  return [
    'arch: minigpt_v2',
    'package: models/full',
    'low_resource: true',
    extra,
    `weights_dir: ${V2}`,
    'vit_model: eva_vit.pth',
    'llama_model: llama',
    'ckpt: minigptv2_ckpt.pth',
    'image_size: 112',
    'vit_heads: 4',
  ].join('\n');
}

async function modelJson(dir: string): Promise<{
  dtype: string;
  architecture: string;
  weights?: { quantization?: { bits: number; accuracyLevel?: number } };
  provenance: { options: Record<string, unknown> };
}> {
  return JSON.parse(await readFile(join(dir, 'model.json'), 'utf8'));
}

async function verifyOk(pkg: string, golden: string): Promise<Record<string, unknown>> {
  const r = await minigpt(['verify', '--model', pkg, '--golden', golden]);
  expect(r.code, r.stderr).toBe(0);
  const report = JSON.parse(r.stdout) as { ok: boolean; prompts: Record<string, unknown> };
  expect(report.ok).toBe(true);
  return report.prompts;
}

tempDirPerFile('minigpt-config-convert-', (dir) => (work = dir));

describe('minigpt convert --config on the golden tiny checkpoints', () => {
  it('MiniGPT-v2: absolute input paths, the package path from the config, then verify accepts it', async () => {
    const { file, root } = await config(
      'v2',
      `
arch: minigpt_v2
model_type: pretrain
package: models/v2-tiny
vit_model: ${join(V2, 'eva_vit.pth')}
llama_model: ${join(V2, 'llama')}
ckpt: ${join(V2, 'minigptv2_ckpt.pth')}
image_size: 112
vit_heads: 4
lora_r: 8
lora_alpha: 16
prompt_template: '[INST] {} [/INST]'
end_sym: '</s>'`,
    );
    const r = await minigpt(['convert', '--config', file]);
    expect(r.code, r.stderr).toBe(0);
    const pkg = join(root, 'models', 'v2-tiny');
    const meta = await modelJson(pkg);
    expect(meta).toMatchObject({ architecture: 'minigpt-v2', dtype: 'fp32' });
    expect(meta.provenance.options).toMatchObject({ imageSize: 112, vitHeads: 4, loraR: 8, loraAlpha: 16 });
    expect(Object.keys(await verifyOk(pkg, V2)).sort()).toEqual(['chat', 'prompt']);
  });

  it('MiniGPT-4 (Vicuna v0): the downloads by name in --weights DIR, as the published configs name them', async () => {
    const { file, root } = await config(
      'v4',
      `
arch: minigpt4
model_type: pretrain_vicuna0
package: models/v4-tiny
weights_dir: does-not-exist
vit_model: eva_vit.pth
q_former_model: blip2_qformer.pth
llama_model: llama
ckpt: minigpt4_ckpt.pth
image_size: 56
vit_heads: 4
qformer_heads: 4`,
    );
    const r = await minigpt(['convert', '--config', file, '--weights', V4]);
    expect(r.code, r.stderr).toBe(0);
    const pkg = join(root, 'models', 'v4-tiny');
    const meta = await modelJson(pkg);
    expect(meta.provenance.options).toMatchObject({
      arch: 'minigpt-4',
      variant: 'qformer',
      prompt: 'vicuna0',
      qformerHeads: 4,
      vitHeads: 4,
      imageSize: 56,
    });
    expect(Object.keys(await verifyOk(pkg, V4)).sort()).toEqual(['chat_vicuna0', 'llama2', 'vicuna0']);
  });

  it('MiniGPT-4 (Llama-2, has_qformer: false): model_type pretrain_llama2 selects the Llama-2 prompt; verify accepts it', async () => {
    const { file, root } = await config(
      'llama2',
      `
arch: minigpt4
model_type: pretrain_llama2
has_qformer: false
package: models/llama2-tiny
weights_dir: ${V4}
vit_model: eva_vit.pth
llama_model: llama
ckpt: minigpt4_llama2_noqformer_ckpt.pth
image_size: 56
vit_heads: 4`,
    );
    const r = await minigpt(['convert', '--config', file]);
    expect(r.code, r.stderr).toBe(0);
    const pkg = join(root, 'models', 'llama2-tiny');
    expect((await modelJson(pkg)).provenance.options).toMatchObject({ variant: 'noqformer', prompt: 'llama2' });
    expect(Object.keys(await verifyOk(pkg, V4))).toEqual(['noqformer_llama2']);
  });

  it('low_resource: true builds low_resource_package with int8 weights; flags win over the config', async () => {
    const { file, root } = await config('lowres', lowResource('low_resource_package: models/int8\ndtype: fp16\nblock_size: 16'));
    const r = await minigpt(['convert', '--config', file]);
    expect(r.code, r.stderr).toBe(0);
    const meta = await modelJson(join(root, 'models', 'int8'));
    expect(meta.dtype).toBe('int8');
    expect(meta.provenance.options).toMatchObject({ blockSize: 16 });

    // --dtype, --out and --ckpt (relative to the working directory) override the config
    const out = join(work, 'override');
    const o = await minigpt([
      'convert',
      '--config',
      file,
      '--dtype',
      'fp16',
      '--out',
      out,
      '--ckpt',
      'test/fixtures/minigptv2-tiny/minigptv2_ckpt.pth',
    ]);
    expect(o.code, o.stderr).toBe(0);
    expect((await modelJson(out)).dtype).toBe('fp16');
  });

  it("low_resource_dtype: int4 builds an int4 low_resource_package with the config's accuracy_level; --accuracy-level wins", async () => {
    const { file, root } = await config(
      'lowres4',
      lowResource('low_resource_package: models/int4\nlow_resource_dtype: int4\naccuracy_level: 1'),
    );
    const r = await minigpt(['convert', '--config', file]);
    expect(r.code, r.stderr).toBe(0);
    const meta = await modelJson(join(root, 'models', 'int4'));
    expect(meta.dtype).toBe('int4');
    expect(meta.weights?.quantization).toMatchObject({ bits: 4, accuracyLevel: 1 });
    // --accuracy-level wins over the config
    const out = join(work, 'override-al');
    const o = await minigpt(['convert', '--config', file, '--accuracy-level', '4', '--out', out]);
    expect(o.code, o.stderr).toBe(0);
    expect((await modelJson(out)).weights?.quantization?.accuracyLevel).toBe(4);
    const bad = await minigpt(['convert', '--config', file, '--accuracy-level', '7', '--out', join(work, 'bad-al')]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/--accuracy-level must be a number in \[0, 4\]/);
  });
});

describe('minigpt convert --config with a bad config', () => {
  it('an unknown arch: exit 1, naming the field and the choices', async () => {
    const { file } = await config('badarch', 'arch: minigpt5\npackage: models/x\n');
    const r = await minigpt(['convert', '--config', file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/config .*badarch\.yaml is invalid/);
    expect(r.stderr).toMatch(/model\.arch: .*"minigpt_v2".*"minigpt4"/);
  });

  it('a missing download: exit 1, naming the field, the path looked for and --weights', async () => {
    const { file } = await config(
      'missing',
      `arch: minigpt_v2\npackage: models/x\nweights_dir: ${V2}\nvit_model: eva_vit.pth\nllama_model: llama\nckpt: minigptv2_checkpoint.pth\n`,
    );
    const r = await minigpt(['convert', '--config', file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`model.ckpt: ${join(V2, 'minigptv2_checkpoint.pth')} not found`);
    expect(r.stderr).toMatch(/--weights DIR/);
    expect(r.stderr).not.toMatch(/vit_model|llama_model/);
  });

  it('a file where a folder belongs, a missing field, no arch, a MiniGPT-4 field on MiniGPT-v2', async () => {
    const notDir = await config(
      'notdir',
      `arch: minigpt_v2\npackage: models/x\nweights_dir: ${V2}\nvit_model: eva_vit.pth\nllama_model: eva_vit.pth\nckpt: minigptv2_ckpt.pth\n`,
    );
    let r = await minigpt(['convert', '--config', notDir.file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/model\.llama_model: .*eva_vit\.pth is not a folder/);

    const noQformer = await config(
      'noqf',
      `arch: minigpt4\npackage: models/x\nweights_dir: ${V4}\nvit_model: eva_vit.pth\nllama_model: llama\nckpt: minigpt4_ckpt.pth\n`,
    );
    r = await minigpt(['convert', '--config', noQformer.file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/convert needs model\.q_former_model \(or --qformer\).*blip2_pretrained_flant5xxl\.pth.*has_qformer: false/);

    const noArch = await config('noarch', 'package: models/x\n');
    r = await minigpt(['convert', '--config', noArch.file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/model\.arch is not set/);

    const mixed = await config('mixed', 'arch: minigpt_v2\nmodel_type: pretrain_llama2\npackage: models/x\nq_former_model: b.pth\n');
    r = await minigpt(['convert', '--config', mixed.file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/model\.model_type: pretrain_llama2 is a MiniGPT-4 model_type/);
    expect(r.stderr).toMatch(/model\.q_former_model: is for arch minigpt4/);
  });

  it('without --config, the required flags are named', async () => {
    const r = await minigpt(['convert', '--arch', 'minigpt-v2', '--vit', join(V2, 'eva_vit.pth')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/convert needs --llm, --ckpt, --out, or --config FILE/);
    const w = await minigpt(['convert', '--weights', V2]);
    expect(w.code).toBe(1);
    expect(w.stderr).toMatch(/--weights is for --config/);
  });
});
