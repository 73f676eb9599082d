// `npm run soak` (issue 9): the long soak profile. The real bot process (dist/, Discord and Slack adapters, a
// SQLite store) against the fake Discord and fake Slack on loopback; a few thousand events in bursts from many
// users and threads; bounded in count and time. Prints the report (Markdown) and, with --write FILE, saves it.
//
//   npm run soak                                  3000 events, at most 15 minutes
//   npm run soak -- --events 500 --write docs/soak.md
//   options: --events N  --burst MIN-MAX  --pause MIN-MAX (ms)  --queue N  --minutes M  --seed S  --write FILE
//            --runtime 'kv_cache_mb: 0,max_batch: 4'   (extra `runtime:` settings of the bot's config)
//            --env MALLOC_ARENA_MAX=                     (extra environment of the bot process; the default
//                                                        MALLOC_ARENA_MAX=2 off, to see glibc's arena growth)
//
// Exit code 0 when every event got exactly one answer or "busy" reply in its own thread, the store holds
// exactly the answered turns, in send order, and the bot exited 0 on SIGTERM; 1 otherwise.
import { writeFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { formatReport, runSoak } from '../test/reliability/soak-harness.js';

if (process.argv.includes('--help') || process.argv.includes('-h')) {
  process.stdout.write(
    'npm run soak [-- --events N --burst MIN-MAX --pause MIN-MAX --queue N --minutes M --seed S --write FILE --runtime LINES --env K=V]\n' +
      'The real bot against the fake Discord and Slack, N events (default 3000) in bursts; see the top of scripts/soak.ts.\n',
  );
  process.exit(0);
}

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1] : dflt;
}
const range = (s: string): [number, number] => {
  const [a, b] = s.split('-').map(Number);
  return [a, Number.isFinite(b) ? b : a];
};

const events = Number(arg('events', '3000'));
const opts = {
  events,
  burst: range(arg('burst', '10-60')),
  pauseMs: range(arg('pause', '300-1500')),
  queueSize: Number(arg('queue', '32')),
  timeLimitMs: Number(arg('minutes', '15')) * 60_000,
  seed: Number(arg('seed', '9')),
  users: 60,
  runtime: arg('runtime', '') ? arg('runtime', '').split(',') : undefined,
  env: Object.fromEntries(
    arg('env', '')
      .split(',')
      .filter(Boolean)
      .map((kv) => kv.split('=') as [string, string]),
  ),
  channels: 6,
  log: (line: string) => process.stderr.write(`${line}\n`),
};
const rep = await runSoak(opts);
const when = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
const text = [
  formatReport(rep, `Soak: ${rep.events} events (${when})`),
  '',
  `Machine: ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB; Node ${process.version}; ` +
    `bursts of ${opts.burst.join('-')} events every ${opts.pauseMs.join('-')} ms, queue_size ${opts.queueSize}, demo model (forced answer), CPU.`,
].join('\n');
process.stdout.write(`${text}\n`);
const out = arg('write', '');
if (out) await writeFile(out, `${text}\n`);
const ok =
  rep.missing.length === 0 &&
  rep.extra.length === 0 &&
  rep.misrouted.length === 0 &&
  rep.reordered === 0 &&
  rep.errors === 0 &&
  rep.exitCode === 0;
if (!ok) process.stderr.write(`soak: FAILED\n${rep.botStderrTail}\n`);
process.exit(ok ? 0 : 1);
