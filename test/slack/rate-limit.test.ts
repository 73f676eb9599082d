// A per-user rate limit on Slack (SLACK_RATE_LIMIT, default 6 a minute): a user over it is told privately, once
// per window for messages, every time for /describe and the shortcut, and is not answered; other users are not
// held back. The real Bolt app on the fake Slack, the real ConversationManager and the demo model.
import { describe, expect, it } from 'vitest';
import { slackOptionsFromEnv, SlackConfigError } from '../../adapters/slack/index.js';
import { squarePng, startSlack, textReplies, useSlackStack, waitForAnswers } from './helpers.js';

const FORCED = '<p>green square</p> {<20><20><70><70>} on a grey background';
const TOO_FAST = /^You're sending requests a bit fast: please wait \d+ seconds? before asking again\.$/;

const s = useSlackStack(FORCED, {
  adapter: (fake, manager, log) => startSlack(fake, manager, { log, rateLimit: { max: 2, windowMs: 60_000 } }),
});

describe('slack: the per-user rate limit', () => {
  it('answers a user up to the limit, then tells them privately (once per window) and answers nobody else less', async () => {
    const png = await squarePng();
    const asks = [];
    for (const c of ['R1', 'R2']) {
      const file = s.fake.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
      const { msg } = await s.fake.mention(c, { text: 'what is this?', files: [file] });
      await waitForAnswers(s.fake, c, msg.ts, 1);
      asks.push(msg);
    }
    // the third and fourth: not answered; one private notice in the thread
    await s.fake.reply('R1', asks[0]!.ts, { text: 'and the background?' });
    await s.fake.reply('R2', asks[1]!.ts, { text: 'and the colour?' });
    const notice = await s.fake.waitFor(() => s.fake.ephemerals.find((e) => e.channel === 'R1'), 10_000, 'the notice');
    expect(notice).toMatchObject({ user: 'U0ALICE', thread: asks[0]!.ts });
    expect(notice.text).toMatch(TOO_FAST);
    // bob is not held back by alice
    const file = s.fake.addFile({ name: 'square.png', data: png, mimetype: 'image/png' });
    const { msg: bobs } = await s.fake.mention('R3', { user: 'U0BOB', text: 'and mine?', files: [file] });
    await waitForAnswers(s.fake, 'R3', bobs.ts, 1);
    expect(textReplies(s.fake, 'R1', asks[0]!.ts)).toHaveLength(1);
    expect(textReplies(s.fake, 'R2', asks[1]!.ts)).toHaveLength(1);
    expect(s.fake.ephemerals.filter((e) => e.user === 'U0ALICE')).toHaveLength(1);
    expect(s.logs.filter((l) => l === 'slack: user U0ALICE is over the rate limit')).toHaveLength(2);

    // /describe and the shortcut are told every time (their user waits for a reply)
    for (let i = 0; i < 2; i++) {
      const n = s.fake.ephemerals.length;
      await s.fake.sendCommand({ text: 'what is it?', channel: 'R1' });
      const told = await s.fake.waitFor(() => s.fake.ephemerals[n], 10_000, 'the notice to /describe');
      expect(told.text).toMatch(TOO_FAST);
    }
    const n = s.fake.ephemerals.length;
    await s.fake.sendShortcut(asks[0]!);
    expect((await s.fake.waitFor(() => s.fake.ephemerals[n], 10_000, 'the notice to the shortcut')).text).toMatch(TOO_FAST);
    expect(textReplies(s.fake, 'R1').filter((m) => !m.thread_ts)).toHaveLength(0); // no /describe answer
  });

  it('SLACK_RATE_LIMIT: N/SECONDS, N alone per minute, 0 for none; anything else is refused naming it', () => {
    const env = { SLACK_BOT_TOKEN: 'xoxb-1' };
    expect(slackOptionsFromEnv({ ...env, SLACK_RATE_LIMIT: '3/30' }).rateLimit).toEqual({ max: 3, windowMs: 30_000 });
    expect(slackOptionsFromEnv({ ...env, SLACK_RATE_LIMIT: '10' }).rateLimit).toEqual({ max: 10, windowMs: 60_000 });
    expect(slackOptionsFromEnv({ ...env, SLACK_RATE_LIMIT: '0' }).rateLimit).toBe(false);
    expect(slackOptionsFromEnv(env).rateLimit).toBeUndefined();
    for (const bad of ['fast', '3/0', '-1/60'])
      expect(() => slackOptionsFromEnv({ ...env, SLACK_RATE_LIMIT: bad })).toThrow(
        new SlackConfigError(`SLACK_RATE_LIMIT=${bad}: expected N/SECONDS, e.g. 6/60 (0: no limit)`),
      );
  });
});
