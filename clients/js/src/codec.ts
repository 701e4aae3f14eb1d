/** Frame codecs: JSON text frames (built in) and the interface msgpack implements. */

import type { ClientFrame, ServerFrame } from './protocol.js';

export interface Codec {
  /** The `Sec-WebSocket-Protocol` it speaks. */
  readonly protocol: string;
  encode(frame: ClientFrame): string | Uint8Array;
  decode(data: string | ArrayBuffer): ServerFrame;
}

export const jsonCodec: Codec = {
  protocol: 'roomcast.v1.json',
  encode: (frame) => JSON.stringify(frame),
  decode: (data) => {
    if (typeof data !== 'string') throw new Error('binary frame on a JSON connection');
    return JSON.parse(data) as ServerFrame;
  },
};
