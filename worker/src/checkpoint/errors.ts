/** Any problem with a checkpoint on disk: the message names the file, the tensor and expected vs found. */
export class CheckpointError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CheckpointError';
  }
}
