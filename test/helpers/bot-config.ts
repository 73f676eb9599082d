// A bot config file (what MINIGPT_CONFIG names) for the tests that start `serve`: a MiniGPT-v2 package on the CPU,
// with the model and runtime settings each test wants, written as YAML.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import type { BotConfig } from '../../src/config.js';
import { useShared } from './shared.js';

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

/** A temporary folder that the tests of a file share, and the bot config written in it. */
export interface ConfigFiles {
  work: string;
  /** the config file's path */
  config: string;
}

/**
 * Makes a temporary folder (`prefix` and a random tail) before the tests of the file or describe block it is called
 * in, writes `config` in it as `name`, and removes the folder after them.
 */
export function useBotConfig(prefix: string, name: string, config: TestBotConfig): ConfigFiles {
  return useShared<ConfigFiles>(
    async (s) => {
      s.work = await mkdtemp(join(tmpdir(), prefix));
      s.config = await writeBotConfig(join(s.work, name), config);
    },
    async (s) => {
      if (s.work) await rm(s.work, { recursive: true, force: true });
    },
  );
}
