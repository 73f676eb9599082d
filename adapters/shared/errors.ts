// Errors and secrets in log lines, as every adapter writes them: an error as one line with what the platform's
// client attaches (code, HTTP status, the request), and the adapter's own secrets never written out.

/** An error as one log line: its message, then the code, HTTP status and request its client attached. */
export function describeError(err: unknown): string {
  if (err && typeof err === 'object') {
    const e = err as { message?: string; code?: unknown; status?: unknown; method?: unknown; url?: unknown };
    const parts = [e.message ?? String(err)];
    if (e.code !== undefined) parts.push(`code ${String(e.code)}`);
    if (e.status !== undefined) parts.push(`HTTP ${String(e.status)}`);
    if (typeof e.method === 'string' && typeof e.url === 'string') parts.push(`${e.method.toUpperCase()} ${e.url}`);
    return parts.join(', ');
  }
  return String(err);
}

/**
 * `line` with each of `secrets` (the adapter's tokens) replaced by `[redacted]`. Shorter ones than `minLength`
 * are left alone: a short value would also blank ordinary words of the line.
 */
export function hideSecrets(line: string, secrets: readonly string[], minLength: number): string {
  let s = String(line);
  for (const secret of secrets) if (secret && secret.length >= minLength) s = s.split(secret).join('[redacted]');
  return s;
}

/** A log that passes every line through `redact` first (the platform's patterns and the adapter's secrets). */
export function redactingLog(sink: ((line: string) => void) | undefined, redact: (line: string) => string): (line: string) => void {
  const out = sink ?? ((line: string) => process.stderr.write(`${line}\n`));
  return (line: string) => out(redact(line));
}
