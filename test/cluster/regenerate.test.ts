// Regenerate and edited questions across Redis: a front end queues a request for the conversation's last answer
// again, the worker answers the stored question (protocol 3), or the edited one (protocol 4), and replaces the stored
// turn. While a worker of an earlier version is alive the front end refuses what it would get wrong (an empty
// question; an edited question answered as a new one; a deleted message's question forgotten with the whole
// conversation; a request's penalties and logit bias, protocol 6, answered without them). A real redis-server on a free
// loopback port, the real cluster worker and front end in this process, the demo model.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { createStore, type AnswerEvent, type ConversationKey, type ConversationRequest } from '../../src/conversation/index.js';
import { RemoteConversations } from '../../src/cluster/frontend.js';
import { keys } from '../../src/cluster/protocol.js';
import { earlierWorkerBeat, startDemoWorker, type DemoWorker } from './helpers.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { squarePng } from '../slack/helpers.js';

let redis: TestRedis;
let client: Redis;
let cluster: DemoWorker;
let frontend: RemoteConversations;
const logs: string[] = [];

beforeAll(async () => {
  redis = await startRedis();
  client = new Redis(redis.url);
  cluster = await startDemoWorker(redis.url, { manager: { defaults: { maxNewTokens: 12, temperature: 1 } } });
  frontend = new RemoteConversations({ redisUrl: redis.url, store: await createStore(redis.url), log: (l) => logs.push(l) });
}, 60_000);

afterAll(async () => {
  await frontend?.close();
  await cluster?.close();
  client?.disconnect();
  await redis?.cleanup();
});

async function ask(req: ConversationRequest): Promise<AnswerEvent[]> {
  const out: AnswerEvent[] = [];
  for await (const ev of frontend.handle(req)) out.push(ev);
  return out;
}

const finalText = (events: AnswerEvent[]) => events.flatMap((e) => (e.type === 'final' ? [e.text] : []))[0];

describe('regenerate and edited questions through a front end', () => {
  it('the worker answers the stored last question again and replaces its answer; refused while an earlier worker is alive', async () => {
    const key: ConversationKey = { platform: 'slack', workspace: 'T1', channel: 'C1', thread: '1700000000.000100' };
    await ask({ key, user: 'U1', text: 'what is this?', image: await squarePng(40, 30), requestId: 'q1' });
    const e2 = await ask({ key, user: 'U1', text: '[vqa] what colour is the square?', requestId: 'q2', generation: { seed: 1 } });
    expect(finalText(e2)).toBeDefined();

    // the same seed: the same answer to the same question (the text sent with the request is not the question)
    const e3 = await ask({ key, user: 'U1', text: 'unused', regenerate: 'q2', requestId: 'q3', generation: { seed: 1 } });
    expect(e3.find((e) => e.type === 'error')).toBeUndefined();
    expect(finalText(e3)).toBe(finalText(e2));
    let h = (await frontend.history(key))!;
    expect(h.turns.map((t) => [t.user, t.requestId])).toEqual([
      ['what is this?', 'q1'],
      ['[vqa] what colour is the square?', 'q3'],
    ]);

    // someone else's answer, and an answer no longer the last: refused by the worker, nothing changed
    expect((await ask({ key, user: 'U2', text: '', regenerate: 'q3', requestId: 'q4' })).at(-1)).toMatchObject({
      type: 'error',
      code: 'not_allowed',
    });
    expect((await ask({ key, user: 'U1', text: '', regenerate: 'q1', requestId: 'q5' })).at(-1)).toMatchObject({
      type: 'error',
      code: 'stale',
    });
    expect((await frontend.history(key))!.turns.map((t) => t.requestId)).toEqual(['q1', 'q3']);

    // the question edited (found by the id it was first asked under, though regenerated since): answered again
    const e7 = await ask({ key, user: 'U1', text: '[vqa] what shape is it?', edit: 'q2', requestId: 'q7' });
    expect(e7.find((e) => e.type === 'error')).toBeUndefined();
    h = (await frontend.history(key))!;
    expect(h.turns.map((t) => [t.user, t.requestId, t.askedAs])).toEqual([
      ['what is this?', 'q1', undefined],
      ['[vqa] what shape is it?', 'q7', 'q2'],
    ]);
    expect(h.turns[1].assistant).toBe(finalText(e7)!.trim());

    // a question asked under another id (its first answer stopped for an edit) keeps the message's id
    await ask({ key, user: 'U1', text: 'and its colour?', requestId: 'q9-e1', askedAs: 'q9' });
    expect((await frontend.history(key))!.turns.at(-1)).toMatchObject({ user: 'and its colour?', requestId: 'q9-e1', askedAs: 'q9' });
    const e10 = await ask({ key, user: 'U1', text: 'and its size?', edit: 'q9', requestId: 'q9-e2' });
    expect(e10.find((e) => e.type === 'error')).toBeUndefined();
    h = (await frontend.history(key))!;
    expect(h.turns.map((t) => t.requestId)).toEqual(['q1', 'q7', 'q9-e2']);

    // a worker of protocol 3 joins: an edit is refused before queueing (it would be answered as a new question)
    await earlierWorkerBeat(client, 'old-3', 3, 3);
    expect(await ask({ key, user: 'U1', text: '[vqa] what size is it?', edit: 'q2', requestId: 'q8' })).toEqual([
      {
        type: 'error',
        code: 'unavailable',
        message: expect.stringMatching(/^An edited question cannot be answered again while this bot is being upgraded/),
      },
    ]);
    await client.del(keys.worker('old-3'));

    // a worker of protocol 2 joins: the front end refuses before queueing, and says why
    await earlierWorkerBeat(client, 'old-2', 2, 2);
    const refused = await ask({ key, user: 'U1', text: '', regenerate: 'q7', requestId: 'q6' });
    expect(refused).toEqual([
      {
        type: 'error',
        code: 'unavailable',
        message: expect.stringMatching(/^Regenerating an answer is not possible while this bot is being upgraded/),
      },
    ]);
    h = (await frontend.history(key))!;
    expect(h.turns.map((t) => t.requestId)).toEqual(['q1', 'q7', 'q9-e2']);
    expect(logs.filter((l) => l.includes('worker old-2 (h, pid 2) is of an earlier version (protocol 2'))).toHaveLength(1);
    await client.del(keys.worker('old-2'));
  }, 60_000);

  it('passes OpenAI sampling settings to the worker; refused while a worker of an earlier version is alive', async () => {
    const key: ConversationKey = { platform: 'api', workspace: 'local', channel: 'v1', thread: 'sampling' };
    const image = await squarePng(40, 30);
    // +100 on one token: the worker wrote only it (the model alone would not)
    const forced = 68;
    const req = (generation: ConversationRequest['generation']): ConversationRequest => ({
      key,
      user: 'U1',
      text: 'what is this?',
      image,
      history: [],
      generation: { temperature: 0, maxNewTokens: 3, ...generation },
    });
    const biased = finalText(await ask(req({ logitBias: { [forced]: 100 }, frequencyPenalty: 0.5 })));
    expect(biased).toBe(cluster.model.tokenizer.decode([forced, forced, forced], { skipSpecialTokens: true }));
    expect(finalText(await ask(req({})))).not.toBe(biased);
    // log-probabilities come from the worker with the text they belong to
    const withLogprobs = await ask(req({ logprobs: 2, maxNewTokens: 8 }));
    const tokens = withLogprobs.flatMap((e) => (e.type === 'text' ? (e.logprobs ?? []) : []));
    const timings = withLogprobs.find((e) => e.type === 'timings');
    expect(tokens).toHaveLength(timings?.type === 'timings' ? timings.timings.newTokens : -1);
    expect(
      tokens
        .map((t) => t.token)
        .join('')
        .trim(),
    ).toBe(finalText(withLogprobs));
    expect(tokens.every((t) => t.top.length === 2 && t.logprob <= 0)).toBe(true);

    await earlierWorkerBeat(client, 'old-5', 5, 5);
    for (const g of [{ logitBias: { [forced]: 100 } }, { presencePenalty: -1 }, { frequencyPenalty: 1 }, { logprobs: 0 }]) {
      expect(await ask(req(g))).toEqual([
        {
          type: 'error',
          code: 'unavailable',
          message: expect.stringMatching(
            /^frequency_penalty, presence_penalty, logit_bias and logprobs cannot be honoured while this bot is being upgraded/,
          ),
        },
      ]);
    }
    // without them (or with zeros): answered as before
    expect(finalText(await ask(req({ frequencyPenalty: 0, logitBias: {} })))).toBeTruthy();
    await client.del(keys.worker('old-5'));
  }, 60_000);

  it("forgets a deleted message's question by the worker, after the requests before it; refused while an earlier worker is alive", async () => {
    const key: ConversationKey = { platform: 'slack', workspace: 'T1', channel: 'C2', thread: '1700000000.000200' };
    await ask({ key, user: 'U1', text: 'what is this?', image: await squarePng(40, 30), requestId: 'd1' });
    await ask({ key, user: 'U2', text: 'a question to delete', requestId: 'd2' });
    // asked, then deleted at once: the worker forgets it once it is stored
    const asking = ask({ key, user: 'U1', text: 'and its colour?', requestId: 'd3' });
    const forgetting = frontend.forgetQuestion(key, 'd3');
    expect((await asking).find((e) => e.type === 'error')).toBeUndefined();
    expect(await forgetting).toBe('question_forgotten');
    expect(await frontend.forgetQuestion(key, 'd2')).toBe('question_forgotten');
    expect((await frontend.history(key))!.turns.map((t) => t.requestId)).toEqual(['d1']);
    expect(await frontend.forgetQuestion(key, 'd2')).toBe('not_asked');

    // a worker of protocol 4 would forget the whole conversation: not asked to, the front end says why
    await earlierWorkerBeat(client, 'old-4', 4, 4);
    await expect(frontend.forgetQuestion(key, 'd1')).rejects.toThrow(/a worker of an earlier version is running/);
    expect((await frontend.history(key))!.turns.map((t) => t.requestId)).toEqual(['d1']);
    await client.del(keys.worker('old-4'));

    // the message that brought the image: the conversation goes
    expect(await frontend.forgetQuestion(key, 'd1')).toBe('conversation_forgotten');
    expect(await frontend.history(key)).toBeNull();

    // an answer deleted (turnOnly, carried by the job): the turn alone, though its message brought the image
    await ask({ key, user: 'U1', text: 'what is this?', image: await squarePng(40, 30), requestId: 'd4' });
    expect(await frontend.forgetQuestion(key, 'd4', { turnOnly: true })).toBe('question_forgotten');
    expect((await frontend.history(key))!.turns).toEqual([]);

    // an image from another message: the job carries which (the image's message recorded as its)
    await ask({ key, user: 'U1', text: 'what is this?', image: await squarePng(40, 30), imageFrom: 'i5', requestId: 'd5' });
    expect((await frontend.history(key))!.image.askedIn).toBe('i5');
    expect(await frontend.forgetQuestion(key, 'i5')).toBe('conversation_forgotten');
  }, 60_000);
});
