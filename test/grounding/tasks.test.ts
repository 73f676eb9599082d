import { describe, expect, it } from 'vitest';
import { EVAL_PROMPTS, TASK_BUTTON_PROMPTS, TASKS, isTask, parseTask, taskPrompt } from '../../src/grounding/tasks.js';

describe('parseTask', () => {
  it.each([
    ['[grounding] describe this image in detail', 'grounding', 'describe this image in detail'],
    ['[refer] the world cup', 'refer', 'the world cup'],
    ['[detection] sofas', 'detection', 'sofas'],
    ['[identify] what is this {<4><50><30><65>}', 'identify', 'what is this {<4><50><30><65>}'],
    [
      '[vqa] where should I hide in this room when playing hide and seek',
      'vqa',
      'where should I hide in this room when playing hide and seek',
    ],
    ['[caption] briefly describe this image', 'caption', 'briefly describe this image'],
    ['  [REFER]   the cat  ', 'refer', 'the cat'],
    ['[vqa]', 'vqa', ''],
    ['[refer]the cat', 'refer', 'the cat'],
  ])('%j', (text, task, rest) => {
    expect(parseTask(text)).toEqual({ task, rest });
  });

  it('no tag, an unknown tag or a tag not at the start is chat', () => {
    expect(parseTask('Please write a poem about the image')).toEqual({ task: 'chat', rest: 'Please write a poem about the image' });
    expect(parseTask('[poem] roses')).toEqual({ task: 'chat', rest: '[poem] roses' });
    expect(parseTask('what is [refer]?')).toEqual({ task: 'chat', rest: 'what is [refer]?' });
    expect(parseTask('')).toEqual({ task: 'chat', rest: '' });
    expect(parseTask(undefined as unknown as string)).toEqual({ task: 'chat', rest: '' });
  });

  it('knows the six tags', () => {
    expect([...TASKS]).toEqual(['grounding', 'refer', 'detection', 'identify', 'vqa', 'caption']);
    expect(isTask('refer')).toBe(true);
    expect(isTask('chat')).toBe(false);
  });
});

describe('taskPrompt (upstream demo_v2.py task buttons)', () => {
  it('the demo button strings', () => {
    expect(TASK_BUTTON_PROMPTS.grounding).toBe('[grounding] describe this image in detail');
    expect(TASK_BUTTON_PROMPTS.refer).toBe('[refer] ');
    expect(TASK_BUTTON_PROMPTS.detection).toBe('[detection] ');
    expect(TASK_BUTTON_PROMPTS.identify).toBe('[identify] what is this ');
    expect(TASK_BUTTON_PROMPTS.vqa).toBe('[vqa] ');
    expect(TASK_BUTTON_PROMPTS.chat).toBe('');
  });

  it('grounding', () => {
    expect(taskPrompt('grounding')).toBe('[grounding] describe this image in detail');
    expect(taskPrompt('grounding', '')).toBe('[grounding] describe this image in detail');
    expect(taskPrompt('grounding', 'describe the people')).toBe('[grounding] describe the people');
  });

  it('refer', () => {
    expect(taskPrompt('refer', 'the world cup')).toBe('[refer] the world cup');
    expect(taskPrompt('refer', '[refer] the world cup')).toBe('[refer] the world cup');
    expect(taskPrompt('refer', '')).toBe('[refer]');
  });

  it('detection', () => {
    expect(taskPrompt('detection', 'sofas')).toBe('[detection] sofas');
    expect(taskPrompt('detection', ' [vqa] sofas ')).toBe('[detection] sofas');
  });

  it('identify', () => {
    expect(taskPrompt('identify', '', { box: { x1: 4, y1: 50, x2: 30, y2: 65 } })).toBe('[identify] what is this {<4><50><30><65>}');
    expect(taskPrompt('identify', 'what is this {<4><50><30><65>}')).toBe('[identify] what is this {<4><50><30><65>}');
    expect(taskPrompt('identify', '{<4><50><30><65>}')).toBe('[identify] what is this {<4><50><30><65>}');
    expect(taskPrompt('identify', '[identify] describe this object in {<1><2><3><4>}')).toBe(
      '[identify] describe this object in {<1><2><3><4>}',
    );
    // A drawn box replaces one typed in the text.
    expect(taskPrompt('identify', 'what is this {<1><2><3><4>}', { box: { x1: 30, y1: 65, x2: 4, y2: 50 } })).toBe(
      '[identify] what is this {<4><50><30><65>}',
    );
    expect(taskPrompt('identify')).toBe('[identify] what is this');
  });

  it('vqa', () => {
    expect(taskPrompt('vqa', 'where should I hide in this room when playing hide and seek')).toBe(
      '[vqa] where should I hide in this room when playing hide and seek',
    );
  });

  it('caption', () => {
    expect(taskPrompt('caption')).toBe('[caption] briefly describe this image');
    expect(taskPrompt('caption', 'a short caption please')).toBe('[caption] a short caption please');
  });

  it('chat passes the text through', () => {
    expect(taskPrompt('chat', '  Please write a poem about the image ')).toBe('Please write a poem about the image');
  });

  it('round-trips through parseTask', () => {
    for (const t of TASKS) {
      const p = taskPrompt(t, 'the red car');
      expect(parseTask(p).task).toBe(t);
    }
  });

  it('eval prompts match the upstream eval scripts', () => {
    expect(EVAL_PROMPTS.refer('the red car')).toBe('[refer] give me the location of the red car');
    expect(EVAL_PROMPTS.caption()).toBe('[caption] please describe this image?');
  });
});
