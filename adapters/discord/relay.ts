// Answer events -> Discord messages: "typing…" while the answer starts, or, for a request waiting in line for
// more than a moment (`placeAfterMs`), its place; the reply appears once the first text has had a moment to grow
// (`firstTextWaitMs`), is edited as text arrives (at most one edit per `editIntervalMs`, never two requests at
// once; a trailing " …" says it is still being written), then replaced by the final Markdown as soon as the
// answer ends, split over several messages past 2000 characters, with the annotated image attached to the last.
// While it is written the message carries a Stop button (`RelayOptions.stop`); a stopped answer keeps what was
// written, with a line saying who stopped it. An answer given in full carries a Regenerate button on its last
// message (`RelayOptions.regenerate`).
import { ActionRowBuilder, ButtonBuilder, ButtonStyle, DiscordAPIError, type AttachmentPayload } from 'discord.js';
import type { AnswerEvent } from '../../src/conversation/index.js';
import { answerMarkdown, DISCORD_MESSAGE_LIMIT, notice, splitMessage } from './format.js';
import { onAnswerEvents, PlaceInLine } from '../shared/answer-events.js';
import { stoppedLine } from '../shared/stop-buttons.js';
import { ThrottledMessage } from '../shared/throttled-message.js';

export interface Payload {
  content: string;
  files?: AttachmentPayload[];
  /** the message's buttons (the Stop button while the answer is written; Regenerate, or none, once it ended) */
  components?: ActionRowBuilder<ButtonBuilder>[];
}

/** The Stop button of a running answer; its custom id names the answer (the adapter's stop list). */
export function stopButton(customId: string): ActionRowBuilder<ButtonBuilder> {
  return new ActionRowBuilder<ButtonBuilder>().addComponents(
    new ButtonBuilder().setCustomId(customId).setLabel('Stop').setStyle(ButtonStyle.Secondary),
  );
}

/** The Regenerate button of an answer given in full; its custom id names the answer's request. */
export function regenerateButton(customId: string): ActionRowBuilder<ButtonBuilder> {
  return new ActionRowBuilder<ButtonBuilder>().addComponents(
    new ButtonBuilder().setCustomId(customId).setLabel('Regenerate').setStyle(ButtonStyle.Secondary),
  );
}

/** A message the bot posted. */
export interface SentMessage {
  channelId: string;
  id: string;
}

/** Where an answer goes: a channel or thread message, or an interaction's original response. */
export interface ReplyTarget {
  /** creates the answer's first message, or edits it once it exists */
  first(p: Payload): Promise<SentMessage>;
  /** posts one more message after the first (the rest of a long answer) */
  more(p: Payload): Promise<SentMessage>;
  /** shows "typing…" (channels); no-op where Discord shows its own indicator (deferred interactions) */
  typing(): Promise<void>;
}

export interface RelayOptions {
  editIntervalMs: number;
  /**
   * The answer's first text waits this long for more before it is shown (default 600 ms), so that a short answer
   * appears whole instead of its first word alone.
   */
  firstTextWaitMs?: number;
  /** least time between two places in the queue shown (default QUEUE_UPDATE_MS) */
  queueUpdateMs?: number;
  /**
   * A request waiting in line shows its place once it has waited this long (default PLACE_AFTER_MS, PlaceInLine), and
   * no typing indicator: a shorter wait costs no message of its own. (Discord's REST budget, 50 requests a second for
   * the whole bot, is what a busy bot runs out of first: each call saved is an answer sooner.)
   */
  placeAfterMs?: number;
  /** a line shown above the answer (e.g. why it is not in a thread) */
  notice?: string;
  log: (line: string) => void;
  /** for log lines */
  label: string;
  /**
   * A Stop button on the message while the answer is written (removed when it ends), and who pressed it (a user
   * id; undefined until someone did): the answer's `cancelled` error then shows the text so far, stopped.
   */
  stop?: { button: ActionRowBuilder<ButtonBuilder>; stoppedBy(): string | undefined };
  /** a button for the last message of an answer given in full (Regenerate) */
  regenerate?: ActionRowBuilder<ButtonBuilder>;
}

export interface RelayResult {
  ok: boolean;
  error?: { code: string; message: string };
  /** the answer had an annotated image and it was attached */
  attached: boolean;
  chars: number;
  /** the message that carries the Regenerate button (an answer given in full) */
  regenerateOn?: SentMessage;
}

const TYPING_REFRESH_MS = 8_000;
const ATTACH_REFUSED = "I couldn't attach the image with the boxes here: I need the **Attach Files** permission in this channel.";
const ATTACH_TOO_LARGE = 'The image with the boxes was too large to upload here.';
const ATTACH_FAILED = "I couldn't upload the image with the boxes (Discord's upload failed).";

function apiCode(err: unknown): number | string | undefined {
  return err instanceof DiscordAPIError ? err.code : undefined;
}

/** Discord's "Missing Permissions" / "Missing Access". */
export function isPermissionError(err: unknown): boolean {
  const c = apiCode(err);
  return c === 50013 || c === 50001;
}

/** The streamed text shown while the answer grows: one message's worth, with " …" (still being written). */
function preview(raw: string, head: string): string {
  const md = head + answerMarkdown(raw).trimEnd();
  if (md.length + 2 <= DISCORD_MESSAGE_LIMIT) return `${md} …`;
  return `${splitMessage(md, DISCORD_MESSAGE_LIMIT - 2)[0]} …`;
}

/** A stopped answer: the text written so far (as much as one message holds) and who stopped it. */
function stopped(raw: string, head: string, user: string): string {
  const line = notice(stoppedLine(user));
  const md = answerMarkdown(raw).trim();
  if (!md) return `${head}${line}`;
  const room = DISCORD_MESSAGE_LIMIT - head.length - line.length - 3;
  const text = md.length <= room ? md : `${splitMessage(md, room)[0]} …`;
  return `${head}${text}\n${line}`;
}

/**
 * Streams one answer into `target`. Never throws for Discord errors while streaming (they are logged and the
 * final write is still tried); a failure of the final write rejects.
 */
export async function relayAnswer(events: AsyncIterable<AnswerEvent>, target: ReplyTarget, o: RelayOptions): Promise<RelayResult> {
  const head = o.notice ? `${notice(o.notice)}\n` : '';
  let raw = '';
  let final: { text: string } | undefined;
  let image: { data: Buffer; mime: string } | undefined;
  let error: { code: string; message: string } | undefined;
  /**
   * The next write waits firstWait from here for what follows (0: it need not): from the answer's first text, so
   * that a short answer appears whole; or from its start after a place in line, so that "Thinking…" is not shown
   * when the text follows at once. Settled once a write went out after it.
   */
  let settleFrom = 0;
  let settled = false;
  const firstWait = o.firstTextWaitMs ?? 600;
  let written = false;

  // "typing…" from the answer's start until its first message exists (a request waiting in line shows its place
  // instead, once it has waited placeAfterMs: see there)
  let typingTimer: NodeJS.Timeout | undefined;
  const stopTyping = () => {
    if (typingTimer) clearInterval(typingTimer);
    typingTimer = undefined;
  };
  const typing = () => target.typing().catch((err: unknown) => o.log(`discord: ${o.label}: typing failed: ${(err as Error).message}`));
  const startTyping = () => {
    if (typingTimer || written) return;
    void typing();
    typingTimer = setInterval(() => void typing(), TYPING_REFRESH_MS);
    typingTimer.unref?.();
  };

  const message = new ThrottledMessage<string>({
    intervalMs: o.editIntervalMs,
    write: async (content) => {
      written = true;
      if (settleFrom) settled = true;
      stopTyping();
      await target.first({ content, ...(o.stop ? { components: [o.stop.button] } : {}) });
    },
    onError: (err) => o.log(`discord: ${o.label}: could not update the reply: ${(err as Error).message}`),
    notBefore: () => (settleFrom && !settled ? settleFrom + firstWait : 0),
  });
  const show = (content: string) => {
    if (content.trim()) message.show(content);
  };
  const place = new PlaceInLine(
    (position) => show(`${head}${notice(position > 0 ? `Waiting in line (${position} ahead of you)…` : 'Next in line…')}`),
    { afterMs: o.placeAfterMs, everyMs: o.queueUpdateMs },
  );

  try {
    await onAnswerEvents(events, {
      // (a place told again as the queue moves; once shown, the line goes when the answer starts)
      queued: (ev) => place.queued(ev.position),
      started: () => {
        place.end();
        if (!place.waited) return startTyping();
        if (raw) return;
        settleFrom = Date.now();
        show(`${head}${notice('Thinking…')}`);
      },
      restart: () => {
        // another worker answers again: what was streamed so far is replaced
        raw = '';
        show(`${head}${notice('Answering again…')}`);
      },
      text: (ev) => {
        if (!settleFrom) settleFrom = Date.now();
        raw += ev.text;
        if (answerMarkdown(raw).trim()) show(preview(raw, head));
      },
      final: (ev) => {
        final = { text: ev.text };
      },
      image: (ev) => {
        image = { data: ev.data, mime: ev.mime };
      },
      error: (ev) => {
        error = { code: ev.code, message: ev.message };
      },
    });
  } finally {
    place.end();
    stopTyping();
    await message.stop();
  }

  // The final write goes out as soon as the answer ends (discord.js queues it behind Discord's rate limits); it
  // takes the Stop button away.
  const noButtons = o.stop ? { components: [] } : {};
  const stopper = o.stop?.stoppedBy();
  if (error?.code === 'cancelled' && stopper) {
    await target.first({ content: stopped(raw, head, stopper), ...noButtons });
    return { ok: false, error, attached: false, chars: 0 };
  }
  if (error || !final) {
    const message = error?.message ?? 'The answer ended unexpectedly; please try again.';
    await target.first({ content: `${head}⚠️ ${message}`, ...noButtons });
    return { ok: false, error: error ?? { code: 'internal', message }, attached: false, chars: 0 };
  }

  const md = answerMarkdown(final.text);
  const pieces = splitMessage(head + (md.trim() ? md : '_(The model gave an empty answer.)_'));
  const file: AttachmentPayload | undefined = image
    ? {
        attachment: image.data,
        name: image.mime === 'image/jpeg' ? 'answer-boxes.jpg' : 'answer-boxes.png',
        description: "The image with the answer's boxes drawn",
      }
    : undefined;
  let attached = false;
  let regenerateOn: SentMessage | undefined;
  for (let i = 0; i < pieces.length; i++) {
    const last = i === pieces.length - 1;
    const buttons = last && o.regenerate ? { components: [o.regenerate] } : i === 0 ? noButtons : {};
    const send = async (p: Payload) => {
      const sent = await (i === 0 ? target.first({ ...p, ...buttons }) : target.more({ ...p, ...buttons }));
      if (last && o.regenerate) regenerateOn = sent;
    };
    if (!last || !file) {
      await send({ content: pieces[i] });
      continue;
    }
    try {
      await send({ content: pieces[i], files: [file] });
      attached = true;
    } catch (err) {
      const code = apiCode(err);
      // Refused (permission, size), or the upload failed past discord.js's own retries (5xx, network): the
      // answer still goes out, without the image.
      const refused = isPermissionError(err) || code === 40005;
      o.log(`discord: ${o.label}: could not attach the annotated image (${refused ? code : (err as Error).message}); answering without it`);
      const why = notice(code === 40005 ? ATTACH_TOO_LARGE : refused ? ATTACH_REFUSED : ATTACH_FAILED);
      const content = pieces[i].length + why.length + 1 <= DISCORD_MESSAGE_LIMIT ? `${pieces[i]}\n${why}` : pieces[i];
      await send({ content });
      if (content === pieces[i]) await target.more({ content: why });
    }
  }
  return { ok: true, attached, chars: md.length, ...(regenerateOn ? { regenerateOn } : {}) };
}
