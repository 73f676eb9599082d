// Slack's Stop button and "Forget this conversation" across Redis. Stop: the asker presses Stop on an answer that a
// worker is writing; the front end's cancel reaches the worker (pub/sub) and its generation ends, the thread keeps
// the image (stored by the worker) and a follow-up, queued like any other, is answered in full. Forget: a reset
// job that the worker decides in the conversation's order (who took part), its outcome sent back. A real redis-server on a free loopback port, the
// real cluster worker and front end (RemoteConversations) in this process, the real Bolt app on the fake Slack,
// the demo model forced to a long answer with its decoding steps slowed so that there is time to press.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createStore, type AnswerEvent } from '../../src/conversation/index.js';
import { RemoteConversations } from '../../src/cluster/frontend.js';
import type { SlackAdapter } from '../../adapters/slack/index.js';
import { slackKey } from '../../adapters/slack/answer.js';
import type { SlowSteps } from '../helpers/slow-steps.js';
import { startDemoWorker, type DemoWorker } from './helpers.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { FakeSlack, type FakeMessage } from '../slack/fake-slack.js';
import { sleep, squarePng, startSlack, textReplies } from '../slack/helpers.js';

const FORCED = Array.from({ length: 40 }, (_, i) => `word${i}`).join(' ');

let redis: TestRedis;
let cluster: DemoWorker;
let slow: SlowSteps;
let frontend: RemoteConversations;
let fake: FakeSlack;
let adapter: SlackAdapter;

beforeAll(async () => {
  redis = await startRedis();
  cluster = await startDemoWorker(redis.url, {
    forcedAnswer: FORCED,
    stepMs: 25,
    manager: { defaults: { maxNewTokens: 400, temperature: 0 } },
    // one job at a time, so that a second one waits in the cluster's queue
    worker: { concurrency: 1 },
  });
  slow = cluster.slow!;
  frontend = new RemoteConversations({ redisUrl: redis.url, store: await createStore(redis.url), positionPollMs: 50 });
  fake = await FakeSlack.start();
  adapter = await startSlack(fake, frontend, { updateIntervalMs: 100 });
}, 60_000);

afterAll(async () => {
  await adapter?.close();
  await fake?.close();
  await frontend?.close();
  await cluster?.close();
  await redis?.cleanup();
});

/** whether a message carries the Stop button (an answer given in full carries Regenerate instead) */
const hasButton = (m: FakeMessage) =>
  (m.blocks ?? []).some((b) => b.type === 'actions' && (b.elements as { action_id: string }[]).some((e) => e.action_id === 'minigpt_stop'));

/** `user` forgets the thread of `msg` with the message shortcut; the private reply they get. */
async function forget(msg: FakeMessage, user: string): Promise<string> {
  const n = fake.ephemerals.length;
  await fake.sendShortcut(msg, { user, callbackId: 'forget_conversation' });
  return (await fake.waitFor(() => fake.ephemerals.slice(n).find((e) => e.user === user), 30_000, `the reply to ${user}'s forget`)).text;
}

describe('Slack on a front end', () => {
  it("stops the worker's generation; the thread keeps its image for the next question", async () => {
    const file = fake.addFile({ name: 'square.png', data: await squarePng(120, 90), mimetype: 'image/png' });
    const { msg: ask } = await fake.mention('C1', { text: `<@${fake.botUserId}> describe this at length`, files: [file] });
    const reply = await fake.waitFor(
      () => textReplies(fake, 'C1', ask.ts).find((m) => /word3 .* …$/.test(m.text) && hasButton(m)),
      30_000,
      'an answer being written by the worker, with its Stop button',
    );

    await fake.pressButton(reply, 'minigpt_stop', 'U0ALICE');
    await fake.waitFor(() => (/Stopped by <@U0ALICE>/.test(reply.text) ? true : undefined), 10_000, 'the stopped reply');
    // the worker's model stops stepping (the cancel went through Redis to it), well before 40 words
    let at = -1;
    for (let i = 0; i < 20 && slow.steps() !== at; i++) {
      at = slow.steps();
      await sleep(300);
    }
    expect(slow.steps()).toBe(at);
    const stoppedAt = slow.steps();
    expect(stoppedAt).toBeLessThan(40);
    const words = reply.text.split('\n')[0]!.replace(/ …$/, '');
    expect(FORCED.startsWith(words)).toBe(true);

    // the worker stored the image, and no turn, in the shared store
    const key = slackKey(fake.teamId, 'C1', ask.ts);
    const state = await frontend.history(key);
    expect(state?.image).toBeDefined();
    expect(state?.turns).toEqual([]);

    // a follow-up is queued to a worker like any other and answered in full, from the stored image
    await fake.reply('C1', ask.ts, { text: 'and in short?' });
    const full = await fake.waitFor(
      () => textReplies(fake, 'C1', ask.ts).find((m) => m !== reply && m.text === FORCED && !hasButton(m)),
      30_000,
      'the follow-up answered in full',
    );
    expect(full.text).toBe(FORCED);
    expect(slow.steps() - stoppedAt).toBeGreaterThanOrEqual(40);
    expect((await frontend.history(key))?.turns.map((t) => t.user)).toEqual(['and in short?']);
  }, 90_000);

  it('an answer stopped while it waited in the queue: the worker keeps its image in the thread; the follow-up is answered', async () => {
    const busy = fake.addFile({ name: 'busy.png', data: await squarePng(64, 64), mimetype: 'image/png' });
    const { msg: first } = await fake.mention('C3', { text: `<@${fake.botUserId}> keep the worker busy`, files: [busy] });
    await fake.waitFor(() => textReplies(fake, 'C3', first.ts).find((m) => /word3 /.test(m.text)), 30_000, 'the busy answer being written');
    const file = fake.addFile({ name: 'square.png', data: await squarePng(90, 60), mimetype: 'image/png' });
    const { msg: ask } = await fake.mention('C4', { text: `<@${fake.botUserId}> and this one?`, files: [file] });
    const waiting = await fake.waitFor(
      () => textReplies(fake, 'C4', ask.ts).find((m) => /Looking at the image/.test(m.text) && hasButton(m)),
      30_000,
      'the second answer waiting in the queue, with its Stop button',
    );
    await sleep(200); // (its job is in the queue by then)
    await fake.pressButton(waiting, 'minigpt_stop', 'U0ALICE');
    await fake.waitFor(() => (/Stopped by <@U0ALICE>/.test(waiting.text) ? true : undefined), 30_000, 'the stopped reply');
    const key = slackKey(fake.teamId, 'C4', ask.ts);
    const state = await frontend.history(key);
    expect(state?.turns).toEqual([]);
    expect(state?.image).toMatchObject({ width: 90, height: 60 });
    // it never ran on the model: nothing of an answer was written
    expect(waiting.text).not.toContain('word0');
    await fake.reply('C4', ask.ts, { text: 'and in short?' });
    await fake.waitFor(
      () => textReplies(fake, 'C4', ask.ts).find((m) => m !== waiting && m.text === FORCED && !hasButton(m)),
      30_000,
      'the follow-up answered in full',
    );
  }, 90_000);

  it('a request waiting for the worker is told its place in the queue as it moves up, until a worker takes it', async () => {
    const image = await squarePng(60, 40);
    const ask = (thread: string) =>
      frontend.handle({
        key: slackKey(fake.teamId, 'C9', thread),
        user: 'U0ALICE',
        text: 'what is it?',
        image,
        generation: { maxNewTokens: 24 },
      });
    const events = async (it: AsyncIterator<AnswerEvent>, first: AnswerEvent[] = []) => {
      for (let r = await it.next(); !r.done; r = await it.next()) first.push(r.value);
      return first;
    };
    // the first is taken by the worker (one job at a time), the second and third wait, in that order
    const a = ask('1.1')[Symbol.asyncIterator]();
    const seenA: AnswerEvent[] = [];
    while (seenA.at(-1)?.type !== 'started') seenA.push((await a.next()).value as AnswerEvent);
    const b = ask('1.2')[Symbol.asyncIterator]();
    const seenB = [(await b.next()).value as AnswerEvent];
    const c = ask('1.3')[Symbol.asyncIterator]();
    const [doneA, doneB, doneC] = await Promise.all([events(a, seenA), events(b, seenB), events(c)]);
    const places = (evs: AnswerEvent[]) => evs.flatMap((e) => (e.type === 'queued' ? [e.position] : []));
    expect(places(doneA)).toEqual([0]);
    expect(places(doneB)).toEqual([0]);
    // told 1 (the second before it), then 0 once the worker took the second
    expect(places(doneC)).toEqual([1, 0]);
    expect(doneC.findIndex((e) => e.type === 'started')).toBeGreaterThan(doneC.findLastIndex((e) => e.type === 'queued'));
    for (const evs of [doneA, doneB, doneC])
      expect(evs.find((e) => e.type === 'final')).toMatchObject({ text: expect.stringMatching(/^word0 word1/) });
  }, 60_000);

  it('"Forget this conversation": the worker decides who took part, after the requests sent before it', async () => {
    slow.restore();
    const file = fake.addFile({ name: 'square.png', data: await squarePng(100, 80), mimetype: 'image/png' });
    const { msg: ask } = await fake.mention('C2', { text: `<@${fake.botUserId}> what is it?`, files: [file] });
    // bob, sent while the answer is written (queued after it): refused, as the stored turn is alice's
    expect(await forget(ask, 'U0BOB')).toBe(
      'Only someone who took part in this conversation, or a workspace admin, can make me forget it.',
    );
    const key = slackKey(fake.teamId, 'C2', ask.ts);
    expect((await frontend.history(key))?.turns).toHaveLength(1);
    expect(await forget(ask, 'U0ALICE')).toBe(
      "Forgotten: this conversation's image and history are deleted. Send an image to start again.",
    );
    expect(await frontend.history(key)).toBeNull();
    expect(await forget(ask, 'U0ALICE')).toBe('I have nothing stored for this conversation.');
  }, 60_000);
});
