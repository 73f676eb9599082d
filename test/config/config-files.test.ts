// The committed configs: each parses, and each published variant's config names the upstream downloads and
// the settings that `minigpt convert --config` uses (README, "Use the real MiniGPT weights"; issue 6).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, convertOptionsFromConfig, loadConfig } from '../../src/config.js';

const ROOT = join(import.meta.dirname, '..', '..');
const CONFIGS = join(ROOT, 'configs');

let empty: string;
let downloads: string;

/** The Vicuna v0 variants (13B and 7B): the same conversion settings and generation, other downloads. */
const VICUNA0 = {
  options: { arch: 'minigpt-4', imageSize: 224, vitHeads: 16, qformerHeads: 12, prompt: 'vicuna0' },
  model: { max_new_tokens: 300, temperature: 1, prompt_template: '###Human: {} ###Assistant: ', end_sym: '###' },
} as const;

/** What each published variant's config must name, as upstream's README / code / eval configs do. */
const VARIANTS = {
  'minigptv2_eval.yaml': {
    files: ['minigptv2_checkpoint.pth', 'eva_vit_g.pth'],
    folders: ['Llama-2-7b-chat-hf'],
    options: { arch: 'minigpt-v2', imageSize: 448, vitHeads: 16, loraR: 64, loraAlpha: 16 },
    pkg: 'models/minigptv2-int4',
    model: { max_new_tokens: 500, temperature: 0.6, prompt_template: '[INST] {} [/INST]', end_sym: '</s>' },
  },
  'minigpt4_eval.yaml': {
    files: ['pretrained_minigpt4.pth', 'eva_vit_g.pth', 'blip2_pretrained_flant5xxl.pth'],
    folders: ['vicuna'],
    pkg: 'models/minigpt4-vicuna0-13b-int4',
    ...VICUNA0,
  },
  'minigpt4_eval_7b.yaml': {
    files: ['prerained_minigpt4_7b.pth', 'eva_vit_g.pth', 'blip2_pretrained_flant5xxl.pth'],
    folders: ['vicuna-7b'],
    pkg: 'models/minigpt4-vicuna0-7b-int4',
    ...VICUNA0,
  },
  'minigpt4_llama2_eval.yaml': {
    files: ['pretrained_minigpt4_llama2_7b.pth', 'eva_vit_g.pth'],
    folders: ['Llama-2-7b-chat-hf'],
    options: { arch: 'minigpt-4', imageSize: 224, vitHeads: 16, prompt: 'llama2' },
    pkg: 'models/minigpt4-llama2-7b-int4',
    model: { max_new_tokens: 300, temperature: 1, prompt_template: '[INST] {} [/INST] ' },
  },
} as const;

beforeAll(async () => {
  empty = await mkdtemp(join(tmpdir(), 'minigpt-config-empty-'));
  // stand-ins with the downloads' names: convertOptionsFromConfig only checks that they exist
  downloads = await mkdtemp(join(tmpdir(), 'minigpt-config-downloads-'));
  for (const v of Object.values(VARIANTS)) {
    for (const f of v.files) await writeFile(join(downloads, f), '');
    for (const d of v.folders) await mkdir(join(downloads, d), { recursive: true });
  }
});
afterAll(async () => {
  await rm(empty, { recursive: true, force: true });
  await rm(downloads, { recursive: true, force: true });
});

describe('configs/', () => {
  it('every file parses with loadConfig', async () => {
    const files = (await readdir(CONFIGS)).filter((f) => f.endsWith('.yaml') || f.endsWith('.yml'));
    expect(files).toEqual(expect.arrayContaining(['demo.yaml', ...Object.keys(VARIANTS)]));
    for (const f of files) {
      const cfg = await loadConfig(join(CONFIGS, f), {});
      expect(cfg.packageDir, f).toMatch(new RegExp(`^${ROOT.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/models/`));
    }
  });

  for (const [file, v] of Object.entries(VARIANTS)) {
    it(`${file}: upstream's generation settings, low_resource -> int4 package (block 128), and the downloads by name`, async () => {
      const cfg = await loadConfig(join(CONFIGS, file), {});
      expect(cfg.model).toMatchObject({ ...v.model, low_resource: true, num_beams: 1, top_p: 0.9, repetition_penalty: 1.05 });
      expect(cfg.packageDir).toBe(join(ROOT, v.pkg));

      // pointed at a folder without the downloads, it names every one of them
      const err = await convertOptionsFromConfig(cfg, { weights: empty }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConfigError);
      const msg = (err as Error).message;
      for (const name of [...v.files, ...v.folders]) expect(msg).toContain(join(empty, name));
      if (!('qformerHeads' in v.options)) expect(msg).not.toContain('blip2');

      // pointed at them, it is the whole conversion
      const opts = await convertOptionsFromConfig(cfg, { weights: downloads });
      expect(opts).toMatchObject({
        ...v.options,
        dtype: 'int4',
        blockSize: 128,
        out: join(ROOT, v.pkg),
        ckpt: join(downloads, v.files[0]),
        llm: join(downloads, v.folders[0]),
      });
      expect(opts.vit).toBe(join(downloads, 'eva_vit_g.pth'));
      expect(opts.qformer).toBe('qformerHeads' in v.options ? join(downloads, 'blip2_pretrained_flant5xxl.pth') : undefined);
      if (v.options.arch === 'minigpt-v2') expect(opts.prompt).toBeUndefined();

      // low_resource: false builds `package` with the config's dtype (fp16, upstream's 16-bit mode)
      const full = await convertOptionsFromConfig(
        { ...cfg, model: { ...cfg.model, low_resource: false }, packageDir: join(ROOT, cfg.model.package) },
        { weights: downloads },
      );
      expect(full.dtype).toBe('fp16');
    });
  }
});
