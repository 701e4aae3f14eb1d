/** The one error type the client rejects with, its `code` saying what happened. */
export class RoomcastError extends Error {
    code;
    /** For `rate_limited` and `unavailable`: when trying again makes sense, in ms. */
    retryAfterMs;
    constructor(code, message, retryAfterMs) {
        super(message);
        this.name = 'RoomcastError';
        this.code = code;
        this.retryAfterMs = retryAfterMs;
    }
}
export function isRoomcastError(e) {
    return e instanceof RoomcastError;
}
