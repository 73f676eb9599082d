// `minigpt serve` as a real process (the compiled build), for tests of several processes: its log lines, a
// wait for a line, signals, its exit.
import { spawn, type ChildProcess } from 'node:child_process';
import { BIN, ROOT } from './cli.js';

export interface ServeProcess {
  child: ChildProcess;
  /** stderr lines so far */
  lines: string[];
  /** resolves with the first match of `re` in a line (past or future) */
  waitFor(re: RegExp, timeoutMs?: number): Promise<RegExpExecArray>;
  /** resolves with the exit code (null: killed by a signal) */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(signal: NodeJS.Signals): void;
}

export function startServe(args: string[], env: NodeJS.ProcessEnv): ServeProcess {
  const child = spawn(process.execPath, [BIN, 'serve', ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const waiters: { re: RegExp; resolve: (m: RegExpExecArray) => void }[] = [];
  let buf = '';
  const onData = (d: string) => {
    buf += d;
    for (let at = buf.indexOf('\n'); at >= 0; at = buf.indexOf('\n')) {
      const line = buf.slice(0, at);
      buf = buf.slice(at + 1);
      lines.push(line);
      for (const w of [...waiters]) {
        const m = w.re.exec(line);
        if (m) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(m);
        }
      }
    }
  };
  child.stderr!.setEncoding('utf8').on('data', onData);
  child.stdout!.setEncoding('utf8').on('data', onData);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  return {
    child,
    lines,
    exited,
    kill: (signal) => void child.kill(signal),
    waitFor(re, timeoutMs = 60_000) {
      for (const line of lines) {
        const m = re.exec(line);
        if (m) return Promise.resolve(m);
      }
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`no line matching ${re} within ${timeoutMs} ms; the process said:\n${lines.join('\n')}`)),
          timeoutMs,
        );
        const w = {
          re,
          resolve: (m: RegExpExecArray) => {
            clearTimeout(timer);
            resolve(m);
          },
        };
        waiters.push(w);
        void exited.then(({ code, signal }) => {
          if (waiters.includes(w)) {
            clearTimeout(timer);
            reject(new Error(`the process exited (${code ?? signal}) before a line matching ${re}; it said:\n${lines.join('\n')}`));
          }
        });
      });
    },
  };
}
