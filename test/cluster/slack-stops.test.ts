// Slack on two front ends: the answer is written by the front end that got the question, but the Stop press, the edit
// or the deletion reaches the other one (Slack spreads events and interactions over them). The other asks the writer
// through Redis (src/cluster/stop-relay.ts): the answer stops as in one process, someone else's press is refused, not
// told "finished". A real redis-server on a free loopback port, the real cluster worker and two front ends
// (each a Bolt app over HTTP on RemoteConversations) in this process, the fake Slack sending each event to one of
// them, as `serve --role frontend` starts them, the demo model forced to a long answer with its decoding steps slowed so
// that there is time to act.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningFrontend } from '../../src/cluster/serve.js';
import { slackFrontends, slackUrlOf, startDemoWorker, type DemoWorker } from './helpers.js';
import { slackKey } from '../../adapters/slack/answer.js';
import type { SlowSteps } from '../helpers/slow-steps.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { FakeSlack, type FakeMessage } from '../slack/fake-slack.js';
import { squarePng, textReplies } from '../slack/helpers.js';

const FORCED = Array.from({ length: 40 }, (_, i) => `word${i}`).join(' ');

let redis: TestRedis;
let cluster: DemoWorker;
let slow: SlowSteps;
const frontends: RunningFrontend[] = [];
let fake: FakeSlack;
const logs: string[] = [];

beforeAll(async () => {
  redis = await startRedis();
  // (the front ends update a reply at most every 1.2 s: 40 steps of 60 ms are written in several)
  cluster = await startDemoWorker(redis.url, {
    forcedAnswer: FORCED,
    stepMs: 60,
    manager: { defaults: { maxNewTokens: 400, temperature: 0 } },
  });
  slow = cluster.slow!;
  fake = await FakeSlack.start();
  frontends.push(...(await slackFrontends(2, redis.url, fake, (i, l) => logs.push(`fe${i} ${l}`), { SLACK_RATE_LIMIT: '0' })));
}, 60_000);

afterAll(async () => {
  for (const f of frontends) await f.close();
  await fake?.close();
  await cluster?.close();
  await redis?.cleanup();
});

/** Sends what `send` sends to front end `i`. */
function to<T>(i: number, send: () => Promise<T>): Promise<T> {
  fake.appUrl = slackUrlOf(frontends[i]!);
  return send();
}

const hasStop = (m: FakeMessage) =>
  (m.blocks ?? []).some((b) => b.type === 'actions' && (b.elements as { action_id: string }[]).some((e) => e.action_id === 'minigpt_stop'));

/** A question with an image to front end 0; its answer once it is being written there (with its Stop button). */
async function asked(channel: string): Promise<{ ask: FakeMessage; reply: FakeMessage }> {
  const file = fake.addFile({ name: 'square.png', data: await squarePng(120, 90), mimetype: 'image/png' });
  const { msg: ask } = await to(0, () => fake.mention(channel, { text: `<@${fake.botUserId}> describe this at length`, files: [file] }));
  const reply = await fake.waitFor(
    () => textReplies(fake, channel, ask.ts).find((m) => /word3 .* …$/.test(m.text) && hasStop(m)),
    30_000,
    'an answer being written, with its Stop button',
  );
  return { ask, reply };
}

describe('Slack on two front ends: stopping an answer the other one writes', () => {
  it("a Stop press: someone else is refused; the asker's stops it", async () => {
    const { reply } = await asked('C1');
    const n = fake.ephemerals.length;
    expect((await to(1, () => fake.pressButton(reply, 'minigpt_stop', 'U0BOB'))).status).toBe(200);
    await fake.waitFor(() => fake.ephemerals.length > n || undefined, 10_000, "the reply to bob's press");
    expect(fake.ephemerals.at(-1)!.text).toBe('Only the person who asked, or a workspace admin, can stop this answer.');
    await to(1, () => fake.pressButton(reply, 'minigpt_stop', 'U0ALICE'));
    await fake.waitFor(() => (/Stopped by <@U0ALICE>/.test(reply.text) ? true : undefined), 10_000, 'the stopped reply');
    expect(reply.text.split(' ').length).toBeLessThan(40);
    // (alice is told nothing privately: the answer shows it stopped)
    expect(fake.ephemerals.length).toBe(n + 1);
  }, 60_000);

  it('an edit of the question: the answer the other front end writes stops, the edited text is answered', async () => {
    const { ask, reply } = await asked('C2');
    await to(1, () => fake.edit(ask, `<@${fake.botUserId}> describe this briefly`));
    await fake.waitFor(() => (/Stopped by <@U0ALICE>/.test(reply.text) ? true : undefined), 10_000, 'the first answer stopped');
    const header = '_The question was edited: this answer replaces the one before it in the conversation._';
    await fake.waitFor(
      () => textReplies(fake, 'C2', ask.ts).find((m) => m.text === `${header}\n${FORCED}`),
      30_000,
      'the edited question answered in full',
    );
    const turns = (await frontends[1]!.manager.history(slackKey(fake.teamId, 'C2', ask.ts)))!.turns;
    // stopped before it was stored: the edited text asked as the message's question
    expect(turns.map((t) => [t.user, t.askedAs])).toEqual([['describe this briefly', `slack:C2:${ask.ts}`]]);
  }, 60_000);

  it('a deletion of the question: the answer stops, then goes, with the conversation', async () => {
    const { ask, reply } = await asked('C3');
    const steps = slow.steps();
    await to(1, () => fake.userDeletes(ask));
    const line = await fake.waitFor(
      () => logs.find((l) => l.startsWith(`fe1 slack: deleted message ${ask.ts} in C3: `)),
      20_000,
      'the deletion handled',
    );
    expect(line).toMatch(/: conversation forgotten, 1 answer message\(s\) deleted$/);
    expect(fake.messages.includes(reply)).toBe(false);
    expect(slow.steps() - steps).toBeLessThan(40);
    expect(await frontends[0]!.manager.history(slackKey(fake.teamId, 'C3', ask.ts))).toBeNull();
  }, 60_000);
});
