/** Reconnect delays: exponential backoff with full jitter, capped, with a floor. */
export class Backoff {
    random;
    attempt = 0;
    min;
    max;
    constructor(opts = {}, random = Math.random) {
        this.random = random;
        this.min = opts.minDelayMs ?? 500;
        this.max = opts.maxDelayMs ?? 30_000;
    }
    /**
     * The next delay: uniform in [0, min(max, min·2^attempt)] ("full jitter", so a crowd of
     * clients cut at once spreads out), never below `floorMs` (a server's retry_after_ms).
     */
    next(floorMs = 0) {
        const ceiling = Math.min(this.max, this.min * 2 ** this.attempt);
        this.attempt = Math.min(this.attempt + 1, 30);
        return Math.max(floorMs, Math.floor(this.random() * ceiling));
    }
    /** After a connection that worked: the next outage starts small again. */
    reset() {
        this.attempt = 0;
    }
}
