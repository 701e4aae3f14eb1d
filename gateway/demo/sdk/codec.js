/** Frame codecs: JSON text frames (built in) and the interface msgpack implements. */
export const jsonCodec = {
    protocol: 'roomcast.v1.json',
    encode: (frame) => JSON.stringify(frame),
    decode: (data) => {
        if (typeof data !== 'string')
            throw new Error('binary frame on a JSON connection');
        return JSON.parse(data);
    },
};
