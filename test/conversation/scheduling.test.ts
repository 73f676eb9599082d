// Ordering, the bounded queue and cancellation, on the real tiny model.
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { ConversationManager, type AnswerEvent } from '../../src/conversation/index.js';
import type { MiniGPT } from '../../src/inference/model.js';
import { eventLog } from '../helpers/event-log.js';
import { collect, errorOf, finalOf, goldenImage, key, loadTinyModel, solidPng, types, type TinyModel } from './helpers.js';

let tiny: TinyModel;
let model: MiniGPT;
let image: Buffer;

beforeAll(async () => {
  tiny = await loadTinyModel();
  model = tiny.model;
  image = await goldenImage();
});

afterAll(async () => {
  await tiny?.dispose();
});

afterEach(() => {
  vi.restoreAllMocks();
});

/** The user text of the last turn of each prompt the model was asked, in the order it was asked. */
function askedOrder(spy: { mock: { calls: unknown[][] } }): string[] {
  return spy.mock.calls.map((c) => {
    const prompt = c[0] as string;
    const m = /\[INST\] (?:<Img><ImageHere><\/Img> )?([^[]*) \[\/INST\]$/.exec(prompt);
    return m ? m[1] : prompt;
  });
}

describe('conversation manager: scheduling', () => {
  it('runs one conversation in arrival order and lets conversations take turns', async () => {
    const m = new ConversationManager({ model, defaults: { maxNewTokens: 4 }, maxQueue: 10 });
    const spy = vi.spyOn(model, 'answer');
    const A = key('A');
    const B = key('B');
    // all handed over at once, before any has run
    const streams = [
      m.handle({ key: A, user: 'u', text: 'A1', image }),
      m.handle({ key: A, user: 'u', text: 'A2' }),
      m.handle({ key: A, user: 'u', text: 'A3' }),
      m.handle({ key: B, user: 'u', text: 'B1', image }),
      m.handle({ key: B, user: 'u', text: 'B2' }),
    ];
    const results = await Promise.all(streams.map(collect));
    for (const ev of results) expect(errorOf(ev)).toBeUndefined();
    expect(results.map((ev) => ev[0])).toEqual([0, 1, 2, 1, 3].map((position) => ({ type: 'queued', position })));
    // A's follow-ups waited for A's earlier turns; B did not wait for all of A
    expect(askedOrder(spy)).toEqual(['A1', 'B1', 'A2', 'B2', 'A3']);
    const prompts = spy.mock.calls.map((c) => c[0]);
    expect(prompts[2]).toContain('A1');
    expect(prompts[4]).toContain('A2');
    expect(prompts[4]).not.toContain('B1');
    expect((await m.history(A))!.turns.map((t) => t.user)).toEqual(['A1', 'A2', 'A3']);
    expect((await m.history(B))!.turns.map((t) => t.user)).toEqual(['B1', 'B2']);
    await m.close();
  });

  it('tells a waiting request its new place as the queue moves: a request ahead starts, or is cancelled', async () => {
    const m = new ConversationManager({ model, defaults: { maxNewTokens: 4 }, maxQueue: 10 });
    const ctl = new AbortController();
    const streams = [
      m.handle({ key: key('pA'), user: 'u', text: 'A', image }),
      m.handle({ key: key('pB'), user: 'u', text: 'B', image, signal: ctl.signal }),
      m.handle({ key: key('pC'), user: 'u', text: 'C', image }),
      m.handle({ key: key('pD'), user: 'u', text: 'D', image }),
    ];
    ctl.abort();
    const results = await Promise.all(streams.map(collect));
    const places = results.map((ev) => ev.flatMap((e) => (e.type === 'queued' ? [e.position] : [])));
    // B's cancellation moved C and D up; A's end let C start, which moved D up again
    expect(places).toEqual([[0], [1], [2, 1], [3, 2, 1]]);
    expect(types(results[3]).slice(0, 4)).toEqual(['queued', 'queued', 'queued', 'started']);
    expect(errorOf(results[3])).toBeUndefined();
    await m.close();
  });

  it('answers busy at once, exactly once, when the queue is full, and loses none of the others', async () => {
    const m = new ConversationManager({ model, defaults: { maxNewTokens: 4 }, maxQueue: 2 });
    const streams = ['q1', 'q2', 'q3', 'q4'].map((t) => m.handle({ key: key(t), user: 'u', text: t, image }));
    const results = await Promise.all(streams.map(collect));
    const busy = results.filter((ev) => errorOf(ev)?.code === 'busy');
    expect(busy).toHaveLength(1);
    expect(busy[0]).toEqual([{ type: 'error', code: 'busy', message: expect.stringMatching(/busy/i) }]);
    expect(results[3]).toBe(busy[0]);
    for (const ev of results.slice(0, 3)) expect(finalOf(ev).type).toBe('final');
    for (const t of ['q1', 'q2', 'q3']) expect((await m.history(key(t)))!.turns).toHaveLength(1);
    expect(await m.history(key('q4'))).toBeNull();
    // once drained, requests are taken again
    const again = await collect(m.handle({ key: key('q4'), user: 'u', text: 'q4', image }));
    expect(errorOf(again)).toBeUndefined();
    await m.close();
  });

  it('cancels a waiting request: it never runs, frees its slot, and the others go on', async () => {
    const m = new ConversationManager({ model, defaults: { maxNewTokens: 30, minNewTokens: 30 }, maxQueue: 1 });
    const answer = vi.spyOn(model, 'answer');
    const encode = vi.spyOn(model, 'encodeImage');
    const first = m.handle({ key: key('c1'), user: 'u', text: 'first', image });
    const ctl = new AbortController();
    const second = m.handle({ key: key('c2'), user: 'u', text: 'second', image, signal: ctl.signal });
    ctl.abort();
    // the freed slot takes another request at once
    const third = m.handle({ key: key('c3'), user: 'u', text: 'third', image });
    const [e1, e2, e3] = await Promise.all([first, second, third].map(collect));
    expect(e2).toEqual([
      { type: 'queued', position: 1 },
      { type: 'error', code: 'cancelled', message: expect.any(String) },
    ]);
    expect(errorOf(e1)).toBeUndefined();
    expect(errorOf(e3)).toBeUndefined();
    expect(askedOrder(answer)).toEqual(['first', 'third']);
    expect(encode).toHaveBeenCalledTimes(1); // same image: the second encoding came from the cache
    // its new image is kept in its thread (without a turn, and without running the vision encoder for it)
    const kept = await m.history(key('c2'));
    expect(kept?.turns).toEqual([]);
    expect(kept?.image.hash).toBe((await m.history(key('c1')))?.image.hash);
    await m.close();
  });

  it('a waiting edit or regenerate request is checked once nothing of its conversation is ahead: refused at once, or its place told as checked', async () => {
    const m = new ConversationManager({ model, defaults: { maxNewTokens: 4 }, maxQueue: 10 });
    const X = key('chk-x');
    const E = key('chk-e');
    const F = key('chk-f');
    for (const [k, p] of [
      [X, 'x'],
      [E, 'e'],
      [F, 'f'],
    ] as const) {
      await collect(m.handle({ key: k, user: 'u', text: `${p} one`, image, requestId: `${p}1` }));
      if (k !== X) await collect(m.handle({ key: k, user: 'u', text: `${p} two`, requestId: `${p}2` }));
    }
    // X's second question holds the model until the test lets it go
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const original = model.answer.bind(model);
    vi.spyOn(model, 'answer').mockImplementation(async function* (...args: Parameters<MiniGPT['answer']>) {
      if (args[0].includes('blocker')) await gate;
      yield* original(...args);
    });
    const { seen, read } = eventLog();
    const blocker = read('x2', m.handle({ key: X, user: 'u', text: 'blocker', requestId: 'x2' }));
    await vi.waitFor(() => expect(seen).toContain('x2 started'));
    // nothing of E's or F's conversations ahead: decided now
    const editE = read('e', m.handle({ key: E, user: 'u', text: 'e two, edited', edit: 'e2', requestId: 'e2-e1' }));
    const editF = read('f', m.handle({ key: F, user: 'u', text: 'f one, edited', edit: 'f1', requestId: 'f1-e1' }));
    // x1 is X's latest question until x2, running, is stored: decided after it
    const editX = read('x', m.handle({ key: X, user: 'u', text: 'x one, edited', edit: 'x1', requestId: 'x1-e1' }));
    await vi.waitFor(() => expect(seen).toEqual(expect.arrayContaining(['e queued checked', 'f error'])));
    expect(seen).not.toContain('x2 final');
    release();
    const [eE, eF, eX] = await Promise.all([editE, editF, editX]);
    expect(errorOf(await blocker)).toBeUndefined();
    expect(eE.filter((e) => e.type === 'queued')).toEqual([
      { type: 'queued', position: 1 },
      { type: 'queued', position: 1, checked: true },
    ]);
    expect(errorOf(eE)).toBeUndefined();
    expect((await m.history(E))!.turns.map((t) => t.user)).toEqual(['e one', 'e two, edited']);
    expect(eF).toEqual([
      { type: 'queued', position: 2 },
      { type: 'error', code: 'stale', message: 'Only the latest question in a conversation is answered again when edited.' },
    ]);
    expect(errorOf(eX)?.code).toBe('stale');
    expect(eX.some((e) => e.type === 'queued' && e.checked)).toBe(false);
    expect(seen.indexOf('x error')).toBeGreaterThan(seen.indexOf('x2 final'));
    expect((await m.history(X))!.turns.map((t) => t.user)).toEqual(['x one', 'blocker']);
    expect((await m.history(F))!.turns.map((t) => t.user)).toEqual(['f one', 'f two']);
    await m.close();
  });

  it('a request with a new image stopped while it waited keeps the image in its place in the thread: a follow-up sent after it asks about it', async () => {
    const m = new ConversationManager({ model, defaults: { maxNewTokens: 30, minNewTokens: 30, temperature: 0 } });
    const encode = vi.spyOn(model, 'encodeImage');
    const k = key('wait-stop');
    const other = await solidPng(80, 40, [30, 160, 60]);
    const first = m.handle({ key: k, user: 'u', text: 'first', image });
    const ctl = new AbortController();
    const stopped = m.handle({ key: k, user: 'u', text: 'a new picture', image: other, signal: ctl.signal });
    const after = m.handle({ key: k, user: 'u', text: 'what about this one?' });
    ctl.abort();
    const [e1, e2, e3] = await Promise.all([first, stopped, after].map(collect));
    expect(e2).toEqual([
      { type: 'queued', position: 1 },
      { type: 'error', code: 'cancelled', message: expect.any(String) },
    ]);
    expect(finalOf(e1)?.image).toEqual({ width: 120, height: 90 });
    // the follow-up was answered about the stopped request's image, as a first turn about it
    expect(finalOf(e3)?.image).toEqual({ width: 80, height: 40 });
    const state = await m.history(k);
    expect(state?.image).toMatchObject({ width: 80, height: 40, bytes: other.byteLength });
    expect(state?.turns.map((t) => t.user)).toEqual(['what about this one?']);
    expect(encode).toHaveBeenCalledTimes(2); // the stopped request's image once, for the follow-up
    // a stopped request whose file is not an image keeps nothing (and says nothing to anyone)
    const ctl2 = new AbortController();
    const busy = m.handle({ key: k, user: 'u', text: 'busy' });
    const bad = m.handle({ key: k, user: 'u', text: 'bad', image: Buffer.from('not an image'), signal: ctl2.signal });
    ctl2.abort();
    await Promise.all([busy, bad].map(collect));
    expect((await m.history(k))?.image.width).toBe(80);
    await m.close();
  });

  it('cancels a running request through its signal: no final, nothing stored, the next request runs', async () => {
    const m = new ConversationManager({ model, defaults: { maxNewTokens: 60, minNewTokens: 60 } });
    const k = key('run-cancel');
    await collect(m.handle({ key: k, user: 'u', text: 'kept turn', image }));
    const ctl = new AbortController();
    const stream = m.handle({ key: k, user: 'u', text: 'cancelled turn', signal: ctl.signal });
    const next = m.handle({ key: k, user: 'u', text: 'next turn' });
    const events: AnswerEvent[] = [];
    for await (const ev of stream) {
      events.push(ev);
      if (ev.type === 'text') ctl.abort();
    }
    expect(types(events)).not.toContain('final');
    expect(events.at(-1)).toMatchObject({ type: 'error', code: 'cancelled' });
    const textEvents = events.filter((e) => e.type === 'text').length;
    expect(textEvents).toBeGreaterThan(0);
    expect(textEvents).toBeLessThan(60);
    const e3 = await collect(next);
    expect(errorOf(e3)).toBeUndefined();
    expect((await m.history(k))!.turns.map((t) => t.user)).toEqual(['kept turn', 'next turn']);
    await m.close();
  });

  it('a stopped answer about a new image keeps the image in the thread (not the turn): the next message asks about it', async () => {
    const m = new ConversationManager({ model, defaults: { maxNewTokens: 60, minNewTokens: 60, temperature: 0 } });
    const k = key('stop-first');
    const ctl = new AbortController();
    const events: AnswerEvent[] = [];
    for await (const ev of m.handle({ key: k, user: 'u', text: 'stopped first turn', image, signal: ctl.signal })) {
      events.push(ev);
      if (ev.type === 'text') ctl.abort();
    }
    expect(events.at(-1)).toMatchObject({ type: 'error', code: 'cancelled' });
    const kept = await m.history(k);
    expect(kept?.turns).toEqual([]);
    expect(kept?.image.hash).toMatch(/^[0-9a-f]{64}$/);
    // the follow-up has the image (without it: no_image) and is answered as a first turn about it would be
    const spy = vi.spyOn(model, 'answer');
    const follow = await collect(m.handle({ key: k, user: 'u', text: 'and now?' }));
    expect(errorOf(follow)).toBeUndefined();
    const prompt = spy.mock.calls[0]![0] as string;
    expect(prompt).toMatch(/\[INST\] <Img><ImageHere><\/Img> and now\? \[\/INST\]$/);
    expect(prompt.split('[INST]')).toHaveLength(2); // one user turn: the stopped one is not in it
    const freshManager = new ConversationManager({ model, defaults: { maxNewTokens: 60, minNewTokens: 60, temperature: 0 } });
    const fresh = await collect(freshManager.handle({ key: key('fresh'), user: 'u', text: 'and now?', image }));
    await freshManager.close();
    expect(finalOf(follow)?.text).toBe(finalOf(fresh)?.text);
    expect((await m.history(k))!.turns.map((t) => t.user)).toEqual(['and now?']);

    // a new image in a thread, its answer stopped: the thread moves to the new image, its earlier turns go
    const other = await solidPng(64, 48, [200, 30, 30]);
    const ctl2 = new AbortController();
    for await (const ev of m.handle({ key: k, user: 'u', text: 'a new picture', image: other, signal: ctl2.signal })) {
      if (ev.type === 'text') ctl2.abort();
    }
    const moved = await m.history(k);
    expect(moved?.turns).toEqual([]);
    expect(moved?.image.hash).not.toBe(kept?.image.hash);
    // a stopped follow-up (no new image) leaves the thread as it was
    await collect(m.handle({ key: k, user: 'u', text: 'one' }));
    const ctl3 = new AbortController();
    for await (const ev of m.handle({ key: k, user: 'u', text: 'two', signal: ctl3.signal })) {
      if (ev.type === 'text') ctl3.abort();
    }
    expect((await m.history(k))!.turns.map((t) => t.user)).toEqual(['one']);
    await m.close();
  });

  it('leaving the stream early (break) cancels the request', async () => {
    const m = new ConversationManager({ model, defaults: { maxNewTokens: 60, minNewTokens: 60 } });
    const answer = vi.spyOn(model, 'answer');
    const k = key('break');
    const stream = m.handle({ key: k, user: 'u', text: 'first', image });
    for await (const ev of stream) {
      if (ev.type === 'text') break;
    }
    const ev2 = await collect(m.handle({ key: key('other'), user: 'u', text: 'other', image }));
    expect(errorOf(ev2)).toBeUndefined();
    // (the image it brought stays with the thread, not the turn: see the test above)
    expect((await m.history(k))?.turns).toEqual([]);
    expect(askedOrder(answer)).toEqual(['first', 'other']);
    await m.close();
  });

  it('an already aborted signal is answered cancelled at once', async () => {
    const m = new ConversationManager({ model });
    const ev = await collect(m.handle({ key: key('pre'), user: 'u', text: 'x', image, signal: AbortSignal.abort() }));
    expect(ev).toEqual([{ type: 'error', code: 'cancelled', message: expect.any(String) }]);
    await m.close();
  });

  it('close() cancels waiting requests, finishes the running one and refuses new ones', async () => {
    const m = new ConversationManager({ model, defaults: { maxNewTokens: 20, minNewTokens: 20 } });
    const running = m.handle({ key: key('x1'), user: 'u', text: 'one', image });
    const waiting = m.handle({ key: key('x2'), user: 'u', text: 'two', image });
    const closed = m.close();
    const [e1, e2] = await Promise.all([collect(running), collect(waiting)]);
    await closed;
    expect(finalOf(e1).type).toBe('final');
    expect(errorOf(e2)).toMatchObject({ code: 'cancelled', message: expect.stringMatching(/shutting down/) });
    const late = await collect(m.handle({ key: key('x3'), user: 'u', text: 'three', image }));
    expect(late).toEqual([{ type: 'error', code: 'busy', message: expect.stringMatching(/shutting down/) }]);
  });
});
