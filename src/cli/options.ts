// Options more than one `minigpt` command takes, written once so that their choices and help agree.
import { Option } from 'commander';
import { PROVIDER_CHOICES } from '../inference/providers.js';

/** `--provider <name>`, one of the execution providers; `fallback` says what runs without it (for the help). */
export function providerOption(fallback?: string): Option {
  return new Option('--provider <name>', fallback ? `execution provider (default: ${fallback})` : 'execution provider').choices([
    ...PROVIDER_CHOICES,
  ]);
}

/** `--logit-bias` against the loaded model: an id its vocabulary does not have is a mistake to say, not to skip. */
export function checkLogitBias(bias: readonly (readonly [number, number])[] | undefined, vocabSize: number): void {
  const wrong = (bias ?? []).filter(([id]) => id >= vocabSize).map(([id]) => id);
  if (wrong.length > 0)
    throw new Error(`--logit-bias: token ${wrong.join(', ')} is not in the model's vocabulary (ids 0 to ${vocabSize - 1})`);
}
