// A request's generation settings as the model gets them (src/conversation/generation-settings.ts) and the OpenAI
// request's sampling parameters as the API hands them over (adapters/api/request.ts).
import { describe, expect, it } from 'vitest';
import { generationOptions } from '../../src/conversation/generation-settings.js';
import { LIMITS } from '../../src/conversation/limits.js';
import { parseChatRequest } from '../../adapters/api/request.js';
import { ApiError } from '../../adapters/api/errors.js';
import type { MiniGPT } from '../../src/inference/model.js';

const model = { meta: { llm: { vocabSize: 512, maxPositions: 1024 }, prompt: { stopStrings: ['###'] } } } as unknown as Pick<
  MiniGPT,
  'meta'
>;

describe('generationOptions: OpenAI penalties and logit bias', () => {
  it('passes them through, clamped to the ranges OpenAI allows', () => {
    const o = generationOptions({ frequencyPenalty: 1.5, presencePenalty: -7, logitBias: { '5': 200, '7': -3.5 } }, {}, model);
    expect(o).toMatchObject({
      frequencyPenalty: 1.5,
      presencePenalty: -2,
      logitBias: [
        [5, 100],
        [7, -3.5],
      ],
    });
    expect(generationOptions({ frequencyPenalty: 9 }, {}, model).frequencyPenalty).toBe(2);
  });

  it('leaves out what is not a token id of the model or not a number, and bounds the count', () => {
    const bias = { '511': 1, '512': 1, abc: 1, '-1': 1, '1.5': 1, '3': Number.NaN, '4': 'x' as unknown as number };
    expect(generationOptions({ logitBias: bias }, {}, model).logitBias).toEqual([[511, 1]]);
    expect(generationOptions({ logitBias: {} }, {}, model).logitBias).toBeUndefined();
    // '007' is token 7 again: once
    expect(generationOptions({ logitBias: { '7': 1, '007': 2 } }, {}, model).logitBias).toEqual([[7, 2]]);
    const many = Object.fromEntries(Array.from({ length: 2000 }, (_, i) => [String(i), 1]));
    expect(
      generationOptions({ logitBias: many }, {}, { meta: { ...model.meta, llm: { ...model.meta.llm, vocabSize: 1e6 } } } as typeof model)
        .logitBias,
    ).toHaveLength(LIMITS.logitBias);
  });
});

describe('generationOptions: log-probabilities', () => {
  it('asks for 0 to 20 alternatives, whole numbers', () => {
    expect(generationOptions({ logprobs: 3.7 }, {}, model).logprobs).toBe(3);
    expect(generationOptions({ logprobs: 50 }, {}, model).logprobs).toBe(LIMITS.topLogprobs);
    expect(generationOptions({ logprobs: -1 }, {}, model).logprobs).toBeUndefined();
    expect(generationOptions({}, {}, model).logprobs).toBeUndefined();
  });
});

describe('parseChatRequest: sampling parameters', () => {
  const body = (extra: object) => ({ model: 'm', messages: [{ role: 'user', content: 'hi' }], ...extra });
  it('maps frequency_penalty, presence_penalty and logit_bias (0 and {} ask for nothing)', () => {
    expect(
      parseChatRequest(body({ frequency_penalty: -1.25, presence_penalty: 0.5, logit_bias: { '17': -100, '0': 2 } }), 512).generation,
    ).toEqual({
      frequencyPenalty: -1.25,
      presencePenalty: 0.5,
      logitBias: { '17': -100, '0': 2 },
    });
    expect(parseChatRequest(body({ frequency_penalty: 0, presence_penalty: 0, logit_bias: {}, logprobs: false }), 512).generation).toEqual(
      {},
    );
  });

  it('maps logprobs and top_logprobs', () => {
    expect(parseChatRequest(body({ logprobs: true, top_logprobs: 3 })).generation).toEqual({ logprobs: 3 });
    expect(parseChatRequest(body({ logprobs: true })).generation).toEqual({ logprobs: 0 });
    expect(parseChatRequest(body({ logprobs: false })).generation).toEqual({});
  });

  it('refuses what OpenAI refuses, naming the parameter', () => {
    const refused = (extra: object, vocab?: number) => {
      try {
        parseChatRequest(body(extra), vocab);
      } catch (e) {
        expect(e).toBeInstanceOf(ApiError);
        return (e as ApiError).param;
      }
      return 'accepted';
    };
    expect(refused({ frequency_penalty: 2.01 })).toBe('frequency_penalty');
    expect(refused({ presence_penalty: '1' })).toBe('presence_penalty');
    expect(refused({ logit_bias: [1] })).toBe('logit_bias');
    expect(refused({ logit_bias: { '512': 1 } }, 512)).toBe('logit_bias');
    expect(refused({ logit_bias: { '512': 1 } })).toBe('accepted'); // a front end without the package: the worker leaves it out
    expect(refused({ logit_bias: { '01x': 1 } })).toBe('logit_bias');
    expect(refused({ logit_bias: { '1': -100.5 } })).toBe('logit_bias');
    expect(refused({ logit_bias: Object.fromEntries(Array.from({ length: LIMITS.logitBias + 1 }, (_, i) => [String(i), 1])) })).toBe(
      'logit_bias',
    );
  });
});
