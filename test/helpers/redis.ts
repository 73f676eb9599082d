// A real redis-server (Debian's `redis-server` package; `npm test` installs it first: scripts/test-tools.sh) for a test: its own
// temp folder, a free loopback port, append-only file on request; stopped, killed or restarted by the test.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { freePort } from '../../src/util/net.js';
import { useShared } from './shared.js';

export { freePort };

/** How many connections the server has accepted since it started (INFO stats), read through `client`. */
export async function connectionsReceived(client: { info(section: string): Promise<string> }): Promise<number> {
  const m = /total_connections_received:(\d+)/.exec(await client.info('stats'));
  if (!m) throw new Error('INFO stats has no total_connections_received');
  return Number(m[1]);
}

export interface TestRedis {
  /** redis://127.0.0.1:<port> */
  url: string;
  port: number;
  dir: string;
  /** SHUTDOWN (with AOF: everything written is on disk) */
  stop(): Promise<void>;
  /** SIGKILL: what the append-only file has survives, nothing else */
  kill(): Promise<void>;
  /** starts it again on the same port and folder (after stop or kill) */
  start(): Promise<void>;
  /**
   * A client of its own (standing for another process), failing a command at once while the server is down
   * (maxRetriesPerRequest 1) and reconnecting by itself; disconnected by cleanup().
   */
  client(): Redis;
  /** disconnects the clients, stops the server and removes its folder */
  cleanup(): Promise<void>;
}

async function waitForPort(port: number, child: ChildProcess, log: () => string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`redis-server exited with ${child.exitCode}: ${log()}`);
    const ok = await new Promise<boolean>((resolve) => {
      const sock = connect(port, '127.0.0.1');
      sock.once('connect', () => {
        // A PING answered means it is loading no more.
        sock.write('PING\r\n');
      });
      sock.once('data', (d) => {
        sock.destroy();
        resolve(d.toString().startsWith('+PONG'));
      });
      sock.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`redis-server did not answer on port ${port}: ${log()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** `args`: more redis-server arguments (e.g. `--rename-command CLIENT ""` to play a host that refuses CLIENT) */
export async function startRedis(opts: { aof?: boolean; args?: string[] } = {}): Promise<TestRedis> {
  const dir = await mkdtemp(join(tmpdir(), 'minigpt-redis-'));
  const port = await freePort();
  let child: ChildProcess | undefined;
  let output = '';
  const args = [
    '--port',
    String(port),
    '--bind',
    '127.0.0.1',
    '--dir',
    dir,
    '--save',
    '',
    '--appendonly',
    opts.aof ? 'yes' : 'no',
    '--appendfsync',
    'always',
    '--daemonize',
    'no',
    '--loglevel',
    'warning',
    ...(opts.args ?? []),
  ];
  const start = async () => {
    output = '';
    const c = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    c.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    c.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    await new Promise<void>((resolve, reject) => {
      c.once('spawn', resolve);
      c.once('error', (err) =>
        reject(
          new Error(
            `cannot start redis-server (Debian package redis-server; npm test installs it first: scripts/test-tools.sh): ${err.message}`,
          ),
        ),
      );
    });
    child = c;
    await waitForPort(port, c, () => output);
  };
  const exited = (c: ChildProcess) =>
    c.exitCode !== null || c.signalCode !== null ? Promise.resolve() : new Promise<void>((r) => c.once('exit', () => r()));
  const stop = async () => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill('SIGTERM'); // redis-server shuts down cleanly on SIGTERM (AOF flushed)
    await exited(c);
  };
  const kill = async () => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill('SIGKILL');
    await exited(c);
  };
  await start();
  const url = `redis://127.0.0.1:${port}`;
  const clients: Redis[] = [];
  return {
    url,
    port,
    dir,
    stop,
    kill,
    start,
    client() {
      const c = new Redis(url, { maxRetriesPerRequest: 1 });
      c.on('error', () => {});
      clients.push(c);
      return c;
    },
    async cleanup() {
      for (const c of clients.splice(0)) c.disconnect();
      await stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A redis-server (startRedis) and a client of it, started before the tests of the file or describe block it is called in. */
export function useRedis(): { redis: TestRedis; raw: Redis } {
  return useShared<{ redis: TestRedis; raw: Redis }>(
    async (s) => {
      s.redis = await startRedis();
      s.raw = new Redis(s.redis.url);
    },
    async (s) => {
      s.raw?.disconnect();
      await s.redis?.cleanup();
    },
  );
}
