// `minigpt bench` (`npm run bench`): latency and throughput of a package on this machine, and every
// optimisation of the runtime as a ratio against its baseline measured in the same run:
//   KV cache on / off (off: the whole sequence recomputed for every token), a follow-up with / without the
//   previous turn's KV cache, 8 conversations batched / one after another, image cache hit / miss, and the
//   share of each decoding step spent outside session.run (JavaScript).
// Each package runs in a child process of its own (peak RSS is that process's); progress goes to stderr,
// the table (or, with --json, one JSON object) to stdout.
// The scenarios, their profile table and targets, and the report live in src/cli/bench/ (profiles.ts first).
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { Option, type Command } from 'commander';
import { apiMarkdown, benchApi } from './bench/api.js';
import { benchCluster, clusterMarkdown } from './bench/cluster.js';
import { type ConversationBench, roundAll } from './bench/common.js';
import { benchPackage } from './bench/package.js';
import { DEFAULT_LARGE_DIR, IMAGE, PROFILES, ROOT } from './bench/profiles.js';
import { runBench } from './bench/run.js';
import { BENCH_VARIANTS, benchThread, benchWeights, parseDtypes, threadMarkdown, WEIGHTS_PROFILE } from './bench/weights.js';

/** The table, or with --json the result rounded, on stdout. */
function printResult<R>(r: R, json: boolean, markdown: (r: R) => string): void {
  process.stdout.write(json ? `${JSON.stringify(roundAll(r))}\n` : `${markdown(r)}\n`);
}

/** `--api DIR` / `--thread DIR`: the bench image in conversations of 32-token answers, as the flags set them. */
async function conversationBench<R>(
  bench: ConversationBench<R>,
  dir: string,
  o: { threads?: number; rounds?: number; defaultRounds: number; kvCacheMb?: number; json?: boolean },
  markdown: (r: R) => string,
  log: (line: string) => void,
): Promise<void> {
  const rounds = { rounds: o.rounds ?? o.defaultRounds, tokens: 32, kvCacheMb: o.kvCacheMb ?? 256 };
  const r = await bench(resolve(dir), await readFile(IMAGE), o.threads ?? os.availableParallelism(), rounds, log);
  printResult(r, Boolean(o.json), markdown);
}

/** `minigpt bench`: see the top of this file and docs/benchmarks.md. */
export function registerBenchCommand(program: Command, log: (line: string) => void): void {
  program
    .command('bench')
    .description('latency, throughput and memory of a package, and each runtime optimisation against its baseline (docs/benchmarks.md)')
    .option('--model <dir>', 'model package', join(ROOT, 'models', 'demo'))
    .option('--large <dir>', 'the 7B-layer-shaped random package (written there when missing)', DEFAULT_LARGE_DIR)
    .option('--no-large', 'skip the 7B-layer-shaped package')
    .option('--quick', 'a short profile of --model only (under a minute on the demo package)')
    .option('--json', 'print one JSON object instead of the table')
    .option('--threads <n>', 'intra-op threads (default: the number of cores)', (v) => Number.parseInt(v, 10))
    .option('--report <file>', 'also write the table and the JSON to this markdown file')
    .option(
      '--dtypes <list>',
      `weight types of the 7B-layer-shaped package to compare (comma-separated, int8 / int4 with -b<block size>, or "none"; default ${BENCH_VARIANTS.join(',')})`,
    )
    .addOption(new Option('--child <dir>').hideHelp())
    .option(
      '--thread <dir>',
      'only this package, as a bot user meets it: a thread with a new image, a follow-up, then another thread about the image (TTFT, decode tok/s, peak RSS; for a full-size package)',
    )
    .option(
      '--cluster <dir>',
      'only this package, served by 1 then 2 worker processes behind a front end on Redis (REDIS_URL, else a redis-server started here): 16 conversations at once, aggregate tok/s, p50 / p95 latency',
    )
    .option(
      '--api <dir>',
      'only this package, behind the OpenAI-compatible API: time to first token of a new image, and of a follow-up with and without the kept KV cache',
    )
    .option('--rounds <n>', 'with --thread / --api: rounds to run, the first a warm-up (default 2 / 4)', (v) => Number.parseInt(v, 10))
    .option(
      '--kv-cache-mb <n>',
      "with --thread / --api: the conversation manager's KV cache budget, as runtime.kv_cache_mb (default 256)",
      (v) => Number.parseInt(v, 10),
    )
    .addOption(new Option('--child-weights <dir>').hideHelp())
    .addOption(new Option('--profile <name>').choices(Object.keys(PROFILES)).hideHelp())
    .action(async (o) => {
      if (o.cluster) {
        const r = await benchCluster(resolve(o.cluster), { workers: [1, 2], conversations: 16, maxNewTokens: 32, maxBatch: 4 }, log);
        printResult(r, Boolean(o.json), clusterMarkdown);
        return;
      }
      if (o.api) return conversationBench(benchApi, o.api, { ...o, defaultRounds: 4 }, apiMarkdown, log);
      if (o.thread) return conversationBench(benchThread, o.thread, { ...o, defaultRounds: 2 }, threadMarkdown, log);
      if (o.childWeights) {
        const r = await benchWeights(
          resolve(o.childWeights),
          await readFile(IMAGE),
          o.threads ?? os.availableParallelism(),
          WEIGHTS_PROFILE,
          log,
        );
        process.stdout.write(`${JSON.stringify(r)}\n`);
        return;
      }
      if (o.child) {
        const r = await benchPackage(resolve(o.child), o.profile ?? 'quick', o.threads ?? os.availableParallelism(), log);
        process.stdout.write(`${JSON.stringify(r)}\n`);
        return;
      }
      await runBench({
        model: o.model,
        large: o.large === false ? false : resolve(o.large),
        dtypes: parseDtypes(o.dtypes),
        quick: Boolean(o.quick),
        json: Boolean(o.json),
        threads: o.threads,
        report: o.report,
        log,
        write: (s) => process.stdout.write(s),
      });
    });
}
