// Execution provider choice (DESIGN.md section 6): cuda | webgpu | cpu, or auto = the first of those
// that initialises, said in one log line.
import * as ort from 'onnxruntime-node';

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
  /** intra-op threads for the CPU provider (0 = onnxruntime's default) */
  threads?: number;
  log?: (line: string) => void;
}

export interface OpenedSession {
  session: ort.InferenceSession;
  provider: ProviderName;
}

function sessionOptions(provider: ProviderName, threads: number | undefined, keepOnDevice: readonly string[]): ort.InferenceSession.SessionOptions {
  const opts: ort.InferenceSession.SessionOptions = {
    executionProviders: [provider],
    graphOptimizationLevel: 'all',
  };
  if (provider === 'cpu' && threads) opts.intraOpNumThreads = threads;
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
 * Opens a session on the requested provider. With `auto`, tries cuda, webgpu, cpu in turn and keeps the
 * first that initialises. `keepOnDevice` names outputs that should stay in device memory when possible.
 */
export async function openSession(path: string, opts: SessionFactoryOptions, keepOnDevice: readonly string[] = []): Promise<OpenedSession> {
  const order = opts.provider === 'auto' ? AUTO_ORDER : [opts.provider];
  const failures: string[] = [];
  for (const provider of order) {
    try {
      const session = await ort.InferenceSession.create(path, sessionOptions(provider, opts.threads, keepOnDevice));
      return { session, provider };
    } catch (err) {
      failures.push(`${provider}: ${provider === 'cuda' ? cudaHint(err) : err instanceof Error ? err.message : String(err)}`);
    }
  }
  throw new ProviderError(`cannot open ${path} with execution provider ${opts.provider}:\n  ${failures.join('\n  ')}`);
}

/**
 * Picks the provider once for a whole package (the first graph decides), so every graph runs on the same
 * device, and logs the choice in one line.
 */
export class SessionFactory {
  private chosen: ProviderName | null = null;

  constructor(private readonly opts: SessionFactoryOptions) {}

  get provider(): ProviderName | null {
    return this.chosen;
  }

  async open(path: string, keepOnDevice: readonly string[] = []): Promise<ort.InferenceSession> {
    const provider = this.chosen ?? this.opts.provider;
    const opened = await openSession(path, { ...this.opts, provider }, keepOnDevice);
    if (!this.chosen) {
      this.chosen = opened.provider;
      const how = this.opts.provider === 'auto' ? 'auto-selected' : 'requested';
      this.opts.log?.(`execution provider: ${opened.provider} (${how})`);
    }
    return opened.session;
  }
}
