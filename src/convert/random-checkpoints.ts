// Random MiniGPT-v2 checkpoints in the published formats, with the exact tensor names and shapes of the real
// downloads (EVA ViT-g `eva_vit_g.pth`, a Hugging Face Llama-2-7B folder with sharded safetensors, the MiniGPT-v2
// checkpoint with llama_proj and peft-0.2 LoRA tensors) at any depth, for conversion benchmarks and tests.
// This file holds the presets and writes the three; each part's tensors are in random-checkpoints/ (eva-vit.ts,
// llama.ts, minigptv2.ts), their values in random-checkpoints/tensors.ts.
import { copyFile, mkdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { planShards, safetensorsFileSize, tensorByteLength, writeShardedSafetensors, writeTorchCheckpoint } from './writers/index.js';
import { vitTensors } from './random-checkpoints/eva-vit.js';
import { llamaConfigJson, llamaTensors } from './random-checkpoints/llama.js';
import { ckptTensors, type MiniGPTv2RandomShape } from './random-checkpoints/minigptv2.js';
import { streamOf, type RandomDType, type RandomTensor } from './random-checkpoints/tensors.js';
import { demoTokenizerPath, randomTokenizerJson } from './random-checkpoints/tokenizer.js';

export const RANDOM_PRESETS = {
  /** Llama-2-7B-chat + EVA ViT-g (39 blocks) + MiniGPT-v2 (LoRA r 64, alpha 16; llama_proj 5632 -> 4096) */
  'llama2-7b': {
    llm: { hidden: 4096, layers: 32, heads: 32, intermediate: 11008, vocab: 32000, rmsNormEps: 1e-5, maxPositions: 4096, ropeTheta: 10000 },
    vit: { width: 1408, depth: 39, heads: 16, mlpHidden: 6144, patch: 14, nativeSize: 224 },
    lora: { r: 64, alpha: 16 },
    imageSize: 448,
  },
  /** the same structure scaled down (ViT width 128, 16 heads; Llama hidden 256, 4 heads of 64) */
  tiny: {
    llm: { hidden: 256, layers: 2, heads: 4, intermediate: 688, vocab: 512, rmsNormEps: 1e-5, maxPositions: 512, ropeTheta: 10000 },
    vit: { width: 128, depth: 2, heads: 16, mlpHidden: 558, patch: 14, nativeSize: 224 },
    lora: { r: 8, alpha: 16 },
    imageSize: 448,
  },
} as const satisfies Record<string, MiniGPTv2RandomShape>;

export type RandomPreset = keyof typeof RANDOM_PRESETS;

/** A preset with its depths (and, for tests, its vocabulary) overridden. */
export function randomShape(preset: RandomPreset, o: { llmLayers?: number; vitDepth?: number; vocab?: number } = {}): MiniGPTv2RandomShape {
  const p = RANDOM_PRESETS[preset];
  if (!p) throw new Error(`unknown preset '${String(preset)}' (known: ${Object.keys(RANDOM_PRESETS).join(', ')})`);
  const positive = (v: number | undefined, what: string) => {
    if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw new Error(`${what} must be a positive integer, got ${v}`);
  };
  positive(o.llmLayers, 'llm layers');
  positive(o.vitDepth, 'vit depth');
  positive(o.vocab, 'vocab');
  return {
    llm: { ...p.llm, layers: o.llmLayers ?? p.llm.layers, vocab: o.vocab ?? p.llm.vocab },
    vit: { ...p.vit, depth: o.vitDepth ?? p.vit.depth },
    lora: { ...p.lora },
    imageSize: p.imageSize,
  };
}

/** A random checkpoint's tensors, per file, in the order each file holds them. */
export interface RandomCheckpointTensors {
  vit: RandomTensor[];
  llm: RandomTensor[];
  ckpt: RandomTensor[];
}

export interface RandomCheckpointOptions {
  seed?: number;
  /** dtype of the frozen weights (ViT and Llama); the published files are fp16 */
  dtype?: RandomDType;
  /** dtype of the MiniGPT-v2 checkpoint (trainable parameters; default fp32) */
  ckptDtype?: RandomDType;
  /** safetensors shards: an exact count, or a size cap (default 10 GB like transformers' "10GB") */
  shards?: number;
  maxShardBytes?: number;
  /** write `rotary_emb.inv_freq` buffers into the Llama weights (transformers <= 4.30 did; default true) */
  invFreq?: boolean;
  /** force ZIP64 records in the .pth files */
  zip64?: 'auto' | 'always';
  /** progress lines */
  log?: (line: string) => void;
}

export interface RandomCheckpointResult {
  dir: string;
  shape: MiniGPTv2RandomShape;
  seed: number;
  /** eva_vit_g.pth */
  vit: string;
  /** Hugging Face folder */
  llm: string;
  /** minigptv2_checkpoint.pth */
  ckpt: string;
  files: { path: string; bytes: number }[];
  bytes: number;
  tensors: RandomCheckpointTensors;
  /** what `minigpt convert` needs beyond the paths */
  convertArgs: { arch: 'minigpt-v2'; vitHeads: number; imageSize: number; loraR: number; loraAlpha: number };
}

/** All tensors of a random checkpoint of `shape` (no file written). */
export function randomCheckpointTensors(
  shape: MiniGPTv2RandomShape,
  o: Pick<RandomCheckpointOptions, 'dtype' | 'ckptDtype' | 'invFreq'> = {},
): RandomCheckpointTensors {
  const dtype = o.dtype ?? 'fp16';
  return {
    vit: vitTensors(shape.vit, dtype),
    llm: llamaTensors(shape.llm, dtype, { invFreq: o.invFreq }),
    ckpt: ckptTensors(shape, o.ckptDtype ?? 'fp32'),
  };
}

/** Input bytes a random checkpoint of `shape` will take (data plus headers, roughly for the zips). */
export function estimateRandomCheckpointBytes(
  shape: MiniGPTv2RandomShape,
  o: Pick<RandomCheckpointOptions, 'dtype' | 'ckptDtype' | 'invFreq' | 'shards' | 'maxShardBytes'> = {},
): number {
  const t = randomCheckpointTensors(shape, o);
  const zip = (ts: RandomTensor[]) => ts.reduce((a, s) => a + tensorByteLength(s) + 200 + s.name.length * 2, 4096);
  const shards = planShards(t.llm, { shards: o.shards, maxShardBytes: o.maxShardBytes });
  return zip(t.vit) + zip(t.ckpt) + shards.reduce((a, s) => a + safetensorsFileSize(s, { format: 'pt' }), 0) + (1 << 20);
}

/**
 * Writes `eva_vit_g.pth`, `llama/` (config.json, generation_config.json, sharded model safetensors with its index,
 * tokenizer.json) and `minigptv2_checkpoint.pth` into `dir`.
 */
export async function writeRandomMiniGPTv2(
  dir: string,
  shape: MiniGPTv2RandomShape,
  opts: RandomCheckpointOptions = {},
): Promise<RandomCheckpointResult> {
  const seed = opts.seed ?? 0;
  const dtype = opts.dtype ?? 'fp16';
  const log = opts.log ?? (() => {});
  const tensors = randomCheckpointTensors(shape, opts);
  const llmDir = join(dir, 'llama');
  await mkdir(llmDir, { recursive: true });
  const files: { path: string; bytes: number }[] = [];

  const vit = join(dir, 'eva_vit_g.pth');
  log(`writing ${vit} (${tensors.vit.length} tensors, ${dtype})`);
  files.push({ path: vit, bytes: await writeTorchCheckpoint(vit, tensors.vit, streamOf(seed, tensors.vit), { zip64: opts.zip64 }) });

  await writeFile(join(llmDir, 'config.json'), `${JSON.stringify(llamaConfigJson(shape.llm, dtype), null, 2)}\n`);
  await writeFile(
    join(llmDir, 'generation_config.json'),
    `${JSON.stringify({ bos_token_id: 1, eos_token_id: 2, pad_token_id: 0, do_sample: true, temperature: 0.6, top_p: 0.9, max_length: shape.llm.maxPositions, transformers_version: '4.30.0' }, null, 2)}\n`,
  );
  const demo = shape.llm.vocab === 512 ? await demoTokenizerPath() : undefined;
  if (demo) await copyFile(demo, join(llmDir, 'tokenizer.json'));
  else await writeFile(join(llmDir, 'tokenizer.json'), `${JSON.stringify(randomTokenizerJson(shape.llm.vocab))}\n`);
  log(`writing ${llmDir} (${tensors.llm.length} tensors, ${dtype})`);
  const sharded = await writeShardedSafetensors(llmDir, tensors.llm, streamOf(seed, tensors.llm), {
    shards: opts.shards,
    maxShardBytes: opts.maxShardBytes,
    metadata: { format: 'pt' },
  });
  for (const f of ['config.json', 'generation_config.json', 'tokenizer.json'])
    files.push({ path: join(llmDir, f), bytes: (await stat(join(llmDir, f))).size });
  for (const f of sharded.files) files.push({ path: f.path, bytes: f.bytes });
  files.push({ path: sharded.indexPath, bytes: (await stat(sharded.indexPath)).size });

  const ckpt = join(dir, 'minigptv2_checkpoint.pth');
  log(`writing ${ckpt} (${tensors.ckpt.length} tensors, ${opts.ckptDtype ?? 'fp32'})`);
  files.push({
    path: ckpt,
    bytes: await writeTorchCheckpoint(ckpt, tensors.ckpt, streamOf(seed, tensors.ckpt), { wrap: 'model', zip64: opts.zip64 }),
  });

  return {
    dir,
    shape,
    seed,
    vit,
    llm: llmDir,
    ckpt,
    files,
    bytes: files.reduce((a, f) => a + f.bytes, 0),
    tensors,
    convertArgs: {
      arch: 'minigpt-v2',
      vitHeads: shape.vit.heads,
      imageSize: shape.imageSize,
      loraR: shape.lora.r,
      loraAlpha: shape.lora.alpha,
    },
  };
}
