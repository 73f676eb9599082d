// Where a run's time goes: onnxruntime's own profiles (SessionOptions.enableProfiling, one JSON trace per session,
// written when the session is released) summed per graph and per kind of run. What it is for: the fixed cost of a
// decoding step on a GPU (issue 21) is the gap between a run's wall time and the GPU time of its kernels, and the
// kernels that dominate a prefill or an image are the ones to make faster. `minigpt ask --profile DIR` and
// scripts/gpu-compare.sh write and read them.
//
// A trace holds, per run: `model_run` (wall time of session.run), one `*_kernel_time` event per node (CPU time in
// the node's kernel: the computation itself on the CPU provider, the time to encode and submit it on WebGPU), and on
// WebGPU one `Api` event per GPU program with its duration measured by the GPU (timestamp queries), named
// `node&op&program`. Runs are told apart by how many rows pass through their Linear layers (tokens x batch): a
// decoding step of one answer is 1 row, a prefill its prompt's length, 8 answers decoding together 8.
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';

/** The file prefix of a session's trace: `<graph>-<n>`; onnxruntime appends `_<date>_<time>.json`. */
export function profilePrefix(dir: string, graph: string, n: number): string {
  return join(dir, `${graph}-${n}`);
}
const TRACE_FILE = /^(.+)-\d+_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+\.json$/;

interface TraceEvent {
  cat: string;
  name: string;
  ts: number;
  dur: number;
  args?: { op_name?: string; provider?: string; input_type_shape?: Record<string, number[]>[] };
}
const KERNEL_TIME = '_kernel_time';

export interface OpTime {
  /** op type, with the GPU program after a colon where it has another name (e.g. `MatMulNBits:DP4AMatMulNBits`) */
  op: string;
  /** milliseconds a run */
  ms: number;
  /** kernels a run */
  count: number;
}

export interface RunClass {
  graph: string;
  /** rows through the graph's Linear layers in each of these runs (tokens x batch); null: it has no Linear layer */
  rows: number | null;
  /** runs of this kind in the trace */
  runs: number;
  /**
   * runs the figures below are the mean of: all but the first where there are several (the first of a kind also
   * compiles kernels and plans memory)
   */
  measured: number;
  /** wall time of session.run, ms a run */
  wall_ms: number;
  /** CPU time in the nodes' kernels, ms a run (on a GPU provider: encoding and submitting them) */
  kernel_ms: number;
  /** GPU time of the run's programs, ms a run (WebGPU; null where the provider records none) */
  gpu_ms: number | null;
  /** kernels a run */
  kernels: number;
  /** the costliest ops, by GPU time where there is one, else by kernel time */
  top: OpTime[];
}

export interface ProfileSummary {
  files: string[];
  classes: RunClass[];
  /** GPU programs whose node no run of their trace has (none expected; counted so that a loss shows) */
  unmatched_programs: number;
}

/** The trace files under `dir` (written at or after `since`, ms since the epoch), with their graph's name. */
async function traceFiles(dir: string, since: number): Promise<{ graph: string; file: string }[]> {
  const found: { graph: string; file: string }[] = [];
  for (const f of (await readdir(dir)).sort()) {
    const m = TRACE_FILE.exec(f);
    if (m && (await stat(join(dir, f))).mtimeMs >= since) found.push({ graph: m[1]!, file: join(dir, f) });
  }
  return found;
}

const LINEAR_OPS = new Set(['MatMul', 'MatMulNBits', 'MatMulNBitsMlp', 'Gemm', 'FusedMatMul', 'MatMulInteger', 'DynamicQuantizeMatMul']);

/** Rows through a Linear node: its input's rows (all dimensions but the last), when it multiplies by a 2-D weight. */
function linearRows(e: TraceEvent): number | null {
  const op = e.args?.op_name;
  const shapes = e.args?.input_type_shape?.map((s) => Object.values(s)[0] ?? []);
  if (!op || !LINEAR_OPS.has(op) || !shapes?.length) return null;
  const [x, w] = shapes as [number[], number[] | undefined];
  // A weight the CPU provider has pre-packed is not listed. MatMulNBits' packed weights are 3-D; any other multiply
  // by a non-2-D operand is attention, not a Linear.
  if (w && !op.startsWith('MatMulNBits') && w.length !== 2) return null;
  return x.slice(0, -1).reduce((a, b) => a * b, 1);
}

interface Run {
  wall: number;
  kernel: number;
  gpu: number;
  kernels: number;
  rows: number | null;
  ops: Map<string, { us: number; count: number }>;
  cpuOps: Map<string, { us: number; count: number }>;
}

/** Adds `us` microseconds of `count` kernels to `key`'s total. */
function add(m: Map<string, { us: number; count: number }>, key: string, us: number, count = 1): void {
  const o = m.get(key) ?? { us: 0, count: 0 };
  o.us += us;
  o.count += count;
  m.set(key, o);
}

/**
 * One trace's runs. CPU events belong to the `model_run` whose window they start in. GPU programs cannot be placed
 * by their times: onnxruntime 1.30 gives them on a clock of its own, which sessions sharing the WebGPU device
 * (all of ours) move, and appends them after the run's CPU events. They come in the order they ran, each named
 * after its node, so they are matched against each run's sequence of GPU nodes in turn: a program belongs to the
 * current run while its node is at or after the last one matched there, else to the next run that has its node.
 */
function runsOf(events: TraceEvent[]): { runs: Run[]; unmatched: number } {
  const windows = events.filter((e) => e.cat === 'Session' && e.name === 'model_run').sort((a, b) => a.ts - b.ts);
  const runs: Run[] = windows.map((w) => ({ wall: w.dur, kernel: 0, gpu: 0, kernels: 0, rows: null, ops: new Map(), cpuOps: new Map() }));
  // each run's nodes placed on a GPU provider, in the order they ran
  const gpuNodes: string[][] = runs.map(() => []);
  // the last window starting at or before ts (binary search: a decode trace has hundreds of runs)
  const runAt = (ts: number): number => {
    let lo = 0;
    let hi = windows.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (windows[mid]!.ts <= ts) lo = mid + 1;
      else hi = mid;
    }
    return lo - 1;
  };
  const programs: TraceEvent[] = [];
  for (const e of events) {
    if (e.cat === 'Node' && e.name.endsWith(KERNEL_TIME)) {
      const i = runAt(e.ts);
      if (i < 0) continue;
      const r = runs[i]!;
      r.kernel += e.dur;
      add(r.cpuOps, e.args?.op_name ?? '?', e.dur);
      const rows = linearRows(e);
      if (rows !== null) r.rows = Math.max(r.rows ?? 0, rows);
      if (e.args?.provider && e.args.provider !== 'CPUExecutionProvider') gpuNodes[i]!.push(e.name.slice(0, -KERNEL_TIME.length));
    } else if (e.cat === 'Api') {
      programs.push(e);
    }
  }
  let unmatched = 0;
  let run = 0;
  let at = 0;
  // A graph of one GPU node (the attention check's) has no order to tell its runs apart: there a program the node
  // has already run in this run starts the next. (Elsewhere a node may run one program twice: the fused MLP's
  // MatMulNBitsMlp quantises its input for gate and up.)
  const seen = new Set<string>();
  for (const e of programs) {
    const [node = '', op = '?', program = op] = e.name.split('&');
    let k = gpuNodes[run]?.indexOf(node, at) ?? -1;
    if (k === at && gpuNodes[run]!.length === 1 && seen.has(program)) k = -1;
    if (k !== at) seen.clear();
    if (k < 0) {
      let next = run + 1;
      while (next < runs.length && (k = gpuNodes[next]!.indexOf(node)) < 0) next++;
      if (next >= runs.length) {
        unmatched++;
        continue;
      }
      run = next;
    }
    at = k;
    seen.add(program);
    const r = runs[run]!;
    r.gpu += e.dur;
    r.kernels += 1;
    add(r.ops, program === op ? op : `${op}:${program}`, e.dur);
  }
  for (const r of runs) if (r.ops.size === 0) r.kernels = [...r.cpuOps.values()].reduce((n, o) => n + o.count, 0);
  return { runs, unmatched };
}

/**
 * Per graph and kind of run (rows), the mean figures of a run and its costliest ops, from the traces in `dir`
 * written since `since` (ms since the epoch; default all: a folder used before holds older runs' traces too).
 */
export async function summariseProfiles(dir: string, opts: { since?: number; top?: number } = {}): Promise<ProfileSummary> {
  const topN = opts.top ?? 8;
  const files = await traceFiles(dir, opts.since ?? 0);
  let unmatchedPrograms = 0;
  const groups = new Map<string, { graph: string; rows: number | null; runs: Run[] }>();
  for (const { graph, file } of files) {
    const events = JSON.parse(await readFile(file, 'utf8')) as TraceEvent[];
    const { runs, unmatched } = runsOf(events);
    unmatchedPrograms += unmatched;
    for (const run of runs) {
      const key = `${graph}\u0000${run.rows}`;
      const g = groups.get(key) ?? { graph, rows: run.rows, runs: [] };
      g.runs.push(run);
      groups.set(key, g);
    }
  }
  const classes = [...groups.values()].map(({ graph, rows, runs }) => {
    const measured = runs.length > 1 ? runs.slice(1) : runs;
    const n = measured.length;
    const mean = (f: (r: Run) => number) => measured.reduce((s, r) => s + f(r), 0) / n / 1000;
    const onGpu = measured.some((r) => r.ops.size > 0);
    const ops = new Map<string, { us: number; count: number }>();
    for (const r of measured) for (const [k, o] of onGpu ? r.ops : r.cpuOps) add(ops, k, o.us, o.count);
    const top = [...ops.entries()]
      .sort((a, b) => b[1].us - a[1].us)
      .slice(0, topN)
      .map(([op, o]) => ({ op, ms: round(o.us / n / 1000), count: round(o.count / n) }));
    return {
      graph,
      rows,
      runs: runs.length,
      measured: n,
      wall_ms: round(mean((r) => r.wall)),
      kernel_ms: round(mean((r) => r.kernel)),
      gpu_ms: onGpu ? round(mean((r) => r.gpu)) : null,
      kernels: round(measured.reduce((k, r) => k + r.kernels, 0) / n),
      top,
    } satisfies RunClass;
  });
  classes.sort((a, b) => a.graph.localeCompare(b.graph) || (a.rows ?? -1) - (b.rows ?? -1));
  return { files: files.map((f) => f.file), classes, unmatched_programs: unmatchedPrograms };
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}

/** The summary as lines for a terminal. */
export function formatProfile(s: ProfileSummary): string {
  const lines: string[] = [];
  for (const c of s.classes) {
    const rows = c.rows === null ? 'no Linear' : `${c.rows} row${c.rows === 1 ? '' : 's'}`;
    const gpu = c.gpu_ms === null ? '' : `, GPU ${c.gpu_ms.toFixed(2)} ms`;
    lines.push(
      `${c.graph}, ${rows}: ${c.runs} run${c.runs === 1 ? '' : 's'}; a run: wall ${c.wall_ms.toFixed(2)} ms, kernels (CPU) ${c.kernel_ms.toFixed(2)} ms${gpu}, ${c.kernels} kernels`,
    );
    const total = c.gpu_ms ?? c.kernel_ms;
    for (const o of c.top) {
      const share = total > 0 ? ` (${Math.round((o.ms / total) * 100)} %)` : '';
      lines.push(`  ${o.op.padEnd(50)} ${o.ms.toFixed(3).padStart(10)} ms${share} x${o.count}`);
    }
  }
  if (s.unmatched_programs) lines.push(`(${s.unmatched_programs} GPU programs not placed in a run)`);
  return lines.join('\n');
}
