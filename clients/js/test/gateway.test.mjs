// The SDK against real roomcast gateways and a private redis-server: delivery, presence,
// msgpack, token refresh (4001), session end (4000), a drain (1001), a dead connection,
// and recovery across a gateway SIGKILL, where the app must see every acked message once.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { RoomcastClient } from '../dist/index.js';
import { msgpack } from '../dist/msgpack.js';
import { api, startGateway, startRedis, token, until } from './harness.mjs';

let redis;
const open = [];

before(async () => {
  redis = await startRedis();
});
after(() => {
  for (const c of open) c.close();
  redis?.stop();
});

function client(urls, tok, opts = {}) {
  const c = new RoomcastClient({ urls, token: tok, reconnect: { minDelayMs: 50, maxDelayMs: 500 }, ...opts });
  c.states = [];
  c.on('state', (s, d) => c.states.push([s, d]));
  open.push(c);
  return c;
}

function watch(session) {
  session.seen = [];
  session.on('message', (m) => session.seen.push(m.seq));
  return session;
}

test('publish, ack, fan-out, presence, typing, signal and direct between two instances', async () => {
  const a = await startGateway(redis.url);
  const b = await startGateway(redis.url);
  try {
    const tv = client(a.ws, token('tv', 'display', { name: 'TV' }));
    const phone = client(b.ws, token('ann', 'controller', { name: 'Ann' }));
    const screen = watch(tv.session('living-room'));
    const remote = phone.session('living-room');
    tv.connect();
    await until(() => screen.state === 'joined', 'the display joined');
    const arrivals = [];
    screen.on('presence', (e) => arrivals.push(e));
    phone.connect();
    await until(() => remote.state === 'joined', 'the controller joined');
    await until(() => arrivals.some((e) => e.event === 'join' && e.member.user === 'ann'), 'presence');
    assert.ok([...screen.presence.values()].some((m) => m.user === 'ann' && m.role === 'controller'));

    const typing = [];
    const signals = [];
    screen.on('typing', (t) => typing.push(t));
    screen.on('signal', (s) => signals.push(s));
    const data = [];
    screen.on('message', (m) => data.push(m.data));
    const acks = [];
    for (let i = 1; i <= 5; i++) acks.push((await remote.publish({ slide: i })).seq);
    assert.deepEqual(acks, [1, 2, 3, 4, 5]);
    remote.typing(true);
    remote.signal({ x: 0.5 });
    await until(() => screen.seen.length === 5 && typing.length === 1 && signals.length === 1, 'delivery');
    assert.deepEqual(screen.seen, acks);
    assert.deepEqual(data.map((d) => d.slide), [1, 2, 3, 4, 5]);
    assert.equal(typing[0].from.user, 'ann');
    assert.deepEqual(signals[0].data, { x: 0.5 });

    const directs = [];
    tv.on('direct', (d) => directs.push(d.data));
    const r = await api(a, 'POST', '/users/tv/messages', { data: { toast: 'hi' } });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    await until(() => directs.length === 1, 'the direct message');
    assert.deepEqual(directs[0], { toast: 'hi' });

    // An observer cannot write: a typed error, and the connection lives.
    const watcher = client(a.ws, token('eve', 'observer'));
    const ro = watcher.session('living-room');
    watcher.connect();
    await until(() => ro.state === 'joined', 'the observer joined');
    await assert.rejects(ro.publish(1), { code: 'forbidden' });
    assert.equal(watcher.state, 'connected');
    for (const c of [tv, phone, watcher]) c.close();
  } finally {
    a.stop();
    b.stop();
  }
});

test('a connection lives through three token lifetimes, refreshed in band, with no presence flicker', async () => {
  const a = await startGateway(redis.url);
  const b = await startGateway(redis.url);
  try {
    // Tokens of 2 s: without a refresh the gateway closes at each expiry (4001) and the
    // others see the kiosk leave and join again.
    let minted = 0;
    const kiosk = client(a.ws, () => {
      minted++;
      return token('kiosk', 'display', { ttl: '2s' });
    });
    const screen = kiosk.session('lasting');
    const watcher = client(b.ws, token('watcher', 'display'));
    const seen = watcher.session('lasting');
    const flicker = [];
    seen.on('presence', (e) => e.member.user === 'kiosk' && flicker.push(e.event));
    watcher.connect();
    await until(() => seen.state === 'joined', 'the watcher joined');
    kiosk.connect();
    await until(() => screen.state === 'joined', 'the kiosk joined');
    await until(() => flicker.length === 1, 'the kiosk seen joining');
    const started = Date.now();
    // Three lifetimes: the first token and at least two refreshed ones.
    await until(() => Date.now() - started > 6500, 'three token lifetimes', 10_000);
    assert.ok(minted >= 4, `tokens minted: ${minted}`);
    assert.deepEqual(flicker, ['join'], 'no leave, no second join');
    assert.ok(!kiosk.states.some(([s]) => s === 'disconnected'), JSON.stringify(kiosk.states));
    assert.equal(screen.state, 'joined');
    kiosk.close();
    watcher.close();
  } finally {
    a.stop();
    b.stop();
  }
});

test('a publish repeated with its key is stored once and acked with the same seq', async () => {
  const g = await startGateway(redis.url);
  try {
    const phone = client(g.ws, token('ann', 'controller'));
    const remote = phone.session('idempotent');
    phone.connect();
    await until(() => remote.state === 'joined', 'joined');
    const first = await remote.publish({ slide: 1 }, { key: 'slide-1' });
    const again = await remote.publish({ slide: 1 }, { key: 'slide-1' });
    assert.deepEqual(again, first, 'the first seq again');
    const other = await remote.publish({ slide: 2 });
    assert.equal(other.seq, first.seq + 1);
    const history = await api(g, 'GET', '/sessions/idempotent/history?limit=10');
    const stored = history.body.messages.sort((x, y) => x.seq - y.seq).map((m) => m.data);
    assert.deepEqual(stored, [{ slide: 1 }, { slide: 2 }], 'stored once each');
  } finally {
    await g.stop();
  }
});

test('history and members pages over REST with the session token', async () => {
  const g = await startGateway(redis.url);
  try {
    // The REST API reads a session for tokens that list it (`sessions`).
    const phone = client(g.ws, token('ann', 'controller', { sessions: ['pages'] }));
    const tv = client(g.ws, token('tv', 'display', { sessions: ['pages'] }));
    const remote = phone.session('pages');
    const screen = tv.session('pages');
    phone.connect();
    tv.connect();
    await until(() => remote.state === 'joined' && screen.state === 'joined', 'both joined');
    for (let i = 1; i <= 5; i++) await remote.publish({ i });
    const first = await remote.history({ limit: 2 });
    assert.deepEqual(first.messages.map((m) => m.seq), [5, 4], 'newest first');
    assert.equal(first.nextBefore, 4);
    const second = await remote.history({ limit: 10, before: first.nextBefore });
    assert.deepEqual(second.messages.map((m) => m.seq), [3, 2, 1]);
    assert.equal(second.nextBefore, null);
    const who = await screen.members({ limit: 1 });
    assert.equal(who.members.length, 1);
    const rest = await screen.members({ after: who.nextAfter });
    assert.deepEqual(
      [...who.members, ...rest.members].map((m) => m.user).sort(),
      ['ann', 'tv'],
    );
    // A token for another session is refused, as the REST API says.
    const stranger = client(g.ws, token('eve', 'display', { sessions: ['elsewhere'] }));
    await assert.rejects(stranger.session('pages').history(), { code: 'forbidden' });
  } finally {
    await g.stop();
  }
});

test('Redis restarted empty: the display is told and resets to the new numbering', async () => {
  const own = await startRedis();
  const g = await startGateway(own.url);
  try {
    const tv = client(g.ws, token('tv', 'display'));
    const phone = client(g.ws, token('ann', 'controller'));
    const screen = watch(tv.session('restart'));
    const remote = phone.session('restart');
    const resets = [];
    screen.on('reset', (r) => resets.push(r));
    tv.connect();
    phone.connect();
    await until(() => screen.state === 'joined' && remote.state === 'joined', 'both joined');
    for (let i = 1; i <= 3; i++) await remote.publish({ before: i });
    await until(() => screen.seen.length === 3, 'the first three');
    const epoch = screen.epoch;
    await own.restart();
    // The controller publishes into the new numbering as soon as the gateway is back.
    let acked;
    await until(async () => {
      try {
        acked = await remote.publish({ after: 1 }, { key: 'after-restart' });
        return true;
      } catch {
        return false;
      }
    }, 'a publish after the restart', 20_000);
    assert.equal(acked.seq, 1, 'a new numbering starts at 1');
    await until(() => resets.length > 0, 'the reset', 20_000);
    assert.notEqual(screen.epoch, epoch, 'a new epoch');
    // The message stored after the restart reaches the display (in the reset's window or
    // live after it): its stream now follows the new numbering.
    await until(() => screen.lastSeq === 1, 'the new message');
  } finally {
    await g.stop();
    own.stop();
  }
});

test('msgpack: the same session, the same data, next to JSON clients', async () => {
  const g = await startGateway(redis.url);
  try {
    const packed = client(g.ws, token('pk', 'display'), { format: msgpack });
    const plain = client(g.ws, token('js', 'controller'));
    const s = watch(packed.session('mp', { since: 0 }));
    const p = watch(plain.session('mp'));
    const packedData = [];
    const plainData = [];
    s.on('message', (m) => packedData.push(m.data));
    p.on('message', (m) => plainData.push(m.data));
    plain.connect();
    await until(() => p.state === 'joined', 'json joined');
    await p.publish({ before: true, n: 1 });
    packed.connect();
    await until(() => s.state === 'joined', 'msgpack joined');
    const sent = { from: 'msgpack', list: [1, 2.5, 'x', null], nested: { ok: true } };
    assert.deepEqual(await s.publish(sent), { seq: 2 });
    await p.publish({ n: 3 });
    await until(() => s.seen.length === 3 && p.seen.length === 3, 'every message on both');
    assert.deepEqual(s.seen, [1, 2, 3], 'since 0 replays what was stored before the join');
    assert.deepEqual(packedData, [{ before: true, n: 1 }, sent, { n: 3 }]);
    assert.deepEqual(plainData, packedData, 'JSON and msgpack clients see the same values');
    packed.close();
    plain.close();
  } finally {
    g.stop();
  }
});

test('close 4001: the token function is asked again and nothing is missed', async () => {
  const g = await startGateway(redis.url);
  try {
    let calls = 0;
    const tv = client(g.ws, () => {
      calls += 1;
      // The second call is the in-band refresh before the first token expires: give it a
      // token the server refuses, so that the first one does expire (4001) and the client
      // reconnects with a fresh token from this function.
      if (calls === 2) return 'not-a-valid-token';
      return token('tv2', 'display', { ttl: calls === 1 ? '2s' : '1h' });
    });
    const phone = client(g.ws, token('ctl', 'controller'));
    const s = watch(tv.session('tok'));
    const p = phone.session('tok');
    tv.connect();
    phone.connect();
    await until(() => s.state === 'joined' && p.state === 'joined', 'both joined');
    const acked = [];
    const deadline = Date.now() + 15_000;
    while (!tv.states.some(([, d]) => d.code === 4001) && Date.now() < deadline) {
      acked.push((await p.publish({ t: Date.now() })).seq);
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(tv.states.some(([, d]) => d.code === 4001), 'the server closed with 4001');
    for (let i = 0; i < 5; i++) acked.push((await p.publish({ after: i })).seq);
    await until(() => s.seen.length === acked.length, 'every message', 15_000);
    assert.deepEqual(s.seen, acked);
    assert.ok(calls >= 3, `the token function was asked again after the 4001 (${calls})`);
    tv.close();
    phone.close();
  } finally {
    g.stop();
  }
});

test('close 4000: an ended session stops the client, no reconnect', async () => {
  const g = await startGateway(redis.url);
  try {
    const created = await api(g, 'POST', '/sessions', {});
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const id = created.body.id;
    const tv = client(g.ws, token('tv3', 'display'));
    const s = tv.session(id);
    const events = [];
    s.on('lifecycle', (e) => events.push(e.event));
    tv.connect();
    await until(() => s.state === 'joined', 'joined');
    const r = await api(g, 'DELETE', `/sessions/${id}`);
    assert.ok(r.status < 300, JSON.stringify(r.body));
    await until(() => tv.state === 'closed', 'the client closed');
    assert.deepEqual(events, ['ended']);
    assert.equal(s.state, 'ended');
    assert.equal(tv.states.at(-1)[1].code, 4000);
    assert.ok(!tv.states.some(([st]) => st === 'disconnected'), 'no reconnect was scheduled');
    await assert.rejects(s.publish(1), { code: 'session_ended' });
  } finally {
    g.stop();
  }
});

/**
 * A controller on `b` publishes `count` messages while the display, on `a` first, loses
 * it through `fault` once `at` are acked. The display must see every acked seq once, in
 * order. What is published during the outage stays within the session's history (100):
 * past it, recovery would rightly answer `recovered:false` and the SDK would `reset`.
 */
async function publishThrough(a, b, session, fault, { count = 120, at = 40 } = {}) {
  const tv = client([a.ws, b.ws], token(`tv-${session}`, 'display'));
  const phone = client(b.ws, token(`ctl-${session}`, 'controller'));
  const s = watch(tv.session(session));
  const resets = [];
  s.on('reset', (r) => resets.push(r.seq));
  const p = phone.session(session);
  tv.connect();
  phone.connect();
  await until(() => s.state === 'joined' && p.state === 'joined', 'both joined');
  assert.equal(tv.node !== undefined, true);
  const acked = [];
  for (let i = 0; i < count; i++) {
    if (i === at) await fault();
    acked.push((await p.publish({ i })).seq);
    if (i % 10 === 0) await new Promise((r) => setTimeout(r, 10));
  }
  // A drained node may still deliver everything before it closes its clients: the
  // display must be on the other instance, and receive there, before the verdict.
  const connected = () => tv.states.filter(([st]) => st === 'connected').map(([, d]) => d.url);
  await until(() => connected().length === 2 && s.state === 'joined', 'the display on the other instance');
  for (let i = 0; i < 10; i++) acked.push((await p.publish({ after: i })).seq);
  await until(() => s.seen.length >= acked.length, `all ${acked.length} messages`, 20_000).catch((e) => {
    const why = { seen: s.seen.length, session: s.state, resets, states: tv.states };
    throw new Error(`${e.message}: ${JSON.stringify(why)}`);
  });
  assert.deepEqual(resets, [], 'the outage stayed within the history window');
  assert.deepEqual(s.seen, acked, 'every acked message once, in order');
  assert.equal(new Set(s.seen).size, s.seen.length);
  assert.ok(connected()[1].startsWith(b.ws), `reconnected to the other instance: ${connected()[1]}`);
  tv.close();
  phone.close();
  return tv;
}

test('recovery across a gateway SIGKILL: every acked message once, on the other instance', async () => {
  const a = await startGateway(redis.url);
  const b = await startGateway(redis.url);
  try {
    const tv = await publishThrough(a, b, 'killed', async () => {
      a.signal('SIGKILL');
      await a.exited;
    });
    assert.equal(tv.states.find(([st]) => st === 'disconnected')[1].code, 1006);
  } finally {
    a.stop();
    b.stop();
  }
});

test('close 1001 (a drain): straight to the other instance, nothing lost', async () => {
  const a = await startGateway(redis.url);
  const b = await startGateway(redis.url);
  try {
    const tv = await publishThrough(a, b, 'drained', async () => a.signal('SIGTERM'));
    assert.equal(tv.states.find(([st]) => st === 'disconnected')[1].code, 1001);
  } finally {
    a.stop();
    b.stop();
  }
});

test('a frozen gateway is detected from silence and left for the other one', async () => {
  const env = { ROOMCAST_HEARTBEAT: '1s' };
  const a = await startGateway(redis.url, env);
  const b = await startGateway(redis.url, env);
  try {
    // SIGSTOP: the socket stays open and says nothing, as behind a dead NAT entry.
    const tv = await publishThrough(a, b, 'frozen', async () => a.signal('SIGSTOP'));
    const lost = tv.states.find(([st]) => st === 'disconnected')[1];
    assert.equal(lost.code, 1006);
    assert.match(lost.reason, /dead/);
  } finally {
    a.stop();
    b.stop();
  }
});
