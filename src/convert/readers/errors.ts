/** Raised for every problem with a checkpoint file: unreadable, truncated, corrupt, unsupported or refused. */
export class CheckpointError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CheckpointError';
  }
}
