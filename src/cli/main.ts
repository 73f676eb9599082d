// `minigpt` command line (README, "Command line").
import { Command, InvalidArgumentError, Option } from 'commander';
import { readFile } from 'node:fs/promises';
import { convert, type Arch, type ConvertOptions, type WeightDType } from '../convert/convert.js';
import { verifyPackage } from '../inference/verify.js';
import { MINIGPT4_PROMPT_STYLES, type Minigpt4PromptStyle } from '../inference/presets.js';
import { parseProviderChoice } from '../inference/providers.js';
import { providerOption } from './options.js';
import { runAsk } from './ask.js';
import { registerEvalCommands } from './eval-commands.js';
import { registerBenchCommand } from './bench.js';
import { convertOptionsFromConfig, DEFAULT_CONFIG, loadConfig, type BotConfig, type ConvertFlags } from '../config.js';
import { MAX_TOP_LOGPROBS, type GenerationOptions } from '../inference/generation/index.js';

function int(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a positive integer`);
    return n;
  };
}

function intFrom(name: string, min: number, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be a whole number from ${min} to ${max}`);
    return n;
  };
}

function num(name: string, min: number, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be a number in [${min}, ${max}]`);
    return n;
  };
}

/** `--logit-bias 2=-100,13=5`: (token id, bias) pairs. */
function logitBias(v: string): [number, number][] {
  return v.split(',').map((pair) => {
    const m = /^\s*(\d{1,9})\s*=\s*([-+]?\d+(?:\.\d+)?)\s*$/.exec(pair);
    const bias = m ? Number(m[2]) : Number.NaN;
    if (!m || !(bias >= -100 && bias <= 100))
      throw new InvalidArgumentError(`--logit-bias takes token id=bias pairs, bias from -100 to 100 (e.g. 2=-100,13=5), not "${pair}"`);
    return [Number(m[1]), bias];
  });
}

const log = (line: string) => process.stderr.write(`${line}\n`);

/** The model and generation options of the commands that answer (`ask`, `chat`). */
function withAnswerOptions(cmd: Command): Command {
  return cmd
    .option('--model <dir>', "model package (default: the config's package)")
    .option('--config <file>', `YAML config (default: MINIGPT_CONFIG or ${DEFAULT_CONFIG})`)
    .option('--max-new-tokens <n>', 'longest answer in tokens (default 300)', int('--max-new-tokens'))
    .option('--temperature <t>', 'sampling temperature; 0 = greedy (default 0.6)', num('--temperature', 0, 10))
    .option('--top-p <p>', 'nucleus sampling mass (default 0.9)', num('--top-p', 0, 1))
    .option('--top-k <k>', 'keep the k most likely tokens', int('--top-k'))
    .option('--repetition-penalty <r>', 'HF repetition penalty (default 1.05)', num('--repetition-penalty', 0.01, 10))
    .option(
      '--frequency-penalty <f>',
      "OpenAI's: a token's logit loses f for each time it is in the answer",
      num('--frequency-penalty', -2, 2),
    )
    .option('--presence-penalty <p>', "OpenAI's: a token's logit loses p once it is in the answer", num('--presence-penalty', -2, 2))
    .option('--logit-bias <id=bias,...>', "add bias (-100 to 100) to these token ids' logits, e.g. 2=-100 (never </s>)", logitBias)
    .option('--num-beams <n>', 'beam search width (default 1 = none)', int('--num-beams'))
    .option('--seed <n>', 'sampling seed', (v) => Number.parseInt(v, 10))
    .addOption(providerOption('EXECUTION_PROVIDER, then the config'));
}

interface AnswerFlags {
  model?: string;
  config?: string;
  maxNewTokens?: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  repetitionPenalty?: number;
  numBeams?: number;
  seed?: number;
  frequencyPenalty?: number;
  presencePenalty?: number;
  logitBias?: [number, number][];
}

/** The config (none for --model alone: it needs none) and the generation settings: the flags over the config's. */
async function answerSettings(o: AnswerFlags): Promise<{ cfg: BotConfig | null; generation: Partial<GenerationOptions> }> {
  const cfg = o.model && !o.config ? null : await loadConfig(o.config ?? process.env.MINIGPT_CONFIG ?? DEFAULT_CONFIG);
  const m = cfg?.model;
  const temperature: number = o.temperature ?? m?.temperature ?? 0.6;
  return {
    cfg,
    generation: {
      maxNewTokens: o.maxNewTokens ?? m?.max_new_tokens ?? 300,
      temperature,
      doSample: temperature > 0,
      topP: o.topP ?? m?.top_p ?? 0.9,
      topK: o.topK,
      repetitionPenalty: o.repetitionPenalty ?? m?.repetition_penalty ?? 1.05,
      numBeams: o.numBeams ?? m?.num_beams ?? 1,
      seed: o.seed,
      ...(o.frequencyPenalty ? { frequencyPenalty: o.frequencyPenalty } : {}),
      ...(o.presencePenalty ? { presencePenalty: o.presencePenalty } : {}),
      ...(o.logitBias ? { logitBias: o.logitBias } : {}),
      ...(m?.end_sym ? { stopStrings: [m.end_sym] } : {}),
    },
  };
}

async function readImageOption(file: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (e) {
    throw new Error(`cannot read --image ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

export function buildProgram(): Command {
  const program = new Command('minigpt').description('MiniGPT-v2 / MiniGPT-4 on onnxruntime-node').showHelpAfterError().exitOverride();

  program
    .command('serve')
    .description(
      'start the chat adapters whose credentials are set; with none, the local web demo (WEB_HOST:WEB_PORT, default 127.0.0.1:7860); with API_PORT, the OpenAI-compatible API too (docs/api.md)',
    )
    .option('--config <file>', `YAML config (default: MINIGPT_CONFIG or ${DEFAULT_CONFIG})`)
    .option(
      '--role <role>',
      'all: one process (default; MINIGPT_ROLE); frontend: the adapters, no model; worker: the model, jobs from REDIS_URL (docs/scaling.md)',
    )
    .action(async (o) => {
      // Deployment settings and secrets come from the environment, .env included (the real environment wins).
      const dotenv = await import('dotenv');
      dotenv.config({ quiet: true });
      const { serveUntilSignal } = await import('../serve.js');
      const { parseRole, serveFrontend, serveWorker } = await import('../cluster/serve.js');
      const role = parseRole(o.role ?? process.env.MINIGPT_ROLE);
      await serveUntilSignal({ config: o.config, log }, role === 'frontend' ? serveFrontend : role === 'worker' ? serveWorker : undefined);
      // Closed cleanly; do not let a straggling handle keep the process alive.
      setTimeout(() => process.exit(0), 3000).unref();
    });

  program
    .command('status')
    .description('front ends and workers on REDIS_URL: workers alive, their model, queue depth, jobs in flight (docs/scaling.md)')
    .option('--json', 'print one JSON object')
    .action(async (o) => {
      const dotenv = await import('dotenv');
      dotenv.config({ quiet: true });
      const url = process.env.REDIS_URL?.trim();
      if (!url) throw new Error('REDIS_URL is not set: status reports on the front ends and workers that meet in that Redis');
      const { clusterStatus, statusText } = await import('../cluster/status.js');
      const s = await clusterStatus(url);
      process.stdout.write(o.json ? `${JSON.stringify(s)}\n` : `${statusText(s)}\n`);
    });

  program
    .command('forget')
    .description(
      'delete every stored conversation of a user (each they took part in) or of a workspace, with the images no other conversation uses (env: STORE_URL, else REDIS_URL)',
    )
    .option('--user <platform:workspace:user>', "a user's conversations, e.g. slack:T0123ABCD:U0456EFGH, discord:*:123456789012345678")
    .option('--workspace <platform:workspace>', "a workspace's conversations, e.g. slack:T0123ABCD")
    .option('--store <url>', 'the conversation store (default STORE_URL, else REDIS_URL)')
    .option('--dry-run', 'count them, delete nothing')
    .action(async (o) => {
      const dotenv = await import('dotenv');
      dotenv.config({ quiet: true });
      const { runForget } = await import('./forget.js');
      await runForget({ user: o.user, workspace: o.workspace, store: o.store, dryRun: Boolean(o.dryRun) }, process.env, (l) =>
        process.stdout.write(`${l}\n`),
      );
    });

  program
    .command('register-commands')
    .description(
      'register the Discord commands (/describe, "Describe image") globally, or for DISCORD_GUILD_ID (env: DISCORD_TOKEN, DISCORD_APP_ID, DISCORD_API_URL)',
    )
    .option('--guild <id>', 'register for this guild only (default: DISCORD_GUILD_ID)')
    .option('--global', 'register globally even when DISCORD_GUILD_ID is set')
    .action(async (o) => {
      const dotenv = await import('dotenv');
      dotenv.config({ quiet: true });
      const { registerCommandsFromEnv } = await import('../../adapters/discord/register-commands.js');
      await registerCommandsFromEnv(process.env, { guild: o.guild, global: Boolean(o.global) }, log);
    });

  program
    .command('convert')
    .description(
      'published checkpoints -> model package (--config: the inputs, package and settings a configs/*.yaml names; flags override it)',
    )
    .option(
      '--config <file>',
      'YAML config whose model section names the downloads, the package and the settings (e.g. configs/minigpt4_eval.yaml)',
    )
    .option('--weights <dir>', 'with --config: the folder holding the downloads it names (default: its model.weights_dir, else weights/)')
    .addOption(new Option('--arch <arch>', 'model architecture (required without --config)').choices(['minigpt-v2', 'minigpt-4']))
    .option('--vit <file>', 'EVA ViT state dict (eva_vit_g.pth)')
    .option('--llm <dir>', 'Hugging Face Llama/Vicuna folder')
    .option('--ckpt <file>', 'MiniGPT checkpoint (.pth)')
    .option('--qformer <file>', 'BLIP-2 Q-Former checkpoint (MiniGPT-4)')
    .option('--image-size <n>', 'vision input size (default 448 for v2, 224 for MiniGPT-4)', int('--image-size'))
    .option('--vit-heads <n>', 'ViT attention heads (default 16)', int('--vit-heads'))
    .option('--qformer-heads <n>', 'Q-Former attention heads (MiniGPT-4, default 12)', int('--qformer-heads'))
    .addOption(
      new Option(
        '--prompt <style>',
        'MiniGPT-4 prompt style (default: llama2 for a Llama-2 language model or the variant without Q-Former, else vicuna0)',
      ).choices([...MINIGPT4_PROMPT_STYLES]),
    )
    .option('--lora-r <n>', 'LoRA rank (default: read from the checkpoint tensors)', int('--lora-r'))
    .option('--lora-alpha <n>', 'LoRA alpha (default 16)', int('--lora-alpha'))
    .addOption(
      new Option(
        '--dtype <type>',
        'weight type (docs/quantisation.md; default fp32, with --config int8 for low_resource: true, else its dtype)',
      ).choices(['fp32', 'fp16', 'int8', 'int4']),
    )
    .option(
      '--block-size <n>',
      'int8/int4: quantisation block along the input features (power of two >= 16, default 32)',
      int('--block-size'),
    )
    .option(
      '--accuracy-level <n>',
      "int8/int4: MatMulNBits accuracy_level, the smallest compute type (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8; default 4, the CPU's fastest: docs/quantisation.md)",
      num('--accuracy-level', 0, 4),
    )
    .option(
      '--fused',
      "onnxruntime's fused kernels: the decoder's RMSNorm, q/k/v as one Linear, rotary, MultiHeadAttention with the KV cache; the ViT's residual + LayerNorm and bias + GELU (docs/quantisation.md)",
    )
    .addOption(
      new Option(
        '--compute <type>',
        'decoder compute type: fp16 = float16 activations and KV cache, for GPU providers (needs --dtype fp16, int8 or int4; default fp32)',
      ).choices(['fp32', 'fp16']),
    )
    .option('--out <dir>', "output package folder (required without --config; default: the config's package)")
    .option('--name <name>', "the package's name in model.json (default: the output folder's name)")
    .action(async (o) => {
      const flags: ConvertFlags = {
        arch: o.arch as Arch | undefined,
        vit: o.vit,
        llm: o.llm,
        ckpt: o.ckpt,
        qformer: o.qformer,
        imageSize: o.imageSize,
        vitHeads: o.vitHeads,
        qformerHeads: o.qformerHeads,
        prompt: o.prompt as Minigpt4PromptStyle | undefined,
        loraR: o.loraR,
        loraAlpha: o.loraAlpha,
        dtype: o.dtype as WeightDType | undefined,
        blockSize: o.blockSize,
        accuracyLevel: o.accuracyLevel,
        out: o.out,
      };
      let opts: Omit<ConvertOptions, 'log'>;
      if (o.config) {
        // Deployment variables (EXECUTION_PROVIDER, STORE_URL) play no part in a conversion.
        opts = await convertOptionsFromConfig(await loadConfig(o.config, {}), { ...flags, weights: o.weights });
      } else {
        if (o.weights !== undefined) throw new Error('--weights is for --config (the folder holding the downloads that the config names)');
        const missing = (['arch', 'vit', 'llm', 'ckpt', 'out'] as const).filter((k) => flags[k] === undefined).map((k) => `--${k}`);
        if (missing.length > 0) throw new Error(`convert needs ${missing.join(', ')}, or --config FILE (configs/*.yaml)`);
        opts = { ...flags, arch: flags.arch!, vit: flags.vit!, llm: flags.llm!, ckpt: flags.ckpt!, out: flags.out! };
      }
      await convert({
        ...opts,
        ...(o.fused ? { fused: true } : {}),
        ...(o.compute ? { compute: o.compute as 'fp32' | 'fp16' } : {}),
        ...(o.name ? { name: String(o.name) } : {}),
        log,
      });
    });

  program
    .command('verify')
    .description('run a package on a golden folder and report per-stage errors (exit 1 over tolerance)')
    .requiredOption('--model <dir>', 'model package')
    .requiredOption('--golden <dir>', 'golden folder (manifest.json + tensors)')
    .addOption(providerOption().default('cpu'))
    .action(async (o) => {
      const report = await verifyPackage(o.model, o.golden, { provider: parseProviderChoice(o.provider), log });
      process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
      if (!report.ok) process.exitCode = 1;
    });

  withAnswerOptions(
    program
      .command('ask')
      .description('answer one prompt about an image, streamed to the terminal')
      .requiredOption('--image <file>', 'image file (PNG, JPEG, WebP, GIF, ...)')
      .option('--json', 'print one JSON object (text, entities with pixel boxes, token ids, timings) instead of streaming')
      .option('--annotate <out>', "write the image with the answer's boxes drawn (PNG; JPEG for .jpg)")
      .option(
        '--logprobs <n>',
        `with --json: each answer token's log-probability and the n (0-${MAX_TOP_LOGPROBS}) likeliest at its place`,
        intFrom('--logprobs', 0, MAX_TOP_LOGPROBS),
      ),
  )
    .option(
      '--profile <dir>',
      "write onnxruntime's profile of each graph to <dir> and report where the time went, per graph and kind of run",
    )
    .argument('<prompt>', 'the question or task, e.g. "[grounding] describe this image"')
    .action(async (prompt: string, o) => {
      if (o.logprobs !== undefined && !o.json) throw new Error('--logprobs is reported in the --json output: add --json');
      const image = await readImageOption(o.image);
      const { cfg, generation } = await answerSettings(o);
      if (o.logprobs !== undefined) generation.logprobs = o.logprobs;
      const controller = new AbortController();
      const onSigint = () => controller.abort();
      process.once('SIGINT', onSigint);
      try {
        await runAsk({
          modelDir: o.model ?? cfg!.packageDir,
          image,
          prompt,
          json: Boolean(o.json),
          annotate: o.annotate,
          provider: parseProviderChoice(o.provider ?? process.env.EXECUTION_PROVIDER ?? cfg?.runtime.execution_provider),
          threads: cfg?.runtime.threads,
          profileDir: o.profile,
          generation,
          signal: controller.signal,
          log,
          write: (s) => process.stdout.write(s),
        });
      } finally {
        process.off('SIGINT', onSigint);
      }
    });

  withAnswerOptions(
    program
      .command('chat')
      .description(
        'a conversation in the terminal, as in a chat thread: questions one a line (typed, or piped in), answers streamed; follow-ups keep the image (/image, /reset, /help)',
      )
      .option('--image <file>', "the first question's image (or /image <file> in the chat)")
      .option('--annotate <dir>', "write each answer's image with its boxes drawn to <dir>/answer-<n>.png")
      .option('--verbose', 'a line of timings after each answer (tokens, prefill reuse, time to first text, decode speed)'),
  ).action(async (o) => {
    const image = o.image ? await readImageOption(o.image) : undefined;
    const { cfg, generation } = await answerSettings(o);
    const { runTerminalChat } = await import('./chat.js');
    await runTerminalChat({
      modelDir: o.model ?? cfg!.packageDir,
      provider: parseProviderChoice(o.provider ?? process.env.EXECUTION_PROVIDER ?? cfg?.runtime.execution_provider),
      threads: cfg?.runtime.threads,
      maxContextLen: cfg?.model.max_context_len,
      generation,
      ...(image ? { image } : {}),
      ...(o.annotate ? { annotateDir: o.annotate } : {}),
      verbose: Boolean(o.verbose),
      log,
    });
  });

  registerEvalCommands(program, log);
  registerBenchCommand(program, log);

  return program;
}

/** Runs the CLI; resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    const code = (err as { code?: string; exitCode?: number }).code;
    if (typeof code === 'string' && code.startsWith('commander.')) {
      return code === 'commander.helpDisplayed' || code === 'commander.version' ? 0 : ((err as { exitCode?: number }).exitCode ?? 1);
    }
    process.stderr.write(`minigpt: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
  return typeof process.exitCode === 'number' ? process.exitCode : 0;
}
