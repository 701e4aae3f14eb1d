'use strict';
// Socket.IO 4 peer server for Roomcast's benchmarks: one process = one instance.
// Instances sharing one Redis fan out to each other's sockets through the Redis adapter.
// See README.md for the wire protocol a raw WebSocket client must speak.

const http = require('node:http');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');

const PORT = Number.parseInt(process.env.PORT || '3000', 10);
const HOST = process.env.HOST || '127.0.0.1';
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';

function log(msg) {
  process.stderr.write(`${msg}\n`);
}

async function main() {
  const pubClient = createClient({ url: REDIS_URL });
  const subClient = pubClient.duplicate();
  pubClient.on('error', (err) => log(`redis pub error: ${err.message}`));
  subClient.on('error', (err) => log(`redis sub error: ${err.message}`));
  await Promise.all([pubClient.connect(), subClient.connect()]);

  let io = null;

  // Requests socket.io does not handle (anything outside /socket.io/) come here.
  const httpServer = http.createServer((req, res) => {
    const path = (req.url || '/').split('?')[0];
    if (req.method === 'GET' && path === '/health') {
      const body = JSON.stringify({
        rss_bytes: process.memoryUsage().rss,
        sockets: io ? io.of('/').sockets.size : 0,
      });
      res.writeHead(200, {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
        'cache-control': 'no-store',
      });
      res.end(body);
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found\n');
  });

  io = new Server(httpServer, {
    transports: ['websocket'],
    perMessageDeflate: false,
    httpCompression: false,
    serveClient: false,
    adapter: createAdapter(pubClient, subClient),
  });

  io.on('connection', (socket) => {
    socket.on('join', (session, ack) => {
      if (typeof session !== 'string' || session.length === 0) {
        if (typeof ack === 'function') ack({ ok: false, error: 'session must be a non-empty string' });
        return;
      }
      socket.join(session);
      socket.emit('joined', { session });
      if (typeof ack === 'function') ack({ session });
    });

    socket.on('publish', (msg, ack) => {
      if (!msg || typeof msg !== 'object' || typeof msg.session !== 'string' || msg.session.length === 0) {
        if (typeof ack === 'function') ack({ ok: false, error: 'expected {session, data}' });
        return;
      }
      io.to(msg.session).emit('message', { session: msg.session, data: msg.data });
      if (typeof ack === 'function') ack({ ok: true });
    });
  });

  await new Promise((resolve, reject) => {
    httpServer.once('error', reject);
    httpServer.listen(PORT, HOST, resolve);
  });
  log(`peer listening on ${HOST}:${PORT}`);

  let stopping = false;
  const shutdown = (signal) => {
    if (stopping) return;
    stopping = true;
    log(`peer ${HOST}:${PORT} stopping on ${signal}`);
    // Never hang on shutdown: force the exit if closing takes too long.
    setTimeout(() => process.exit(0), 3000).unref();
    io.close(() => {
      Promise.allSettled([pubClient.quit(), subClient.quit()]).then(() => process.exit(0));
    });
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}

main().catch((err) => {
  log(`peer failed to start: ${err && err.stack ? err.stack : err}`);
  process.exit(1);
});
