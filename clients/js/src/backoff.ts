/** Reconnect delays: exponential backoff with full jitter, capped, with a floor. */

export interface BackoffOptions {
  /** First ceiling, ms (default 500). */
  minDelayMs?: number;
  /** Largest ceiling, ms (default 30,000). */
  maxDelayMs?: number;
}

export class Backoff {
  private attempt = 0;
  private readonly min: number;
  private readonly max: number;

  constructor(opts: BackoffOptions = {}, private readonly random: () => number = Math.random) {
    this.min = opts.minDelayMs ?? 500;
    this.max = opts.maxDelayMs ?? 30_000;
  }

  /**
   * The next delay: uniform in [0, min(max, min·2^attempt)] ("full jitter", so a crowd of
   * clients cut at once spreads out), never below `floorMs` (a server's retry_after_ms).
   */
  next(floorMs = 0): number {
    const ceiling = Math.min(this.max, this.min * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    return Math.max(floorMs, Math.floor(this.random() * ceiling));
  }

  /** After a connection that worked: the next outage starts small again. */
  reset(): void {
    this.attempt = 0;
  }
}
