// The conversion-at-scale path on a scaled-down but structurally identical MiniGPT-v2 (issue 6, "Scale"): random
// checkpoints written by the streaming writers in the published formats (fp16 EVA ViT .pth, Llama folder with 3
// safetensors shards + index, {'model': ...} MiniGPT-v2 checkpoint), read back bit for bit by the readers,
// converted, loaded and run. scripts/bench-convert.mjs does the same at the full Llama-2-7B / ViT-g shape.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { convert } from '../../src/convert/convert.js';
import { randomShape, writeRandomMiniGPTv2, type RandomCheckpointResult } from '../../src/convert/random-checkpoints.js';
import { vitTensors } from '../../src/convert/random-checkpoints/eva-vit.js';
import { llamaTensors } from '../../src/convert/random-checkpoints/llama.js';
import { ckptTensors } from '../../src/convert/random-checkpoints/minigptv2.js';
import { randomTensorBytes, type RandomTensor } from '../../src/convert/random-checkpoints/tensors.js';
import { randomTokenizerJson } from '../../src/convert/random-checkpoints/tokenizer.js';
import { floatToHalf as floatToHalfBits } from '../../src/convert/quantize.js';
import {
  CheckpointError,
  halfToFloat,
  openCheckpoint,
  openHfWeights,
  openTorchCheckpoint,
  type TensorSource,
} from '../../src/convert/readers/index.js';
import { unpickle } from '../../src/convert/readers/pickle.js';
import { PyGlobal, PyDict } from '../../src/convert/readers/pickle-values.js';
import {
  Pickler,
  planShards,
  shardFileName,
  writeSafetensors,
  writeShardedSafetensors,
  writeTorchCheckpoint,
  type TensorChunk,
  type TensorSpec,
} from '../../src/convert/writers/index.js';
import { MiniGPT } from '../../src/inference/model.js';
import { loadTokenizer } from '../../src/inference/tokenizer.js';

const SEED = 7;
const shape = randomShape('tiny');
let work: string;
let ck: RandomCheckpointResult;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'minigpt-scale-'));
  ck = await writeRandomMiniGPTv2(join(work, 'ckpt'), shape, { seed: SEED, dtype: 'fp16', shards: 3 });
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

async function expectSameTensors(src: TensorSource, expected: RandomTensor[], prefix = '') {
  expect(src.list().map((t) => t.name)).toEqual(expected.map((t) => prefix + t.name));
  for (const t of expected) {
    expect(src.info(prefix + t.name)).toEqual({ name: prefix + t.name, dtype: t.dtype, shape: t.shape });
    const raw = await src.readRaw(prefix + t.name);
    expect(Buffer.from(raw).equals(Buffer.from(randomTensorBytes(SEED, t))), `bytes of ${t.name}`).toBe(true);
  }
}

describe('random MiniGPT-v2 checkpoints in the published formats', () => {
  it('lays the files out like the downloads', async () => {
    expect((await readdir(ck.dir)).sort()).toEqual(['eva_vit_g.pth', 'llama', 'minigptv2_checkpoint.pth']);
    expect((await readdir(ck.llm)).sort()).toEqual([
      'config.json',
      'generation_config.json',
      'model-00001-of-00003.safetensors',
      'model-00002-of-00003.safetensors',
      'model-00003-of-00003.safetensors',
      'model.safetensors.index.json',
      'tokenizer.json',
    ]);
    const index = JSON.parse(await readFile(join(ck.llm, 'model.safetensors.index.json'), 'utf8'));
    const names = ck.tensors.llm.map((t) => t.name);
    expect(Object.keys(index.weight_map)).toEqual([...names].sort());
    expect(index.metadata.total_size).toBe(ck.tensors.llm.reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1) * 2, 0));
    expect(index.weight_map['model.embed_tokens.weight']).toBe('model-00001-of-00003.safetensors');
    expect(index.weight_map['lm_head.weight']).toBe('model-00003-of-00003.safetensors');
    const cfg = JSON.parse(await readFile(join(ck.llm, 'config.json'), 'utf8'));
    expect(cfg).toMatchObject({
      hidden_size: 256,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      vocab_size: 512,
      rms_norm_eps: 1e-5,
      torch_dtype: 'float16',
    });
    for (const f of ck.files) expect((await stat(f.path)).size).toBe(f.bytes);
  });

  it('uses the real tensor names and shapes (Llama-2-7B, EVA ViT-g, MiniGPT-v2 LoRA)', () => {
    const full = randomShape('llama2-7b');
    const llm = new Map(llamaTensors(full.llm, 'fp16').map((t) => [t.name, t.shape]));
    expect(llm.size).toBe(2 + 32 * 10 + 1);
    expect(llm.get('model.embed_tokens.weight')).toEqual([32000, 4096]);
    expect(llm.get('model.layers.31.mlp.down_proj.weight')).toEqual([4096, 11008]);
    expect(llm.get('model.layers.0.self_attn.rotary_emb.inv_freq')).toEqual([64]);
    const vit = new Map(vitTensors(full.vit, 'fp16').map((t) => [t.name, t.shape]));
    expect(vit.get('pos_embed')).toEqual([1, 257, 1408]);
    expect(vit.get('patch_embed.proj.weight')).toEqual([1408, 3, 14, 14]);
    expect(vit.get('blocks.38.attn.qkv.weight')).toEqual([4224, 1408]);
    expect(vit.get('blocks.38.mlp.fc1.weight')).toEqual([6144, 1408]);
    expect(vit.has('blocks.39.norm1.weight')).toBe(false);
    const ckpt = new Map(ckptTensors(full, 'fp32').map((t) => [t.name, t.shape]));
    expect(ckpt.get('llama_proj.weight')).toEqual([4096, 5632]);
    expect(ckpt.get('llama_model.base_model.model.model.layers.31.self_attn.q_proj.lora_A.weight')).toEqual([64, 4096]);
    expect(ckpt.get('llama_model.base_model.model.model.layers.31.self_attn.v_proj.lora_B.weight')).toEqual([4096, 64]);
    // 32 layers x 2 modules x 64 x (4096 + 4096): upstream's "trainable params: 33554432" (+ llama_proj)
    let lora = 0;
    for (const [n, s] of ckpt) if (n.includes('lora_')) lora += s[0] * s[1];
    expect(lora).toBe(33554432);
  });

  it('reads back every tensor bit for bit through the readers', async () => {
    const vit = await openCheckpoint(ck.vit);
    const llm = await openHfWeights(ck.llm);
    const raw = await openTorchCheckpoint(ck.ckpt);
    try {
      expect(raw.topLevelKeys).toEqual(['model']);
      expect(raw.archiveName).toBe('minigptv2_checkpoint');
      await expectSameTensors(vit, ck.tensors.vit);
      await expectSameTensors(llm, ck.tensors.llm);
      await expectSameTensors(raw, ck.tensors.ckpt, 'model.');
      // values: fp16 weights around 0 with std 0.02, norm weights around 1
      const q = await llm.readFloat32('model.layers.1.self_attn.q_proj.weight');
      const mean = q.reduce((a, b) => a + b, 0) / q.length;
      const std = Math.sqrt(q.reduce((a, b) => a + (b - mean) ** 2, 0) / q.length);
      expect(Math.abs(mean)).toBeLessThan(1e-3);
      expect(std).toBeGreaterThan(0.019);
      expect(std).toBeLessThan(0.021);
      const norm = await llm.readFloat32('model.norm.weight');
      expect(Math.min(...norm)).toBeGreaterThan(0.85);
      expect(Math.max(...norm)).toBeLessThan(1.15);
      const inv = await llm.readFloat32('model.layers.0.self_attn.rotary_emb.inv_freq');
      expect(inv[0]).toBe(1);
      expect(inv[1]).toBe(halfToFloat(floatToHalfBits(1 / 10000 ** (2 / 64))));
    } finally {
      await Promise.all([vit.close(), llm.close(), raw.close()]);
    }
  });

  it('converts, loads with MiniGPT.load and answers one step on an image', async () => {
    const out = join(work, 'pkg');
    const meta = await convert({ ...ck.convertArgs, vit: ck.vit, llm: ck.llm, ckpt: ck.ckpt, out });
    expect(meta.vision).toMatchObject({ imageSize: 448, width: 128, layers: 2, heads: 16, imageTokens: 256 });
    expect(meta.llm).toMatchObject({ layers: 2, hidden: 256, heads: 4, vocabSize: 512, rmsNormEps: 1e-5 });
    expect(meta.provenance.sources.filter((s) => s.role === 'llm-weights').map((s) => s.path)).toEqual([
      'model.safetensors.index.json',
      shardFileName('model', 0, 3),
      shardFileName('model', 1, 3),
      shardFileName('model', 2, 3),
    ]);
    const m = await MiniGPT.load(out, { provider: 'cpu', threads: 2 });
    try {
      const png = await sharp({ create: { width: 96, height: 64, channels: 3, background: { r: 200, g: 40, b: 90 } } })
        .png()
        .toBuffer();
      const img = await m.encodeImage(png);
      expect(img.embeds.length).toBe(256 * 256);
      expect(img.embeds.every(Number.isFinite)).toBe(true);
      const std = Math.sqrt(img.embeds.reduce((a, b) => a + b * b, 0) / img.embeds.length);
      expect(std).toBeGreaterThan(1e-3);
      const prompt = `[INST] <Img><ImageHere></Img> [grounding] describe this image [/INST]`;
      const ctx = await m.context(prompt, [img.embeds]);
      const pre = await m.prefillAll(ctx);
      expect(pre.logits.length).toBe(512);
      expect(pre.all.every(Number.isFinite)).toBe(true);
      pre.state.dispose();
      const events = [];
      for await (const ev of m.answer(prompt, [img.embeds], { maxNewTokens: 2, temperature: 0 })) events.push(ev);
      const done = events.find((e) => e.type === 'done');
      expect(done).toBeDefined();
      if (done?.type === 'done') {
        expect(done.tokenIds.length).toBeLessThanOrEqual(2);
        expect(done.tokenIds.every((id) => id >= 0 && id < 512)).toBe(true);
      }
      expect(events.some((e) => e.type === 'timings')).toBe(true);
    } finally {
      await m.close();
    }
  });
});

// ------------------------------------------------------------------ writers

function f32(name: string, shape: number[], start = 0): { spec: TensorSpec; data: Float32Array } {
  const n = shape.reduce((a, b) => a * b, 1);
  return { spec: { name, dtype: 'F32', shape }, data: Float32Array.from({ length: n }, (_, i) => start + i * 0.5) };
}

describe('streaming writers', () => {
  const tensors = [f32('a.weight', [3, 4]), f32('b', [5], 100), f32('empty', [0, 3]), f32('c.bias', [2, 2, 2], -7)];
  const specs = tensors.map((t) => t.spec);
  /** each tensor in chunks of `n` elements */
  function* chunks(n = 3): Generator<TensorChunk> {
    for (const t of tensors) for (let i = 0; i < t.data.length; i += n) yield { name: t.spec.name, data: t.data.subarray(i, i + n) };
  }

  for (const zip64 of ['auto', 'always'] as const) {
    for (const wrap of [undefined, 'model']) {
      it(`torch.save zip (zip64 ${zip64}${wrap ? `, {'${wrap}': ...}` : ''}) opens with the reader`, async () => {
        const path = join(work, `w-${zip64}-${wrap ?? 'flat'}.pth`);
        const size = await writeTorchCheckpoint(path, specs, chunks(), {
          zip64,
          wrap,
          extras: wrap ? { epoch: 3, note: 'x', lr: 0.5, big: 2 ** 40 } : undefined,
        });
        const bytes = await readFile(path);
        expect(bytes.byteLength).toBe(size);
        const eocd = bytes.subarray(bytes.byteLength - 22);
        const hasLocator = bytes.readUInt32LE(bytes.byteLength - 42) === 0x07064b50;
        expect(hasLocator).toBe(zip64 === 'always');
        expect(eocd.readUInt16LE(10)).toBe(zip64 === 'always' ? 0xffff : specs.length + 3);
        const src = await openTorchCheckpoint(path);
        try {
          const prefix = wrap ? `${wrap}.` : '';
          expect(src.list().map((t) => t.name)).toEqual(specs.map((s) => prefix + s.name));
          for (const t of tensors) {
            expect(src.info(prefix + t.spec.name).shape).toEqual(t.spec.shape);
            expect(Array.from(await src.readFloat32(prefix + t.spec.name))).toEqual(Array.from(t.data));
          }
          if (wrap) {
            expect(src.topLevelKeys).toEqual(['model', 'epoch', 'note', 'lr', 'big']);
            expect(src.extras.get('epoch')).toBe(3);
            expect(src.extras.get('note')).toBe('x');
            expect(src.extras.get('lr')).toBe(0.5);
            expect(src.extras.get('big')).toBe(2 ** 40);
          }
        } finally {
          await src.close();
        }
      });
    }
  }

  it('aligns torch storages to 64 bytes and records correct CRCs', async () => {
    const path = join(work, 'align.pth');
    await writeTorchCheckpoint(path, specs, chunks(5), { archiveName: 'archive' });
    const b = await readFile(path);
    // walk the local headers
    let p = 0;
    let seen = 0;
    const { crc32 } = await import('../../src/convert/readers/zip.js');
    while (b.readUInt32LE(p) === 0x04034b50) {
      const size = b.readUInt32LE(p + 22);
      const name = b.toString('utf8', p + 30, p + 30 + b.readUInt16LE(p + 26));
      const data = p + 30 + b.readUInt16LE(p + 26) + b.readUInt16LE(p + 28);
      expect(data % 64, name).toBe(0);
      expect(b.readUInt32LE(p + 14), name).toBe(crc32(b.subarray(data, data + size)));
      p = data + size;
      seen++;
    }
    expect(seen).toBe(specs.length + 3);
    const src = await openCheckpoint(path);
    expect((src as Awaited<ReturnType<typeof openTorchCheckpoint>>).archiveName).toBe('archive');
    await src.close();
  });

  it('safetensors: header up front, chunked data, single and sharded', async () => {
    const single = join(work, 'single.safetensors');
    await writeSafetensors(single, specs, chunks(2), { metadata: { format: 'pt' } });
    const s = await openCheckpoint(single);
    expect(s.list().map((t) => t.name)).toEqual(specs.map((x) => x.name));
    for (const t of tensors) expect(Array.from(await s.readFloat32(t.spec.name))).toEqual(Array.from(t.data));
    await s.close();
    const headerLen = Number((await readFile(single)).readBigUInt64LE(0));
    expect((8 + headerLen) % 8).toBe(0);

    const dir = await mkdtemp(join(work, 'sharded-'));
    const r = await writeShardedSafetensors(dir, specs, chunks(4), { shards: 3 });
    expect(r.files.map((f) => f.path.slice(dir.length + 1))).toEqual([
      'model-00001-of-00003.safetensors',
      'model-00002-of-00003.safetensors',
      'model-00003-of-00003.safetensors',
    ]);
    const src = await openHfWeights(dir);
    for (const t of tensors) expect(Array.from(await src.readFloat32(t.spec.name))).toEqual(Array.from(t.data));
    await src.close();
  });

  it('plans shards: exact counts in order, or greedy up to a size cap', () => {
    const many: TensorSpec[] = Array.from({ length: 10 }, (_, i) => ({ name: `t${i}`, dtype: 'F16', shape: [i === 0 ? 1000 : 100] }));
    const three = planShards(many, { shards: 3 });
    expect(three).toHaveLength(3);
    expect(three.flat().map((t) => t.name)).toEqual(many.map((t) => t.name));
    expect(three.every((s) => s.length > 0)).toBe(true);
    const capped = planShards(many, { maxShardBytes: 500 });
    expect(capped.map((s) => s.length)).toEqual([1, 2, 2, 2, 2, 1]);
    expect(() => planShards(many, { shards: 11 })).toThrow(CheckpointError);
  });

  it('refuses a stream that does not match the specs and leaves no file behind', async () => {
    const path = join(work, 'bad.pth');
    const wrongOrder = function* (): Generator<TensorChunk> {
      yield { name: 'b', data: tensors[1].data };
    };
    await expect(writeTorchCheckpoint(path, specs, wrongOrder())).rejects.toThrow(/expected data for tensor 'a.weight'/);
    const short = function* (): Generator<TensorChunk> {
      yield { name: 'a.weight', data: tensors[0].data.subarray(0, 5) };
    };
    await expect(writeSafetensors(path, specs, short())).rejects.toThrow(/ended at tensor 'a.weight'/);
    const long = function* (): Generator<TensorChunk> {
      yield* chunks();
      yield { name: 'c.bias', data: new Float32Array(1) };
    };
    await expect(writeSafetensors(path, specs, long())).rejects.toThrow(/after the last tensor/);
    expect((await readdir(work)).filter((f) => f.startsWith('bad.'))).toEqual([]);
  });

  it('pickles ints of every width, floats, strings and None as Python does', () => {
    const values = [
      0,
      255,
      256,
      65535,
      65536,
      -1,
      -(2 ** 31),
      2 ** 31 - 1,
      2 ** 31,
      2 ** 40,
      -(2 ** 40),
      2 ** 53 - 1,
      1.5,
      -0.25,
      'é',
      null,
      true,
      false,
    ];
    const p = new Pickler();
    p.op(0x5d).mark(); // EMPTY_LIST, MARK
    for (const v of values) p.scalar(v);
    p.op(0x65); // APPENDS
    const hooks = {
      findGlobal: (m: string, n: string) => new PyGlobal(m, n),
      reduce: () => new PyDict(true),
      newObj: () => null,
      build: () => undefined,
      persistentLoad: (pid: unknown) => pid,
    };
    expect(unpickle(p.stop(), hooks, 'test')).toEqual(values);
  });
});

describe('random tokenizer', () => {
  it('is a valid tokenizer.json with exactly the vocabulary size, Llama-like ids', async () => {
    for (const vocab of [300, 32000]) {
      const json = randomTokenizerJson(vocab);
      const path = join(work, `tok-${vocab}.json`);
      await writeFile(path, JSON.stringify(json));
      const tok = await loadTokenizer(path, { bosId: 1, eosId: 2 });
      const v = (json.model as { vocab: [string, number][] }).vocab;
      expect(v).toHaveLength(vocab);
      expect(new Set(v.map((x) => x[0])).size).toBe(vocab);
      const ids = tok.encode('[INST] <Img><ImageHere></Img> [grounding] describe this image {<12><34><56><78>} [/INST]', { addBos: true });
      expect(ids[0]).toBe(1);
      expect(ids.every((i) => i > 0 && i < vocab)).toBe(true);
      expect(tok.decode(ids.slice(1), { skipSpecialTokens: true })).toBe(
        '[INST] <Img><ImageHere></Img> [grounding] describe this image {<12><34><56><78>} [/INST]',
      );
      if (vocab >= 1024) expect(v[3][0]).toBe('<0x00>');
    }
  });
});
