/**
 * The wire format of the Roomcast WebSocket protocol v1 (docs/PROTOCOL.md): frames as they
 * travel, close codes, error codes. Everything here mirrors the gateway's `shared` crate.
 */
/** The close codes of docs/PROTOCOL.md "Close codes". */
export const Close = {
    Normal: 1000,
    GoingAway: 1001,
    /** Not sent by servers: the socket died without a close frame. */
    Abnormal: 1006,
    InvalidPayload: 1007,
    Policy: 1008,
    TooBig: 1009,
    Internal: 1011,
    TryAgainLater: 1013,
    SessionEnded: 4000,
    TokenExpired: 4001,
    Forbidden: 4003,
    SlowConsumer: 4008,
    /** The server cannot continue a session without a gap: rejoin with since (recovered: false). */
    Resync: 4010,
    RateLimited: 4029,
};
