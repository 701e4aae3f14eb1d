/** The one error type the client rejects with, its `code` saying what happened. */
export class RoomcastError extends Error {
    code;
    /** For `rate_limited` and `unavailable`: when trying again makes sense, in ms. */
    retryAfterMs;
    /** For a rejected publish: its idempotency key, to publish it again safely. */
    key;
    constructor(code, message, retryAfterMs) {
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
export function isRoomcastError(e) {
    return e instanceof RoomcastError;
}
