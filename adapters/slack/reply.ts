// One answer as Slack messages: a first message posted at once, edited as text streams in (chat.update,
// throttled), more messages in the thread when the answer outgrows one, then the annotated image. While the
// answer is written the first message can carry a Stop button (Block Kit: the text in section blocks, the button
// in an actions block); the final write takes the blocks away, leaving the plain text, except on the last message
// of an answer given in full, which carries a Regenerate button.
import type { webApi } from '@slack/bolt';
import { stoppedLine } from '../shared/stop-buttons.js';
import { ThrottledMessage } from '../shared/throttled-message.js';
import { describeSlackError } from './errors.js';
import { answerChunks, escapeMrkdwn } from './format.js';

type WebClient = webApi.WebClient;

export interface ThreadReplyOptions {
  client: WebClient;
  channel: string;
  /** the thread to answer in; undefined: the first message starts a new thread in the channel (see `inline`) */
  threadTs?: string;
  /** without threadTs: every message of the answer goes into the channel itself (a direct message's answer) */
  inline?: boolean;
  /** least time between two edits of the messages (Slack allows about one per second per channel) */
  intervalMs: number;
  /** most mrkdwn characters per message */
  maxChars: number;
  /** mrkdwn put before the answer in the first message (e.g. who asked what) */
  header?: string;
  log: (line: string) => void;
  /** a Stop button on the first message until the answer ends: its action id, and its value (names the answer) */
  stop?: ButtonSpec;
  /** a Regenerate button on the last message of an answer given in full (its value: the answer's request id) */
  regenerate?: ButtonSpec;
}

/** A Block Kit button: its action id and value. */
export interface ButtonSpec {
  actionId: string;
  value: string;
}

/** The labels of the buttons an answer's messages carry. */
const LABELS = { stop: 'Stop', regenerate: 'Regenerate' } as const;
type ButtonKind = keyof typeof LABELS;

/** `text` as blocks with one button under it (Block Kit: section blocks, then an actions block). */
export function withButton(text: string, label: string, button: ButtonSpec) {
  return [
    ...sectionBlocks(text),
    {
      type: 'actions' as const,
      elements: [
        { type: 'button' as const, text: { type: 'plain_text' as const, text: label }, action_id: button.actionId, value: button.value },
      ],
    },
  ];
}

/** Slack's limit on a section block's text. */
const SECTION_MAX = 3000;

/** `text` as section blocks of at most SECTION_MAX characters each, cut at a line break or space where there is one. */
export function sectionBlocks(text: string): { type: 'section'; text: { type: 'mrkdwn'; text: string } }[] {
  const out: string[] = [];
  let rest = text;
  while (rest.length > SECTION_MAX) {
    const window = rest.slice(0, SECTION_MAX);
    const cut = Math.max(window.lastIndexOf('\n'), window.lastIndexOf(' '));
    const at = cut > SECTION_MAX / 2 ? cut : SECTION_MAX;
    out.push(rest.slice(0, at));
    rest = rest.slice(at).replace(/^[ \n]/, '');
  }
  if (rest) out.push(rest);
  return out.map((t) => ({ type: 'section', text: { type: 'mrkdwn', text: t } }));
}

const STREAMING_MARK = ' …';

const sameTexts = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((t, i) => t === b[i]);

/**
 * The messages of one answer. Calls are serialised; status and streamed text are coalesced so that at most
 * one edit per `intervalMs` goes out, the newest text winning (ThrottledMessage).
 */
export class ThreadReply {
  /** the messages posted: their text, and the button they carry */
  private readonly posted: Array<{ ts: string; text: string; button: ButtonKind | undefined }> = [];
  /** the ids of the files uploaded (the annotated image) */
  private readonly uploaded: string[] = [];
  private chain: Promise<void> = Promise.resolve();
  private readonly message: ThrottledMessage<string[]>;
  private failed = false;
  /** the answer ended (final, error or stopped): no more Stop button */
  private ended = false;
  /** the answer was given in full: its last message carries the Regenerate button */
  private answered = false;

  constructor(private readonly opts: ThreadReplyOptions) {
    this.message = new ThrottledMessage<string[]>({
      intervalMs: opts.intervalMs,
      // The edits take their place among the other calls (upload, note) of the answer.
      write: (texts) => this.enqueue(() => this.write(texts)),
      same: sameTexts,
    });
  }

  /** The message that carries the Regenerate button (an answer given in full): its ts and text. */
  get regenerateOn(): { ts: string; text: string } | undefined {
    const m = this.posted.find((p) => p.button === 'regenerate');
    return m ? { ts: m.ts, text: m.text } : undefined;
  }

  /** Every message posted (their ts), and the files uploaded (their ids): what deleting the question deletes. */
  get postedMessages(): { messages: string[]; files: string[] } {
    return { messages: this.posted.map((p) => p.ts), files: [...this.uploaded] };
  }

  /** Timestamp of the first message (the thread for a top-level reply), once posted. */
  get firstTs(): string | undefined {
    return this.posted[0]?.ts;
  }

  /** The thread the answer lives in (none for an answer written into the channel itself). */
  get thread(): string | undefined {
    return this.opts.threadTs ?? (this.opts.inline ? undefined : this.firstTs);
  }

  /** Posts the first message (status text such as "Looking at the image…"). */
  start(status: string): Promise<string> {
    return this.message.put([this.withHeader(status)]).then(() => {
      if (!this.firstTs) throw new Error('the first message could not be posted');
      return this.firstTs;
    });
  }

  /** Shows a status line (queued, …) while no answer text has arrived. */
  status(text: string): void {
    this.message.show([this.withHeader(text)]);
  }

  /** Shows the answer so far (raw model text). */
  streaming(raw: string): void {
    this.message.show(this.chunks(raw, true));
  }

  /** The final answer, written now (pending edits dropped). */
  async final(raw: string): Promise<void> {
    this.ended = true;
    this.answered = true;
    await this.message.final(this.chunks(raw, false));
  }

  /** A sentence for the user instead of an answer (plain text, escaped here). */
  async error(message: string): Promise<void> {
    this.ended = true;
    await this.message.final([this.withHeader(`:warning: ${escapeMrkdwn(message)}`)]);
  }

  /** The answer stopped by `user`: the text so far, marked unfinished, and a line saying who stopped it. */
  async stopped(raw: string, user: string): Promise<void> {
    this.ended = true;
    const line = `_${stoppedLine(user)}_`;
    const parts = raw.trim() ? this.chunks(raw, true) : this.opts.header ? [this.opts.header] : [];
    const last = parts.at(-1);
    if (last !== undefined && last.length + 1 + line.length <= this.opts.maxChars) parts[parts.length - 1] = `${last}\n${line}`;
    else parts.push(line);
    await this.message.final(parts);
  }

  /** Uploads a file into the answer's thread (or next to it). */
  async upload(data: Buffer, filename: string, title: string): Promise<void> {
    await this.chain;
    const thread = this.placed();
    const file = { file: data, filename, title, alt_text: title };
    const res = await this.opts.client.filesUploadV2(
      thread ? { channel_id: this.opts.channel, thread_ts: thread, ...file } : { channel_id: this.opts.channel, ...file },
    );
    for (const done of (res as { files?: { files?: { id?: string }[] }[] }).files ?? []) {
      for (const f of done.files ?? []) if (typeof f.id === 'string') this.uploaded.push(f.id);
    }
  }

  /** Posts one more message into the answer's thread (or after it), after the answer. */
  async note(text: string): Promise<void> {
    await this.chain;
    const thread = this.placed();
    await this.opts.client.chat.postMessage({
      channel: this.opts.channel,
      ...(thread ? { thread_ts: thread } : {}),
      text,
      unfurl_links: false,
      unfurl_media: false,
    });
  }

  /** Writes what is still pending, then waits for every write in flight. */
  async settle(): Promise<void> {
    await this.message.flush();
    await this.chain;
  }

  /** Where what follows the first message goes: its thread; undefined for an answer in the channel itself. */
  private placed(): string | undefined {
    const thread = this.thread;
    if (!thread && !this.opts.inline) throw new Error('no thread to post into');
    return thread;
  }

  /**
   * The button of message `i` of `count`: Stop on the first while the answer is written, Regenerate on the last of an
   * answer given in full.
   */
  private buttonOf(i: number, count: number): ButtonKind | undefined {
    if (i === 0 && this.opts.stop && !this.ended) return 'stop';
    if (i === count - 1 && this.opts.regenerate && this.answered) return 'regenerate';
    return undefined;
  }

  private withHeader(text: string): string {
    return this.opts.header ? `${this.opts.header}\n${text}` : text;
  }

  private chunks(raw: string, streaming: boolean): string[] {
    const header = this.opts.header ? `${this.opts.header}\n` : '';
    const room = this.opts.maxChars - (streaming ? STREAMING_MARK.length : 0);
    const parts = answerChunks(raw, { max: room, firstMax: room - header.length, empty: streaming ? '…' : undefined });
    if (header) parts[0] = header + parts[0];
    if (streaming) parts[parts.length - 1] += STREAMING_MARK;
    return parts;
  }

  private enqueue(fn: () => Promise<void>): Promise<void> {
    const run = this.chain.then(fn);
    this.chain = run.catch(() => {});
    return run;
  }

  /** Makes the messages show `texts`: edits the changed ones, posts the missing ones into the thread. */
  private async write(texts: string[]): Promise<void> {
    const { client, channel } = this.opts;
    // An answer that got shorter (a streamed partial phrase): extra messages keep a marker, never go stale.
    const want = texts.length >= this.posted.length ? texts : [...texts, ...this.posted.slice(texts.length).map(() => '…')];
    for (let i = 0; i < want.length; i++) {
      const text = want[i];
      const have = this.posted[i];
      const button = this.buttonOf(i, want.length);
      const blocks = button ? { blocks: withButton(text, LABELS[button], this.opts[button]!) } : have?.button ? { blocks: [] } : {};
      if (have) {
        if (have.text === text && have.button === button) continue;
        try {
          await client.chat.update({ channel, ts: have.ts, text, ...blocks });
          have.text = text;
          have.button = button;
        } catch (err) {
          if (!this.failed) this.opts.log(`slack: chat.update failed in ${channel}: ${describeSlackError(err)}`);
          this.failed = true;
          throw err;
        }
      } else {
        const thread = this.thread;
        const res = await client.chat.postMessage({
          channel,
          text,
          ...(button ? blocks : {}),
          ...(thread ? { thread_ts: thread } : {}),
          unfurl_links: false,
          unfurl_media: false,
        });
        if (!res.ts) throw new Error('chat.postMessage returned no ts');
        this.posted.push({ ts: res.ts, text, button });
      }
    }
  }
}
