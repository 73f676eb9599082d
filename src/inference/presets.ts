// Constants of the published models, as the upstream code defines them.

/** CLIP normalisation used by Blip2ImageEvalProcessor. */
export const CLIP_MEAN: [number, number, number] = [0.48145466, 0.4578275, 0.40821073];
export const CLIP_STD: [number, number, number] = [0.26862954, 0.26130258, 0.27577711];

/** MiniGPT-v2: prompt_template `[INST] {} [/INST]`, CONV_VISION_minigptv2 roles, no system text. */
export const MINIGPT_V2_PROMPT = {
  template: '[INST] {} [/INST]',
  roles: ['<s>[INST] ', ' [/INST]'] as [string, string],
  system: '',
  separator: '',
  imagePlaceholder: '<Img><ImageHere></Img>',
  imageToken: '<ImageHere>',
  stopStrings: ['</s>'],
};

/** System sentence of upstream CONV_VISION_Vicuna0 and CONV_VISION_LLama2 (MiniGPT-4). */
export const MINIGPT4_SYSTEM =
  'Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it to you. Please answer my questions.';

/** MiniGPT-4 prompt styles: Vicuna v0 (minigpt4_eval.yaml) and Llama-2-chat (minigpt4_llama2_eval.yaml). */
export type Minigpt4PromptStyle = 'vicuna0' | 'llama2';
export const MINIGPT4_PROMPT_STYLES: readonly Minigpt4PromptStyle[] = ['vicuna0', 'llama2'];

/**
 * MiniGPT-4 prompts: `template` is the eval config's prompt_template; roles, system and separator are the
 * upstream Conversation (SINGLE style: system + sep, then role + message + sep, the open turn as the bare
 * role). Stop strings: the config's end_sym, and `###`, which upstream demo.py stops on for every model.
 */
export const MINIGPT4_PROMPTS: Record<Minigpt4PromptStyle, typeof MINIGPT_V2_PROMPT> = {
  vicuna0: {
    template: '###Human: {} ###Assistant: ',
    roles: ['Human: ', 'Assistant: '],
    system: MINIGPT4_SYSTEM,
    separator: '###',
    imagePlaceholder: '<Img><ImageHere></Img>',
    imageToken: '<ImageHere>',
    stopStrings: ['###'],
  },
  llama2: {
    template: '[INST] {} [/INST] ',
    roles: ['<s>[INST] ', ' [/INST] '],
    system: MINIGPT4_SYSTEM,
    separator: '',
    imagePlaceholder: '<Img><ImageHere></Img>',
    imageToken: '<ImageHere>',
    stopStrings: ['</s>', '###'],
  },
};

/** Upstream Chat.answer defaults. */
export const UPSTREAM_GENERATION = {
  maxNewTokens: 300,
  numBeams: 1,
  minNewTokens: 1,
  topP: 0.9,
  repetitionPenalty: 1.05,
  temperature: 1.0,
} as const;
