#!/usr/bin/env node
// Conversion at scale (issue 6, "Scale"): writes a random MiniGPT-v2 checkpoint set with the exact tensor names
// and shapes of the published downloads (Llama-2-7B-chat as sharded fp16 safetensors, EVA ViT-g eva_vit_g.pth in
// fp16, the MiniGPT-v2 checkpoint with llama_proj + LoRA r 64), converts it with `minigpt convert` in a child
// process, and records wall time, CPU time and peak RSS of both steps (from /usr/bin/time -v when present, and by
// polling /proc/<pid>/status), the RSS at each converter log line, and the input and output file sizes.
//
//   npm run build && node scripts/bench-convert.mjs [options]
//
// Options:
//   --llm-layers N    Llama layers (default 32, the full model)
//   --vit-depth N     ViT blocks (default 39, the full ViT-g as MiniGPT-v2 uses it)
//   --dtype fp16|fp32 input weights (default fp16, as published)
//   --convert-dtype T package weight type passed to `minigpt convert --dtype` (default: the converter's, fp32)
//   --work DIR        scratch folder (default $TMPDIR/minigpt-bench); input/ and package/ go there
//   --keep            keep the scratch folder (default: delete it at the end)
//   --reuse-input     skip writing when DIR/input already holds a checkpoint of this shape
//   --run             afterwards load the package in a child and run the vision graph and one prefill step
//                     (skipped when the package is larger than half the machine's memory)
//   --report FILE     write the JSON report there (default: print only)
//   --markdown FILE   write the markdown table there
// Peak RSS is the converter's own; the page cache is not counted.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readdir, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { cpus, totalmem, tmpdir, platform, release } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { eachArg, fieldArg, intArg, shapeArg } from './args.mjs';

const ROOT = join(fileURLToPath(import.meta.url), '..', '..');
const GB = 1e9;
const GiB = 2 ** 30;

function parseArgs(argv) {
  const o = {
    llmLayers: 32,
    vitDepth: 39,
    dtype: 'fp16',
    work: join(tmpdir(), 'minigpt-bench'),
    keep: false,
    reuse: false,
    run: false,
    intervalMs: 200,
  };
  const fields = {
    values: { '--convert-dtype': 'convertDtype', '--work': 'work', '--report': 'report', '--markdown': 'markdown' },
    switches: { '--keep': 'keep', '--run': 'run' },
  };
  eachArg(argv, (a, next) => {
    if (shapeArg(o, a, next) || fieldArg(o, a, next, fields)) return;
    switch (a) {
      case '--reuse-input':
        o.reuse = true;
        o.keep = true;
        break;
      case '--interval-ms':
        o.intervalMs = intArg(a, next());
        break;
      default:
        throw new Error(`unknown option ${a}`);
    }
  });
  if (o.dtype !== 'fp16' && o.dtype !== 'fp32') throw new Error(`--dtype must be fp16 or fp32`);
  return o;
}

const fmtBytes = (b) => (b >= GB ? `${(b / GB).toFixed(2)} GB` : b >= 1e6 ? `${(b / 1e6).toFixed(1)} MB` : `${(b / 1e3).toFixed(1)} kB`);
const fmtGiB = (b) => `${(b / GiB).toFixed(2)} GiB`;

function procStatus(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (k) => {
      const m = new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s);
      return m ? Number(m[1]) * 1024 : undefined;
    };
    return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
  } catch {
    return undefined;
  }
}

function childPids(pid) {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** `/usr/bin/time -v` output -> the numbers we report. */
function parseTimeV(text) {
  const get = (label) => {
    const line = text.split('\n').find((l) => l.trim().startsWith(label));
    return line ? line.slice(line.lastIndexOf(': ') + 2).trim() : undefined;
  };
  const wall = get('Elapsed (wall clock) time');
  let wallSeconds;
  if (wall) wallSeconds = wall.split(':').reduce((a, p) => a * 60 + Number(p), 0);
  const maxKb = Number(get('Maximum resident set size (kbytes)'));
  return {
    maxRssBytes: Number.isFinite(maxKb) ? maxKb * 1024 : undefined,
    wallSeconds,
    userSeconds: Number(get('User time (seconds)')),
    systemSeconds: Number(get('System time (seconds)')),
    exitStatus: Number(get('Exit status')),
  };
}

/**
 * Runs `node args...` (under /usr/bin/time -v when present), polling the node process's VmRSS / VmHWM, and
 * stamping each stderr line with the time and RSS. Resolves with the measurements; rejects on a non-zero exit.
 */
async function measured(label, args, { intervalMs, env } = {}) {
  const timeBin = existsSync('/usr/bin/time') ? '/usr/bin/time' : undefined;
  const timeOut = timeBin ? join(tmpdir(), `bench-time-${process.pid}-${label}.txt`) : undefined;
  const cmd = timeBin ? timeBin : process.execPath;
  const argv = timeBin ? ['-v', '-o', timeOut, process.execPath, ...args] : args;
  const t0 = performance.now();
  const child = spawn(cmd, argv, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let nodePid = timeBin ? undefined : child.pid;
  let hwm = 0;
  const samples = [];
  const lines = [];
  let stdout = '';
  const sample = () => {
    if (nodePid === undefined) nodePid = childPids(child.pid)[0];
    if (nodePid === undefined) return undefined;
    const s = procStatus(nodePid);
    if (!s) return undefined;
    if (s.hwm !== undefined) hwm = Math.max(hwm, s.hwm);
    return s.rss;
  };
  const timer = setInterval(() => {
    const rss = sample();
    if (rss !== undefined) samples.push([Number(((performance.now() - t0) / 1000).toFixed(2)), rss]);
  }, intervalMs ?? 200);
  child.stdout.on('data', (d) => {
    stdout += d;
  });
  let pending = '';
  child.stderr.on('data', (d) => {
    pending += d;
    let nl;
    while ((nl = pending.indexOf('\n')) >= 0) {
      const text = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      const rss = sample();
      const t = (performance.now() - t0) / 1000;
      lines.push({ t: Number(t.toFixed(2)), rss, hwm, text });
      process.stderr.write(`  [${label} ${t.toFixed(1)}s rss ${rss ? fmtGiB(rss) : '?'}] ${text}\n`);
    }
  });
  const code = await new Promise((res) => child.on('close', (c) => res(c)));
  clearInterval(timer);
  const seconds = (performance.now() - t0) / 1000;
  let time;
  if (timeOut && existsSync(timeOut)) {
    time = parseTimeV(readFileSync(timeOut, 'utf8'));
    await rm(timeOut, { force: true });
  }
  if (code !== 0)
    throw new Error(
      `${label} failed (exit ${code}); last lines:\n${lines
        .slice(-10)
        .map((l) => l.text)
        .join('\n')}`,
    );
  return {
    seconds: Number(seconds.toFixed(2)),
    peakRssBytes: time?.maxRssBytes ?? hwm,
    polledPeakRssBytes: hwm,
    userSeconds: time?.userSeconds,
    systemSeconds: time?.systemSeconds,
    source: time ? '/usr/bin/time -v (Maximum resident set size)' : '/proc/<pid>/status VmHWM, polled',
    lines,
    samples,
    stdout,
  };
}

async function listFiles(dir) {
  const out = [];
  const walk = async (d) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else out.push({ file: relative(dir, p), bytes: (await stat(p)).size });
    }
  };
  await walk(dir);
  return out.sort((a, b) => a.file.localeCompare(b.file));
}

/** Peak RSS between converter log lines: which graph was being built when memory peaked. */
function phases(convertRun) {
  const marks = [
    { name: 'vision graph (ViT + llama_proj)', re: /^\s*vision\.onnx:/ },
    { name: 'embed graph', re: /^\s*embed\.onnx:/ },
    { name: 'decoder graph (Llama + LoRA merge + lm_head)', re: /^\s*decoder\.onnx:/ },
    { name: 'sha256 of the sources, model.json', re: /^wrote .*model\.json/ },
  ];
  const result = [];
  let start = 0;
  for (const m of marks) {
    const line = convertRun.lines.find((l) => m.re.test(l.text));
    if (!line) continue;
    const inPhase = convertRun.samples.filter(([t]) => t >= start && t <= line.t).map(([, r]) => r);
    if (line.rss) inPhase.push(line.rss);
    result.push({
      name: m.name,
      fromSeconds: start,
      toSeconds: line.t,
      seconds: Number((line.t - start).toFixed(2)),
      peakRssBytes: inPhase.length ? Math.max(...inPhase) : undefined,
    });
    start = line.t;
  }
  return result;
}

/** At most `n` [t, rss] points: the largest RSS of each time bucket (so the peak survives). */
function downsample(samples, n) {
  if (samples.length <= n) return samples;
  const end = samples[samples.length - 1][0];
  const buckets = new Map();
  for (const [t, rss] of samples) {
    const k = Math.min(n - 1, Math.floor((t / end) * n));
    const prev = buckets.get(k);
    if (!prev || rss > prev[1]) buckets.set(k, [t, rss]);
  }
  return [...buckets.values()];
}

function machine() {
  const c = cpus();
  return {
    cpus: c.length,
    cpuModel: c[0]?.model,
    memoryGiB: Number((totalmem() / GiB).toFixed(1)),
    node: process.version,
    os: `${platform()} ${release()}`,
  };
}

function markdown(r) {
  const rows = [];
  rows.push(`| step | wall time | CPU user + sys | peak RSS |`);
  rows.push(`| --- | ---: | ---: | ---: |`);
  for (const [name, s] of [
    ['write random checkpoint', r.write],
    ['minigpt convert', r.convert],
    ...(r.run ? [['load + vision + prefill', r.run]] : []),
  ]) {
    if (!s) continue;
    const cpu = s.userSeconds !== undefined ? `${s.userSeconds.toFixed(0)} + ${s.systemSeconds.toFixed(0)} s` : '?';
    rows.push(`| ${name} | ${s.seconds.toFixed(1)} s | ${cpu} | ${fmtGiB(s.peakRssBytes)} |`);
  }
  rows.push('');
  rows.push(`| converter phase | time | peak RSS (polled) |`);
  rows.push(`| --- | ---: | ---: |`);
  for (const p of r.convert.phases)
    rows.push(`| ${p.name} | ${p.seconds.toFixed(1)} s | ${p.peakRssBytes ? fmtGiB(p.peakRssBytes) : '?'} |`);
  rows.push('');
  rows.push(`| input file | bytes | | output file | bytes |`);
  rows.push(`| --- | ---: | --- | --- | ---: |`);
  const n = Math.max(r.input.files.length, r.output.files.length);
  for (let i = 0; i < n; i++) {
    const a = r.input.files[i];
    const b = r.output.files[i];
    rows.push(
      `| ${a ? `\`${a.file}\`` : ''} | ${a ? fmtBytes(a.bytes) : ''} | | ${b ? `\`${b.file}\`` : ''} | ${b ? fmtBytes(b.bytes) : ''} |`,
    );
  }
  rows.push(`| **total** | **${fmtBytes(r.input.totalBytes)}** | | **total** | **${fmtBytes(r.output.totalBytes)}** |`);
  return rows.join('\n');
}

async function main() {
  const o = parseArgs(process.argv);
  const dist = join(ROOT, 'dist', 'src', 'convert', 'random-checkpoints.js');
  if (!existsSync(dist) || !existsSync(join(ROOT, 'dist', 'src', 'cli', 'main.js'))) throw new Error('run `npm run build` first');
  const rc = await import(pathToFileURL(dist).href);
  const shape = rc.randomShape('llama2-7b', { llmLayers: o.llmLayers, vitDepth: o.vitDepth });
  const tensors = rc.randomCheckpointTensors(shape, { dtype: o.dtype });
  const params = Object.values(tensors)
    .flat()
    .reduce((a, t) => a + t.shape.reduce((x, y) => x * y, 1), 0);
  const inputEstimate = rc.estimateRandomCheckpointBytes(shape, { dtype: o.dtype });
  // fp32 package: every weight once (LoRA merged away), plus the embedding table twice (embed + lm_head are separate
  // tensors anyway) and the pos_embed interpolated from 257 to 1025 tokens
  const outputEstimate = 4 * params + 4 * (1025 - 257) * shape.vit.width;
  await mkdir(o.work, { recursive: true });
  const fsStat = await statfs(o.work);
  const free = fsStat.bavail * fsStat.bsize;
  const inputDir = join(o.work, 'input');
  const pkgDir = join(o.work, 'package');
  const reuse = o.reuse && existsSync(join(inputDir, 'minigptv2_checkpoint.pth'));
  const need = (reuse ? 0 : inputEstimate) + outputEstimate + 2 * GB;
  console.error(
    `shape: Llama-2-7B widths, ${shape.llm.layers} layers; EVA ViT-g, ${shape.vit.depth} blocks; ${(params / 1e9).toFixed(2)} B parameters\n` +
      `input ~${fmtBytes(inputEstimate)} (${o.dtype}), package ~${fmtBytes(outputEstimate)} (fp32); free in ${o.work}: ${fmtBytes(free)}`,
  );
  if (need > free) {
    throw new Error(
      `not enough disk: need ~${fmtBytes(need)} in ${o.work}, ${fmtBytes(free)} free; use fewer --llm-layers / --vit-depth or another --work`,
    );
  }

  const report = {
    date: new Date().toISOString(),
    machine: { ...machine(), work: o.work, freeDiskBytes: free },
    config: {
      preset: 'llama2-7b',
      llmLayers: shape.llm.layers,
      vitDepth: shape.vit.depth,
      dtype: o.dtype,
      ckptDtype: 'fp32',
      seed: 0,
      parameters: params,
      convertDtype: o.convertDtype ?? 'default',
    },
  };
  try {
    if (!reuse) {
      await rm(inputDir, { recursive: true, force: true });
      console.error('writing the random checkpoint ...');
      report.write = await measured(
        'write',
        [
          join(ROOT, 'scripts', 'random-checkpoint.mjs'),
          '--preset',
          'llama2-7b',
          '--llm-layers',
          String(o.llmLayers),
          '--vit-depth',
          String(o.vitDepth),
          '--dtype',
          o.dtype,
          '--out',
          inputDir,
          '--json',
        ],
        o,
      );
    }
    report.input = { files: await listFiles(inputDir) };
    report.input.totalBytes = report.input.files.reduce((a, f) => a + f.bytes, 0);

    await rm(pkgDir, { recursive: true, force: true });
    console.error('converting ...');
    const args = [
      join(ROOT, 'bin', 'minigpt.js'),
      'convert',
      '--arch',
      'minigpt-v2',
      '--vit',
      join(inputDir, 'eva_vit_g.pth'),
      '--llm',
      join(inputDir, 'llama'),
      '--ckpt',
      join(inputDir, 'minigptv2_checkpoint.pth'),
      '--out',
      pkgDir,
      ...(o.convertDtype ? ['--dtype', o.convertDtype] : []),
    ];
    report.convert = await measured('convert', args, o);
    report.convert.command = `node ${args.map((a) => (a.startsWith(`${ROOT}/`) ? relative(ROOT, a) : a)).join(' ')}`;
    report.convert.phases = phases(report.convert);
    report.output = { files: await listFiles(pkgDir) };
    report.output.totalBytes = report.output.files.reduce((a, f) => a + f.bytes, 0);

    if (o.run) {
      if (report.output.totalBytes > totalmem() / 2) {
        console.error(`--run skipped: the package (${fmtBytes(report.output.totalBytes)}) is larger than half the memory`);
      } else {
        const script = `
          const { MiniGPT } = await import(${JSON.stringify(pathToFileURL(join(ROOT, 'dist', 'src', 'inference', 'model.js')).href)});
          const t0 = performance.now();
          const m = await MiniGPT.load(${JSON.stringify(pkgDir)}, { provider: 'cpu' });
          const t1 = performance.now();
          const S = m.meta.vision.imageSize;
          const px = new Float32Array(3 * S * S).map((_, i) => Math.sin(i * 0.001));
          const img = await m.vision.encode(px);
          const t2 = performance.now();
          const ctx = await m.context('[INST] <Img><ImageHere></Img> [grounding] describe this image [/INST]', [img]);
          const pre = await m.prefill(ctx);
          const t3 = performance.now();
          const finite = img.every(Number.isFinite) && pre.all.every(Number.isFinite);
          console.error('load ' + ((t1 - t0) / 1000).toFixed(1) + ' s, vision ' + ((t2 - t1) / 1000).toFixed(1) + ' s, prefill of ' + ctx.length + ' tokens ' + ((t3 - t2) / 1000).toFixed(1) + ' s, finite ' + finite);
          process.stdout.write(JSON.stringify({ loadSeconds: (t1 - t0) / 1000, visionSeconds: (t2 - t1) / 1000, prefillSeconds: (t3 - t2) / 1000, promptTokens: ctx.length, finite }));
          await m.close();`;
        report.run = await measured('run', ['--input-type=module', '-e', script], o);
        report.run.result = JSON.parse(report.run.stdout);
      }
    }
  } finally {
    if (!o.keep) await rm(o.work, { recursive: true, force: true });
  }
  for (const s of [report.write, report.convert, report.run]) {
    if (!s) continue;
    delete s.stdout;
    s.samples = downsample(s.samples, 300);
  }
  const md = markdown(report);
  console.log(md);
  if (o.report) await writeFile(o.report, `${JSON.stringify(report, null, 2)}\n`);
  if (o.markdown) await writeFile(o.markdown, `${md}\n`);
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
