// The limits every entry point applies the same way (the adapters check them early, with their own words; the
// conversation manager checks them again, whoever calls it).
import { MAX_TOP_LOGPROBS } from '../inference/generation/logprobs.js';

export const LIMITS = {
  /** largest image file accepted, in bytes */
  imageBytes: 20 * 1024 * 1024,
  /** most beams a request may ask for (upstream's demo offers 1-10; 8 keeps a batch within memory) */
  beams: 8,
  /** most choices one API request may ask for (`n`: each is a request of its own in the queue) */
  choices: 8,
  /** most token ids one request may bias (logit_bias; each costs a little every decoding step) */
  logitBias: 1024,
  /** most alternatives a token's log-probability may list (OpenAI's top_logprobs) */
  topLogprobs: MAX_TOP_LOGPROBS,
} as const;
