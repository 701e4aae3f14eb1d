// The client's rules, against a scripted socket: what each close code does, the
// dead-connection watch, token refresh, and delivery repair (gaps, resets, recovery).

import assert from 'node:assert/strict';
import { afterEach, beforeEach, test } from 'node:test';

import { RoomcastClient, UnauthorizedError } from '../dist/index.js';
import { FakeSocket, entry, until } from './fake.mjs';

const URLS = ['ws://a.test/ws', 'ws://b.test/ws'];
let clients = [];

function client(opts = {}) {
  const c = new RoomcastClient({
    urls: URLS,
    token: 'tok',
    WebSocket: FakeSocket,
    reconnect: { minDelayMs: 5, maxDelayMs: 20 },
    ...opts,
  });
  c.states = [];
  c.errors = [];
  c.on('state', (s, d) => c.states.push([s, d]));
  c.on('error', (e) => c.errors.push(e));
  clients.push(c);
  return c;
}

/** A client connected with one joined session that has seen seq `seq`. */
function joinedClient(opts = {}, seq = 3) {
  const c = client(opts);
  const s = c.session('room', { role: 'display' });
  s.seen = [];
  s.on('message', (m) => s.seen.push(m.seq));
  c.connect();
  const ws = FakeSocket.last();
  ws.welcome();
  ws.joined('room', seq);
  return { c, s, ws };
}

beforeEach(() => FakeSocket.reset());
afterEach(() => {
  for (const c of clients) c.close();
  clients = [];
});

for (const code of [1000, 1006, 1009, 1011, 4008, 4010]) {
  test(`close ${code}: reconnect with backoff, rejoin with since`, async () => {
    const { c, s, ws } = joinedClient();
    ws.message('room', 4);
    ws.shut(code);
    assert.equal(c.state, 'disconnected');
    assert.equal(s.state, 'joining');
    await until(() => FakeSocket.all.length === 2, 'a second socket');
    const next = FakeSocket.last();
    assert.equal(next.url.startsWith('ws://b.test/ws'), true, 'the next URL in turn');
    next.welcome();
    const join = next.joined('room', 4);
    assert.equal(join.since, 4, 'since = the last seq the app saw');
    assert.equal(join.epoch, 'e1', 'with the numbering it belongs to');
    assert.equal(join.role, 'display');
    assert.equal(s.state, 'joined');
    assert.deepEqual(s.seen, [4]);
  });
}

test('close 1001: another node at once', async () => {
  const { c, ws } = joinedClient({ reconnect: { minDelayMs: 60_000, maxDelayMs: 60_000 } });
  ws.shut(1001);
  const [state, detail] = c.states.at(-1);
  assert.equal(state, 'disconnected');
  assert.ok(detail.delayMs < 250, `no backoff: ${detail.delayMs}`);
  await until(() => FakeSocket.all.length === 2, 'a reconnect');
  assert.ok(FakeSocket.last().url.startsWith('ws://b.test/ws'));
});

test('close 1013 and 4029: the backoff honours retry_after_ms', () => {
  const { c, ws } = joinedClient();
  ws.frame({ type: 'error', code: 'unavailable', message: 'redis down', retry_after_ms: 3000 });
  ws.shut(1013);
  assert.ok(c.states.at(-1)[1].delayMs >= 3000, JSON.stringify(c.states.at(-1)));
  assert.equal(c.errors[0].code, 'unavailable');
  assert.equal(c.errors[0].retryAfterMs, 3000);

  const second = joinedClient();
  second.ws.shut(4029);
  assert.equal(second.c.states.at(-1)[0], 'disconnected');
  assert.ok(second.c.states.at(-1)[1].delayMs >= 1000, 'a flood waits at least a second');
});

for (const [code, error] of [
  [1007, 'protocol'],
  [1008, 'protocol'],
  [4003, 'forbidden'],
]) {
  test(`close ${code}: no reconnect, the client says why`, async () => {
    const { c, s, ws } = joinedClient();
    const publish = s.publish({ a: 1 });
    ws.shut(code);
    assert.equal(c.state, 'closed');
    assert.equal(c.errors.at(-1).code, error);
    assert.equal(s.state, 'failed');
    await assert.rejects(publish, { code: 'disconnected' });
    assert.ok(!c.states.some(([st]) => st === 'disconnected'), 'no reconnect was scheduled');
  });
}

test('close 4000: the ended session is over; the others rejoin', async () => {
  const c = client();
  const a = c.session('a');
  const b = c.session('b');
  c.connect();
  let ws = FakeSocket.last();
  ws.welcome();
  ws.joined('a', 0);
  ws.joined('b', 0);
  ws.frame({ type: 'session', session: 'a', event: 'ended', reason: 'done', at: 1 });
  assert.equal(a.state, 'ended');
  ws.shut(4000);
  assert.equal(b.state, 'joining');
  await until(() => FakeSocket.all.length === 2, 'a reconnect for b');
  ws = FakeSocket.last();
  ws.welcome();
  assert.deepEqual(ws.sentOf('join').map((j) => j.session), ['b']);
  await assert.rejects(a.publish(1), { code: 'session_ended' });

  // The last session ended: no reconnect.
  ws.joined('b', 0);
  ws.frame({ type: 'session', session: 'b', event: 'ended', at: 2 });
  ws.shut(4000);
  assert.equal(c.state, 'closed');
  assert.equal(b.state, 'ended');
});

test('close 4001: a token function is called again; a fixed token stops', async () => {
  let calls = 0;
  const c = client({ token: async () => `tok${++calls}` });
  c.session('room');
  c.connect();
  await until(() => FakeSocket.all.length === 1, 'a socket');
  assert.match(FakeSocket.last().url, /token=tok1/);
  FakeSocket.last().welcome();
  FakeSocket.last().shut(4001);
  await until(() => FakeSocket.all.length === 2, 'a reconnect');
  assert.match(FakeSocket.last().url, /token=tok2/);
  assert.equal(calls, 2);

  const fixed = joinedClient();
  fixed.ws.shut(4001);
  assert.equal(fixed.c.state, 'closed');
  assert.equal(fixed.c.errors.at(-1).code, 'token_expired');
});

test('a failure before welcome refreshes the token (it may have expired meanwhile)', async () => {
  let calls = 0;
  const c = client({ token: () => `tok${++calls}` });
  c.connect();
  await until(() => FakeSocket.all.length === 1, 'a socket');
  FakeSocket.last().shut(1006);
  await until(() => FakeSocket.all.length === 2, 'a reconnect');
  assert.equal(calls, 2);
  FakeSocket.last().welcome();
  FakeSocket.last().shut(1006);
  await until(() => FakeSocket.all.length === 3, 'a reconnect');
  assert.equal(calls, 2, 'after a welcome the token is kept');
});

test('a JWT whose exp has passed is refreshed before reconnecting; a live one is kept', async () => {
  const jwt = (inSeconds) =>
    `h.${Buffer.from(JSON.stringify({ sub: 'x', exp: Math.floor(Date.now() / 1000) + inSeconds })).toString('base64url')}.s`;
  // The first expires within the 5 s margin, the second in an hour.
  const tokens = [jwt(2), jwt(3600)];
  let calls = 0;
  const c = client({ token: () => tokens[calls++] });
  c.connect();
  await until(() => FakeSocket.all.length === 1, 'a socket');
  FakeSocket.last().welcome();
  FakeSocket.last().shut(1006);
  await until(() => FakeSocket.all.length === 2, 'a reconnect');
  assert.equal(calls, 2, 'the expired token was replaced');
  FakeSocket.last().welcome();
  FakeSocket.last().shut(1006);
  await until(() => FakeSocket.all.length === 3, 'a reconnect');
  assert.equal(calls, 2, 'a live token is reused');
});

test('a silent connection is pinged, then declared dead and replaced', async () => {
  const c = client();
  c.session('room');
  c.connect();
  const ws = FakeSocket.last();
  ws.welcome(100);
  await until(() => ws.sentOf('ping').length === 1, 'a ping after one heartbeat of silence', 2000);
  await until(() => FakeSocket.all.length === 2, 'a new socket once dead', 2000);
  assert.equal(c.states.find(([s]) => s === 'disconnected')[1].code, 1006);
});

test('recovery: history fills what was missed, each message once', async () => {
  const { s, ws } = joinedClient({}, 0);
  for (const n of [1, 2, 3]) ws.message('room', n);
  ws.shut(1006);
  await until(() => FakeSocket.all.length === 2, 'a reconnect');
  const next = FakeSocket.last();
  next.welcome();
  const join = next.joined('room', 5, { history: [entry(3), entry(4), entry(5)] });
  assert.equal(join.since, 3);
  next.message('room', 6);
  assert.deepEqual(s.seen, [1, 2, 3, 4, 5, 6]);
});

test('recovered:false and a numbering restart both reset, with the window', async () => {
  const { s, ws } = joinedClient({}, 0);
  const resets = [];
  s.on('reset', (r) => resets.push(r));
  ws.message('room', 1);
  ws.shut(1006);
  await until(() => FakeSocket.all.length === 2, 'a reconnect');
  let next = FakeSocket.last();
  next.welcome();
  next.joined('room', 300, { recovered: false, history: [entry(299), entry(300)] });
  assert.equal(resets.length, 1);
  assert.deepEqual(resets[0].history.map((m) => m.seq), [299, 300]);
  assert.deepEqual(s.seen, [1], 'the window is not replayed as messages');
  next.message('room', 301);
  assert.deepEqual(s.seen, [1, 301]);

  // Live, a seq we have is a duplicate: dropped, no reset.
  next.message('room', 1);
  next.message('room', 301);
  assert.deepEqual(s.seen, [1, 301]);
  assert.equal(next.sentOf('leave').length, 0, 'no rejoin for a duplicate');
  // Another message under the last seq: the numbering restarted or forked under us.
  next.message('room', 301, { n: 'fork' }, 'other-301');
  const leave = next.sentOf('leave').at(-1);
  assert.ok(leave?.ref, 'the client leaves to rejoin');
  next.frame({ type: 'ack', ref: leave.ref });
  const join = next.joined('room', 2, { history: [entry(1), entry(2)], epoch: 'e2' });
  assert.equal(join.since, 0, 'the whole window');
  assert.equal(join.epoch, undefined, 'a reset asks for the window whatever the numbering');
  assert.equal(join.since_id, undefined);
  assert.equal(s.epoch, 'e2', 'the new numbering');
  assert.equal(resets.length, 2);
  assert.equal(s.lastSeq, 2);
  next.message('room', 3);
  assert.deepEqual(s.seen, [1, 301, 3]);
});

test('a rejoin names the epoch and the id of the last message processed', async () => {
  const { s, ws } = joinedClient({}, 5);
  ws.shut(1006);
  await until(() => FakeSocket.all.length === 2, 'a reconnect');
  let next = FakeSocket.last();
  next.welcome();
  let join = next.joined('room', 5);
  assert.deepEqual([join.since, join.epoch, join.since_id], [5, 'e1', 'm5'], 'from joined.seq_id');
  next.message('room', 6);
  assert.equal(s.lastId, 'm6');
  next.shut(1006);
  await until(() => FakeSocket.all.length === 3, 'a reconnect');
  next = FakeSocket.last();
  next.welcome();
  join = next.joined('room', 6);
  assert.deepEqual([join.since, join.since_id], [6, 'm6'], 'from the last message');
});

test('a live gap is filled by rejoining with since, never skipped', () => {
  const { s, ws } = joinedClient({}, 5);
  ws.message('room', 6);
  ws.message('room', 8);
  const leave = ws.sentOf('leave').at(-1);
  ws.message('room', 9); // ignored: the coming join covers it
  ws.frame({ type: 'ack', ref: leave.ref });
  const join = ws.joined('room', 9, { history: [entry(7), entry(8), entry(9)] });
  assert.equal(join.since, 6);
  ws.message('room', 10);
  assert.deepEqual(s.seen, [6, 7, 8, 9, 10]);
});

test('publish: acked with its seq; typed errors; unknown outcome on a drop', async () => {
  const { s, ws } = joinedClient({ publishTimeoutMs: 50 });
  const ok = s.publish({ slide: 2 });
  const sent = ws.sentOf('publish').at(-1);
  assert.deepEqual(sent.data, { slide: 2 });
  ws.frame({ type: 'ack', ref: sent.ref, seq: 4 });
  assert.deepEqual(await ok, { seq: 4 });

  const limited = s.publish(1);
  ws.frame({
    type: 'error',
    ref: ws.sentOf('publish').at(-1).ref,
    code: 'rate_limited',
    message: 'slow down',
    retry_after_ms: 1200,
  });
  await assert.rejects(limited, { code: 'rate_limited', retryAfterMs: 1200 });

  const late = s.publish(2);
  const lateKey = ws.sentOf('publish').at(-1).idempotency_key;
  await assert.rejects(late, { code: 'timeout', key: lateKey }, 'the key to publish it again with');
  // A publish in flight when the connection drops is not given up: it has a key.
  const dropped = s.publish(3);
  ws.shut(1006);
  await assert.rejects(s.publish(4), { code: 'disconnected' }, 'no offline queue by default');
  await until(() => FakeSocket.all.length === 2, 'a reconnect');
  await assert.rejects(dropped, { code: 'timeout' }, 'nobody answered within its timeout');
});

test('a publish in flight when the connection drops goes again after the rejoin, with its key', async () => {
  const { s, ws } = joinedClient({ publishTimeoutMs: 5000 });
  const first = s.publish('a');
  const second = s.publish('b', { key: 'order-17' });
  const keys = ws.sentOf('publish').map((p) => p.idempotency_key);
  assert.equal(keys[1], 'order-17');
  assert.match(keys[0], /^[A-Za-z0-9]{22}$/, 'a fresh key by default');
  ws.shut(1006);
  await until(() => FakeSocket.all.length === 2, 'a reconnect');
  const next = FakeSocket.last();
  next.welcome();
  assert.equal(next.sentOf('publish').length, 0, 'nothing before the rejoin');
  next.joined('room', 4);
  const again = next.sentOf('publish');
  assert.deepEqual(again.map((p) => [p.data, p.idempotency_key]), [['a', keys[0]], ['b', 'order-17']], 'same keys, same order');
  // The server stored the first before the drop: it answers its seq again.
  next.frame({ type: 'ack', ref: again[0].ref, seq: 4 });
  next.frame({ type: 'ack', ref: again[1].ref, seq: 5 });
  assert.deepEqual(await Promise.all([first, second]), [{ seq: 4 }, { seq: 5 }]);
});

test('a per-call timeout, and a malformed key refused before anything is sent', async () => {
  const { s, ws } = joinedClient({ publishTimeoutMs: 60_000 });
  const started = Date.now();
  await assert.rejects(s.publish('x', { timeoutMs: 30 }), { code: 'timeout' });
  assert.ok(Date.now() - started < 5000, "its own timeout, not the client's");
  const before = ws.sentOf('publish').length;
  await assert.rejects(s.publish('y', { key: 'no spaces' }), { code: 'bad_request' });
  await assert.rejects(s.publish('y', { key: 'k'.repeat(65) }), { code: 'bad_request' });
  assert.equal(ws.sentOf('publish').length, before);
});

test('the offline queue: bounded, sent after the rejoin', async () => {
  const { s, ws } = joinedClient({ offlineQueue: 2 });
  ws.shut(1006);
  const first = s.publish('a');
  const second = s.publish('b');
  await assert.rejects(s.publish('c'), { code: 'queue_full' });
  await until(() => FakeSocket.all.length === 2, 'a reconnect');
  const next = FakeSocket.last();
  next.welcome();
  assert.equal(next.sentOf('publish').length, 0, 'nothing before the rejoin');
  next.joined('room', 3);
  const sent = next.sentOf('publish');
  assert.deepEqual(sent.map((p) => p.data), ['a', 'b']);
  next.frame({ type: 'ack', ref: sent[0].ref, seq: 4 });
  next.frame({ type: 'ack', ref: sent[1].ref, seq: 5 });
  assert.deepEqual(await Promise.all([first, second]), [{ seq: 4 }, { seq: 5 }]);
});

test('presence is kept live; a refused join fails the session', () => {
  const c = client();
  const s = c.session('room');
  const denied = c.session('secret');
  c.connect();
  const ws = FakeSocket.last();
  ws.welcome();
  const me = { client_id: 'c1', user: 'me', role: 'display', node: 'n', joined_at: 1, idle: false };
  ws.joined('room', 0, { presence: [me] });
  const ann = { ...me, client_id: 'c2', user: 'ann' };
  ws.frame({ type: 'presence', session: 'room', event: 'join', member: ann });
  assert.deepEqual([...s.presence.keys()], ['c1', 'c2']);
  ws.frame({ type: 'presence', session: 'room', event: 'leave', member: ann });
  assert.deepEqual([...s.presence.keys()], ['c1']);

  const join = ws.sentOf('join').find((j) => j.session === 'secret');
  ws.frame({ type: 'error', ref: join.ref, code: 'forbidden', message: 'not yours' });
  assert.equal(denied.state, 'failed');
  assert.equal(c.state, 'connected', 'the connection lives');
});

test('a session made in a connected listener joins once', () => {
  const c = client();
  let late;
  c.on('state', (s) => {
    if (s === 'connected' && !late) late = c.session('late');
  });
  c.session('early');
  c.connect();
  const ws = FakeSocket.last();
  ws.welcome();
  assert.deepEqual(
    ws.sentOf('join').map((j) => j.session).sort(),
    ['early', 'late'],
    'one join each, never "already joined"',
  );
});

test('leaving while the join is on its way still tells the server', () => {
  const c = client();
  const s = c.session('room');
  c.connect();
  const ws = FakeSocket.last();
  ws.welcome();
  assert.equal(ws.sentOf('join').length, 1);
  s.leave();
  assert.equal(s.state, 'left');
  assert.deepEqual(ws.sentOf('leave').map((l) => l.session), ['room']);
});

test('close() then connect() while the token is being fetched opens one socket', async () => {
  let release;
  const c = client({ token: () => new Promise((r) => (release = r)) });
  c.connect();
  await until(() => release, 'the first token call');
  const first = release;
  release = undefined;
  c.close();
  c.connect();
  await until(() => release, 'the second token call');
  const second = release;
  first('stale');
  second('fresh');
  // `until` yields to the event loop: both answers' handlers have run by then.
  await until(() => FakeSocket.all.length >= 1, 'a socket');
  assert.equal(FakeSocket.all.length, 1, 'the stale answer opened nothing');
  assert.match(FakeSocket.last().url, /token=fresh/);
});

test('a short deadAfterMs still pings before giving up', async () => {
  const c = client({ deadAfterMs: 200 });
  c.connect();
  const ws = FakeSocket.last();
  ws.welcome(25_000);
  await until(() => ws.sentOf('ping').length === 1, 'a ping', 2000);
  ws.frame({ type: 'pong' });
  await until(() => ws.sentOf('ping').length === 2, 'another ping after more silence', 2000);
  assert.equal(FakeSocket.all.length, 1, 'answered pings keep the connection');
});

test('a server that never says welcome is left for the next URL', async () => {
  const c = client({ connectTimeoutMs: 50 });
  c.connect();
  await until(() => FakeSocket.all.length === 2, 'a second attempt', 2000);
  assert.ok(FakeSocket.all[0].url.startsWith('ws://a.test/'));
  assert.ok(FakeSocket.all[1].url.startsWith('ws://b.test/'));
  assert.equal(c.states.find(([s]) => s === 'disconnected')[1].reason, 'no welcome in time');
});

test('a publish right after connect() waits for the join; one that waits too long is not_sent', async () => {
  const c = client({ publishTimeoutMs: 100 });
  const s = c.session('room');
  c.connect();
  const early = s.publish('first'); // before welcome: waits
  const ws = FakeSocket.last();
  ws.welcome();
  assert.equal(ws.sentOf('publish').length, 0, 'not before the join');
  ws.joined('room', 0);
  const sent = ws.sentOf('publish');
  assert.deepEqual(sent.map((p) => p.data), ['first']);
  ws.frame({ type: 'ack', ref: sent[0].ref, seq: 1 });
  assert.deepEqual(await early, { seq: 1 });

  const other = c.session('slow');
  const stuck = other.publish('never joined');
  // It times out without ever being sent: `not_sent` (certainly not stored), never the
  // `timeout` of a sent publish whose outcome is unknown.
  await assert.rejects(stuck, { code: 'not_sent' });
});

test("a publish's rate limit does not slow a later reconnect", () => {
  const { c, s, ws } = joinedClient();
  const p = s.publish(1).catch(() => {});
  ws.frame({
    type: 'error',
    ref: ws.sentOf('publish').at(-1).ref,
    code: 'rate_limited',
    message: 'slow down',
    retry_after_ms: 41_000,
  });
  ws.shut(4029);
  assert.ok(c.states.at(-1)[1].delayMs < 41_000, JSON.stringify(c.states.at(-1)));
  return p;
});

test("a fixed token this device's clock calls expired is still tried: the server decides", () => {
  // A display whose clock runs ahead must not stay offline: only the server's answer counts.
  const exp = Math.floor(Date.now() / 1000) - 60;
  const jwt = `h.${Buffer.from(JSON.stringify({ sub: 'x', exp })).toString('base64url')}.s`;
  const c = client({ token: jwt });
  c.connect();
  assert.equal(FakeSocket.all.length, 1, 'a socket was opened');
  FakeSocket.last().welcome();
  assert.equal(c.state, 'connected');
});

test("a refused connection reported by an error alone (Node 20's WebSocket) is retried at once", async () => {
  const c = client({ connectTimeoutMs: 60_000 });
  c.connect();
  const ws = FakeSocket.last();
  ws.onerror?.({}); // no close event follows
  assert.equal(c.state, 'disconnected', 'not waiting for the connect timeout');
  assert.equal(c.states.at(-1)[1].code, 1006);
  await until(() => FakeSocket.all.length === 2, 'a reconnect within the backoff');
  // A late close event for the dropped socket changes nothing.
  ws.onclose?.({ code: 1006, reason: '' });
  assert.equal(FakeSocket.all.length, 2);
});

test('listeners may call connect() or close() from state and error events', async () => {
  // close() from `disconnected`: the reconnect it announced is cancelled.
  const a = client();
  a.connect();
  a.on('state', (s) => s === 'disconnected' && a.close());
  FakeSocket.last().welcome();
  FakeSocket.last().shut(1006);
  assert.equal(a.state, 'closed');
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(FakeSocket.all.length, 1, 'no socket after close()');

  // connect() from the `error` of a failure: the client is connecting, not closed.
  FakeSocket.reset();
  const b = client();
  let again = false;
  b.on('error', () => {
    if (!again) {
      again = true;
      b.connect();
    }
  });
  b.connect();
  FakeSocket.last().welcome();
  FakeSocket.last().shut(1008); // a protocol violation: the client stops
  assert.equal(b.state, 'connecting');
  assert.equal(FakeSocket.all.length, 2);
});

test('close 4003 with a token function asks it for a new token instead of stopping', async () => {
  let calls = 0;
  const c = client({ token: () => `tok${++calls}` });
  c.connect();
  await until(() => FakeSocket.all.length === 1, 'a socket');
  FakeSocket.last().welcome();
  FakeSocket.last().shut(4003);
  assert.equal(c.state, 'disconnected');
  await until(() => FakeSocket.all.length === 2, 'a reconnect');
  assert.equal(calls, 2, 'the token function was asked again');
  assert.ok(FakeSocket.last().url.includes('tok2'));
  // A fixed token would be refused again: that stops.
  FakeSocket.reset();
  const fixed = client();
  fixed.connect();
  FakeSocket.last().welcome();
  FakeSocket.last().shut(4003);
  assert.equal(fixed.state, 'closed');
  assert.equal(fixed.errors.at(-1).code, 'forbidden');
});

test('a throwing listener is reported, never rethrown, and the others still run', () => {
  const { s, ws } = joinedClient({}, 0);
  const logged = [];
  const original = console.error;
  console.error = (...args) => logged.push(args);
  try {
    s.on('message', () => {
      throw new Error('app bug');
    });
    ws.message('room', 1);
  } finally {
    console.error = original;
  }
  assert.deepEqual(s.seen, [1], 'the other listener got it');
  assert.equal(logged.length, 1);
  assert.match(String(logged[0][1]), /app bug/);
});

test('disconnect() keeps the sessions, and connect() rejoins them with since', async () => {
  const { c, s, ws } = joinedClient({}, 4);
  ws.message('room', 5);
  c.disconnect();
  assert.equal(c.state, 'closed');
  assert.equal(s.state, 'joining', 'the session waits for the next connection');
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(FakeSocket.all.length, 1, 'no reconnect by itself');
  c.connect();
  const next = FakeSocket.last();
  next.welcome();
  const join = next.joined('room', 5);
  assert.deepEqual([join.since, join.since_id], [5, 'm5']);
  assert.equal(s.state, 'joined');
});

test('a publish over the frame limit is refused here, not sent to close the connection', async () => {
  const { c, s, ws } = joinedClient({ maxFrameBytes: 1024 });
  await assert.rejects(s.publish({ blob: 'x'.repeat(2000) }), { code: 'too_large' });
  assert.equal(ws.sentOf('publish').length, 0);
  assert.equal(s.signal({ blob: 'x'.repeat(2000) }), false);
  // Near the limit the UTF-8 size decides: 400 × 'é' is 800 bytes, 400 × '€' is 1,200.
  const fitting = s.publish({ t: 'é'.repeat(400) });
  assert.equal(ws.sentOf('publish').length, 1, 'under the limit in bytes: sent');
  ws.frame({ type: 'ack', ref: ws.sentOf('publish').at(-1).ref, seq: 3 });
  await fitting;
  await assert.rejects(s.publish({ t: '€'.repeat(400) }), { code: 'too_large' });
  assert.equal(c.state, 'connected');
  const small = s.publish({ ok: true });
  ws.frame({ type: 'ack', ref: ws.sentOf('publish').at(-1).ref, seq: 4 });
  assert.deepEqual(await small, { seq: 4 });
});

test('a token function refreshes the token in band before it expires, by the server clock', async () => {
  const jwt = (inSeconds, n) =>
    `h.${Buffer.from(JSON.stringify({ sub: 'x', n, exp: Math.floor(Date.now() / 1000) + inSeconds })).toString('base64url')}.s`;
  let calls = 0;
  // Each token lives 12 s by this device's clock, 2 s by the server's (10 s ahead).
  const c = client({ token: () => jwt(12, ++calls) });
  c.session('room');
  c.connect();
  await until(() => FakeSocket.all.length === 1, 'a socket');
  const ws = FakeSocket.last();
  // The server's clock is 10 s ahead of this device's: the refresh goes by the server's.
  ws.frame({ type: 'welcome', client_id: 'c1', node: 'n1', heartbeat_ms: 25000, protocol: 1, time: Date.now() + 10_000 });
  await until(() => ws.sentOf('refresh').length === 1, 'a refresh', 4000);
  const sent = ws.sentOf('refresh')[0];
  assert.equal(calls, 2, 'the function gave the new token');
  assert.ok(sent.token.endsWith('.s') && sent.ref);
  ws.frame({ type: 'refreshed', ref: sent.ref, exp: Math.floor(Date.now() / 1000) + 12 });
  await until(() => ws.sentOf('refresh').length === 2, 'the next refresh', 4000);
  assert.equal(FakeSocket.all.length, 1, 'never a reconnect');
  assert.ok(!c.states.some(([s]) => s === 'disconnected'));
});

test('a join the server never answers is given up and made again on the next connection', async () => {
  const c = client({ joinTimeoutMs: 100 });
  const s = c.session('room');
  c.connect();
  const first = FakeSocket.last();
  first.welcome();
  assert.equal(first.sentOf('join').length, 1);
  // No `joined`, no error: the connection is given up, and the next one joins.
  await until(() => FakeSocket.all.length === 2, 'a new connection', 2000);
  const next = FakeSocket.last();
  next.welcome();
  next.joined('room', 0);
  assert.equal(s.state, 'joined');
});

test('every (re)join syncs the whole presence list', async () => {
  const { s, ws } = joinedClient({}, 0);
  const synced = [];
  s.on('sync', (members) => synced.push(members.map((m) => m.client_id)));
  const member = (id) => ({ client_id: id, user: id, role: 'display', node: 'n', joined_at: 1, idle: false });
  ws.shut(1006);
  await until(() => FakeSocket.all.length === 2, 'a reconnect');
  const next = FakeSocket.last();
  next.welcome();
  next.joined('room', 0, { presence: [member('a'), member('c')] });
  assert.deepEqual(synced, [['a', 'c']], 'the members who left meanwhile are gone');
  assert.deepEqual([...s.presence.keys()], ['a', 'c']);
});

test('data with no wire form is an encode error; a publish never sent is not_sent, not "may have been stored"', async () => {
  const { s, ws } = joinedClient({}, 0);
  await assert.rejects(s.publish({ n: 10n }), { code: 'encode' });
  const cycle = {};
  cycle.self = cycle;
  await assert.rejects(s.publish(cycle), { code: 'encode' });
  assert.equal(ws.sentOf('publish').length, 0);
  // Queued behind a rejoin that never completes, then the connection drops: never sent.
  ws.message('room', 2); // a gap: the session leaves and rejoins, publishes wait
  const waiting = s.publish({ queued: true });
  ws.shut(1006);
  await assert.rejects(waiting, (e) => e.code === 'not_sent' && !/may have been stored/.test(e.message));
});

test('leave() sends its leave before announcing left: a rejoin from the listener follows it', () => {
  const { c, s, ws } = joinedClient({}, 0);
  s.on('state', (state) => {
    if (state === 'left') c.session('room');
  });
  s.leave();
  const kinds = ws.sent.filter((f) => f.type === 'leave' || f.type === 'join').map((f) => f.type);
  assert.deepEqual(kinds.slice(-2), ['leave', 'join'], 'the new join comes after the leave');
});

test('wake(): a reconnect waiting out its backoff goes at once; a silent socket is replaced', async () => {
  const c = client({ reconnect: { minDelayMs: 60_000, maxDelayMs: 60_000 }, deadAfterMs: 100 });
  c.session('room');
  c.connect();
  const first = FakeSocket.last();
  first.welcome();
  first.shut(1006);
  assert.equal(c.state, 'disconnected');
  c.wake();
  assert.equal(FakeSocket.all.length, 2, 'reconnected without waiting the backoff');
  const second = FakeSocket.last();
  second.welcome();
  // Connected but dead (a phone that slept): the ping goes unanswered, the socket is
  // given up (and the reconnect waits its backoff, which another wake() skips).
  c.wake();
  assert.equal(second.sentOf('ping').length, 1);
  await until(() => c.state === 'disconnected', 'the silent socket given up');
  c.wake();
  assert.equal(FakeSocket.all.length, 3);
  // An answered probe keeps the socket.
  const third = FakeSocket.last();
  third.welcome();
  c.wake();
  third.frame({ type: 'pong' });
  await new Promise((r) => setTimeout(r, 60));
  third.frame({ type: 'pong' });
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(c.state, 'connected');
  assert.equal(FakeSocket.all.length, 3);
});

test('a token function that throws UnauthorizedError stops the client', async () => {
  let calls = 0;
  const c = client({
    token: () => {
      calls++;
      throw new UnauthorizedError('signed out');
    },
  });
  const s = c.session('room');
  c.connect();
  await until(() => c.state === 'closed', 'closed');
  assert.equal(c.errors.at(-1).code, 'unauthorized');
  assert.equal(s.state, 'failed');
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(calls, 1, 'not asked again');
  assert.equal(FakeSocket.all.length, 0, 'no socket opened');
});

test('the REST base follows the WebSocket URL', async () => {
  const { apiBase } = await import('../dist/client.js');
  assert.equal(apiBase('ws://a.test:8080/ws'), 'http://a.test:8080/api/v1');
  assert.equal(apiBase('wss://a.test/rt/ws?x=1'), 'https://a.test/rt/api/v1');
  assert.equal(apiBase('wss://a.test'), 'https://a.test/api/v1');
  assert.equal(apiBase('/ws'), '/api/v1');
});

test("a browser's online and visibilitychange events wake the client; wakeOnResume: false ignores them", () => {
  // A page's window and document, as far as the client listens to them.
  const targets = { window: new EventTarget(), document: new EventTarget() };
  targets.document.visibilityState = 'hidden';
  const saved = {
    add: globalThis.addEventListener,
    remove: globalThis.removeEventListener,
    document: globalThis.document,
  };
  globalThis.addEventListener = targets.window.addEventListener.bind(targets.window);
  globalThis.removeEventListener = targets.window.removeEventListener.bind(targets.window);
  globalThis.document = targets.document;
  try {
    const c = client({ reconnect: { minDelayMs: 60_000, maxDelayMs: 60_000 } });
    c.connect();
    FakeSocket.last().welcome();
    FakeSocket.last().shut(1006);
    assert.equal(FakeSocket.all.length, 1, 'waiting out its backoff');
    targets.window.dispatchEvent(new Event('online'));
    assert.equal(FakeSocket.all.length, 2, '`online` reconnected at once');
    FakeSocket.last().welcome();
    FakeSocket.last().shut(1006);
    // Hidden: nothing; visible again: at once.
    targets.document.dispatchEvent(new Event('visibilitychange'));
    assert.equal(FakeSocket.all.length, 2, 'a page becoming hidden does not reconnect');
    targets.document.visibilityState = 'visible';
    targets.document.dispatchEvent(new Event('visibilitychange'));
    assert.equal(FakeSocket.all.length, 3, 'a page becoming visible reconnected at once');
    c.close();
    // close() stops listening.
    targets.window.dispatchEvent(new Event('online'));
    assert.equal(FakeSocket.all.length, 3);

    const quiet = client({ reconnect: { minDelayMs: 60_000, maxDelayMs: 60_000 }, wakeOnResume: false });
    quiet.connect();
    FakeSocket.last().welcome();
    FakeSocket.last().shut(1006);
    targets.window.dispatchEvent(new Event('online'));
    assert.equal(FakeSocket.all.length, 4, 'wakeOnResume: false waits out the backoff');
  } finally {
    globalThis.addEventListener = saved.add;
    globalThis.removeEventListener = saved.remove;
    if (saved.document === undefined) delete globalThis.document;
    else globalThis.document = saved.document;
  }
});

test('without a WebSocket the error names the Node flag and the `ws` option', () => {
  const saved = globalThis.WebSocket;
  delete globalThis.WebSocket;
  try {
    assert.throws(
      () => new RoomcastClient({ urls: URLS, token: 'tok' }),
      (e) => /--experimental-websocket/.test(e.message) && /from 'ws'/.test(e.message) && /WebSocket \}/.test(e.message),
    );
  } finally {
    if (saved !== undefined) globalThis.WebSocket = saved;
  }
});
