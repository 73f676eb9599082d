// One hook for what the tests of a file (or describe block) share and start once: a stack, a fake platform, a server.
import { afterAll, beforeAll } from 'vitest';

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
