/** The one error type the client rejects with, its `code` saying what happened. */

import type { ErrorCode } from './protocol.js';

/**
 * What went wrong:
 * - the server's error codes (docs/PROTOCOL.md), `rate_limited` and `unavailable` with
 *   `retryAfterMs`;
 * - `timeout`: no answer in time; the publish may or may not have been stored. Publish
 *   again with the error's `key` (`publish(data, { key: e.key })`): the server stores a
 *   keyed publish once and answers a repeat with the first one's seq;
 * - `disconnected`: a publish was made while disconnected without an offline queue, or
 *   was sent before the connection ended for good (it may have been stored). A publish
 *   in flight when the connection drops is sent again, with its key, after the rejoin,
 *   until its timeout;
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
  /** For a rejected publish: its idempotency key, to publish it again safely. */
  key: string | undefined;

  constructor(code: RoomcastErrorCode, message: string, retryAfterMs?: number) {
    super(message);
    this.name = 'RoomcastError';
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * Thrown (or rejected) by a token function to say no token will come: the user is signed
 * out, the device revoked. The client stops retrying, ends its sessions with
 * `unauthorized` and reports it as its `error`.
 */
export class UnauthorizedError extends Error {
  constructor(message = 'no token: unauthorized') {
    super(message);
    this.name = 'UnauthorizedError';
  }
}

export function isRoomcastError(e: unknown): e is RoomcastError {
  return e instanceof RoomcastError;
}
