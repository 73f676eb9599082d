// Options more than one `minigpt` command takes, written once so that their choices and help agree.
import { Option } from 'commander';
import { PROVIDER_CHOICES } from '../inference/providers.js';

/** `--provider <name>`, one of the execution providers; `fallback` says what runs without it (for the help). */
export function providerOption(fallback?: string): Option {
  return new Option('--provider <name>', fallback ? `execution provider (default: ${fallback})` : 'execution provider').choices([
    ...PROVIDER_CHOICES,
  ]);
}
