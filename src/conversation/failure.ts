// A request's expected failure, carrying the error code its `error` event gets (src/conversation/types.ts
// ErrorCode). Anything else thrown while answering is `internal` (see ConversationManager's errorEvent).
import type { ErrorCode } from './types.js';

export class Failure extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
  }
}

export const CANCELLED = 'The request was cancelled.';
