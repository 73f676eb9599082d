// The Stop button on a Slack answer being written: the real Bolt app (HTTP mode, then Socket Mode) on the fake
// Slack, the real ConversationManager and the demo model (forced to a long answer, its decoding steps slowed so
// that there is time to press). The asker stops it: generation ends, the reply keeps the text so far and says who
// stopped it, the button (Block Kit) goes; anyone else, and a button of a finished answer, get a private reply.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { MiniGPT } from '../../src/inference/model.js';
import { ConversationManager } from '../../src/conversation/index.js';
import type { SlackAdapter } from '../../adapters/slack/index.js';
import { slowSteps, type SlowSteps } from '../helpers/slow-steps.js';
import { FakeSlack, type FakeMessage } from './fake-slack.js';
import { sleep, squarePng, startSlack, startSlackSocket, textReplies } from './helpers.js';

const DEMO = join(import.meta.dirname, '..', '..', 'models', 'demo');
const FORCED = Array.from({ length: 40 }, (_, i) => `word${i}`).join(' ');
const STOP = 'minigpt_stop';

let model: MiniGPT;
let manager: ConversationManager;
let slow: SlowSteps;
let fake: FakeSlack;
let adapter: SlackAdapter;
const logs: string[] = [];

beforeAll(async () => {
  model = await MiniGPT.load(DEMO, { provider: 'cpu', threads: 1, forcedAnswer: FORCED });
  slow = slowSteps(model, 25);
  manager = new ConversationManager({ model, defaults: { maxNewTokens: 400, temperature: 0 } });
  fake = await FakeSlack.start();
  adapter = await startSlack(fake, manager, { log: (l) => logs.push(l), updateIntervalMs: 100 });
});

afterAll(async () => {
  await adapter?.close();
  await fake?.close();
  await manager?.close();
  slow?.restore();
  await model?.close();
});

const buttonsOf = (m: FakeMessage | undefined) =>
  (m?.blocks ?? []).flatMap((b) => (b.type === 'actions' ? (b.elements as { action_id: string; text: { text: string } }[]) : []));

/** The reply in the thread, once it shows streamed text and its Stop button. */
async function streaming(f: FakeSlack, channel: string, thread: string): Promise<FakeMessage> {
  return f.waitFor(
    () => textReplies(f, channel, thread).find((m) => /word3 .* …$/.test(m.text) && buttonsOf(m).length === 1),
    20_000,
    'an answer being written, with its Stop button',
  );
}

async function mention(f: FakeSlack, channel: string): Promise<FakeMessage> {
  const file = f.addFile({ name: 'square.png', data: await squarePng(120, 90), mimetype: 'image/png' });
  const { msg } = await f.mention(channel, { text: `<@${f.botUserId}> describe this at length`, files: [file] });
  return msg;
}

describe('slack: the Stop button', () => {
  it('is on the reply while it is written; someone else is told no; the asker stops it, the text so far kept', async () => {
    const ask = await mention(fake, 'C1');
    const reply = await streaming(fake, 'C1', ask.ts);
    // (the fake replaces a message's blocks on each update: this copy keeps the button, for a late press)
    const withButton = { ...reply };
    expect(buttonsOf(reply)[0]).toMatchObject({ type: 'button', action_id: STOP, text: { type: 'plain_text', text: 'Stop' } });
    // the text is in the blocks too (what Slack shows when a message has blocks)
    expect(reply.blocks![0]).toMatchObject({ type: 'section', text: { type: 'mrkdwn' } });

    // bob: a private no, the answer goes on
    const ephemerals = fake.ephemerals.length;
    expect((await fake.pressButton(reply, STOP, 'U0BOB')).status).toBe(200);
    await fake.waitFor(() => fake.ephemerals.length > ephemerals || undefined, 5000, "the reply to bob's press");
    expect(fake.ephemerals.at(-1)!.text).toBe('Only the person who asked, or a workspace admin, can stop this answer.');
    const before = slow.steps();
    await sleep(300);
    expect(slow.steps()).toBeGreaterThan(before);

    // alice, who asked: stopped
    expect((await fake.pressButton(reply, STOP, 'U0ALICE')).status).toBe(200);
    const stopped = await fake.waitFor(() => (/Stopped by/.test(reply.text) ? reply : undefined), 10_000, 'the stopped reply');
    const at = slow.steps();
    await sleep(400);
    expect(slow.steps()).toBe(at); // generation ended
    const [text, line] = stopped.text.split('\n');
    expect(line).toBe('_Stopped by <@U0ALICE>. A stopped answer is not kept in the conversation._');
    expect(text).toMatch(/ …$/);
    const words = text!.replace(/ …$/, '');
    expect(FORCED.startsWith(words)).toBe(true);
    expect(words.split(' ').length).toBeLessThan(40);
    expect(stopped.blocks).toEqual([]); // the button is gone
    expect(logs.some((l) => /: stopped by U0ALICE$/.test(l))).toBe(true);
    // pressed again: already finished
    const n = fake.ephemerals.length;
    await fake.pressButton(withButton, STOP, 'U0ALICE');
    await fake.waitFor(() => fake.ephemerals.length > n || undefined, 5000, 'the reply to a late press');
    expect(fake.ephemerals.at(-1)!.text).toBe('This answer has already finished.');

    // the thread kept its image: a follow-up is answered in full
    await fake.reply('C1', ask.ts, { text: 'and in short?' });
    const full = await fake.waitFor(
      // (no Stop button once it is written; the Regenerate button of an answer given in full: test/slack/regenerate.test.ts)
      () =>
        textReplies(fake, 'C1', ask.ts).find((m) => m !== reply && m.text === FORCED && !buttonsOf(m).some((b) => b.action_id === STOP)),
      20_000,
      'the follow-up answered in full',
    );
    expect(full.text).toBe(FORCED);
  }, 60_000);

  it('an edit of the question while its answer is written stops that answer; the edited text is answered instead', async () => {
    const ask = await mention(fake, 'C4');
    const reply = await streaming(fake, 'C4', ask.ts);
    const header = '_The question was edited: this answer replaces the one before it in the conversation._';
    await fake.edit(ask, `<@${fake.botUserId}> describe this briefly`);
    await fake.waitFor(() => (/Stopped by <@U0ALICE>/.test(reply.text) ? true : undefined), 10_000, 'the first answer stopped');
    const again = await fake.waitFor(
      () => textReplies(fake, 'C4', ask.ts).find((m) => m.text === `${header}\n${FORCED}` && buttonsOf(m).length === 1),
      20_000,
      'the edited question answered in full',
    );
    expect(again.ts).not.toBe(reply.ts);
    const key = { platform: 'slack' as const, workspace: fake.teamId, channel: 'C4', thread: ask.ts };
    const turns = (await manager.history(key))!.turns;
    expect(turns.map((t) => [t.user, t.askedAs])).toEqual([['describe this briefly', `slack:C4:${ask.ts}`]]);
    expect(logs.filter((l) => l.includes(`edit of message ${ask.ts} in C4`) && l.includes('not answered'))).toEqual([]);
  }, 60_000);

  it('a question deleted while its answer is written: the answer stops, then goes, with the conversation', async () => {
    const ask = await mention(fake, 'C6');
    const reply = await streaming(fake, 'C6', ask.ts);
    const steps = slow.steps();
    // (no replies in the thread but the bot's: a tombstone all the same, the thread has replies)
    await fake.userDeletes(ask);
    const line = await fake.waitFor(
      () => logs.find((l) => l.startsWith(`slack: deleted message ${ask.ts} in C6: `)),
      20_000,
      'the deletion handled',
    );
    // stopped before it was stored: the image was kept with no turn, and goes as the message's
    expect(line).toMatch(/: conversation forgotten, 1 answer message\(s\) deleted$/);
    expect(fake.messages.includes(reply)).toBe(false);
    await sleep(200);
    expect(slow.steps() - steps).toBeLessThan(40);
    expect(await manager.history({ platform: 'slack', workspace: fake.teamId, channel: 'C6', thread: ask.ts })).toBeNull();
  }, 60_000);

  it("a workspace admin (users.info) may stop anyone's answer", async () => {
    const ask = await mention(fake, 'C3');
    const reply = await streaming(fake, 'C3', ask.ts);
    fake.admins.add('U0ADMIN');
    await fake.pressButton(reply, STOP, 'U0ADMIN');
    await fake.waitFor(() => (/Stopped by <@U0ADMIN>/.test(reply.text) ? true : undefined), 10_000, 'the stopped reply');
    expect(reply.blocks).toEqual([]);
    expect(fake.callsOf('users.info').map((c) => c.args.user)).toEqual(['U0BOB', 'U0ADMIN']);
  }, 60_000);

  it('Socket Mode: the press comes over the socket and stops the answer', async () => {
    const f = await FakeSlack.start();
    f.transport = 'socket';
    const a = await startSlackSocket(f, manager, { updateIntervalMs: 100 });
    try {
      expect(a.mode).toBe('socket');
      await f.waitFor(() => f.socketConnected, 5000, 'the socket');
      const ask = await mention(f, 'C2');
      const reply = await streaming(f, 'C2', ask.ts);
      await f.pressButton(reply, STOP, 'U0ALICE');
      await f.waitFor(() => (/Stopped by <@U0ALICE>/.test(reply.text) ? true : undefined), 10_000, 'the stopped reply');
      expect(reply.blocks).toEqual([]);
    } finally {
      await a.close();
      await f.close();
    }
  }, 60_000);
});
