// The package as a user gets it: `npm pack` (whose prepack builds it) in this clean
// tree, the tarball installed into an empty folder, and an app that publishes through a
// real gateway, loaded with `import` and with `require`, on Node's built-in WebSocket and
// on the `ws` package.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';

import { startGateway, startRedis, token } from './harness.mjs';

const SDK = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const WS = path.join(SDK, 'node_modules/ws/index.js');

let redis;
let gateway;
let app;
let tarball;

before(async () => {
  redis = await startRedis();
  gateway = await startGateway(redis.url);
  app = mkdtempSync(path.join(os.tmpdir(), 'roomcast-app-'));
  const packed = execFileSync('npm', ['pack', '--silent', '--pack-destination', app], {
    cwd: SDK,
    encoding: 'utf8',
  });
  tarball = path.join(app, packed.trim().split('\n').pop());
  writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true }));
  execFileSync('npm', ['install', '--offline', '--no-audit', '--no-fund', '--loglevel=error', tarball], {
    cwd: app,
  });
});

after(() => {
  gateway?.stop();
  redis?.stop();
  if (app) rmSync(app, { recursive: true, force: true });
});

// The app of the README, cut to what proves the package works: connect, publish, get
// the ack. `WS_MODULE` set: the `ws` package is handed in as `WebSocket`.
const body = `
  const WebSocket = process.env.WS_MODULE ? require(process.env.WS_MODULE) : undefined;
  const client = new RoomcastClient({
    urls: [process.env.URL],
    token: process.env.TOKEN,
    ...(WebSocket ? { WebSocket } : {}),
  });
  const session = client.session(process.env.SESSION, { role: 'controller' });
  client.connect();
  session.publish({ hello: process.env.SESSION }).then(({ seq }) => {
    console.log(JSON.stringify({ seq, exported: typeof RoomcastClient }));
    client.close();
  }, (e) => { console.error(e); process.exit(1); });
`;

const apps = {
  'app.mjs': `import { createRequire } from 'node:module';
import { RoomcastClient } from '@roomcast/client';
const require = createRequire(import.meta.url);
${body}`,
  'app.cjs': `const { RoomcastClient } = require('@roomcast/client');
${body}`,
};

for (const [file, source] of Object.entries(apps)) {
  for (const socket of ['built-in WebSocket', 'ws']) {
    test(`the packed package runs an app: ${file}, ${socket}`, () => {
      writeFileSync(path.join(app, file), source);
      const session = `pack-${file.replace('.', '-')}-${socket === 'ws' ? 'ws' : 'native'}`;
      const flags = socket === 'ws' ? [] : ['--experimental-websocket'];
      const out = execFileSync(process.execPath, [...flags, file], {
        cwd: app,
        encoding: 'utf8',
        timeout: 20_000,
        env: {
          PATH: process.env.PATH,
          URL: gateway.ws,
          TOKEN: token('packed', 'controller'),
          SESSION: session,
          ...(socket === 'ws' ? { WS_MODULE: WS } : {}),
        },
      });
      const line = JSON.parse(out.trim().split('\n').pop());
      assert.deepEqual(line, { seq: 1, exported: 'function' });
    });
  }
}

test('the tarball carries both builds, their types and the licence', () => {
  const files = execFileSync('tar', ['-tzf', tarball], { encoding: 'utf8' }).split('\n');
  for (const f of [
    'package/dist/index.js',
    'package/dist/index.d.ts',
    'package/dist/cjs/index.js',
    'package/dist/cjs/index.d.ts',
    'package/dist/cjs/package.json',
    'package/dist/msgpack.js',
    'package/dist/cjs/msgpack.js',
    'package/LICENSE',
    'package/README.md',
  ]) {
    assert.ok(files.includes(f), `${f} is packed`);
  }
  assert.ok(!files.some((f) => f.startsWith('package/test/') || f.startsWith('package/src/')));
});

// The root README's example ("Build an app in five minutes"), as the README shows it:
// only its gateway address is this test's.
test("the README's app runs as written from the installed package", () => {
  const readme = readFileSync(path.join(SDK, '../../README.md'), 'utf8');
  const section = readme.split('\n## Build an app in five minutes\n')[1];
  const source = section.split('```js\n')[1].split('\n```')[0];
  assert.match(source, /ws:\/\/127\.0\.0\.1:8080\/ws/);
  writeFileSync(path.join(app, 'readme-app.mjs'), source.replaceAll('ws://127.0.0.1:8080/ws', gateway.ws));
  const out = execFileSync(
    process.execPath,
    ['--experimental-websocket', 'readme-app.mjs', token('tv', 'display'), token('alice', 'controller')],
    { cwd: app, encoding: 'utf8', timeout: 20_000, env: { PATH: process.env.PATH } },
  );
  assert.match(out, /^1 \{ slide: 2 \}$/m, out);
  assert.match(out, /^stored as 1$/m, out);
});
