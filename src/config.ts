// YAML configuration (DESIGN.md section 4): model fields named like upstream's eval configs, plus runtime
// fields. Secrets and deployment settings come only from the environment.
import { readFile } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { parse } from 'yaml';
import { z } from 'zod';
import { PROVIDER_CHOICES, type ProviderChoice } from './inference/providers.js';

const modelSection = z
  .object({
    arch: z.enum(['minigpt_v2', 'minigpt4']).optional(),
    /** model package folder, relative to the repository root (the config's parent folder) */
    package: z.string().min(1),
    /** upstream selects 8-bit weights with it; here it selects a quantised package if `low_resource_package` is set */
    low_resource: z.boolean().default(false),
    low_resource_package: z.string().optional(),
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
  })
  .strict();

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
  })
  .strict();

const configSchema = z
  .object({
    model: modelSection,
    runtime: runtimeSection.default({ execution_provider: 'auto', threads: 0, queue_size: 32, max_batch: 8, kv_cache_mb: 256 }),
  })
  .strict();

export type BotConfig = z.infer<typeof configSchema> & { path: string; packageDir: string };

export class ConfigError extends Error {}

export const DEFAULT_CONFIG = 'configs/demo.yaml';

/**
 * Reads and validates a config. `EXECUTION_PROVIDER` and `STORE_URL` from the environment win over the
 * file, as deployment settings do.
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
  // Package paths are relative to the repository root, i.e. the folder above configs/.
  const root = resolve(dirname(path), '..');
  const pkg = cfg.model.low_resource && cfg.model.low_resource_package ? cfg.model.low_resource_package : cfg.model.package;
  return { ...cfg, path, packageDir: isAbsolute(pkg) ? pkg : resolve(root, pkg) };
}
