// Real processes for the SDK's integration tests: a private redis-server and roomcast
// gateways on free loopback ports, stopped by pid when the test ends.

import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const BIN = process.env.ROOMCAST_BIN ?? path.join(ROOT, 'target/debug/roomcast');
export const SECRET = 'sdk-test-secret-0123456789abcdef';
export const API_KEY = 'sdk-test-api-key-0123456789';

const children = new Set();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves when `cond()` (sync or async) holds; rejects after `ms`. */
export async function until(cond, what, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function ping(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.setTimeout(500);
    s.once('connect', () => s.write('PING\r\n'));
    s.once('data', (d) => {
      s.destroy();
      resolve(d.toString().startsWith('+PONG'));
    });
    s.once('error', () => resolve(false));
    s.once('timeout', () => {
      s.destroy();
      resolve(false);
    });
  });
}

export async function startRedis() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'roomcast-sdk-redis-'));
  const port = await freePort();
  const launch = () => {
    const p = spawn(
      'redis-server',
      ['--port', `${port}`, '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir],
      { stdio: 'ignore' },
    );
    children.add(p);
    return p;
  };
  let proc = launch();
  await until(() => ping(port), `redis-server on ${port}`);
  return {
    url: `redis://127.0.0.1:${port}`,
    /** Killed and started again on the same port, empty (no persistence). */
    async restart() {
      proc.kill('SIGKILL');
      children.delete(proc);
      await new Promise((r) => proc.once('exit', r));
      proc = launch();
      await until(() => ping(port), `redis-server on ${port} again`);
    },
    stop() {
      proc.kill('SIGKILL');
      children.delete(proc);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A gateway on a free port; resolves once it listens. */
export async function startGateway(redisUrl, env = {}) {
  const proc = spawn(BIN, ['serve'], {
    env: {
      PATH: process.env.PATH,
      ROOMCAST_LISTEN: '127.0.0.1:0',
      ROOMCAST_REDIS_URL: redisUrl,
      ROOMCAST_JWT_SECRET: SECRET,
      ROOMCAST_API_KEY: API_KEY,
      ROOMCAST_LOG_FORMAT: 'json',
      ROOMCAST_LOG: 'info',
      ROOMCAST_HEARTBEAT: '5s',
      ROOMCAST_SHUTDOWN_GRACE: '3s',
      ...Object.fromEntries(
        ['PUBLISH', 'PUBLISH_IP', 'CONNECT', 'API', 'API_STRICT', 'BURST', 'SIGNAL', 'FRAMES', 'CREATE'].map(
          (s) => [`ROOMCAST_RATE_${s}`, '0'],
        ),
      ),
      ...env,
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.add(proc);
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the gateway did not report its address')), 20_000);
    const lines = createInterface({ input: proc.stdout });
    lines.on('line', (line) => {
      try {
        const v = JSON.parse(line);
        if (v.fields?.message === 'listening') {
          clearTimeout(timer);
          resolve(v.fields.addr);
        }
      } catch {
        // Not a log line of ours.
      }
    });
    proc.once('exit', (code) => reject(new Error(`the gateway exited with ${code}`)));
  });
  const http = `http://${addr}`;
  const g = {
    addr,
    ws: `ws://${addr}/ws`,
    http,
    proc,
    signal(sig) {
      proc.kill(sig);
    },
    stop() {
      proc.kill('SIGKILL');
      children.delete(proc);
    },
    exited: new Promise((resolve) => proc.once('exit', resolve)),
  };
  await until(async () => (await fetch(`${http}/health/ready`).catch(() => ({ status: 0 }))).status === 200, 'ready');
  return g;
}

/** A token minted by the gateway binary itself (`roomcast token`). */
export function token(sub, role, { ttl = '1h', name, sessions = [] } = {}) {
  const args = ['token', '--sub', sub, '--role', role, '--ttl', ttl];
  if (name) args.push('--name', name);
  for (const s of sessions) args.push('--session', s);
  return execFileSync(BIN, args, { env: { PATH: process.env.PATH, ROOMCAST_JWT_SECRET: SECRET } })
    .toString()
    .trim();
}

export async function api(g, method, route, body) {
  const r = await fetch(`${g.http}/api/v1${route}`, {
    method,
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}
