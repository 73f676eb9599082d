// Random MiniGPT-v2 checkpoints in the published formats, with the exact tensor names and shapes of the real
// downloads (EVA ViT-g `eva_vit_g.pth`, a Hugging Face Llama-2-7B folder with sharded safetensors, the MiniGPT-v2
// checkpoint with llama_proj and peft-0.2 LoRA tensors) at any depth, for conversion benchmarks and tests.
// Values are deterministic: every tensor has its own seeded stream (seed, file, name), so any one tensor can be
// regenerated without the others, and data is written chunk by chunk (memory stays at one chunk).
import { floatToHalf as floatToHalfBits } from './quantize.js';
import { access, copyFile, mkdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { StorageDType } from './readers/types.js';
import { addMiniGptPieces, pieceTable, SPECIAL_PIECES, unigramTokenizerJson } from './unigram-tokenizer.js';
import {
  planShards,
  safetensorsFileSize,
  tensorByteLength,
  writeShardedSafetensors,
  writeTorchCheckpoint,
  type TensorChunk,
  type TensorSpec,
} from './writers/index.js';

export type RandomDType = 'fp32' | 'fp16';

export interface LlamaRandomShape {
  hidden: number;
  layers: number;
  heads: number;
  /** defaults to heads (Llama-2-7B has no grouped-query attention) */
  kvHeads?: number;
  intermediate: number;
  vocab: number;
  rmsNormEps: number;
  maxPositions: number;
  ropeTheta: number;
}

export interface VitRandomShape {
  width: number;
  depth: number;
  /** not stored in the file; what `minigpt convert --vit-heads` must be told */
  heads: number;
  mlpHidden: number;
  patch: number;
  /** input size the file is saved for (224 for eva_vit_g.pth: pos_embed [1, 257, 1408]) */
  nativeSize: number;
}

export interface MiniGPTv2RandomShape {
  llm: LlamaRandomShape;
  vit: VitRandomShape;
  lora: { r: number; alpha: number };
  /** vision input size of the converted package (448 for MiniGPT-v2) */
  imageSize: number;
}

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

// ------------------------------------------------------------------ tensor plans

/** How a tensor's values are drawn. */
export type RandomInit =
  | { kind: 'normal'; std: number }
  /** 1 + std * N(0,1): norm weights */
  | { kind: 'ones'; std: number }
  /** Llama rotary inverse frequencies 1 / theta^(2j/headDim) (a buffer, not random) */
  | { kind: 'invFreq'; headDim: number; theta: number };

export interface RandomTensor extends TensorSpec {
  /** which file the tensor belongs to (part of its seed) */
  file: 'vit' | 'llm' | 'ckpt';
  init: RandomInit;
}

const STD = 0.02;
const W: RandomInit = { kind: 'normal', std: STD };
const ONES: RandomInit = { kind: 'ones', std: STD };

function storageDType(d: RandomDType): StorageDType {
  return d === 'fp16' ? 'F16' : 'F32';
}

/** eva_vit_g.pth: the EVA ViT state dict as LAVIS/MiniGPT saves it (no ln_vision, no final norm), in its order. */
export function vitTensors(v: VitRandomShape, dtype: RandomDType): RandomTensor[] {
  const d = storageDType(dtype);
  const D = v.width;
  const grid = v.nativeSize / v.patch;
  if (!Number.isInteger(grid)) throw new Error(`ViT native size ${v.nativeSize} is not a multiple of the patch ${v.patch}`);
  const t = (name: string, shape: number[], init: RandomInit = W): RandomTensor => ({ name, dtype: d, shape, file: 'vit', init });
  const out = [
    t('cls_token', [1, 1, D]),
    t('pos_embed', [1, 1 + grid * grid, D]),
    t('patch_embed.proj.weight', [D, 3, v.patch, v.patch]),
    t('patch_embed.proj.bias', [D]),
  ];
  for (let i = 0; i < v.depth; i++) {
    const p = `blocks.${i}`;
    out.push(
      t(`${p}.norm1.weight`, [D], ONES),
      t(`${p}.norm1.bias`, [D]),
      t(`${p}.attn.q_bias`, [D]),
      t(`${p}.attn.v_bias`, [D]),
      t(`${p}.attn.qkv.weight`, [3 * D, D]),
      t(`${p}.attn.proj.weight`, [D, D]),
      t(`${p}.attn.proj.bias`, [D]),
      t(`${p}.norm2.weight`, [D], ONES),
      t(`${p}.norm2.bias`, [D]),
      t(`${p}.mlp.fc1.weight`, [v.mlpHidden, D]),
      t(`${p}.mlp.fc1.bias`, [v.mlpHidden]),
      t(`${p}.mlp.fc2.weight`, [D, v.mlpHidden]),
      t(`${p}.mlp.fc2.bias`, [D]),
    );
  }
  return out;
}

/**
 * The Llama weights of a Hugging Face folder in the order transformers (<= 4.30) saves them, including the
 * `rotary_emb.inv_freq` buffers that were persistent then (cast to the checkpoint dtype like every buffer).
 */
export function llamaTensors(l: LlamaRandomShape, dtype: RandomDType, o: { invFreq?: boolean } = {}): RandomTensor[] {
  const d = storageDType(dtype);
  const H = l.hidden;
  const headDim = H / l.heads;
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) throw new Error(`hidden ${H} / heads ${l.heads} is not an even head size`);
  const kvOut = (l.kvHeads ?? l.heads) * headDim;
  const t = (name: string, shape: number[], init: RandomInit = W): RandomTensor => ({ name, dtype: d, shape, file: 'llm', init });
  const out = [t('model.embed_tokens.weight', [l.vocab, H])];
  for (let i = 0; i < l.layers; i++) {
    const p = `model.layers.${i}`;
    out.push(
      t(`${p}.self_attn.q_proj.weight`, [H, H]),
      t(`${p}.self_attn.k_proj.weight`, [kvOut, H]),
      t(`${p}.self_attn.v_proj.weight`, [kvOut, H]),
      t(`${p}.self_attn.o_proj.weight`, [H, H]),
    );
    if (o.invFreq ?? true) out.push(t(`${p}.self_attn.rotary_emb.inv_freq`, [headDim / 2], { kind: 'invFreq', headDim, theta: l.ropeTheta }));
    out.push(
      t(`${p}.mlp.gate_proj.weight`, [l.intermediate, H]),
      t(`${p}.mlp.down_proj.weight`, [H, l.intermediate]),
      t(`${p}.mlp.up_proj.weight`, [l.intermediate, H]),
      t(`${p}.input_layernorm.weight`, [H], ONES),
      t(`${p}.post_attention_layernorm.weight`, [H], ONES),
    );
  }
  out.push(t('model.norm.weight', [H], ONES), t('lm_head.weight', [l.vocab, H]));
  return out;
}

/**
 * The state dict inside the MiniGPT-v2 checkpoint (`{'model': ...}`): what upstream's runner keeps (trainable
 * parameters and persistent buffers): LoRA A/B of q_proj/v_proj under peft 0.2 names, the rotary buffers, llama_proj.
 */
export function ckptTensors(s: MiniGPTv2RandomShape, dtype: RandomDType): RandomTensor[] {
  const d = storageDType(dtype);
  const H = s.llm.hidden;
  const headDim = H / s.llm.heads;
  const kvOut = (s.llm.kvHeads ?? s.llm.heads) * headDim;
  const r = s.lora.r;
  const t = (name: string, shape: number[], init: RandomInit = W): RandomTensor => ({ name, dtype: d, shape, file: 'ckpt', init });
  const out: RandomTensor[] = [];
  for (let i = 0; i < s.llm.layers; i++) {
    const p = `llama_model.base_model.model.model.layers.${i}.self_attn`;
    out.push(
      t(`${p}.q_proj.lora_A.weight`, [r, H]),
      t(`${p}.q_proj.lora_B.weight`, [H, r]),
      t(`${p}.v_proj.lora_A.weight`, [r, H]),
      t(`${p}.v_proj.lora_B.weight`, [kvOut, r]),
      t(`${p}.rotary_emb.inv_freq`, [headDim / 2], { kind: 'invFreq', headDim, theta: s.llm.ropeTheta }),
    );
  }
  out.push(t('llama_proj.weight', [H, 4 * s.vit.width]), t('llama_proj.bias', [H]));
  return out;
}

// ------------------------------------------------------------------ values

/** Inverse of the standard normal CDF (Acklam's rational approximation, relative error < 1.2e-9). */
function normalQuantile(p: number): number {
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const dd = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const lo = 0.02425;
  if (p < lo) {
    const q = Math.sqrt(-2 * Math.log(p));
    return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((dd[0] * q + dd[1]) * q + dd[2]) * q + dd[3]) * q + 1);
  }
  if (p > 1 - lo) return -normalQuantile(1 - p);
  const q = p - 0.5;
  const r = q * q;
  return ((((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q) / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}


let quantiles: Float64Array | undefined;
/** the 65536 equiprobable N(0,1) levels: Phi^-1((k + 0.5) / 65536) */
function standardLevels(): Float64Array {
  if (!quantiles) {
    quantiles = new Float64Array(65536);
    for (let k = 0; k < 65536; k++) quantiles[k] = normalQuantile((k + 0.5) / 65536);
  }
  return quantiles;
}

const tables = new Map<string, Float32Array | Uint16Array>();
/** value table indexed by a 16-bit random draw, in the storage type */
function valueTable(init: { kind: 'normal' | 'ones'; std: number }, dtype: StorageDType): Float32Array | Uint16Array {
  const key = `${init.kind}:${init.std}:${dtype}`;
  let t = tables.get(key);
  if (!t) {
    const q = standardLevels();
    const base = init.kind === 'ones' ? 1 : 0;
    if (dtype === 'F16') {
      const h = new Uint16Array(65536);
      for (let k = 0; k < 65536; k++) h[k] = floatToHalfBits(base + init.std * q[k]);
      t = h;
    } else {
      t = Float32Array.from(q, (z) => base + init.std * z);
    }
    tables.set(key, t);
  }
  return t;
}

/** 32-bit FNV-1a of a string, then mixed (murmur3 finaliser). */
function hash32(s: string, h = 0x811c9dc5): number {
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The seed of one tensor's stream. */
export function tensorSeed(seed: number, t: Pick<RandomTensor, 'file' | 'name'>): number {
  return hash32(`${t.file}/${t.name}`, hash32(String(seed >>> 0)));
}

/** Elements per yielded chunk (4 Mi elements: 8 or 16 MB). */
const CHUNK_ELEMS = 1 << 22;

/**
 * The raw little-endian bytes of a random tensor, chunk by chunk. Each element is a table value picked by
 * 16 bits of a mulberry32 stream (two elements per 32-bit draw), so generation is cheap and exact to repeat.
 */
export function* randomTensorChunks(seed: number, t: RandomTensor, chunkElems = CHUNK_ELEMS): Generator<TensorChunk> {
  if (t.dtype !== 'F16' && t.dtype !== 'F32') throw new Error(`random tensors are F16 or F32, not ${t.dtype}`);
  const numel = t.shape.reduce((a, b) => a * b, 1);
  const init = t.init;
  if (init.kind === 'invFreq') {
    const v = Array.from({ length: numel }, (_, j) => 1 / Math.pow(init.theta, (2 * j) / init.headDim));
    const data = t.dtype === 'F16' ? Uint16Array.from(v, floatToHalfBits) : Float32Array.from(v);
    yield { name: t.name, data };
    return;
  }
  const table = valueTable(init, t.dtype);
  let state = tensorSeed(seed, t);
  const size = Math.min(chunkElems + (chunkElems & 1), numel + (numel & 1));
  const buf = t.dtype === 'F16' ? new Uint16Array(size) : new Float32Array(size);
  for (let done = 0; done < numel; ) {
    const n = Math.min(size, numel - done);
    for (let i = 0; i < n; i += 2) {
      // mulberry32
      state = (state + 0x6d2b79f5) | 0;
      let z = state;
      z = Math.imul(z ^ (z >>> 15), z | 1);
      z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
      z = (z ^ (z >>> 14)) >>> 0;
      buf[i] = table[z & 0xffff];
      buf[i + 1] = table[z >>> 16];
    }
    done += n;
    // the buffer is reused for the next chunk: the writer consumes each chunk before asking for the next
    yield { name: t.name, data: buf.subarray(0, n) };
  }
}

/** One tensor's whole raw bytes (tests; the writers use randomTensorChunks). */
export function randomTensorBytes(seed: number, t: RandomTensor): Uint8Array {
  const out = new Uint8Array(tensorByteLength(t));
  let o = 0;
  for (const c of randomTensorChunks(seed, t)) {
    out.set(new Uint8Array(c.data.buffer, c.data.byteOffset, c.data.byteLength), o);
    o += c.data.byteLength;
  }
  return out;
}

function* streamOf(seed: number, tensors: readonly RandomTensor[]): Generator<TensorChunk> {
  for (const t of tensors) yield* randomTensorChunks(seed, t);
}

// ------------------------------------------------------------------ folder

/** Hugging Face config.json of a Llama-2 model of this shape. */
export function llamaConfigJson(l: LlamaRandomShape, dtype: RandomDType): Record<string, unknown> {
  return {
    _name_or_path: 'random/Llama-2-chat-shaped',
    architectures: ['LlamaForCausalLM'],
    bos_token_id: 1,
    eos_token_id: 2,
    hidden_act: 'silu',
    hidden_size: l.hidden,
    initializer_range: 0.02,
    intermediate_size: l.intermediate,
    max_position_embeddings: l.maxPositions,
    model_type: 'llama',
    num_attention_heads: l.heads,
    num_hidden_layers: l.layers,
    num_key_value_heads: l.kvHeads ?? l.heads,
    pad_token_id: 0,
    pretraining_tp: 1,
    rms_norm_eps: l.rmsNormEps,
    rope_scaling: null,
    rope_theta: l.ropeTheta,
    tie_word_embeddings: false,
    torch_dtype: dtype === 'fp16' ? 'float16' : 'float32',
    transformers_version: '4.30.0',
    use_cache: true,
    vocab_size: l.vocab,
  };
}

const WORDS = (
  'a an the this that is are was be it of in on at to with and or not no yes one two three four five six seven eight nine ten ' +
  'red orange yellow green blue purple pink brown black white gray circle square triangle rectangle star shape object ' +
  'small large big left right top bottom middle center above below next near far image picture photo scene background ' +
  'describe detail location give me what where which who how color size count see can you please answer question box area'
).split(' ');

/**
 * A valid SentencePiece-style (Unigram) tokenizer.json with exactly `vocab` pieces, laid out like Llama's:
 * `<unk>` 0, `<s>` 1, `</s>` 2, byte pieces `<0x00>`..`<0xFF>` 3..258 (when vocab >= 1024), then `▁`, printable
 * ASCII, the MiniGPT-v2 tags and box numbers, words, and letter pairs/triples (with and without `▁`) to fill up.
 */
export function randomTokenizerJson(vocab: number): Record<string, unknown> {
  if (!Number.isInteger(vocab) || vocab < SPECIAL_PIECES.length + 1) throw new Error(`vocab ${vocab} is too small for a tokenizer`);
  const t = pieceTable(vocab);
  const { pieces, add } = t;
  const byteFallback = vocab >= 1024;
  if (byteFallback) for (let b = 0; b < 256; b++) add(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, -100);
  addMiniGptPieces(t, WORDS);
  const letters = 'etaoinshrdlucmfwypvbgkjqxz';
  for (let len = 2; pieces.length < vocab; len++) {
    const combos: string[] = [''];
    for (let k = 0; k < len; k++) {
      const next: string[] = [];
      for (const c of combos) for (const l of letters) next.push(c + l);
      combos.splice(0, combos.length, ...next);
      if (combos.length > 4 * vocab) break;
    }
    for (const c of combos) {
      add(`▁${c}`, -4 - len);
      add(c, -5 - len);
      if (pieces.length >= vocab) break;
    }
  }
  return unigramTokenizerJson(pieces, byteFallback);
}

/** models/demo/tokenizer.json of this repository (from src/convert or dist/src/convert), if present. */
async function demoTokenizerPath(): Promise<string | undefined> {
  for (const rel of ['../../models/demo/tokenizer.json', '../../../models/demo/tokenizer.json']) {
    const p = fileURLToPath(new URL(rel, import.meta.url));
    try {
      await access(p);
      return p;
    } catch {
      /* next */
    }
  }
  return undefined;
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
  tensors: { vit: RandomTensor[]; llm: RandomTensor[]; ckpt: RandomTensor[] };
  /** what `minigpt convert` needs beyond the paths */
  convertArgs: { arch: 'minigpt-v2'; vitHeads: number; imageSize: number; loraR: number; loraAlpha: number };
}

/** All tensors of a random checkpoint of `shape` (no file written). */
export function randomCheckpointTensors(shape: MiniGPTv2RandomShape, o: Pick<RandomCheckpointOptions, 'dtype' | 'ckptDtype' | 'invFreq'> = {}) {
  const dtype = o.dtype ?? 'fp16';
  return {
    vit: vitTensors(shape.vit, dtype),
    llm: llamaTensors(shape.llm, dtype, { invFreq: o.invFreq }),
    ckpt: ckptTensors(shape, o.ckptDtype ?? 'fp32'),
  };
}

/** Input bytes a random checkpoint of `shape` will take (data plus headers, roughly for the zips). */
export function estimateRandomCheckpointBytes(shape: MiniGPTv2RandomShape, o: Pick<RandomCheckpointOptions, 'dtype' | 'ckptDtype' | 'invFreq' | 'shards' | 'maxShardBytes'> = {}): number {
  const t = randomCheckpointTensors(shape, o);
  const zip = (ts: RandomTensor[]) => ts.reduce((a, s) => a + tensorByteLength(s) + 200 + s.name.length * 2, 4096);
  const shards = planShards(t.llm, { shards: o.shards, maxShardBytes: o.maxShardBytes });
  return zip(t.vit) + zip(t.ckpt) + shards.reduce((a, s) => a + safetensorsFileSize(s, { format: 'pt' }), 0) + (1 << 20);
}

/**
 * Writes `eva_vit_g.pth`, `llama/` (config.json, generation_config.json, sharded model safetensors with its index,
 * tokenizer.json) and `minigptv2_checkpoint.pth` into `dir`.
 */
export async function writeRandomMiniGPTv2(dir: string, shape: MiniGPTv2RandomShape, opts: RandomCheckpointOptions = {}): Promise<RandomCheckpointResult> {
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
  for (const f of ['config.json', 'generation_config.json', 'tokenizer.json']) files.push({ path: join(llmDir, f), bytes: (await stat(join(llmDir, f))).size });
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
    convertArgs: { arch: 'minigpt-v2', vitHeads: shape.vit.heads, imageSize: shape.imageSize, loraR: shape.lora.r, loraAlpha: shape.lora.alpha },
  };
}

/** float -> IEEE half bits (round to nearest even through float32, like torch's .half()): the quantiser's. */
export { floatToHalfBits };
