// A bot config file (what MINIGPT_CONFIG names) for the tests that start `serve`: a MiniGPT-v2 package on the CPU,
// with the model and runtime settings each test wants, written as YAML. Free of vitest: the soak harness, run by
// `npm run soak` outside vitest, writes one too (useBotConfig in shared.ts is the tests' hook).
import { writeFile } from 'node:fs/promises';
import { stringify } from 'yaml';
import type { BotConfig } from '../../src/config.js';

export interface TestBotConfig {
  /** the `model:` section; `arch` is minigpt_v2 unless given */
  model: Partial<BotConfig['model']> & { package: string };
  /** the `runtime:` section; `execution_provider` is cpu unless given */
  runtime?: Partial<BotConfig['runtime']>;
}

/** Writes `config` to `path` and returns `path`. */
export async function writeBotConfig(path: string, config: TestBotConfig): Promise<string> {
  const yaml = stringify({ model: { arch: 'minigpt_v2', ...config.model }, runtime: { execution_provider: 'cpu', ...config.runtime } });
  await writeFile(path, yaml);
  return path;
}
