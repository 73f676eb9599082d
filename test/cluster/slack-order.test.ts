// A Slack thread's messages reaching two front ends: a user sends a new image in a bot thread and, right after, a
// question about it; Slack delivers the first to one front end (whose download of the image is slow) and the second
// to another. The question is answered after the image is in the conversation, as in one process. A real
// redis-server on a free loopback port, the real cluster worker and two front ends as `serve --role frontend` starts
// them (each a Bolt app over HTTP on RemoteConversations) in this process, the fake Slack sending each event to one
// of them, the demo model.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningFrontend } from '../../src/cluster/serve.js';
import { slackFrontends, slackUrlOf, startDemoWorker, type DemoWorker } from './helpers.js';
import { slackKey } from '../../adapters/slack/answer.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { FakeSlack } from '../slack/fake-slack.js';
import { squarePng, textReplies } from '../slack/helpers.js';

const FORCED = 'a square on a plain background';

let redis: TestRedis;
let cluster: DemoWorker;
const frontEnds: RunningFrontend[] = [];
let fake: FakeSlack;

beforeAll(async () => {
  redis = await startRedis();
  cluster = await startDemoWorker(redis.url, { forcedAnswer: FORCED, manager: { defaults: { maxNewTokens: 40, temperature: 0 } } });
  fake = await FakeSlack.start();
  frontEnds.push(...(await slackFrontends(2, redis.url, fake, () => {})));
}, 60_000);

afterAll(async () => {
  for (const fe of frontEnds) await fe.close();
  await fake?.close();
  await cluster?.close();
  await redis?.cleanup();
});

/** Sends what `send` sends to front end `i` (the fake posts each event to the app at its appUrl). */
function to<T>(i: number, send: () => Promise<T>): Promise<T> {
  fake.appUrl = slackUrlOf(frontEnds[i]!);
  return send();
}

describe('Slack on two front ends', () => {
  it("answers a thread's messages in the order they were sent when they reach different front ends", async () => {
    const first = fake.addFile({ name: 'first.png', data: await squarePng(80, 60), mimetype: 'image/png' });
    const { msg: ask } = await to(0, () => fake.mention('C1', { text: 'what is this?', files: [first] }));
    await fake.waitFor(() => textReplies(fake, 'C1', ask.ts).find((m) => m.text === FORCED), 30_000, 'the first answer');
    const key = slackKey(fake.teamId, 'C1', ask.ts);
    const before = (await frontEnds[0]!.manager.history(key))!.image.hash;

    // a new image, whose download takes a while, to the first front end; right after, a question to the second
    const second = fake.addFile({ name: 'second.png', data: await squarePng(64, 96), mimetype: 'image/png' });
    fake.fileDelays.set(second.id, 1500);
    await to(0, () => fake.reply('C1', ask.ts, { text: 'here is another one', files: [second] }));
    await to(1, () => fake.reply('C1', ask.ts, { text: 'and what colour is it?' }));

    await fake.waitFor(() => textReplies(fake, 'C1', ask.ts).filter((m) => m.text === FORCED).length === 3, 30_000, 'both answered');
    // (a new image starts the conversation's history anew: asked before it, the question would be its first turn's)
    const state = (await frontEnds[1]!.manager.history(key))!;
    expect(state.turns.map((t) => t.user)).toEqual(['here is another one', 'and what colour is it?']);
    expect(state.image.hash).not.toBe(before);
    expect(state.image).toMatchObject({ width: 64, height: 96 });

    // only the latest answer keeps its Regenerate button, though the answer before it was written by the other front end
    const regenerable = () =>
      textReplies(fake, 'C1', ask.ts).filter((m) =>
        (m.blocks ?? []).some((b) => b.type === 'actions' && JSON.stringify(b.elements).includes('minigpt_regenerate')),
      );
    await fake.waitFor(() => (regenerable().length === 1 ? true : undefined), 10_000, 'one answer with the Regenerate button');
    expect(regenerable()[0]!.ts).toBe(
      textReplies(fake, 'C1', ask.ts)
        .filter((m) => m.text === FORCED)
        .at(-1)!.ts,
    );
  }, 90_000);

  it('a Regenerate button pressed twice at once, at two front ends: one new answer; the other press is told privately', async () => {
    const file = fake.addFile({ name: 'twice.png', data: await squarePng(80, 60), mimetype: 'image/png' });
    const { msg: ask } = await to(0, () => fake.mention('C2', { text: 'twice?', files: [file] }));
    const withButton = () =>
      textReplies(fake, 'C2', ask.ts).find((m) =>
        (m.blocks ?? []).some((b) => b.type === 'actions' && JSON.stringify(b.elements).includes('minigpt_regenerate')),
      );
    const first = await fake.waitFor(withButton, 30_000, 'the answer with its button');
    const n = fake.ephemerals.length;
    // (each press is sent to its front end as it starts)
    await Promise.all([0, 1].map((i) => to(i, () => fake.pressButton(first, 'minigpt_regenerate'))));
    await fake.waitFor(() => fake.ephemerals.length > n || undefined, 10_000, 'the private reply');
    expect(fake.ephemerals.slice(n).map((e) => e.text)).toEqual(['This answer is being regenerated already.']);
    const regenerated = () => textReplies(fake, 'C2', ask.ts).filter((m) => m.text.startsWith('_Regenerated: '));
    await fake.waitFor(() => (regenerated().some((m) => m.text.endsWith(FORCED)) ? true : undefined), 30_000, 'the new answer');
    await fake.waitFor(() => (first.text.endsWith('below._') ? true : undefined), 10_000, 'the old answer marked');
    await new Promise((r) => setTimeout(r, 500));
    expect(regenerated()).toHaveLength(1);
    expect(fake.ephemerals.slice(n)).toHaveLength(1);
    expect((await frontEnds[1]!.manager.history(slackKey(fake.teamId, 'C2', ask.ts)))!.turns).toHaveLength(1);
  }, 90_000);
});
