// `minigpt chat`: the real binary with questions piped to its stdin, on the demo model. Its answers are the ones the
// conversation manager gives in one thread for the same turns (greedy: the same text); follow-ups keep the image,
// `/image` starts afresh, `/reset` forgets; boxes are reported in pixels and drawn into --annotate's folder; Ctrl-C
// stops the answer being written and the chat goes on.
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { renderExamples, type Example } from '../../adapters/web/examples.js';
import { ConversationManager, type ConversationRequest } from '../../src/conversation/index.js';
import { entitiesToPixels, parseGrounding } from '../../src/grounding/parse.js';
import { MiniGPT } from '../../src/inference/model.js';
import { BIN, ROOT } from '../helpers/cli.js';
import { TerminalChat, type ChatManager } from '../../src/cli/chat.js';
import { tempDirPerFile } from '../helpers/temp-dir.js';

const DEMO = join(ROOT, 'models', 'demo');
// the chat's generation settings for `--model` and `--temperature 0` (no config)
const GREEDY = { maxNewTokens: 300, temperature: 0, doSample: false, topP: 0.9, repetitionPenalty: 1.05, numBeams: 1 };

let work: string;
tempDirPerFile('minigpt-chat-', (dir) => (work = dir));

let model: MiniGPT;
let grounding: Example;
let refer: Example;
const files: Record<string, string> = {};
const pngs: Record<string, Buffer> = {};

beforeAll(async () => {
  model = await MiniGPT.load(DEMO, { provider: 'cpu' });
  const examples = await renderExamples();
  grounding = examples.list.find((e) => e.task === 'grounding')!;
  refer = examples.list.find((e) => e.task === 'refer')!;
  for (const e of [grounding, refer]) {
    pngs[e.id] = examples.png(e.id)!;
    files[e.id] = join(work, `${e.id}.png`);
    await writeFile(files[e.id], pngs[e.id]);
  }
}, 60_000);

afterAll(async () => {
  await model?.close();
});

interface Chat {
  /** sends a line to its stdin */
  send(line: string): void;
  /** stdout so far */
  out(): string;
  err(): string;
  signal(sig: NodeJS.Signals): void;
  exited: Promise<number | null>;
}

function chat(args: string[], env: NodeJS.ProcessEnv = {}): Chat {
  const child = spawn(process.execPath, [BIN, 'chat', '--model', DEMO, '--provider', 'cpu', ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
  });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  return {
    send: (line) => child.stdin.write(`${line}\n`),
    out: () => out,
    err: () => err,
    signal: (sig) => child.kill(sig),
    exited: new Promise((resolve) => child.on('close', resolve)),
  };
}

async function until(cond: () => boolean, what: string, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The manager's answers to `turns` in one thread (an image starts the conversation afresh, as in a chat). */
async function threadAnswers(turns: { text: string; image?: Buffer }[]): Promise<string[]> {
  const manager = new ConversationManager({ model, defaults: GREEDY });
  const key = { platform: 'cli' as const, workspace: 'test', channel: 'chat', thread: 'reference' };
  const out: string[] = [];
  try {
    for (const t of turns) {
      const req: ConversationRequest = { key, user: 'you', text: t.text, ...(t.image ? { image: t.image } : {}) };
      for await (const ev of manager.handle(req)) {
        if (ev.type === 'error') throw new Error(ev.message);
        if (ev.type === 'final') out.push(ev.text);
      }
    }
  } finally {
    await manager.close();
  }
  return out;
}

describe('minigpt chat', () => {
  it('answers piped questions as a chat thread does: follow-ups keep the image, /image starts afresh, /reset forgets', async () => {
    const turns = [
      { text: grounding.prompt, image: pngs[grounding.id] },
      { text: 'what color is the first object?' },
      { text: refer.prompt, image: pngs[refer.id] },
    ];
    const expected = await threadAnswers(turns);
    const annotated = join(work, 'boxes');
    const c = chat(['--temperature', '0', '--image', files[grounding.id], '--annotate', annotated]);
    for (const line of [
      grounding.prompt,
      turns[1].text,
      `/image ${files[refer.id]}`,
      refer.prompt,
      '/reset',
      'and now?',
      `/image ${join(work, 'missing.png')}`,
      '/bogus',
      '/quit',
      'never read',
    ])
      c.send(line);
    expect(await c.exited, c.err()).toBe(0);
    // only the answers on stdout, one a line
    expect(c.out()).toBe(`${expected.join('\n')}\n`);

    const err = c.err();
    // the grounded answers' boxes in pixels of their images
    const img = await sharp(pngs[grounding.id]).metadata();
    const boxes = entitiesToPixels(parseGrounding(expected[0]).entities, img.width!, img.height!);
    expect(boxes.length).toBeGreaterThan(0);
    const first = boxes[0].pixelBoxes[0];
    expect(err).toContain(
      `(boxes in pixels of the ${img.width}x${img.height} image: ${boxes[0].phrase} [${first.left}, ${first.top}, ${first.left + first.width}, ${first.top + first.height}]`,
    );
    // drawn into the folder, numbered by turn: the image's size, not the image itself
    for (const n of [1, 3]) {
      const file = join(annotated, `answer-${n}.png`);
      expect(err).toContain(`(boxes drawn: ${file})`);
      const drawn = await sharp(file).metadata();
      const source = await sharp(pngs[n === 1 ? grounding.id : refer.id]).metadata();
      expect([drawn.width, drawn.height]).toEqual([source.width, source.height]);
    }
    expect(err).not.toContain('answer-2.png'); // (no boxes in that answer)
    expect(err).toContain('(the conversation is forgotten: send /image <file> to start another)');
    expect(err).toContain('(no image yet: send /image <file>, then ask about it)');
    expect(err).toMatch(/cannot read .*missing\.png: ENOENT/);
    expect(err).toContain('unknown command /bogus: /help lists them');
  }, 120_000);

  it('Ctrl-C stops the answer being written, not the chat; the next question is answered', async () => {
    // (longer than the demo model's window: the answer runs until the window is full)
    const long = Array.from({ length: 200 }, (_, i) => `word${i}`).join(' ');
    const c = chat(['--temperature', '0', '--max-new-tokens', '2000', '--image', files[grounding.id]], {
      MINIGPT_TEST_FORCED_ANSWER: long,
    });
    c.send('tell me everything');
    await until(() => c.out().length > 0, 'the answer to start');
    c.signal('SIGINT');
    await until(() => c.err().includes('(stopped)'), 'the answer to stop');
    const [stopped] = c.out().split('\n');
    expect(long.startsWith(stopped)).toBe(true);
    c.send('and again');
    await until(() => c.out().split('\n').length === 3, 'the next answer');
    const [, again] = c.out().split('\n');
    // (this one ran until the window was full)
    expect(again.length).toBeGreaterThan(stopped.length);
    expect(long.startsWith(again)).toBe(true);
    // Ctrl-C with no answer being written: leaves
    c.signal('SIGINT');
    expect(await c.exited).toBe(0);
  }, 60_000);
});

describe('TerminalChat', () => {
  // (the manager's events scripted: the first text `delayMs` after the answer starts)
  const scripted = (delayMs: number): ChatManager => ({
    async *handle() {
      yield { type: 'started' };
      await new Promise((r) => setTimeout(r, delayMs));
      yield { type: 'text', text: 'the answer' };
      yield { type: 'final', text: 'the answer', entities: [], finishReason: 'stop' };
    },
    reset: async () => undefined,
  });
  const run = async (delayMs: number, image?: Buffer) => {
    const out: string[] = [];
    const log: string[] = [];
    const chat = new TerminalChat({
      manager: scripted(delayMs),
      ...(image ? { image } : {}),
      noticeAfterMs: 200,
      write: (t) => out.push(t),
      log: (l) => log.push(l),
    });
    await chat.line('what is this?');
    return { out: out.join(''), log };
  };

  it('says the model is at work when the first text is slow to come (a terminal), and nothing when it is not', async () => {
    expect(await run(600, pngs[grounding.id])).toEqual({ out: 'the answer\n', log: ['(looking at the image…)'] });
    expect(await run(600)).toEqual({ out: 'the answer\n', log: ['(thinking…)'] });
    expect(await run(0)).toEqual({ out: 'the answer\n', log: [] });
  });

  it('an image it cannot write costs the picture, not the answer or the chat', async () => {
    const blocker = join(work, 'a-file');
    await writeFile(blocker, 'not a folder');
    const log: string[] = [];
    const out: string[] = [];
    const chat = new TerminalChat({
      manager: {
        async *handle() {
          yield { type: 'text', text: 'boxed' };
          yield { type: 'final', text: 'boxed', entities: [], finishReason: 'stop' };
          yield { type: 'image', data: Buffer.from('png bytes'), mime: 'image/png' };
        },
        reset: async () => undefined,
      },
      annotateDir: join(blocker, 'boxes'),
      write: (t) => out.push(t),
      log: (l) => log.push(l),
    });
    expect(await chat.line('where?')).toBe(true);
    expect(out.join('')).toBe('boxed\n');
    expect(log).toEqual([`could not write ${join(blocker, 'boxes', 'answer-1.png')}: ENOTDIR`]);
  });
});
