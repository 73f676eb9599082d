// A temporary folder for the tests of one file: made before them, removed after them.
import { afterAll, beforeAll } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Registers the hooks that make the folder (`use` gets its path) and remove it, where the call stands. */
export function tempDirPerFile(prefix: string, use: (dir: string) => void): void {
  let dir: string | undefined;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), prefix));
    use(dir);
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });
}
