/**
 * `@roomcast/client`: the Roomcast WebSocket protocol (docs/PROTOCOL.md) for browsers and
 * Node, with reconnect, recovery and gap-free, duplicate-free delivery built in.
 *
 * ```ts
 * const client = new RoomcastClient({ urls: ['wss://a.example/ws'], token: fetchToken });
 * const room = client.session('living-room', { role: 'display' });
 * room.on('message', (m) => render(m.data));
 * client.connect();
 * ```
 */

export { RoomcastClient } from './client.js';
export type {
  ClientEvents,
  ClientOptions,
  ConnectionState,
  StateDetail,
  WebSocketConstructor,
  WebSocketLike,
} from './client.js';
export { Session } from './session.js';
export type { HistoryPage, MembersPage, PublishOptions, SessionEvents, SessionOptions, SessionState } from './session.js';
export { RoomcastError, UnauthorizedError, isRoomcastError } from './errors.js';
export type { RoomcastErrorCode } from './errors.js';
export { Backoff } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export { jsonCodec } from './codec.js';
export type { Codec } from './codec.js';
export { Close } from './protocol.js';
export type {
  ClientFrame,
  ErrorCode,
  LifecycleEvent,
  Member,
  Message,
  PresenceEvent,
  Role,
  Sender,
  ServerFrame,
} from './protocol.js';
