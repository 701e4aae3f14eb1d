/**
 * The msgpack subprotocol (`roomcast.v1.msgpack`): `import { msgpack } from
 * '@roomcast/client/msgpack'` and pass it as `format`. Kept apart so the main entry has no
 * dependency; this one needs `@msgpack/msgpack`.
 */

import { decode, encode } from '@msgpack/msgpack';
import type { Codec } from './codec.js';
import type { ServerFrame } from './protocol.js';

export const msgpack: Codec = {
  protocol: 'roomcast.v1.msgpack',
  // Absent optional fields are left out, as in JSON, rather than sent as nil.
  encode: (frame) => encode(frame, { ignoreUndefined: true }),
  decode: (data) => {
    if (typeof data === 'string') throw new Error('text frame on a msgpack connection');
    return decode(new Uint8Array(data)) as ServerFrame;
  },
};
