// Errors in the shape OpenAI's API answers with (`{"error": {"message", "type", "param", "code"}}`), so that
// the official SDKs raise their usual exception classes (BadRequestError, AuthenticationError, ...).
import type { ErrorCode } from '../../src/conversation/index.js';

// (`requests`: OpenAI's type for a limit on requests, status 429)
export type ApiErrorType = 'invalid_request_error' | 'authentication_error' | 'not_found_error' | 'server_error' | 'requests';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly type: ApiErrorType,
    readonly code: string,
    message: string,
    readonly param: string | null = null,
    /** extra response headers, e.g. Retry-After */
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(message);
  }

  toJSON(): { error: { message: string; type: ApiErrorType; param: string | null; code: string } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

export const badRequest = (message: string, param: string | null = null, code = 'invalid_request'): ApiError =>
  new ApiError(400, 'invalid_request_error', code, message, param);

/** The conversation manager's error events as HTTP errors. */
export function managerError(code: ErrorCode, message: string): ApiError {
  switch (code) {
    case 'busy':
      return new ApiError(503, 'server_error', 'server_busy', message, null, { 'retry-after': '2' });
    case 'no_image':
      return new ApiError(400, 'invalid_request_error', 'no_image', message, 'messages');
    case 'bad_image':
      return new ApiError(400, 'invalid_request_error', 'invalid_image', message, 'messages');
    case 'too_long':
      return new ApiError(400, 'invalid_request_error', 'context_length_exceeded', message, 'messages');
    case 'unavailable':
      return new ApiError(503, 'server_error', 'store_unavailable', message, null, { 'retry-after': '5' });
    case 'stale':
      return new ApiError(409, 'invalid_request_error', 'conflict', message, null);
    case 'not_allowed':
      return new ApiError(403, 'invalid_request_error', 'not_allowed', message, null);
    case 'cancelled':
      return new ApiError(503, 'server_error', 'cancelled', message, null, { 'retry-after': '2' });
    default:
      return new ApiError(500, 'server_error', 'internal_error', message);
  }
}

/**
 * 429 with the wait in the headers the SDKs read before retrying (`retry-after-ms`, `retry-after` in whole seconds):
 * the official clients wait that long and try again by themselves (2 retries by default).
 */
export function tooManyRequests(code: string, message: string, retryAfterMs: number): ApiError {
  const ms = Math.max(1, Math.ceil(retryAfterMs));
  return new ApiError(429, 'requests', code, message, null, {
    'retry-after-ms': String(ms),
    'retry-after': String(Math.ceil(ms / 1000)),
  });
}
