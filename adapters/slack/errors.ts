// Web API errors as the Slack adapter logs and tells them: the platform's error code (`missing_scope`,
// `not_in_channel`, …) says more than the client's message, and it decides what the user is told.

/** An error from the Web API as one line (the platform error code when there is one), without secrets. */
export function describeSlackError(err: unknown): string {
  const e = err as { data?: { error?: string; needed?: string }; code?: string; message?: string };
  if (e?.data?.error) return `${e.data.error}${e.data.needed ? ` (needed: ${e.data.needed})` : ''}`;
  return e?.message ?? String(err);
}

/** The platform error code of a Web API error (`missing_scope`, `not_in_channel`, …). */
export function slackErrorCode(err: unknown): string | undefined {
  const e = err as { data?: { error?: string } };
  return typeof e?.data?.error === 'string' ? e.data.error : undefined;
}
