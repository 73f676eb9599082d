// Log redaction for the Discord adapter, and its rate limit's types (adapters/shared/rate-limit.ts).
import { hideSecrets } from '../shared/errors.js';

export { UserRateLimiter } from '../shared/rate-limit.js';
export type { RateDecision, RateLimiter, RateLimiterFactory } from '../shared/rate-limit.js';

/**
 * A log line without secrets: the bot token, interaction/webhook tokens in API paths, and URL queries
 * (Discord CDN links carry signatures in `ex`/`is`/`hm`).
 */
export function redact(line: string, secrets: readonly string[] = []): string {
  return hideSecrets(line, secrets, 8)
    .replace(/(\/(?:webhooks|interactions)\/\d+\/)[^/\s?#"']+/g, '$1[token]')
    .replace(/(\bhttps?:\/\/[^\s?#"'<>]+)\?[^\s"'<>)]*/gi, '$1')
    .replace(/\b(Bot|Bearer)\s+[A-Za-z0-9._-]{20,}/g, '$1 [redacted]');
}
