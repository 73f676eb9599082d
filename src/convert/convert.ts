// Published MiniGPT checkpoints -> model package (docs/architecture.md, "Where each behaviour lives"; models/README.md). Each graph is built in turn,
// its weights streamed to external data as they are read, so memory holds one tensor at a time.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { copyFile, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { GraphBuilder, type GraphIO } from './onnx/builder.js';
import { buildVisionGraph, inferVitShape, type LnVision, type VitShape } from './graphs/vision.js';
import { buildQformerVisionGraph, CROSS_ATTENTION_FREQ, inferQformerShape, LN_VISION_EPS, type QformerShape } from './graphs/qformer.js';
import { buildFusedDecoderGraph, fusedUnsupported } from './graphs/llama-fused.js';
import { buildDecoderGraph, buildEmbedGraph, llamaShapeFromConfig, loraKeys, type LlamaShape, type LoraSpec } from './graphs/llama.js';
import { openCheckpoint, openHfWeights, unwrapPrefix, type TensorSource } from './readers/index.js';
import { PACKAGE_FORMAT, PACKAGE_FORMAT_VERSION, type GraphSpec, type ModelJson } from '../inference/package.js';
import { convertSentencePieceFile } from './sentencepiece.js';
import {
  checkAccuracyLevel,
  checkBlockSize,
  DEFAULT_ACCURACY_LEVEL,
  DEFAULT_BLOCK_SIZE,
  describeWeights,
  quantBits,
  type AccuracyLevel,
  type WeightDType,
  type WeightFormat,
} from './quantize.js';
import { CLIP_MEAN, CLIP_STD, MINIGPT4_PROMPTS, MINIGPT_V2_PROMPT, type Minigpt4PromptStyle } from '../inference/presets.js';

export const CONVERTER_VERSION = 'minigpt-bot convert 1';

export type Arch = 'minigpt-v2' | 'minigpt-4';
export type { WeightDType } from './quantize.js';

export interface ConvertOptions {
  arch: Arch;
  vit: string;
  llm: string;
  ckpt: string;
  qformer?: string;
  imageSize?: number;
  vitHeads?: number;
  /** Q-Former attention heads (MiniGPT-4; the BLIP-2 file does not record them) */
  qformerHeads?: number;
  /** MiniGPT-4 prompt style; default from the language model (see defaultPromptStyle) */
  prompt?: Minigpt4PromptStyle;
  loraR?: number;
  loraAlpha?: number;
  dtype?: WeightDType;
  /** MatMulNBits block size along K for int8 / int4 (default 32) */
  blockSize?: number;
  /** MatMulNBits accuracy_level for int8 / int4 (default DEFAULT_ACCURACY_LEVEL: int8 compute on the CPU) */
  accuracyLevel?: number;
  /**
   * onnxruntime's fused kernels: the decoder (src/convert/graphs/llama-fused.ts) and the ViT's blocks
   * (src/convert/graphs/vision-fused.ts); model.json `graph: "fused"`
   */
  fused?: boolean;
  /**
   * the decoder's compute type (src/convert/graphs/precision.ts): fp16 = float16 activations and KV cache for
   * GPU providers (needs --dtype fp16, int8 or int4); default fp32. model.json `compute`.
   */
  compute?: 'fp32' | 'fp16';
  out: string;
  /** model.json `name`, shown by the web page and `minigpt status` (default: the output folder's name) */
  name?: string;
  log?: (line: string) => void;
}

export class ConvertError extends Error {}

/** Defaults for what the published files do not record (README, "Command line"). */
const DEFAULTS = { vitHeads: 16, imageSize: { 'minigpt-v2': 448, 'minigpt-4': 224 }, loraAlpha: 16, loraR: 64, qformerHeads: 12 } as const;

/** MiniGPT-4 comes with the BLIP-2 Q-Former (Vicuna v0) or without it (Llama-2, `has_qformer: False`). */
export type Minigpt4Variant = 'qformer' | 'noqformer';

/**
 * The prompt style a MiniGPT-4 package gets when --prompt is not given:
 *  1. `llama2` for the variant without Q-Former (the published Llama-2 MiniGPT-4 is the only one);
 *  2. `llama2` when the language model says it is Llama-2: `_name_or_path` in config.json or the folder
 *     name contains "llama-2" / "llama2" / "llama_2" (any case), or max_position_embeddings >= 4096
 *     (Llama-2 has 4096, LLaMA-1 based Vicuna v0 2048);
 *  3. `vicuna0` otherwise.
 */
export function defaultPromptStyle(variant: Minigpt4Variant, llmDir: string, llmConfig: Record<string, unknown>): Minigpt4PromptStyle {
  if (variant === 'noqformer') return 'llama2';
  const names = [basename(llmDir.replace(/[\\/]+$/, '')), typeof llmConfig._name_or_path === 'string' ? llmConfig._name_or_path : ''];
  if (names.some((n) => /llama[-_ ]?2/i.test(n))) return 'llama2';
  const maxPos = llmConfig.max_position_embeddings;
  if (typeof maxPos === 'number' && maxPos >= 4096) return 'llama2';
  return 'vicuna0';
}

async function findTokenizer(llmDir: string): Promise<string> {
  for (const name of ['tokenizer.json', 'tokenizer.model']) {
    try {
      await stat(join(llmDir, name));
      return join(llmDir, name);
    } catch {
      // try the next one
    }
  }
  throw new ConvertError(`${llmDir} has neither tokenizer.json nor a SentencePiece tokenizer.model`);
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function readJson(path: string, what: string): Promise<Record<string, unknown>> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new ConvertError(`cannot read ${what} ${path}: ${(e as Error).message}`);
  }
}

/** The LoRA rank is in the tensors' shapes; a given --lora-r must agree with it. */
function resolveLoraR(ckpt: TensorSource, requested: number | undefined): number {
  const keys = loraKeys(ckpt, 0, 'q_proj');
  if (!keys)
    throw new ConvertError(
      'the MiniGPT-v2 checkpoint has no LoRA tensors (llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight)',
    );
  const r = ckpt.info(keys.a).shape[0];
  if (requested !== undefined && requested !== r)
    throw new ConvertError(`--lora-r ${requested} disagrees with the checkpoint, whose LoRA tensors have rank ${r}`);
  return r;
}

async function saveGraph(g: GraphBuilder, out: string, file: string, log: (l: string) => void): Promise<GraphSpec> {
  const dataFile = `${file}.data`;
  const { dataBytes, modelBytes } = await g.save(join(out, file));
  const hasData = dataBytes > 0;
  if (!hasData) await rm(join(out, dataFile), { force: true });
  log(`  ${file}: ${(modelBytes / 1e6).toFixed(2)} MB graph, ${(dataBytes / 1e6).toFixed(2)} MB weights`);
  const io = (x: GraphIO) => ({ name: x.name, dtype: x.dtype, dims: x.dims });
  return { file, data: hasData ? [dataFile] : [], inputs: g.inputSpecs.map(io), outputs: g.outputSpecs.map(io) };
}

function tokenizerIds(cfg: Record<string, unknown>, gen: Record<string, unknown> | null) {
  const pick = (k: string, d: number) =>
    typeof gen?.[k] === 'number' ? (gen[k] as number) : typeof cfg[k] === 'number' ? (cfg[k] as number) : d;
  return { bosId: pick('bos_token_id', 1), eosId: pick('eos_token_id', 2), padId: pick('pad_token_id', 0) };
}

export async function convert(opts: ConvertOptions): Promise<ModelJson> {
  const log = opts.log ?? (() => {});
  const dtype = opts.dtype ?? 'fp32';
  if (opts.arch === 'minigpt-v2') {
    if (opts.qformer !== undefined) throw new ConvertError('--qformer is for --arch minigpt-4 (MiniGPT-v2 has no Q-Former)');
    if (opts.qformerHeads !== undefined) throw new ConvertError('--qformer-heads is for --arch minigpt-4 (MiniGPT-v2 has no Q-Former)');
    if (opts.prompt !== undefined) throw new ConvertError('--prompt is for --arch minigpt-4 (MiniGPT-v2 has one prompt style)');
  } else if (opts.loraR !== undefined || opts.loraAlpha !== undefined) {
    throw new ConvertError('--lora-r / --lora-alpha are for --arch minigpt-v2 (MiniGPT-4 has no LoRA)');
  }
  const bits = quantBits(dtype);
  // the quantisation options: only for int8 / int4, each checked by its own rule
  const quantFlag = (flag: string, value: number | undefined, check: (v: number) => void) => {
    if (value === undefined) return;
    if (!bits) throw new ConvertError(`${flag} is for --dtype int8 / int4, not ${dtype}`);
    try {
      check(value);
    } catch (e) {
      throw new ConvertError(`${flag} ${(e as Error).message}`);
    }
  };
  quantFlag('--block-size', opts.blockSize, checkBlockSize);
  quantFlag('--accuracy-level', opts.accuracyLevel, checkAccuracyLevel);
  const accuracyLevel = (opts.accuracyLevel ?? DEFAULT_ACCURACY_LEVEL) as AccuracyLevel;
  const weights: WeightFormat = { dtype, blockSize: opts.blockSize ?? DEFAULT_BLOCK_SIZE, accuracyLevel };
  const quantOptions: Record<string, number> = bits ? { blockSize: weights.blockSize, accuracyLevel } : {};

  const imageSize = opts.imageSize ?? DEFAULTS.imageSize[opts.arch];
  const vitHeads = opts.vitHeads ?? DEFAULTS.vitHeads;
  const loraAlpha = opts.loraAlpha ?? DEFAULTS.loraAlpha;

  const llmConfig = await readJson(join(opts.llm, 'config.json'), 'language model config');
  let genConfig: Record<string, unknown> | null = null;
  try {
    genConfig = JSON.parse(await readFile(join(opts.llm, 'generation_config.json'), 'utf8')) as Record<string, unknown>;
  } catch {
    genConfig = null;
  }
  // tokenizer.json when the folder has one, else the SentencePiece tokenizer.model converted (Vicuna v0 folders)
  const tokenizerSrc = await findTokenizer(opts.llm);

  let shape: LlamaShape;
  try {
    shape = llamaShapeFromConfig(llmConfig);
  } catch (e) {
    throw new ConvertError((e as Error).message);
  }
  const graphKind = opts.fused ? ('fused' as const) : ('plain' as const);
  const compute = opts.compute === 'fp16' ? ('float16' as const) : ('float32' as const);
  if (compute === 'float16' && dtype === 'fp32') {
    throw new ConvertError('--compute fp16 needs float16 or quantised weights: add --dtype fp16 (or int8 / int4)');
  }
  if (opts.fused) {
    const why = fusedUnsupported(shape);
    if (why) throw new ConvertError(why);
  }

  const vit = await openCheckpoint(opts.vit);
  const ckptRaw = await openCheckpoint(opts.ckpt);
  const llm = await openHfWeights(opts.llm);
  let qformerRaw: TensorSource | null = null;
  try {
    const ckpt = ckptRaw.has('model.llama_proj.weight') ? unwrapPrefix(ckptRaw, 'model.') : ckptRaw;
    if (!ckpt.has('llama_proj.weight')) throw new ConvertError(`${opts.ckpt} has no llama_proj.weight: is it a MiniGPT checkpoint?`);
    if (opts.arch === 'minigpt-4' && opts.qformer) qformerRaw = await openCheckpoint(opts.qformer);
    const plan =
      opts.arch === 'minigpt-v2'
        ? planMinigptV2(ckpt, vit, { imageSize, vitHeads, loraAlpha, loraR: opts.loraR, hidden: shape.hidden, dtype })
        : planMinigpt4(ckpt, vit, qformerRaw, { ...opts, imageSize, vitHeads, hidden: shape.hidden, dtype, llmConfig, log });
    const { vitShape } = plan;

    await mkdir(opts.out, { recursive: true });
    log(
      `converting ${opts.arch}${plan.label} (${dtype}${opts.fused ? ', fused kernels' : ''}${compute === 'float16' ? ', fp16 compute' : ''}) -> ${opts.out}`,
    );

    const visionG = new GraphBuilder('minigpt_vision', join(opts.out, 'vision.onnx.data'));
    visionG.weights = weights;
    visionG.compute = compute;
    visionG.fused = opts.fused === true;
    await plan.buildVision(visionG);
    const vision = await saveGraph(visionG, opts.out, 'vision.onnx', log);

    const embedG = new GraphBuilder('minigpt_embed', join(opts.out, 'embed.onnx.data'));
    embedG.weights = weights;
    await buildEmbedGraph(embedG, llm, shape);
    const embed = await saveGraph(embedG, opts.out, 'embed.onnx', log);

    const decoderG = new GraphBuilder('minigpt_decoder', join(opts.out, 'decoder.onnx.data'));
    decoderG.weights = weights;
    decoderG.compute = compute;
    const decoderSpec = plan.lora ? { llm, shape, lora: plan.lora } : { llm, shape };
    await (opts.fused ? buildFusedDecoderGraph : buildDecoderGraph)(decoderG, decoderSpec);
    const decoder = await saveGraph(decoderG, opts.out, 'decoder.onnx', log);

    if (tokenizerSrc.endsWith('.json')) {
      await copyFile(tokenizerSrc, join(opts.out, 'tokenizer.json'));
    } else {
      const json = await convertSentencePieceFile(tokenizerSrc).catch((e: Error) => {
        throw new ConvertError(e.message);
      });
      await writeFile(join(opts.out, 'tokenizer.json'), `${JSON.stringify(json)}\n`);
      log(`  tokenizer.json: converted from ${tokenizerSrc}`);
    }

    const sourceFiles: { role: string; path: string }[] = [
      { role: 'vit', path: opts.vit },
      ...plan.extraSources,
      { role: 'checkpoint', path: opts.ckpt },
      { role: 'llm-config', path: join(opts.llm, 'config.json') },
      ...llm.files.map((f) => ({ role: 'llm-weights', path: f })),
      { role: 'tokenizer', path: tokenizerSrc },
    ];
    const sources = [];
    for (const s of sourceFiles) {
      sources.push({ role: s.role, path: basename(s.path), sha256: await sha256File(s.path), bytes: (await stat(s.path)).size });
    }

    const ids = tokenizerIds(llmConfig, genConfig);
    const meta: ModelJson = {
      format: PACKAGE_FORMAT,
      formatVersion: PACKAGE_FORMAT_VERSION,
      name: opts.name?.trim() || basename(opts.out),
      architecture: opts.arch,
      dtype,
      weights: describeWeights(weights),
      graph: graphKind,
      compute,
      vision: {
        imageSize,
        mean: CLIP_MEAN,
        std: CLIP_STD,
        imageTokens: plan.imageTokens,
        patchSize: vitShape.patchSize,
        width: vitShape.width,
        layers: vitShape.depth,
        heads: vitShape.heads,
        ...(plan.qformer ? { qformer: plan.qformer } : {}),
      },
      llm: {
        layers: shape.layers,
        heads: shape.heads,
        kvHeads: shape.kvHeads,
        headDim: shape.headDim,
        hidden: shape.hidden,
        intermediate: shape.intermediate,
        vocabSize: shape.vocabSize,
        ...ids,
        maxPositions: shape.maxPositions,
        rmsNormEps: shape.rmsNormEps,
        ropeTheta: shape.ropeTheta,
      },
      prompt: { ...plan.prompt, stopIds: [ids.eosId] },
      graphs: { vision, embed, decoder },
      tokenizer: 'tokenizer.json',
      provenance: {
        converter: CONVERTER_VERSION,
        createdAt: new Date().toISOString(),
        sources,
        options: {
          ...plan.options,
          ...quantOptions,
          ...(opts.fused ? { fused: true } : {}),
          ...(compute === 'float16' ? { compute: 'fp16' } : {}),
        },
      },
    };
    await writeFile(join(opts.out, 'model.json'), `${JSON.stringify(meta, null, 2)}\n`);
    log(`wrote ${join(opts.out, 'model.json')}`);
    return meta;
  } finally {
    await Promise.all([vit.close(), ckptRaw.close(), llm.close(), qformerRaw?.close()]);
  }
}

/** What differs between the architectures: the vision graph, LoRA, and what model.json records about them. */
interface ConversionPlan {
  label: string;
  vitShape: VitShape;
  imageTokens: number;
  buildVision: (g: GraphBuilder) => Promise<void>;
  lora?: LoraSpec;
  qformer?: NonNullable<ModelJson['vision']['qformer']>;
  prompt: Omit<ModelJson['prompt'], 'stopIds'>;
  extraSources: { role: string; path: string }[];
  options: ModelJson['provenance']['options'];
}

function vitShapeOrThrow(vit: TensorSource, heads: number, imageSize: number): VitShape {
  try {
    return inferVitShape(vit, heads, imageSize);
  } catch (e) {
    throw new ConvertError((e as Error).message);
  }
}

/** MiniGPT-v2's ln_vision is never loaded from any file: torch's default LayerNorm init. */
function defaultLnVision(width: number): LnVision {
  return { weight: new Float32Array(width).fill(1), bias: new Float32Array(width), eps: LN_VISION_EPS };
}

/**
 * The vision of the models without Q-Former (MiniGPT-v2, MiniGPT-4 with `has_qformer: False`): ln_vision at its
 * default init, 4 adjacent patches concatenated into one image token.
 */
function concatVision(
  vit: TensorSource,
  ckpt: TensorSource,
  vitShape: VitShape,
  o: { imageSize: number; hidden: number },
): Pick<ConversionPlan, 'vitShape' | 'imageTokens' | 'buildVision'> {
  const concat = 4;
  return {
    vitShape,
    imageTokens: (o.imageSize / vitShape.patchSize) ** 2 / concat,
    buildVision: (g) =>
      buildVisionGraph(g, { vit, ckpt, shape: vitShape, lnVision: defaultLnVision(vitShape.width), concat, hidden: o.hidden }),
  };
}

function planMinigptV2(
  ckpt: TensorSource,
  vit: TensorSource,
  o: { imageSize: number; vitHeads: number; loraAlpha: number; loraR?: number; hidden: number; dtype: WeightDType },
): ConversionPlan {
  const loraR = resolveLoraR(ckpt, o.loraR);
  const vitShape = inferVitShape(vit, o.vitHeads, o.imageSize);
  return {
    label: '',
    ...concatVision(vit, ckpt, vitShape, o),
    lora: { source: ckpt, r: loraR, alpha: o.loraAlpha },
    prompt: MINIGPT_V2_PROMPT,
    extraSources: [],
    options: { arch: 'minigpt-v2', imageSize: o.imageSize, vitHeads: o.vitHeads, loraR, loraAlpha: o.loraAlpha, dtype: o.dtype },
  };
}

/**
 * MiniGPT-4: the variant follows from llama_proj's input width, as upstream builds llama_proj from
 * `has_qformer`: the Q-Former hidden size (Vicuna v0, and any Q-Former checkpoint) or 4 x the ViT width
 * (`has_qformer: False`, the published Llama-2 MiniGPT-4: ln_vision at its default init, CLS dropped,
 * 4 adjacent patches concatenated, like MiniGPT-v2 without LoRA).
 */
function planMinigpt4(
  ckpt: TensorSource,
  vit: TensorSource,
  qformerRaw: TensorSource | null,
  o: ConvertOptions & {
    imageSize: number;
    vitHeads: number;
    hidden: number;
    dtype: WeightDType;
    llmConfig: Record<string, unknown>;
    log: (l: string) => void;
  },
): ConversionPlan {
  const vitShape = vitShapeOrThrow(vit, o.vitHeads, o.imageSize);
  const projIn = ckpt.info('llama_proj.weight').shape[1];
  const qformerHeads = o.qformerHeads ?? DEFAULTS.qformerHeads;
  let qformer: TensorSource | null = null;
  let qshape: QformerShape | null = null;
  if (qformerRaw) {
    qformer = qformerRaw.has('model.query_tokens') ? unwrapPrefix(qformerRaw, 'model.') : qformerRaw;
    try {
      qshape = inferQformerShape(qformer, qformerHeads);
    } catch (e) {
      throw new ConvertError(`${o.qformer}: ${(e as Error).message}`);
    }
  }
  let variant: Minigpt4Variant;
  if (qshape && projIn === qshape.hidden) {
    variant = 'qformer';
  } else if (projIn === 4 * vitShape.width) {
    variant = 'noqformer';
    if (qshape)
      o.log(`llama_proj takes 4 x the ViT width (${projIn}): MiniGPT-4 without Q-Former (has_qformer: False); ${o.qformer} is not used`);
  } else if (!qshape) {
    throw new ConvertError(
      `${o.ckpt}: llama_proj takes ${projIn} inputs, not 4 x the ViT width ${vitShape.width}: MiniGPT-4 with the Q-Former needs --qformer (the BLIP-2 checkpoint, blip2_pretrained_flant5xxl.pth)`,
    );
  } else {
    throw new ConvertError(
      `${o.ckpt}: llama_proj takes ${projIn} inputs, neither the Q-Former hidden size ${qshape.hidden} nor 4 x the ViT width ${vitShape.width}`,
    );
  }
  const promptStyle = o.prompt ?? defaultPromptStyle(variant, o.llm, o.llmConfig);
  const common = { arch: 'minigpt-4', imageSize: o.imageSize, vitHeads: o.vitHeads, variant, prompt: promptStyle };

  if (variant === 'noqformer') {
    return {
      label: ' without Q-Former',
      ...concatVision(vit, ckpt, vitShape, o),
      prompt: MINIGPT4_PROMPTS[promptStyle],
      extraSources: [],
      options: { ...common, dtype: o.dtype },
    };
  }

  const src = qformer as TensorSource;
  const qs = qshape as QformerShape;
  if (qs.hidden % qs.heads !== 0)
    throw new ConvertError(`Q-Former hidden size ${qs.hidden} is not divisible by --qformer-heads ${qs.heads}`);
  if (!src.has('ln_vision.weight'))
    throw new ConvertError(`${o.qformer} has no ln_vision.weight (MiniGPT-4 loads ln_vision from the BLIP-2 checkpoint)`);
  const lnWidth = src.info('ln_vision.weight').shape[0];
  if (lnWidth !== vitShape.width)
    throw new ConvertError(`${o.qformer}: ln_vision is ${lnWidth} wide but the ViT width is ${vitShape.width}`);
  return {
    label: ` with Q-Former (${qs.layers} layers, ${qs.queryTokens} query tokens)`,
    vitShape,
    imageTokens: qs.queryTokens,
    buildVision: async (g) => {
      const lnVision = {
        weight: await src.readFloat32('ln_vision.weight'),
        bias: await src.readFloat32('ln_vision.bias'),
        eps: LN_VISION_EPS,
      };
      await buildQformerVisionGraph(g, {
        vit,
        shape: vitShape,
        lnVision,
        qformer: src,
        qshape: qs,
        ckpt,
        hidden: o.hidden,
        stageOutputs: true,
      });
    },
    qformer: {
      queryTokens: qs.queryTokens,
      hidden: qs.hidden,
      layers: qs.layers,
      heads: qs.heads,
      intermediate: qs.intermediate,
      crossAttentionFreq: CROSS_ATTENTION_FREQ,
    },
    prompt: MINIGPT4_PROMPTS[promptStyle],
    extraSources: [{ role: 'qformer', path: o.qformer as string }],
    options: { ...common, qformerHeads: qs.heads, dtype: o.dtype },
  };
}
