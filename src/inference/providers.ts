// Execution provider choice (README, "GPU"): cuda | webgpu | cpu, or auto = the first of those
// that initialises, said in one log line.
import * as ort from 'onnxruntime-node';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { createRequire } from 'node:module';
import { basename, dirname, join } from 'node:path';
import { profilePrefix } from './profile.js';

export type ProviderName = 'cuda' | 'webgpu' | 'cpu';
export type ProviderChoice = ProviderName | 'auto';

export const PROVIDER_CHOICES: readonly ProviderChoice[] = ['auto', 'cuda', 'webgpu', 'cpu'];
const AUTO_ORDER: readonly ProviderName[] = ['cuda', 'webgpu', 'cpu'];

export class ProviderError extends Error {}

export function parseProviderChoice(value: string | undefined): ProviderChoice {
  const v = (value ?? 'auto').trim().toLowerCase();
  if ((PROVIDER_CHOICES as readonly string[]).includes(v)) return v as ProviderChoice;
  throw new ProviderError(`EXECUTION_PROVIDER=${value}: expected one of ${PROVIDER_CHOICES.join(', ')}`);
}

export interface SessionFactoryOptions {
  provider: ProviderChoice;
  /** intra-op threads for the CPU provider (0 or absent: the machine's cores) */
  threads?: number;
  /** the WebGPU provider's validationMode (default: env MINIGPT_WEBGPU_VALIDATION, else onnxruntime's, 'basic') */
  webgpuValidation?: WebGpuValidation;
  /**
   * Write onnxruntime's profile of every session here (one JSON trace each, when it is released; profile.ts reads
   * them). Profiling costs time per node: the figures of a profiled run are for finding where time goes, not for
   * quoting.
   */
  profileDir?: string;
  log?: (line: string) => void;
}

/**
 * How much the WebGPU provider checks its GPU work: 'full' / 'basic' (onnxruntime's default) / 'wgpuOnly'
 * (Dawn's API validation only) / 'disabled' (none: what onnxruntime-genai's WebGPU configurations use). The
 * checks cost CPU time per kernel launch, the fixed cost of a decoding step on a GPU; what they are worth there
 * is for scripts/gpu-compare.sh to measure (docs/gpu.md). On lavapipe, which runs the kernels on the CPU too,
 * the tiny demo decoder's step is the same with any of them (52.7 / 54.3 / 51.6 ms: basic / disabled / wgpuOnly).
 */
export type WebGpuValidation = 'full' | 'basic' | 'wgpuOnly' | 'disabled';
const WEBGPU_VALIDATION: readonly WebGpuValidation[] = ['full', 'basic', 'wgpuOnly', 'disabled'];

export function parseWebGpuValidation(value: string | undefined): WebGpuValidation | undefined {
  if (value === undefined || value.trim() === '') return undefined;
  const v = WEBGPU_VALIDATION.find((m) => m.toLowerCase() === value.trim().toLowerCase());
  if (!v) throw new ProviderError(`MINIGPT_WEBGPU_VALIDATION=${value}: expected one of ${WEBGPU_VALIDATION.join(', ')}`);
  return v;
}

export interface OpenedSession {
  session: ort.InferenceSession;
  provider: ProviderName;
  /** providers `auto` passed over, with the reason */
  skipped: string[];
}

/**
 * Session tuning, measured with `minigpt bench` and a decoder-only sweep on the 7B-layer-shaped package
 * (2 Llama-2-7B layers + its 32000-entry head, fp32) on the 2-core benchmark machine (docs/benchmarks.md):
 * - graphOptimizationLevel 'all': constant folding, redundant node elimination and the CPU fusions
 *   (MatMul + Add, ...) and layout transforms; every graph here is static apart from its sequence lengths.
 * - intraOpNumThreads = the machine's cores (os.availableParallelism(), which also honours CPU affinity;
 *   the config's `runtime.threads` overrides): a decoding step is a matrix-vector product over ~200M
 *   weights per 7B layer, bound by memory bandwidth that one core does not saturate. 1 -> 2 threads: a
 *   step 99 -> 52 ms, 8 rows 165 -> 93 ms, a 128-token prefill 897 -> 547 ms. (The tiny demo model is
 *   10-20 % slower per step on 2 threads than on one, its ops being too small to split; real widths decide.)
 * - interOpNumThreads 1, executionMode 'sequential': the graphs are chains, so running independent nodes
 *   in parallel only adds threads competing for the same cores.
 * - enableCpuMemArena true (onnxruntime's default, kept deliberately): intermediate tensors of each run come
 *   from the arena instead of fresh allocations; without it an 8-row step took 1032 ms instead of 93
 *   (page faults on ~100 MB of activations per run). Not for the vision graph (`arena: false`): it runs once
 *   per new image, and its activations are the model's largest (EVA ViT-g at 448 px: 16 heads x 1025^2
 *   attention scores); an arena would keep ~240 MB of them for the life of the process. Without it the
 *   full-size MiniGPT-v2 int4 package's peak RSS fell by ~200 MB, its vision taking 8.0-8.1 s instead of
 *   8.4-8.7; two blocks alone, timed alternately in one process, were 8-10 % slower without it (fp32 and
 *   int4): memory is what a CPU-only machine runs out of first (docs/quantisation.md, "A full-size ...").
 * - enableMemPattern false: a memory pattern is planned for one set of input shapes, and the sequence
 *   length changes at every step; planning it is wasted work.
 * - intra-op spinning left on (default): on or off made no measurable difference (55 vs 52 ms a step).
 */
function sessionOptions(provider: ProviderName, factory: SessionFactoryOptions, graph: GraphSettings): ort.InferenceSession.SessionOptions {
  const { keepOnDevice = [], arena = true, dataDir, profilePrefix } = graph;
  const validation = provider === 'webgpu' ? factory.webgpuValidation : undefined;
  const opts: ort.InferenceSession.SessionOptions = {
    // (the Node binding hands an execution provider's other keys to the provider as its options)
    executionProviders: [
      validation ? ({ name: 'webgpu', validationMode: validation } as ort.InferenceSession.ExecutionProviderConfig) : provider,
    ],
    graphOptimizationLevel: 'all',
  };
  const threads = factory.threads;
  // A graph opened from bytes finds its external weights here (onnxruntime refuses paths outside it otherwise)
  if (dataDir) opts.extra = { session: { model_external_initializers_file_folder_path: dataDir } };
  if (profilePrefix) {
    opts.enableProfiling = true;
    opts.profileFilePrefix = profilePrefix;
  }
  if (provider === 'cpu') {
    opts.intraOpNumThreads = threads || availableParallelism();
    opts.interOpNumThreads = 1;
    opts.executionMode = 'sequential';
    opts.enableCpuMemArena = arena;
    opts.enableMemPattern = false;
  }
  // Only the WebGPU provider can hand outputs back as device buffers in Node; the KV cache then stays on the GPU.
  if (provider === 'webgpu' && keepOnDevice.length) {
    opts.preferredOutputLocation = Object.fromEntries(keepOnDevice.map((n) => [n, 'gpu-buffer' as const]));
  }
  return opts;
}

function cudaHint(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return `${msg}\n  (the CUDA provider libraries are not in the npm package: on a machine with an NVIDIA GPU and internet run \`npm run install-cuda\`)`;
}

/**
 * Why `auto` should not even try a provider on this machine, or null when it may work. Trying a provider
 * whose libraries are missing makes onnxruntime and Dawn print errors to stderr, so `auto` looks first.
 */
export function providerUnavailableReason(provider: ProviderName): string | null {
  if (process.platform !== 'linux') return null;
  if (provider === 'cuda') {
    const pkgDir = dirname(dirname(createRequire(import.meta.url).resolve('onnxruntime-node')));
    const lib = join(pkgDir, 'bin', 'napi-v6', process.platform, process.arch, 'libonnxruntime_providers_cuda.so');
    return existsSync(lib) ? null : 'CUDA provider libraries not installed (npm run install-cuda)';
  }
  if (provider === 'webgpu') {
    const dirs = [
      ...(process.env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean),
      '/usr/lib/x86_64-linux-gnu',
      '/usr/lib/aarch64-linux-gnu',
      '/usr/lib64',
      '/usr/lib',
      '/lib/x86_64-linux-gnu',
      '/usr/local/lib',
    ];
    if (!dirs.some((d) => existsSync(join(d, 'libvulkan.so.1')))) return 'no Vulkan loader (libvulkan.so.1)';
    // Without a GPU, Vulkan may still answer through Mesa's software driver (lavapipe, on many desktops):
    // WebGPU there runs on the CPU, far slower than the CPU provider. `auto` takes WebGPU only where a GPU's
    // device node exists; `--provider webgpu` still opens it anywhere.
    return gpuDeviceNode() ? null : 'no GPU device (/dev/nvidia0, /dev/dri/renderD*)';
  }
  return null;
}

/** A GPU's device node: NVIDIA's, or a DRM render node (AMD, Intel and other Mesa drivers). */
function gpuDeviceNode(): string | null {
  if (existsSync('/dev/nvidia0')) return '/dev/nvidia0';
  try {
    const render = readdirSync('/dev/dri').find((f) => f.startsWith('renderD'));
    return render ? `/dev/dri/${render}` : null;
  } catch {
    return null;
  }
}

/** What one graph's session needs besides the factory's settings. */
export interface GraphSettings {
  /** outputs that should stay in device memory when possible */
  keepOnDevice?: readonly string[];
  /** a CPU memory arena (default true; see sessionOptions) */
  arena?: boolean;
  /** where a graph given as bytes has its external data */
  dataDir?: string;
  /** onnxruntime's profile of the session goes to this file prefix (profile.ts) */
  profilePrefix?: string;
}

/**
 * Opens a session on the requested provider. With `auto`, tries cuda, webgpu, cpu in turn and keeps the
 * first that initialises.
 */
export async function openSession(
  path: string | Uint8Array,
  opts: SessionFactoryOptions,
  graph: GraphSettings = {},
): Promise<OpenedSession> {
  const order = opts.provider === 'auto' ? AUTO_ORDER : [opts.provider];
  const failures: string[] = [];
  const skipped: string[] = [];
  for (const provider of order) {
    const unavailable = opts.provider === 'auto' ? providerUnavailableReason(provider) : null;
    if (unavailable) {
      skipped.push(`${provider}: ${unavailable}`);
      continue;
    }
    try {
      const options = sessionOptions(provider, opts, graph);
      // (two overloads of create: a file path, or the graph's bytes)
      const session = await (typeof path === 'string'
        ? ort.InferenceSession.create(path, options)
        : ort.InferenceSession.create(path, options));
      return { session, provider, skipped: [...skipped, ...failures] };
    } catch (err) {
      failures.push(`${provider}: ${provider === 'cuda' ? cudaHint(err) : err instanceof Error ? err.message : String(err)}`);
    }
  }
  const what = typeof path === 'string' ? path : 'a runtime graph';
  throw new ProviderError(`cannot open ${what} with execution provider ${opts.provider}:\n  ${failures.join('\n  ')}`);
}

/**
 * Picks the provider once for a whole package (the first graph decides), so every graph runs on the same
 * device, and logs the choice in one line.
 */
export class SessionFactory {
  private chosen: ProviderName | null = null;
  private readonly placed = new WeakMap<ort.InferenceSession, ProviderName>();
  /** sessions opened (numbers the profile traces) */
  private opened = 0;

  private readonly opts: SessionFactoryOptions;

  constructor(opts: SessionFactoryOptions) {
    this.opts = { ...opts, webgpuValidation: opts.webgpuValidation ?? parseWebGpuValidation(process.env.MINIGPT_WEBGPU_VALIDATION) };
    // (onnxruntime writes no trace, and says nothing, where the folder does not exist)
    if (opts.profileDir) mkdirSync(opts.profileDir, { recursive: true });
  }

  get provider(): ProviderName | null {
    return this.chosen;
  }

  /** The provider a session of this factory runs on. */
  providerOf(session: ort.InferenceSession): ProviderName {
    const p = this.placed.get(session);
    if (!p) throw new Error('providerOf: a session this factory did not open');
    return p;
  }

  /**
   * `path`: a graph file, or a graph's bytes (the runtime's own small graphs). `arena: false`: no CPU memory
   * arena for this graph (see sessionOptions). `host`: on the CPU provider whatever the package's provider is
   * (it does not choose the package's provider). `dataDir`: where a graph given as bytes has its external data.
   * `name`: what the graph is called in profiles (default: its file's name, without `.onnx`).
   */
  async open(
    path: string | Uint8Array,
    keepOnDevice: readonly string[] = [],
    opts: { arena?: boolean; host?: boolean; dataDir?: string; name?: string } = {},
  ): Promise<ort.InferenceSession> {
    const provider = opts.host ? 'cpu' : (this.chosen ?? this.opts.provider);
    const name = opts.name ?? (typeof path === 'string' ? basename(path, '.onnx') : 'graph');
    const opened = await openSession(
      path,
      { ...this.opts, provider },
      {
        keepOnDevice: opts.host ? [] : keepOnDevice,
        arena: opts.arena,
        dataDir: opts.dataDir,
        profilePrefix: this.opts.profileDir ? profilePrefix(this.opts.profileDir, name, this.opened++) : undefined,
      },
    );
    this.placed.set(opened.session, opened.provider);
    if (opts.host) return opened.session;
    if (!this.chosen) {
      this.chosen = opened.provider;
      const how =
        this.opts.provider === 'auto' ? `auto${opened.skipped.length ? `; skipped ${opened.skipped.join('; ')}` : ''}` : 'requested';
      const validation = opened.provider === 'webgpu' && this.opts.webgpuValidation ? `; validationMode ${this.opts.webgpuValidation}` : '';
      this.opts.log?.(`execution provider: ${opened.provider} (${how}${validation})`);
    }
    return opened.session;
  }
}
