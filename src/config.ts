// YAML configuration (README, "Use the real MiniGPT weights"; .env.example): model fields named like upstream's eval configs, plus runtime
// fields. Secrets and deployment settings come only from the environment.
import { readFile, stat } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parse } from 'yaml';
import { z } from 'zod';
import { PROVIDER_CHOICES, type ProviderChoice } from './inference/providers.js';
import type { Arch, ConvertOptions, WeightDType } from './convert/convert.js';
import type { Minigpt4PromptStyle } from './inference/presets.js';

const modelSection = z
  .object({
    arch: z.enum(['minigpt_v2', 'minigpt4']).optional(),
    /** model package folder, relative to the repository root (the config's parent folder) */
    package: z.string().min(1),
    /** upstream selects 8-bit weights with it; here it selects a quantised package if `low_resource_package` is set */
    low_resource: z.boolean().default(false),
    low_resource_package: z.string().optional(),
    /**
     * weights of `low_resource_package`: int8 (upstream's 8-bit mode; a 7B model needs ~9 GB) or int4 (~5.5 GB,
     * faster on the CPU, a larger rounding error); both computed in int8 on the CPU (docs/quantisation.md)
     */
    low_resource_dtype: z.enum(['int8', 'int4']).default('int8'),
    max_new_tokens: z.number().int().positive().max(4096).default(300),
    num_beams: z.number().int().positive().max(16).default(1),
    temperature: z.number().min(0).max(10).default(0.6),
    top_p: z.number().gt(0).max(1).default(0.9),
    repetition_penalty: z.number().positive().max(10).default(1.05),
    /** tokens of history kept (oldest turns dropped first, never the image) */
    max_context_len: z.number().int().positive().default(3800),
    /** overrides of what the package records */
    prompt_template: z.string().includes('{}').optional(),
    end_sym: z.string().optional(),

    // What `minigpt convert --config` reads: the published downloads and what they do not record.
    /** upstream's model_type: `pretrain` (MiniGPT-v2), `pretrain_vicuna0` / `pretrain_llama2` (MiniGPT-4 prompt style) */
    model_type: z.enum(['pretrain', 'pretrain_vicuna0', 'pretrain_llama2']).optional(),
    /** EVA ViT weights (eva_vit_g.pth); upstream names the model here (eva_clip_g) and downloads this file */
    vit_model: z.string().min(1).optional(),
    /** BLIP-2 checkpoint with the Q-Former and ln_vision (MiniGPT-4 with the Q-Former) */
    q_former_model: z.string().min(1).optional(),
    /** Hugging Face Llama / Vicuna folder */
    llama_model: z.string().min(1).optional(),
    /** the MiniGPT checkpoint (`{'model': ...}` with llama_proj, and LoRA for v2) */
    ckpt: z.string().min(1).optional(),
    /** MiniGPT-4: false for the variant without Q-Former (the published Llama-2 model); default true */
    has_qformer: z.boolean().optional(),
    /** folder that relative vit_model / q_former_model / llama_model / ckpt are looked up in (relative to the repository root; default `weights`) */
    weights_dir: z.string().min(1).optional(),
    image_size: z.number().int().positive().optional(),
    vit_heads: z.number().int().positive().optional(),
    qformer_heads: z.number().int().positive().optional(),
    lora_r: z.number().int().positive().optional(),
    lora_alpha: z.number().int().positive().optional(),
    /** weight type of `package`; `low_resource_package` has low_resource_dtype's */
    dtype: z.enum(['fp32', 'fp16', 'int8', 'int4']).optional(),
    /** int8 / int4 quantisation block along the input features */
    block_size: z.number().int().positive().optional(),
    /** int8 / int4: MatMulNBits accuracy_level (docs/quantisation.md; default 4, int8 compute on the CPU) */
    accuracy_level: z.number().int().min(0).max(4).optional(),
  })
  .strict()
  .superRefine((m, ctx) => {
    const bad = (path: string, message: string) => ctx.addIssue({ code: 'custom', path: [path], message });
    if (m.arch === 'minigpt_v2') {
      if (m.model_type !== undefined && m.model_type !== 'pretrain')
        bad('model_type', `${m.model_type} is a MiniGPT-4 model_type; arch minigpt_v2 has model_type pretrain`);
      for (const k of ['q_former_model', 'has_qformer', 'qformer_heads'] as const) {
        if (m[k] !== undefined) bad(k, `is for arch minigpt4 (MiniGPT-v2 has no Q-Former)`);
      }
    } else if (m.arch === 'minigpt4') {
      if (m.model_type === 'pretrain')
        bad('model_type', "pretrain is MiniGPT-v2's model_type; arch minigpt4 has pretrain_vicuna0 or pretrain_llama2");
      for (const k of ['lora_r', 'lora_alpha'] as const) {
        if (m[k] !== undefined) bad(k, 'is for arch minigpt_v2 (MiniGPT-4 has no LoRA)');
      }
      if (m.has_qformer === false && m.q_former_model !== undefined) bad('q_former_model', 'is set but has_qformer is false');
    }
  });

const runtimeSection = z
  .object({
    execution_provider: z.enum(PROVIDER_CHOICES as [ProviderChoice, ...ProviderChoice[]]).default('auto'),
    threads: z.number().int().min(0).default(0),
    queue_size: z.number().int().positive().default(32),
    store_url: z.string().optional(),
    /** conversations answered at once, their decoding steps batched in one model run */
    max_batch: z.number().int().positive().max(64).default(8),
    /** memory for the KV caches of conversations' last turns (follow-ups prefill only their new tokens); 0 = off */
    kv_cache_mb: z.number().min(0).default(256),
    /** run an image and answers once at start (src/inference/warm-up.ts); auto = on GPU providers */
    warm_up: z.union([z.literal('auto'), z.boolean()]).default('auto'),
    /** conversations (and their images) are forgotten this many days after their last turn; 0 = kept until reset */
    conversation_ttl_days: z.number().min(0).default(30),
  })
  .strict();

const configSchema = z
  .object({
    model: modelSection,
    // (prefault: a config without a runtime section gets each field's own default, not a second copy of them)
    runtime: runtimeSection.prefault({}),
  })
  .strict();

export type BotConfig = z.infer<typeof configSchema> & { path: string; packageDir: string };

export class ConfigError extends Error {}

export const DEFAULT_CONFIG = 'configs/demo.yaml';

/**
 * Reads and validates a config. `EXECUTION_PROVIDER`, `STORE_URL` and `CONVERSATION_TTL_DAYS` from the
 * environment win over the file, as deployment settings do.
 */
export async function loadConfig(path: string, env: NodeJS.ProcessEnv = process.env): Promise<BotConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read config ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = parse(text);
  } catch (e) {
    throw new ConfigError(`config ${path} is not valid YAML: ${(e as Error).message.split('\n')[0]}`);
  }
  const parsed = configSchema.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.slice(0, 5).map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`);
    throw new ConfigError(`config ${path} is invalid:\n  ${issues.join('\n  ')}`);
  }
  const cfg = parsed.data;
  if (env.EXECUTION_PROVIDER) {
    const ep = env.EXECUTION_PROVIDER.trim().toLowerCase();
    if (!(PROVIDER_CHOICES as readonly string[]).includes(ep)) {
      throw new ConfigError(`EXECUTION_PROVIDER=${env.EXECUTION_PROVIDER}: expected one of ${PROVIDER_CHOICES.join(', ')}`);
    }
    cfg.runtime.execution_provider = ep as ProviderChoice;
  }
  if (env.STORE_URL) cfg.runtime.store_url = env.STORE_URL;
  if (env.CONVERSATION_TTL_DAYS?.trim()) {
    const days = Number(env.CONVERSATION_TTL_DAYS.trim());
    if (!(Number.isFinite(days) && days >= 0))
      throw new ConfigError(
        `CONVERSATION_TTL_DAYS=${env.CONVERSATION_TTL_DAYS}: expected a number of days (0: keep conversations until reset)`,
      );
    cfg.runtime.conversation_ttl_days = days;
  }
  // Package paths are relative to the repository root, i.e. the folder above configs/.
  const root = resolve(dirname(path), '..');
  const pkg = cfg.model.low_resource && cfg.model.low_resource_package ? cfg.model.low_resource_package : cfg.model.package;
  return { ...cfg, path, packageDir: isAbsolute(pkg) ? pkg : resolve(root, pkg) };
}

/** `minigpt convert` flags; each one wins over the config's value. Paths are relative to `cwd`. */
export type ConvertFlags = Partial<Omit<ConvertOptions, 'log' | 'fused'>> & {
  /** folder holding the downloads that the config names (overrides model.weights_dir) */
  weights?: string;
};

const CONFIG_ARCH: Record<NonNullable<BotConfig['model']['arch']>, Arch> = { minigpt_v2: 'minigpt-v2', minigpt4: 'minigpt-4' };

/**
 * The conversion a config describes (README, "Use the real MiniGPT weights"; .env.example): `minigpt convert --config F` builds the package
 * that `serve` with F loads (`low_resource_package` when `low_resource: true`, with `low_resource_dtype`
 * weights: int8 as upstream's 8-bit mode by default; else `package` with `dtype`), from the downloads that the config names. Relative
 * input names are looked up in `--weights DIR`, else `model.weights_dir` (relative to the repository root,
 * default `weights`). Every input is checked to exist before anything is read.
 */
export async function convertOptionsFromConfig(
  cfg: BotConfig,
  flags: ConvertFlags = {},
  cwd = process.cwd(),
): Promise<Omit<ConvertOptions, 'log'>> {
  const m = cfg.model;
  const where = `config ${cfg.path}`;
  const arch = flags.arch ?? (m.arch ? CONFIG_ARCH[m.arch] : undefined);
  if (!arch) throw new ConfigError(`${where}: model.arch is not set (minigpt_v2 or minigpt4); convert needs it, or pass --arch`);
  const root = resolve(dirname(cfg.path), '..');
  const weightsDir = flags.weights !== undefined ? resolve(cwd, flags.weights) : resolve(root, m.weights_dir ?? 'weights');

  interface Input {
    field: string;
    flag: string;
    path: string;
    fromFlag: boolean;
    kind: 'file' | 'folder';
  }
  const unset: string[] = [];
  const input = (
    field: string,
    flag: string,
    kind: Input['kind'],
    flagValue: string | undefined,
    configValue: string | undefined,
  ): Input | undefined => {
    if (flagValue !== undefined) return { field, flag, kind, path: resolve(cwd, flagValue), fromFlag: true };
    if (configValue !== undefined) return { field, flag, kind, path: resolve(weightsDir, configValue), fromFlag: false };
    unset.push(`model.${field} (or ${flag})`);
    return undefined;
  };
  const vit = input('vit_model', '--vit', 'file', flags.vit, m.vit_model);
  const llm = input('llama_model', '--llm', 'folder', flags.llm, m.llama_model);
  const ckpt = input('ckpt', '--ckpt', 'file', flags.ckpt, m.ckpt);
  let qformer: Input | undefined;
  if (flags.qformer !== undefined) {
    qformer = input('q_former_model', '--qformer', 'file', flags.qformer, undefined);
  } else if (arch === 'minigpt-4' && m.has_qformer !== false) {
    // upstream's has_qformer defaults to true: the Vicuna v0 models load the BLIP-2 Q-Former
    qformer = input('q_former_model', '--qformer', 'file', undefined, m.q_former_model);
  }
  if (unset.length > 0) {
    const qf = unset.some((u) => u.startsWith('model.q_former_model'))
      ? ' (MiniGPT-4 with the Q-Former needs the BLIP-2 checkpoint blip2_pretrained_flant5xxl.pth; set has_qformer: false for the variant without it)'
      : '';
    throw new ConfigError(`${where}: convert needs ${unset.join(', ')}${qf}`);
  }

  const problems: string[] = [];
  for (const i of [vit, qformer, llm, ckpt]) {
    if (!i) continue;
    const name = i.fromFlag ? i.flag : `model.${i.field}`;
    try {
      const st = await stat(i.path);
      if (i.kind === 'folder' && !st.isDirectory())
        problems.push(`${name}: ${i.path} is not a folder (expected the Hugging Face model folder)`);
      if (i.kind === 'file' && !st.isFile()) problems.push(`${name}: ${i.path} is not a file`);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      problems.push(`${name}: ${i.path} ${code === 'ENOENT' ? 'not found' : `cannot be read (${code ?? (e as Error).message})`}`);
    }
  }
  if (problems.length > 0) {
    const hint = [vit, qformer, llm, ckpt].some((i) => i && !i.fromFlag)
      ? `\n  the config's relative names are looked up in ${weightsDir} (--weights DIR, or model.weights_dir); the config's comments say what to download`
      : '';
    throw new ConfigError(`${where}: missing input${problems.length > 1 ? 's' : ''}:\n  ${problems.join('\n  ')}${hint}`);
  }

  const promptStyle: Minigpt4PromptStyle | undefined =
    m.model_type === 'pretrain_llama2' ? 'llama2' : m.model_type === 'pretrain_vicuna0' ? 'vicuna0' : undefined;
  // the package serve loads: low_resource_package (low_resource_dtype: int8 as upstream's 8-bit, or int4) or package (dtype)
  const dtype: WeightDType | undefined = flags.dtype ?? (m.low_resource ? m.low_resource_dtype : m.dtype);
  const quantised = dtype === 'int8' || dtype === 'int4';
  const v2 = arch === 'minigpt-v2';
  const opts: Omit<ConvertOptions, 'log'> = {
    arch,
    vit: vit!.path,
    llm: llm!.path,
    ckpt: ckpt!.path,
    ...(qformer ? { qformer: qformer.path } : {}),
    imageSize: flags.imageSize ?? m.image_size,
    vitHeads: flags.vitHeads ?? m.vit_heads,
    qformerHeads: flags.qformerHeads ?? (v2 ? undefined : m.qformer_heads),
    prompt: flags.prompt ?? (v2 ? undefined : promptStyle),
    loraR: flags.loraR ?? (v2 ? m.lora_r : undefined),
    loraAlpha: flags.loraAlpha ?? (v2 ? m.lora_alpha : undefined),
    dtype,
    // block_size describes the quantised package; the fp32/fp16 one has no blocks
    blockSize: flags.blockSize ?? (quantised ? m.block_size : undefined),
    accuracyLevel: flags.accuracyLevel ?? (quantised ? m.accuracy_level : undefined),
    out: flags.out !== undefined ? resolve(cwd, flags.out) : cfg.packageDir,
  };
  return opts;
}
