// One hook for what the tests of a file (or describe block) share and start once: a stack, a fake platform, a server.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { type TestBotConfig, writeBotConfig } from './bot-config.js';

/** What such a hook hands the tests when it starts an adapter: the parts, and the adapter's log lines. */
export type WithLogs<T> = T & { readonly logs: string[] };

/**
 * Registers beforeAll(start) and afterAll(close) around an object that `start` fills in, and returns that object.
 * `start` may fill it a field at a time, so that `close` (which must allow for unset fields) closes what had started
 * when a later part failed. Read its fields in tests and hooks, not while the file is collected: a test that runs
 * at all runs after beforeAll. `init` holds what is there at once (a log array the start writes to).
 */
export function useShared<T extends object>(
  start: (into: Partial<T>) => Promise<void>,
  close: (started: Partial<T>) => Promise<void>,
  init: Partial<T> = {},
): T {
  const shared = init;
  beforeAll(() => start(shared));
  afterAll(() => close(shared));
  return shared as T;
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
