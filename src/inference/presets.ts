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

/** Upstream Chat.answer defaults. */
export const UPSTREAM_GENERATION = {
  maxNewTokens: 300,
  numBeams: 1,
  minNewTokens: 1,
  topP: 0.9,
  repetitionPenalty: 1.05,
  temperature: 1.0,
} as const;
