/** The one error type the client rejects with, its `code` saying what happened. */

import type { ErrorCode } from './protocol.js';

/**
 * What went wrong:
 * - the server's error codes (docs/PROTOCOL.md), `rate_limited` and `unavailable` with
 *   `retryAfterMs`;
 * - `timeout`: no answer in time; the publish may or may not have been stored;
 * - `disconnected`: the connection dropped before the answer (same uncertainty), or a
 *   publish was made while disconnected without an offline queue;
 * - `not_sent`: the publish never went out (the session could not be joined in time): it
 *   was not stored, and sending it again cannot store it twice;
 * - `encode`: the data has no wire form (a BigInt, a cycle): nothing was sent;
 * - `queue_full`: the offline queue is at its bound;
 * - `closed`: the client or the session was closed by the app;
 * - `token_expired`, `protocol`: the connection cannot go on (see the client's `error`).
 */
export type RoomcastErrorCode =
  | ErrorCode
  | 'timeout'
  | 'disconnected'
  | 'not_sent'
  | 'encode'
  | 'queue_full'
  | 'closed'
  | 'token_expired'
  | 'protocol';

export class RoomcastError extends Error {
  readonly code: RoomcastErrorCode;
  /** For `rate_limited` and `unavailable`: when trying again makes sense, in ms. */
  readonly retryAfterMs: number | undefined;

  constructor(code: RoomcastErrorCode, message: string, retryAfterMs?: number) {
    super(message);
    this.name = 'RoomcastError';
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
}

export function isRoomcastError(e: unknown): e is RoomcastError {
  return e instanceof RoomcastError;
}
