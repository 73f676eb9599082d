// Web API errors as the Slack adapter logs and tells them: the platform's error code (`missing_scope`,
// `not_in_channel`, …) says more than the client's message, and it decides what the user is told. And a token that
// Slack stops accepting while the bot runs, seen in any Web API response.
import axios, { type AxiosAdapter, type AxiosResponse } from 'axios';

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

/** The Web API error codes of a token Slack no longer accepts: the bot cannot answer until it is given a new one. */
const REFUSED_TOKEN = new Set(['invalid_auth', 'token_revoked', 'token_expired', 'account_inactive']);

/** The variable whose token Slack refused, and how (`code` on `method`). */
export interface RefusedToken {
  variable: 'SLACK_BOT_TOKEN' | 'SLACK_APP_TOKEN';
  code: string;
  method: string;
}

/**
 * The Web API clients' HTTP adapter (axios's own, every response passing through it): a response refusing one of
 * `tokens` (by the Authorization header it was sent with) is told to `refused`, then returned as it came, so the call
 * fails as before. Every client the app makes has it (Bolt's for each event, the Socket Mode client's).
 */
export function watchTokens(tokens: { bot: string; app?: string }, refused: (r: RefusedToken) => void): AxiosAdapter {
  const http = axios.getAdapter(axios.defaults.adapter);
  return async (config) => {
    const res = await http(config);
    const code = refusalCode(res);
    if (code) {
      const auth = String(config.headers.get('Authorization') ?? '');
      const variable =
        auth === `Bearer ${tokens.bot}` ? 'SLACK_BOT_TOKEN' : tokens.app && auth === `Bearer ${tokens.app}` ? 'SLACK_APP_TOKEN' : undefined;
      const method = (config.url ?? '').split('/').pop()?.split('?')[0] ?? '';
      if (variable) refused({ variable, code, method });
    }
    return res;
  };
}

/** A refused token's error code in a Web API response (JSON, as received), if it is one. */
function refusalCode(res: AxiosResponse): string | undefined {
  let body: unknown = res.data;
  if (typeof body === 'string') {
    if (!body.includes('"ok":false')) return undefined;
    try {
      body = JSON.parse(body);
    } catch {
      return undefined;
    }
  }
  const b = body as { ok?: unknown; error?: unknown } | null | undefined;
  return b?.ok === false && typeof b.error === 'string' && REFUSED_TOKEN.has(b.error) ? b.error : undefined;
}

/** What the operator reads when Slack refuses a token while the bot runs. */
export function refusedTokenLine(r: RefusedToken): string {
  const help =
    r.variable === 'SLACK_BOT_TOKEN'
      ? 'the token was revoked, the app removed, or the workspace deactivated: reinstall the app and set its new Bot User OAuth Token'
      : 'the app-level token was revoked: create a new one (Basic Information > App-Level Tokens, connections:write)';
  return `Slack refused ${r.variable} (${r.code} on ${r.method}): ${help}`;
}
