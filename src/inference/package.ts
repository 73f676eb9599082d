// The model package: the contract between `minigpt convert` and the runtime (models/README.md).
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';

export const PACKAGE_FORMAT = 'minigpt-package';
export const PACKAGE_FORMAT_VERSION = 1;

/**
 * Sizes are bounded to what a loadable model can have, so that a corrupt or hostile model.json cannot make
 * the loader allocate per layer / per token beyond reason before the graphs themselves are checked.
 */
const size = (max: number) => z.number().int().positive().max(max);
/** A file of the package: a plain relative path inside the package folder. */
const packageFile = z
  .string()
  .min(1)
  .max(255)
  .refine((f) => !f.includes('\0') && !/^([\\/]|[A-Za-z]:)/.test(f) && !f.split(/[\\/]/).includes('..'), {
    message: 'must be a relative path inside the package folder',
  });

const ioSpec = z.object({
  name: z.string(),
  dtype: z.enum(['float32', 'float16', 'int64']),
  dims: z.array(z.union([z.number().int(), z.string()])),
});

const graphSpec = z.object({
  file: packageFile,
  /** external weight file(s) beside the graph */
  data: z.array(packageFile).max(1024).default([]),
  inputs: z.array(ioSpec),
  outputs: z.array(ioSpec),
});
export type GraphSpec = z.infer<typeof graphSpec>;

const sourceFile = z.object({
  role: z.string(),
  path: z.string(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  bytes: z.number().int().nonnegative(),
});

export const modelJsonSchema = z.object({
  format: z.literal(PACKAGE_FORMAT),
  formatVersion: z.literal(PACKAGE_FORMAT_VERSION),
  name: z.string(),
  architecture: z.enum(['minigpt-v2', 'minigpt-4']),
  dtype: z.enum(['fp32', 'fp16', 'int8', 'int4']),
  /**
   * How the weights are stored (src/convert/quantize.ts); absent in packages from before --dtype, which are
   * all float32. Graph inputs and outputs are float32 whatever the dtype, except the KV cache of a decoder
   * computing in float16 (`compute` below).
   */
  weights: z
    .object({
      /** Linear layers (LLM projections and lm_head, ViT / Q-Former Linears, llama_proj) */
      linear: z.enum(['float32', 'float16', 'int8', 'int4']),
      /** token embedding table and patch-embedding convolution */
      embeddings: z.enum(['float32', 'float16']),
      /** int8 / int4: com.microsoft MatMulNBits, symmetric block-wise along K, default zero point */
      quantization: z
        .object({
          op: z.literal('com.microsoft.MatMulNBits'),
          bits: z.union([z.literal(4), z.literal(8)]),
          blockSize: z.number().int().positive(),
          symmetric: z.boolean(),
          zeroPoint: z.number().int().nonnegative(),
          scales: z.enum(['float32', 'float16']),
          /** MatMulNBits accuracy_level on every node (4: int8 compute on the CPU); absent in packages from before it was set: 0 */
          accuracyLevel: z.number().int().min(0).max(4).optional(),
        })
        .optional(),
    })
    .optional(),
  /**
   * How the graphs are written (`minigpt convert --fused`): 'plain' ONNX ops, or 'fused' onnxruntime kernels
   * (the decoder: SimplifiedLayerNormalization, com.microsoft SkipSimplifiedLayerNormalization, RotaryEmbedding,
   * MultiHeadAttention, src/convert/graphs/llama-fused.ts; the ViT's blocks: src/convert/graphs/vision-fused.ts). Both have
   * the same inputs and outputs, so the runtime runs either the same way; absent in packages from before
   * --fused (plain).
   */
  graph: z.enum(['plain', 'fused']).default('plain'),
  /**
   * The compute type of the decoder and the ViT trunk (`minigpt convert --compute`): 'float16' computes in
   * float16 with norms and softmax in float32, and the decoder's KV cache inputs and outputs are float16
   * (src/convert/graphs/precision.ts); absent in packages from before it (float32).
   */
  compute: z.enum(['float32', 'float16']).default('float32'),
  vision: z.object({
    imageSize: size(4096),
    mean: z.tuple([z.number(), z.number(), z.number()]),
    std: z.tuple([z.number().positive(), z.number().positive(), z.number().positive()]),
    imageTokens: size(16384),
    patchSize: size(1024),
    width: size(65536),
    layers: size(1024),
    heads: size(1024),
    /** MiniGPT-4 with the BLIP-2 Q-Former: image_embeds are its query outputs projected by llama_proj */
    qformer: z
      .object({
        queryTokens: size(16384),
        hidden: size(65536),
        layers: size(1024),
        heads: size(1024),
        intermediate: size(1 << 20),
        crossAttentionFreq: size(1024),
      })
      .optional(),
  }),
  llm: z
    .object({
      layers: size(1024),
      heads: size(1024),
      kvHeads: size(1024),
      headDim: size(4096),
      hidden: size(1 << 17),
      intermediate: size(1 << 20),
      vocabSize: size(1 << 22),
      bosId: z.number().int().nonnegative(),
      eosId: z.number().int().nonnegative(),
      padId: z.number().int().nonnegative().optional(),
      maxPositions: size(1 << 21),
      rmsNormEps: z.number().positive(),
      ropeTheta: z.number().positive(),
    })
    .refine((l) => l.bosId < l.vocabSize && l.eosId < l.vocabSize && (l.padId === undefined || l.padId < l.vocabSize), {
      message: 'bosId, eosId and padId must be token ids below vocabSize',
    }),
  prompt: z.object({
    /** `{}` is replaced by the user turn (upstream's prompt_template) */
    template: z.string(),
    /** conversation roles as the upstream Conversation object has them */
    roles: z.tuple([z.string(), z.string()]),
    system: z.string(),
    separator: z.string(),
    imagePlaceholder: z.string(),
    imageToken: z.string(),
    stopStrings: z.array(z.string()).max(64),
    stopIds: z.array(z.number().int().nonnegative()).max(64),
  }),
  graphs: z.object({ vision: graphSpec, embed: graphSpec, decoder: graphSpec }),
  tokenizer: packageFile,
  provenance: z.object({
    converter: z.string(),
    createdAt: z.string(),
    sources: z.array(sourceFile),
    options: z.record(z.string(), z.union([z.string(), z.number(), z.boolean(), z.null()])),
  }),
});
export type ModelJson = z.infer<typeof modelJsonSchema>;

export class ModelPackageError extends Error {}

export interface ModelPackage {
  dir: string;
  meta: ModelJson;
  path(file: string): string;
}

/** Every file a package consists of besides model.json: the tokenizer and each graph with its external data. */
export function packageFiles(meta: ModelJson): string[] {
  return [meta.tokenizer, ...Object.values(meta.graphs).flatMap((g) => [g.file, ...g.data])];
}

/** Reads and validates `<dir>/model.json`; every file it names must exist. */
export async function loadPackage(dir: string): Promise<ModelPackage> {
  const metaPath = join(dir, 'model.json');
  let raw: string;
  try {
    raw = await readFile(metaPath, 'utf8');
  } catch {
    throw new ModelPackageError(`no model package at ${dir}: ${metaPath} is missing (build one with \`minigpt convert\`)`);
  }
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch (e) {
    throw new ModelPackageError(`${metaPath} is not valid JSON: ${(e as Error).message}`);
  }
  const parsed = modelJsonSchema.safeParse(json);
  if (!parsed.success) {
    const issues = parsed.error.issues.slice(0, 5).map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`);
    throw new ModelPackageError(`${metaPath} is not a valid model package description:\n  ${issues.join('\n  ')}`);
  }
  const meta = parsed.data;
  for (const f of packageFiles(meta)) {
    try {
      await stat(join(dir, f));
    } catch {
      throw new ModelPackageError(`model package ${dir} is incomplete: ${f} (named in model.json) is missing`);
    }
  }
  return { dir, meta, path: (f) => join(dir, f) };
}
