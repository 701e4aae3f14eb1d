// How soon a display is back after its gateway restarts: a display (the SDK, default
// reconnect options) joined to a session on one gateway; the gateway is SIGKILLed,
// started again on the same port after `DOWN_MS`, and the time from its readiness to the
// display's session being `joined` again is measured. Both sockets Node offers: its own
// WebSocket (run node with --experimental-websocket on Node 20) and the `ws` package.
//
//   node --experimental-websocket bench/rejoin.mjs [rounds]      (after `npm run build`)

import { createRequire } from 'node:module';

import { RoomcastClient } from '../dist/index.js';
import { freePort, startGateway, startRedis, token, until } from '../test/harness.mjs';

const require = createRequire(import.meta.url);
const rounds = Number(process.argv[2] ?? 3);
const DOWN_MS = 3000;

const redis = await startRedis();
const port = await freePort();
const env = { ROOMCAST_LISTEN: `127.0.0.1:${port}` };
let gateway = await startGateway(redis.url, env);
const results = {};
try {
  for (const [name, WebSocket] of [
    ['built-in WebSocket', globalThis.WebSocket],
    ['ws', require('ws')],
  ]) {
    if (!WebSocket) {
      console.log(`${name}: not here (run node with --experimental-websocket)`);
      continue;
    }
    const client = new RoomcastClient({ urls: gateway.ws, token: token('tv', 'display'), WebSocket });
    const session = client.session(`rejoin-${name.length}`, { role: 'display' });
    client.connect();
    await until(() => session.state === 'joined', 'the first join');
    results[name] = [];
    for (let i = 0; i < rounds; i++) {
      gateway.stop();
      await gateway.exited;
      await until(() => session.state !== 'joined', 'the display noticing', 15_000);
      await new Promise((r) => setTimeout(r, DOWN_MS));
      gateway = await startGateway(redis.url, env);
      const ready = Date.now();
      await until(() => session.state === 'joined', 'the rejoin', 30_000);
      results[name].push(Date.now() - ready);
    }
    client.close();
  }
} finally {
  gateway.stop();
  redis.stop();
}
for (const [name, ms] of Object.entries(results)) {
  console.log(`${name}: joined again ${ms.map((m) => (m / 1000).toFixed(2)).join(' s, ')} s after the gateway was ready (down ${DOWN_MS / 1000} s each time)`);
}
