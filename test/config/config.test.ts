import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../src/config.js';

const ROOT = join(import.meta.dirname, '..', '..');
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'minigpt-config-'));
  await mkdir(join(dir, 'configs'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function write(name: string, text: string): Promise<string> {
  const p = join(dir, 'configs', name);
  await writeFile(p, text);
  return p;
}

describe('loadConfig', () => {
  it('reads the committed configs with upstream field names and resolves the package from the repo root', async () => {
    const demo = await loadConfig(join(ROOT, 'configs/demo.yaml'), {});
    expect(demo.packageDir).toBe(join(ROOT, 'models/demo'));
    expect(demo.model).toMatchObject({ max_new_tokens: 300, num_beams: 1, temperature: 0.6, repetition_penalty: 1.05 });
    expect(demo.runtime.execution_provider).toBe('auto');
    expect(demo.runtime.warm_up).toBe('auto');
    const v2 = await loadConfig(join(ROOT, 'configs/minigptv2_eval.yaml'), {});
    expect(v2.model).toMatchObject({ prompt_template: '[INST] {} [/INST]', end_sym: '</s>', max_new_tokens: 500 });
  });

  it('lets the environment choose the execution provider and the store', async () => {
    const p = await write('a.yaml', 'model:\n  package: models/x\nruntime:\n  execution_provider: cpu\n');
    const cfg = await loadConfig(p, { EXECUTION_PROVIDER: 'WebGPU', STORE_URL: 'sqlite://threads.db' });
    expect(cfg.runtime.execution_provider).toBe('webgpu');
    expect(cfg.runtime.store_url).toBe('sqlite://threads.db');
    await expect(loadConfig(p, { EXECUTION_PROVIDER: 'tpu' })).rejects.toThrow(
      /EXECUTION_PROVIDER=tpu: expected one of auto, cuda, webgpu, cpu/,
    );
  });

  it('selects the quantised package with low_resource', async () => {
    const p = await write('lr.yaml', 'model:\n  package: models/full\n  low_resource: true\n  low_resource_package: models/int8\n');
    expect((await loadConfig(p, {})).packageDir).toBe(join(dir, 'models/int8'));
  });

  it('names the file and the field for bad configs', async () => {
    await expect(loadConfig(join(dir, 'configs/missing.yaml'), {})).rejects.toThrow(/cannot read config .*missing\.yaml: ENOENT/);
    await expect(loadConfig(await write('bad.yaml', 'model: [unclosed'), {})).rejects.toThrow(/is not valid YAML/);
    await expect(loadConfig(await write('typo.yaml', 'model:\n  package: m\n  temprature: 0.2\n'), {})).rejects.toThrow(
      /model: Unrecognized key.*temprature/,
    );
    await expect(loadConfig(await write('range.yaml', 'model:\n  package: m\n  top_p: 2\n'), {})).rejects.toThrow(/model\.top_p/);
    await expect(loadConfig(await write('warm.yaml', 'model:\n  package: m\nruntime:\n  warm_up: sometimes\n'), {})).rejects.toThrow(
      /runtime\.warm_up/,
    );
    expect((await loadConfig(await write('warm2.yaml', 'model:\n  package: m\nruntime:\n  warm_up: true\n'), {})).runtime.warm_up).toBe(
      true,
    );
    expect((await loadConfig(await write('warm3.yaml', 'model:\n  package: m\n'), {})).runtime.warm_up).toBe('auto');
    // retention: 30 days unless set; CONVERSATION_TTL_DAYS wins; nonsense refused
    expect((await loadConfig(await write('ttl.yaml', 'model:\n  package: m\n'), {})).runtime.conversation_ttl_days).toBe(30);
    expect(
      (await loadConfig(await write('ttl2.yaml', 'model:\n  package: m\nruntime:\n  conversation_ttl_days: 0\n'), {})).runtime
        .conversation_ttl_days,
    ).toBe(0);
    expect(
      (await loadConfig(await write('ttl3.yaml', 'model:\n  package: m\n'), { CONVERSATION_TTL_DAYS: '7.5' })).runtime
        .conversation_ttl_days,
    ).toBe(7.5);
    await expect(loadConfig(await write('ttl4.yaml', 'model:\n  package: m\nruntime:\n  conversation_ttl_days: -1\n'), {})).rejects.toThrow(
      /runtime\.conversation_ttl_days/,
    );
    await expect(loadConfig(await write('ttl5.yaml', 'model:\n  package: m\n'), { CONVERSATION_TTL_DAYS: 'forever' })).rejects.toThrow(
      /^CONVERSATION_TTL_DAYS=forever: expected a number of days/,
    );
    await expect(loadConfig(await write('tpl.yaml', 'model:\n  package: m\n  prompt_template: "[INST] [/INST]"\n'), {})).rejects.toThrow(
      /prompt_template/,
    );
  });
});
