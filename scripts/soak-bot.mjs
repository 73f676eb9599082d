#!/usr/bin/env node
// The bot under soak (issue 9): `minigpt serve` from the compiled build (dist/), started exactly as the CLI
// does (config, model package, every adapter whose credentials are in the environment), plus a probe that
// reports to the soak driver on stdout, one JSON object a line:
//   {"t":"ready", ...adapters}                 once serving
//   {"t":"req", "id", "conv", "code"?, "queueMs"?, "totalMs"?, "ms"}   per request the manager answered
//   {"t":"mem", "at", "rss", "heap", "external", "ab"}                every MEM_EVERY_MS
// SIGTERM closes the bot (finishing or cancelling answers, flushing the store) and exits 0.
//
// Run by test/reliability/soak-harness.ts; not meant to be started by hand.
import { serve } from '../dist/src/serve.js';

const MEM_EVERY_MS = Number(process.env.SOAK_MEM_EVERY_MS ?? 1000);
const out = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);

const bot = await serve({ log: (line) => process.stderr.write(`${line}\n`) });

// Observe every request the adapters hand to the manager: its queue wait and processing time (the manager's own
// `timings` event), or its error code, and the end-to-end time inside the bot.
const manager = bot.manager;
const handle = manager.handle.bind(manager);
manager.handle = (req) => {
  const t0 = performance.now();
  const events = handle(req);
  const conv = `${req.key?.platform}:${req.key?.channel}:${req.key?.thread}`;
  return (async function* () {
    let reported = false;
    try {
      for await (const ev of events) {
        if (ev.type === 'timings') {
          out({ t: 'req', id: req.requestId, conv, queueMs: ev.timings.queueMs, totalMs: ev.timings.totalMs, ms: performance.now() - t0 });
          reported = true;
        } else if (ev.type === 'error') {
          out({ t: 'req', id: req.requestId, conv, code: ev.code, ms: performance.now() - t0 });
          reported = true;
        }
        yield ev;
      }
    } finally {
      if (!reported) out({ t: 'req', id: req.requestId, conv, code: 'unfinished', ms: performance.now() - t0 });
    }
  })();
};

const mem = () => {
  const m = process.memoryUsage();
  out({ t: 'mem', at: Date.now(), rss: m.rss, heap: m.heapUsed, external: m.external, ab: m.arrayBuffers });
};
const timer = setInterval(mem, MEM_EVERY_MS);
mem();
out({ t: 'ready', adapters: bot.adapters.map((a) => ({ name: a.name, url: a.url })) });

let closing = false;
const stop = async (signal) => {
  if (closing) process.exit(1);
  closing = true;
  process.stderr.write(`soak-bot: ${signal}, shutting down\n`);
  clearInterval(timer);
  mem();
  await bot.close();
  process.exit(0);
};
process.on('SIGTERM', () => void stop('SIGTERM'));
process.on('SIGINT', () => void stop('SIGINT'));
// `gc` on demand (node --expose-gc), so that RSS samples after a collection compare like with like.
process.on('message', (m) => {
  if (m === 'gc' && typeof globalThis.gc === 'function') {
    globalThis.gc();
    mem();
  }
});
