/**
 * The wire format of the Roomcast WebSocket protocol v1 (docs/PROTOCOL.md): frames as they
 * travel, close codes, error codes. Everything here mirrors the gateway's `shared` crate.
 */

export type Role = 'controller' | 'display' | 'observer';

/** Who sent a message, signal or typing frame. */
export interface Sender {
  client_id: string;
  user: string;
  role: Role;
  name?: string | null;
}

/** A member of a session's presence. */
export interface Member extends Sender {
  node: string;
  joined_at: number;
  idle: boolean;
  /** What the application's join hook attached to this member, if anything. */
  info?: Record<string, unknown>;
}

/**
 * A stored message: live, or an entry of `history`. `T` is what the app says its
 * messages' `data` holds (`client.session<T>()`); the SDK does not check it.
 */
export interface Message<T = unknown> {
  seq: number;
  /**
   * The message's unique id (absent from messages stored before ids existed). A rejoin
   * names the id of the last message it processed, so a session whose numbering forked
   * (a failover lost writes and reused their seqs) answers with a reset.
   */
  id?: string;
  /** The server's time of the publish, Unix ms. */
  ts: number;
  from: Sender;
  data: T;
}

export type ErrorCode =
  | 'bad_request'
  | 'unknown_type'
  | 'too_large'
  | 'not_joined'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'session_ended'
  | 'rate_limited'
  | 'unavailable'
  | 'internal';

export type PresenceEvent = 'join' | 'leave' | 'update';
export type LifecycleEvent = 'expiring' | 'updated' | 'resolved' | 'ended';

export type ServerFrame =
  | {
      type: 'welcome';
      client_id: string;
      node: string;
      heartbeat_ms: number;
      protocol: number;
      /** The server's clock, Unix ms (absent from older servers). */
      time?: number;
    }
  | {
      type: 'joined';
      session: string;
      seq: number;
      /** Names the session's numbering; a new one means it started over. */
      epoch?: string;
      /** The id of the message at `seq` (absent when there is none). */
      seq_id?: string;
      recovered: boolean;
      history: Message[];
      presence: Member[];
      ref?: string | null;
    }
  | ({ type: 'message'; session: string } & Message)
  | { type: 'signal'; session: string; from: Sender; data: unknown }
  | { type: 'typing'; session: string; from: Sender; active: boolean }
  | { type: 'presence'; session: string; event: PresenceEvent; member: Member }
  | { type: 'session'; session: string; event: LifecycleEvent; reason?: string | null; at: number }
  | { type: 'direct'; data: unknown; ts: number }
  | { type: 'ack'; ref?: string | null; seq?: number | null }
  | {
      type: 'error';
      ref?: string | null;
      code: ErrorCode;
      message: string;
      retry_after_ms?: number | null;
    }
  | { type: 'pong'; ref?: string | null }
  | { type: 'refreshed'; ref?: string | null; exp: number };

export type ClientFrame =
  | {
      type: 'join';
      session: string;
      role?: Role;
      name?: string;
      since?: number;
      epoch?: string;
      since_id?: string;
      ref?: string;
    }
  | { type: 'leave'; session: string; ref?: string }
  | { type: 'publish'; session: string; data: unknown; ref?: string; idempotency_key?: string }
  | { type: 'signal'; session: string; data: unknown; to?: string; ref?: string }
  | { type: 'typing'; session: string; active: boolean; ref?: string }
  | { type: 'activity'; session: string; ref?: string }
  | { type: 'ping'; ref?: string }
  | { type: 'refresh'; token: string; ref?: string };

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
} as const;
