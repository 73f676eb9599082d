// `minigpt chat`: a conversation in the terminal, as in a Discord or Slack thread: the conversation manager keeps the
// image and the turns (a follow-up prefills only its new tokens), a new image starts afresh, and Ctrl-C stops the
// answer being written rather than the program. Questions come one a line (typed, or piped in); answers stream to
// stdout, everything else goes to stderr, so that `minigpt chat < questions.txt > answers.txt` keeps only answers.
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { ConversationManager, type AnswerEvent, type ConversationKey, type ConversationRequest } from '../conversation/index.js';
import { entitiesToPixels, type Entity } from '../grounding/parse.js';
import type { GenerationOptions } from '../inference/generation/index.js';
import { MiniGPT } from '../inference/model.js';
import { checkLogitBias } from './options.js';
import type { ProviderChoice } from '../inference/providers.js';

/** What the chat needs of the conversation manager. */
export interface ChatManager {
  handle(req: ConversationRequest): AsyncIterable<AnswerEvent>;
  reset(key: ConversationKey): Promise<unknown>;
}

export interface ChatOptions {
  manager: ChatManager;
  /** the first question's image (`--image`) */
  image?: Uint8Array;
  /** a folder for the images with each answer's boxes drawn (`--annotate`): answer-<n>.png */
  annotateDir?: string;
  /** a line of timings after each answer (`--verbose`) */
  verbose?: boolean;
  /**
   * A question whose first text has not come this long after it was sent gets a line saying the model is at work
   * (a 7B model on a CPU looks at a new image for tens of seconds); default none (piped questions: no such lines).
   */
  noticeAfterMs?: number;
  /** the answers (stdout) */
  write(text: string): void;
  /** everything else: notices, errors, timings (stderr) */
  log(line: string): void;
}

export const CHAT_HELP = [
  'Type a question about the image and press Enter; follow-ups continue the conversation.',
  'Task tags as in the chat platforms: [grounding] [refer] [detection] [identify] [vqa] [caption].',
  '  /image <file>  the next question is about this image (a new conversation)',
  '  /reset         forget the conversation and its image',
  '  /help          this text',
  '  /quit          leave (or Ctrl-D); Ctrl-C stops an answer being written',
].join('\n');

/** A terminal conversation: one question at a time, from `/commands` and questions. */
export class TerminalChat {
  private readonly key: ConversationKey = {
    platform: 'cli',
    workspace: 'local',
    channel: 'chat',
    thread: randomBytes(6).toString('hex'),
  };
  private image: Uint8Array | undefined;
  private answering: AbortController | undefined;
  private turns = 0;

  constructor(private readonly o: ChatOptions) {
    this.image = o.image;
  }

  /** Stops the answer being written; false when there is none. */
  stop(): boolean {
    if (!this.answering) return false;
    this.answering.abort();
    return true;
  }

  /** One line of input; false when it asks to leave. */
  async line(raw: string): Promise<boolean> {
    const line = raw.trim();
    if (!line) return true;
    const [command, ...rest] = line.split(/\s+/);
    const arg = line.slice(command.length).trim();
    switch (command) {
      case '/quit':
      case '/exit':
        return false;
      case '/help':
        this.o.log(CHAT_HELP);
        return true;
      case '/reset':
        await this.o.manager.reset(this.key);
        this.image = undefined;
        this.o.log('(the conversation is forgotten: send /image <file> to start another)');
        return true;
      case '/image':
        if (rest.length === 0) {
          this.o.log('usage: /image <file>');
          return true;
        }
        try {
          this.image = await readFile(arg);
          this.o.log(`(${arg}: the next question starts a new conversation about it)`);
        } catch (err) {
          this.o.log(`cannot read ${arg}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
        }
        return true;
      default:
        if (command.startsWith('/')) {
          this.o.log(`unknown command ${command}: /help lists them`);
          return true;
        }
        await this.ask(line);
        return true;
    }
  }

  private async ask(text: string): Promise<void> {
    const controller = new AbortController();
    this.answering = controller;
    const image = this.image;
    this.image = undefined; // (sent once: it stays the conversation's)
    const turn = ++this.turns;
    const request: ConversationRequest = {
      key: this.key,
      user: 'you',
      text,
      signal: controller.signal,
      requestId: `t${turn}`,
      annotate: this.o.annotateDir !== undefined,
      ...(image ? { image } : {}),
    };
    let written = false;
    let started = false;
    const endLine = () => {
      if (written) this.o.write('\n');
      written = false;
    };
    const notice =
      this.o.noticeAfterMs === undefined
        ? undefined
        : setTimeout(() => {
            if (!written && !controller.signal.aborted)
              this.o.log(image ? '(looking at the image…)' : started ? '(thinking…)' : '(waiting for the model…)');
          }, this.o.noticeAfterMs);
    try {
      for await (const ev of this.o.manager.handle(request)) {
        if (ev.type === 'started') started = true;
        else if (ev.type === 'text') {
          this.o.write(ev.text);
          written = written || ev.text.length > 0;
        } else if (ev.type === 'final') {
          endLine();
          if (ev.image && ev.entities.length > 0) this.o.log(boxesLine(ev.entities, ev.image));
        } else if (ev.type === 'image' && this.o.annotateDir) {
          const file = join(this.o.annotateDir, `answer-${turn}.${ev.mime === 'image/jpeg' ? 'jpg' : 'png'}`);
          try {
            await mkdir(this.o.annotateDir, { recursive: true });
            await writeFile(file, ev.data);
            this.o.log(`(boxes drawn: ${file})`);
          } catch (err) {
            // (the answer is there; only its picture is missing)
            this.o.log(`could not write ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
          }
        } else if (ev.type === 'timings' && this.o.verbose) {
          this.o.log(timingsLine(ev.timings));
        } else if (ev.type === 'error') {
          endLine();
          if (ev.code === 'cancelled' && controller.signal.aborted) this.o.log('(stopped)');
          else if (ev.code === 'no_image') this.o.log('(no image yet: send /image <file>, then ask about it)');
          else this.o.log(`error: ${ev.message}`);
        }
      }
    } finally {
      clearTimeout(notice);
      endLine();
      this.answering = undefined;
    }
  }
}

/** The answer's boxes in pixels of the image, one phrase after another. */
function boxesLine(grid: Entity[], image: { width: number; height: number }): string {
  const entities = entitiesToPixels(grid, image.width, image.height);
  const parts = entities.flatMap((e) =>
    e.pixelBoxes.map((b) => `${e.phrase ?? '(box)'} [${b.left}, ${b.top}, ${b.left + b.width}, ${b.top + b.height}]`),
  );
  return `(boxes in pixels of the ${image.width}x${image.height} image: ${parts.join('; ')})`;
}

function timingsLine(t: Record<string, number>): string {
  const n = t.newTokens ?? 0;
  const rate = t.decodeMs > 0 ? ((Math.max(0, n - 1) * 1000) / t.decodeMs).toFixed(1) : '-';
  const prompt = t.promptTokens ?? 0;
  return `(${prompt} prompt tokens, ${prompt - (t.reusedTokens ?? 0)} prefilled; first text after ${Math.round(t.firstTokenMs ?? 0)} ms; ${n} tokens at ${rate} tok/s)`;
}

export interface TerminalChatOptions {
  modelDir: string;
  provider: ProviderChoice;
  threads?: number;
  /** the config's `max_context_len` (the model's window otherwise) */
  maxContextLen?: number;
  generation: Partial<GenerationOptions>;
  image?: Uint8Array;
  annotateDir?: string;
  verbose: boolean;
  log: (line: string) => void;
}

/**
 * `minigpt chat` on this process's stdin and stdout: a prompt where stdin is a terminal (none for piped questions);
 * Ctrl-C stops the answer being written, or leaves when there is none; Ctrl-D or /quit leaves.
 */
export async function runTerminalChat(o: TerminalChatOptions): Promise<void> {
  const model = await MiniGPT.load(o.modelDir, { provider: o.provider, threads: o.threads, log: o.log });
  try {
    checkLogitBias(o.generation.logitBias, model.meta.llm.vocabSize);
  } catch (err) {
    await model.close();
    throw err;
  }
  const manager = new ConversationManager({
    model,
    defaults: o.generation,
    ...(o.maxContextLen ? { maxContextLen: o.maxContextLen } : {}),
    // (its line a turn: --verbose prints a shorter one with the decoding speed)
    log: () => {},
  });
  const interactive = process.stdin.isTTY === true;
  const rl = createInterface({ input: process.stdin, ...(interactive ? { output: process.stdout, terminal: true } : {}) });
  const chat = new TerminalChat({
    manager,
    ...(o.image ? { image: o.image } : {}),
    ...(o.annotateDir ? { annotateDir: o.annotateDir } : {}),
    verbose: o.verbose,
    ...(interactive ? { noticeAfterMs: 1000 } : {}),
    write: (text) => process.stdout.write(text),
    log: o.log,
  });
  const interrupt = () => {
    if (!chat.stop()) rl.close();
  };
  // (a terminal's Ctrl-C reaches readline; a piped stdin's, the process)
  rl.on('SIGINT', interrupt);
  process.on('SIGINT', interrupt);
  o.log(
    `minigpt chat: ${model.meta.name} on ${model.provider}${o.image ? ', with the --image' : ''}; /help lists the commands${interactive ? ', Ctrl-D leaves' : ''}`,
  );
  try {
    if (interactive) rl.prompt();
    for await (const line of rl) {
      if (!(await chat.line(line))) break;
      if (interactive) rl.prompt();
    }
  } finally {
    process.off('SIGINT', interrupt);
    rl.close();
    await manager.close();
    await model.close();
  }
}
