// The `minigpt` binary end to end: convert -> verify -> ask on the tiny golden checkpoints.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildTorchZip, osSystemPickle } from '../convert/readers-helpers.js';
import { minigpt, ROOT } from '../helpers/cli.js';

const GOLDEN = join(ROOT, 'test', 'fixtures', 'minigptv2-tiny');

async function goldenIds(file: string): Promise<number[]> {
  const b = await readFile(join(GOLDEN, file));
  return Array.from(new BigInt64Array(b.buffer, b.byteOffset, b.byteLength / 8), Number);
}

let work: string;
let pkg: string;
const convertArgs = (out: string, vit = join(GOLDEN, 'eva_vit.pth')) => [
  'convert',
  '--arch',
  'minigpt-v2',
  '--vit',
  vit,
  '--llm',
  join(GOLDEN, 'llama'),
  '--ckpt',
  join(GOLDEN, 'minigptv2_ckpt.pth'),
  '--vit-heads',
  '4',
  '--image-size',
  '112',
  '--lora-r',
  '8',
  '--out',
  out,
];

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-cli-'));
  pkg = join(work, 'pkg');
  const r = await minigpt(convertArgs(pkg));
  expect(r.code, r.stderr).toBe(0);
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('minigpt convert --name', () => {
  it('names the package in model.json; without it, the package is named after its folder', async () => {
    expect(JSON.parse(await readFile(join(pkg, 'model.json'), 'utf8')).name).toBe('pkg');
    const named = join(work, 'tmp-folder-xyz');
    const r = await minigpt([...convertArgs(named), '--name', 'minigpt-v2-tiny']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(await readFile(join(named, 'model.json'), 'utf8')).name).toBe('minigpt-v2-tiny');
  });
});

describe('minigpt verify', () => {
  it('prints per-stage errors and the greedy ids for every prompt, exit 0 within tolerance', async () => {
    const r = await minigpt(['verify', '--model', pkg, '--golden', GOLDEN]);
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(Object.keys(report.prompts).sort()).toEqual(['chat', 'prompt']);
    expect(report.prompts.prompt.greedy_ids).toEqual(await goldenIds('greedy_ids.bin'));
    expect(report.prompts.chat.greedy_ids).toEqual(await goldenIds('chat_greedy_ids.bin'));
    for (const p of Object.values(report.prompts) as { stages: Record<string, { max_abs_err: number }> }[]) {
      for (const stage of ['image_embeds', 'inputs_embeds', 'logits', 'greedy_step_logits']) {
        expect(p.stages[stage].max_abs_err, stage).toBeLessThan(1e-4);
      }
    }
  });

  it('exits 1 and marks the stage when a reference tensor disagrees beyond tolerance', async () => {
    const golden = join(work, 'golden-perturbed');
    await cp(GOLDEN, golden, { recursive: true });
    const logits = await readFile(join(golden, 'logits.bin'));
    const f = new Float32Array(logits.buffer, logits.byteOffset, logits.byteLength / 4);
    f[1234] += 1e-3;
    await writeFile(join(golden, 'logits.bin'), logits);
    const r = await minigpt(['verify', '--model', pkg, '--golden', golden]);
    expect(r.code).toBe(1);
    const report = JSON.parse(r.stdout);
    expect(report.ok).toBe(false);
    expect(report.prompts.prompt.stages.logits.ok).toBe(false);
    expect(report.prompts.prompt.stages.logits.max_abs_err).toBeGreaterThan(9e-4);
    expect(report.prompts.chat.ok).toBe(true);
  });
});

describe('minigpt ask', () => {
  it('streams the answer; greedy over the demo chat template reproduces the upstream greedy tokens', async () => {
    const args = [
      'ask',
      '--model',
      pkg,
      '--image',
      join(GOLDEN, 'input.png'),
      '--temperature',
      '0',
      '--repetition-penalty',
      '1',
      '--max-new-tokens',
      '8',
    ];
    const json = await minigpt([...args, '--json', '[grounding] describe this image']);
    expect(json.code, json.stderr).toBe(0);
    const result = JSON.parse(json.stdout);
    // The chat template gives exactly upstream's CONV_VISION_minigptv2 prompt of the golden `chat_` case.
    expect(result.prompt).toBe('<s>[INST] <Img><ImageHere></Img> [grounding] describe this image [/INST]');
    expect(result.token_ids).toEqual(await goldenIds('chat_greedy_ids.bin'));
    expect(result.finish_reason).toBe('length');
    expect(result.image).toEqual({ width: 120, height: 90 });
    for (const k of ['preprocess_ms', 'vision_ms', 'prefill_ms', 'first_token_ms', 'decode_ms', 'total_ms']) {
      expect(result.timings[k], k).toBeGreaterThan(0);
    }
    expect(result.timings.prompt_tokens).toBe(26);
    expect(result.timings.new_tokens).toBe(8);
    // special tokens (the BOS the random model emits) are not shown, as upstream decodes
    expect(result.text).not.toContain('<s>');

    const streamed = await minigpt([...args, '[grounding] describe this image']);
    expect(streamed.code, streamed.stderr).toBe(0);
    expect(streamed.stdout).toBe(`${result.text}\n`);
    expect(streamed.stderr).toMatch(/execution provider: cpu/);
  });

  it("--logprobs, --logit-bias and the penalties, held to log-softmax of upstream's greedy step logits", async () => {
    const args = ['ask', '--model', pkg, '--image', join(GOLDEN, 'input.png'), '--temperature', '0', '--repetition-penalty', '1'];
    const ask = async (...extra: string[]) => {
      const r = await minigpt([...args, '--max-new-tokens', '8', ...extra, '--json', '[grounding] describe this image']);
      expect(r.code, r.stderr).toBe(0);
      return JSON.parse(r.stdout) as {
        token_ids: number[];
        logprobs?: { id: number; token: string; logprob: number; top: { id: number; logprob: number }[] }[];
      };
    };
    const golden = await goldenIds('chat_greedy_ids.bin');
    const raw = await readFile(join(GOLDEN, 'chat_greedy_step_logits.bin'));
    const V = 512;
    const stepLogits = (t: number) => Array.from(new Float32Array(raw.buffer, raw.byteOffset + t * V * 4, V));
    const logSoftmax = (l: number[]) => {
      const max = Math.max(...l);
      const lse = max + Math.log(l.reduce((s, x) => s + Math.exp(x - max), 0));
      return l.map((x) => x - lse);
    };

    const r = await ask('--logprobs', '3');
    expect(r.token_ids).toEqual(golden);
    expect(r.logprobs!.map((e) => e.id)).toEqual(golden);
    r.logprobs!.forEach((e, t) => {
      const ref = logSoftmax(stepLogits(t));
      expect(e.logprob).toBeCloseTo(ref[golden[t]], 4);
      const third = [...ref].sort((a, b) => b - a)[2];
      expect(e.top).toHaveLength(3);
      expect(e.top[0].id).toBe(golden[t]);
      for (const a of e.top) {
        expect(a.logprob).toBeCloseTo(ref[a.id], 4);
        expect(a.logprob).toBeGreaterThan(third - 1e-4);
      }
    });

    // the first token banned: the likeliest other one, then on from there
    const banned = await ask('--logit-bias', `${golden[0]}=-100`);
    const first = stepLogits(0);
    expect(banned.token_ids[0]).not.toBe(golden[0]);
    expect(first[banned.token_ids[0]]).toBeGreaterThan(Math.max(...first.filter((_, j) => j !== golden[0])) - 1e-4);

    // frequency penalty 2: upstream's path while the penalised argmax agrees with it, then the penalised choice
    const penalised = await ask('--frequency-penalty', '2');
    const counts = new Map<number, number>();
    let t = 0;
    for (; t < golden.length; t++) {
      const scores = stepLogits(t).map((x, j) => x - 2 * (counts.get(j) ?? 0));
      const choice = scores.indexOf(Math.max(...scores));
      if (choice !== golden[t]) {
        expect(penalised.token_ids.slice(0, t)).toEqual(golden.slice(0, t));
        expect(penalised.token_ids[t]).toBe(choice);
        break;
      }
      counts.set(choice, (counts.get(choice) ?? 0) + 1);
    }
    expect(t).toBeLessThan(golden.length); // (the greedy answer repeats a token: the penalty changes it)

    const noJson = await minigpt([...args, '--logprobs', '2', 'hi']);
    expect([noJson.code, noJson.stderr]).toEqual([1, expect.stringMatching(/--logprobs is reported in the --json output: add --json/)]);
    const outside = await minigpt([...args, '--logit-bias', '5=1,512=-100', 'hi']);
    expect([outside.code, outside.stderr]).toEqual([
      1,
      expect.stringMatching(/--logit-bias: token 512 is not in the model's vocabulary \(ids 0 to 511\)/),
    ]);
    const badBias = await minigpt([...args, '--logit-bias', '5=-200', 'hi']);
    expect(badBias.code).not.toBe(0);
    expect(badBias.stderr).toMatch(/--logit-bias takes token id=bias pairs/);
  });

  it('--profile: writes onnxruntime traces into a new folder and reports the image, the prefill and the steps', async () => {
    const dir = join(work, 'profile', 'ask');
    const args = ['ask', '--model', pkg, '--image', join(GOLDEN, 'input.png'), '--temperature', '0', '--max-new-tokens', '5'];
    const run = await minigpt([...args, '--profile', dir, '--json', '[grounding] describe this image']);
    expect(run.code, run.stderr).toBe(0);
    const result = JSON.parse(run.stdout);
    const rows = (graph: string, n: number | null) =>
      result.profile.classes.find((c: { graph: string; rows: number | null }) => c.graph === graph && c.rows === n);
    expect(rows('vision', 65)?.runs).toBe(1);
    expect(rows('decoder', result.timings.prompt_tokens)?.runs).toBe(1);
    expect(rows('decoder', 1)?.runs).toBe(result.timings.new_tokens - 1);
    expect(result.profile.files).toHaveLength(3);
    expect(run.stderr).toMatch(/where the time went \(onnxruntime's profiles in .*ask\):\n/);
    expect(run.stderr).toMatch(/^decoder, 1 row: 4 runs; a run: wall /m);
    // a second run into the same folder reports its own runs only
    const again = await minigpt([...args, '--profile', dir, '--json', '[grounding] describe this image']);
    expect(JSON.parse(again.stdout).profile.files).toHaveLength(3);
  });

  it('says clearly what is wrong with a missing model, a non-image or a bad flag', async () => {
    const noModel = await minigpt(['ask', '--model', join(work, 'nope'), '--image', join(GOLDEN, 'input.png'), 'hi']);
    expect(noModel.code).toBe(1);
    expect(noModel.stderr).toMatch(/no model package at .*nope/);

    const notImage = await minigpt(['ask', '--model', pkg, '--image', join(GOLDEN, 'manifest.json'), 'hi']);
    expect(notImage.code).toBe(1);
    expect(notImage.stderr).toMatch(/not an image/i);

    const badFlag = await minigpt(['ask', '--model', pkg, '--image', join(GOLDEN, 'input.png'), '--temperature', 'hot', 'hi']);
    expect(badFlag.code).not.toBe(0);
    expect(badFlag.stderr).toMatch(/--temperature must be a number/);
  });
});

describe('minigpt convert', () => {
  it('refuses a .pth whose pickle calls os.system, and writes no package', async () => {
    const pkl = osSystemPickle();
    const evil = join(work, 'evil.pth');
    await writeFile(evil, buildTorchZip('archive', pkl, {}));
    const out = join(work, 'evil-pkg');
    const r = await minigpt(convertArgs(out, evil));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/refusing to load .*evil\.pth: pickle references global 'os\.system'/);
    await expect(readFile(join(out, 'model.json'))).rejects.toThrow();
  });

  it('rejects a --lora-r that disagrees with the checkpoint', async () => {
    const args = convertArgs(join(work, 'bad-r'));
    args[args.indexOf('--lora-r') + 1] = '64';
    const r = await minigpt(args);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--lora-r 64 disagrees with the checkpoint, whose LoRA tensors have rank 8/);
  });
});
