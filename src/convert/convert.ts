// Published MiniGPT checkpoints -> model package (DESIGN.md section 2). Each graph is built in turn,
// its weights streamed to external data as they are read, so memory holds one tensor at a time.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { copyFile, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { GraphBuilder, type GraphIO } from './onnx/builder.js';
import { buildVisionGraph, inferVitShape } from './graphs/vision.js';
import { buildDecoderGraph, buildEmbedGraph, llamaShapeFromConfig, loraKeys, type LlamaShape } from './graphs/llama.js';
import { openCheckpoint, openHfWeights, unwrapPrefix, type TensorSource } from './readers/index.js';
import { PACKAGE_FORMAT, PACKAGE_FORMAT_VERSION, type GraphSpec, type ModelJson } from '../inference/package.js';
import { CLIP_MEAN, CLIP_STD, MINIGPT_V2_PROMPT } from '../inference/presets.js';

export const CONVERTER_VERSION = 'minigpt-bot convert 1';

export type Arch = 'minigpt-v2' | 'minigpt-4';
export type WeightDType = 'fp32' | 'fp16' | 'int8' | 'int4';

export interface ConvertOptions {
  arch: Arch;
  vit: string;
  llm: string;
  ckpt: string;
  qformer?: string;
  imageSize?: number;
  vitHeads?: number;
  loraR?: number;
  loraAlpha?: number;
  dtype?: WeightDType;
  out: string;
  log?: (line: string) => void;
}

export class ConvertError extends Error {}

/** Defaults for what the published files do not record (DESIGN.md section 3). */
const DEFAULTS = { vitHeads: 16, imageSize: { 'minigpt-v2': 448, 'minigpt-4': 224 }, loraAlpha: 16, loraR: 64 } as const;

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
  if (!keys) throw new ConvertError('the MiniGPT-v2 checkpoint has no LoRA tensors (llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight)');
  const r = ckpt.info(keys.a).shape[0];
  if (requested !== undefined && requested !== r) throw new ConvertError(`--lora-r ${requested} disagrees with the checkpoint, whose LoRA tensors have rank ${r}`);
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
  const pick = (k: string, d: number) => (typeof gen?.[k] === 'number' ? (gen[k] as number) : typeof cfg[k] === 'number' ? (cfg[k] as number) : d);
  return { bosId: pick('bos_token_id', 1), eosId: pick('eos_token_id', 2), padId: pick('pad_token_id', 0) };
}

export async function convert(opts: ConvertOptions): Promise<ModelJson> {
  const log = opts.log ?? (() => {});
  const dtype = opts.dtype ?? 'fp32';
  if (opts.arch !== 'minigpt-v2') {
    throw new ConvertError(`--arch ${opts.arch}: only minigpt-v2 packages can be built so far (MiniGPT-4 needs the Q-Former graph)`);
  }
  if (dtype !== 'fp32') throw new ConvertError(`--dtype ${dtype}: only fp32 packages can be built so far`);

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
  const tokenizerSrc = join(opts.llm, 'tokenizer.json');
  try {
    await stat(tokenizerSrc);
  } catch {
    throw new ConvertError(`${opts.llm} has no tokenizer.json (a folder with only tokenizer.model is not supported yet)`);
  }

  let shape: LlamaShape;
  try {
    shape = llamaShapeFromConfig(llmConfig);
  } catch (e) {
    throw new ConvertError((e as Error).message);
  }

  const vit = await openCheckpoint(opts.vit);
  const ckptRaw = await openCheckpoint(opts.ckpt);
  const llm = await openHfWeights(opts.llm);
  try {
    const ckpt = ckptRaw.has('model.llama_proj.weight') ? unwrapPrefix(ckptRaw, 'model.') : ckptRaw;
    if (!ckpt.has('llama_proj.weight')) throw new ConvertError(`${opts.ckpt} has no llama_proj.weight: is it a MiniGPT checkpoint?`);
    const loraR = resolveLoraR(ckpt, opts.loraR);
    const vitShape = inferVitShape(vit, vitHeads, imageSize);
    const concat = 4;
    const imageTokens = (imageSize / vitShape.patchSize) ** 2 / concat;

    await mkdir(opts.out, { recursive: true });
    log(`converting ${opts.arch} (${dtype}) -> ${opts.out}`);

    const visionG = new GraphBuilder('minigpt_vision', join(opts.out, 'vision.onnx.data'));
    await buildVisionGraph(visionG, {
      vit,
      ckpt,
      shape: vitShape,
      // MiniGPT-v2's ln_vision is never loaded from any file: torch's default LayerNorm init.
      lnVision: { weight: new Float32Array(vitShape.width).fill(1), bias: new Float32Array(vitShape.width), eps: 1e-5 },
      concat,
      hidden: shape.hidden,
    });
    const vision = await saveGraph(visionG, opts.out, 'vision.onnx', log);

    const embedG = new GraphBuilder('minigpt_embed', join(opts.out, 'embed.onnx.data'));
    await buildEmbedGraph(embedG, llm, shape);
    const embed = await saveGraph(embedG, opts.out, 'embed.onnx', log);

    const decoderG = new GraphBuilder('minigpt_decoder', join(opts.out, 'decoder.onnx.data'));
    await buildDecoderGraph(decoderG, { llm, shape, lora: { source: ckpt, r: loraR, alpha: loraAlpha } });
    const decoder = await saveGraph(decoderG, opts.out, 'decoder.onnx', log);

    await copyFile(tokenizerSrc, join(opts.out, 'tokenizer.json'));

    const sourceFiles: { role: string; path: string }[] = [
      { role: 'vit', path: opts.vit },
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
      name: basename(opts.out),
      architecture: opts.arch,
      dtype,
      vision: {
        imageSize,
        mean: CLIP_MEAN,
        std: CLIP_STD,
        imageTokens,
        patchSize: vitShape.patchSize,
        width: vitShape.width,
        layers: vitShape.depth,
        heads: vitShape.heads,
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
      prompt: { ...MINIGPT_V2_PROMPT, stopIds: [ids.eosId] },
      graphs: { vision, embed, decoder },
      tokenizer: 'tokenizer.json',
      provenance: {
        converter: CONVERTER_VERSION,
        createdAt: new Date().toISOString(),
        sources,
        options: { arch: opts.arch, imageSize, vitHeads, loraR, loraAlpha, dtype },
      },
    };
    await writeFile(join(opts.out, 'model.json'), `${JSON.stringify(meta, null, 2)}\n`);
    log(`wrote ${join(opts.out, 'model.json')}`);
    return meta;
  } finally {
    await Promise.all([vit.close(), ckptRaw.close(), llm.close()]);
  }
}
