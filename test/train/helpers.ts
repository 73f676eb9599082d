// Shared by the training recipe tests: train.py command lines and the logs its runs write.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

const TRAIN_DIR = join(import.meta.dirname, '..', '..', 'models/demo/train');
const TRAIN_PY = join(TRAIN_DIR, 'train.py');

/** A train.py command line: the script, then each of `opts` in order as `--name value` (`true`: the flag alone). */
export function trainPy(opts: Record<string, string | number | true>): string[] {
  const args = [TRAIN_PY];
  for (const [name, value] of Object.entries(opts)) args.push(`--${name}`, ...(value === true ? [] : [String(value)]));
  return args;
}

/** `python -c` arguments that run `lines` with the recipe's modules importable (`import train`). */
export function trainProbe(lines: string[]): string[] {
  return ['-c', ['import sys', `sys.path.insert(0, ${JSON.stringify(TRAIN_DIR)})`, ...lines].join('\n')];
}

/** The records of run `dir`'s train_log.jsonl, one a line. */
export async function trainLog(dir: string): Promise<Record<string, number>[]> {
  return (await readFile(join(dir, 'train_log.jsonl'), 'utf8'))
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, number>);
}
