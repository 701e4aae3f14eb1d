/**
 * One joined session: the app's view of a room. It owns the delivery guarantee the client
 * gives the app: messages in seq order, each once, across reconnects (it rejoins with
 * `since` = the last seq it delivered), and a `reset` when that cannot hold.
 */
import { Emitter } from './emitter.js';
import { RoomcastError } from './errors.js';
/** Publishes held while a connected session (re)joins, whatever `offlineQueue` says. */
const JOINING_QUEUE = 64;
const KEY_CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
/** A fresh idempotency key: 22 random characters (about 131 bits). */
function newKey() {
    const bytes = new Uint8Array(22);
    const c = globalThis.crypto;
    if (c?.getRandomValues)
        c.getRandomValues(bytes);
    else
        for (let i = 0; i < bytes.length; i++)
            bytes[i] = Math.floor(Math.random() * 256);
    let out = '';
    for (const b of bytes)
        out += KEY_CHARS[b % KEY_CHARS.length];
    return out;
}
const KEY_FORM = /^[A-Za-z0-9_.:-]{1,64}$/;
/**
 * A session (room) on the client's connection. `T` types the `data` of the messages it
 * publishes and receives (`client.session<T>()`): a compile-time promise the app makes,
 * which the SDK does not check at run time.
 */
export class Session extends Emitter {
    host;
    id;
    role;
    name;
    state = 'joining';
    /** The highest seq delivered to the app (history, live or reset). */
    lastSeq;
    /** The numbering `lastSeq` belongs to (from the server's last `joined`). */
    epoch;
    /** The id of the message at `lastSeq`, when the server gave one. */
    lastId;
    /** Who is here, by `client_id` (you included), kept live from presence events. */
    presence = new Map();
    inflight = new Map();
    queue = [];
    joinRef;
    leaveRef;
    /** Set while a leave-and-join repairs the stream: `since` is the last seq, or 0. */
    repair;
    retry;
    /** Gives up a join the server never answers. */
    joinTimer;
    /** Why the session is over (`ended`, `failed`): what later publishes reject with. */
    failure;
    /** @internal Made by `RoomcastClient.session()`. */
    constructor(host, id, opts = {}) {
        super();
        this.host = host;
        this.id = id;
        this.role = opts.role;
        this.name = opts.name;
        this.lastSeq = opts.since;
        this.epoch = opts.epoch;
        this.lastId = opts.sinceId;
    }
    /**
     * Publishes `data` (any JSON value) and resolves with its seq once the server stored it.
     * Every publish carries an idempotency key (`options.key`, or a fresh one): when the
     * connection drops before the ack, it is sent again after the rejoin and the server
     * answers with the seq it stored the first time, so it is stored once.
     * Rejects with a {@link RoomcastError}: `rate_limited` and `unavailable` (with
     * `retryAfterMs`), `forbidden`, `session_ended`, `too_large`, `timeout` (it may have
     * been stored: publish again with the error's `key`), `disconnected`, `not_sent`,
     * `encode`, `queue_full`, `closed`, and `bad_request` for a malformed key.
     * Made before the session is joined, it waits and is sent after the join; made while
     * disconnected, it waits only with the client's `offlineQueue` (else `disconnected`).
     */
    publish(data, options = {}) {
        return new Promise((resolve, reject) => {
            const terminal = this.terminalError();
            if (terminal)
                return reject(terminal);
            const key = options.key ?? newKey();
            if (!KEY_FORM.test(key)) {
                return reject(new RoomcastError('bad_request', 'the key is 1 to 64 of A-Z a-z 0-9 _ . : -'));
            }
            const p = {
                data,
                key,
                timeoutMs: options.timeoutMs ?? this.host.publishTimeoutMs,
                resolve,
                reject,
            };
            if (this.state === 'joined' && this.host.connected && !this.repair) {
                this.sendPublish(p);
                return;
            }
            // Connecting or joining: wait for the join, the publish timeout running. Lost
            // (a reconnect scheduled): wait only in the opt-in offline queue, without a clock.
            const waiting = this.host.waiting;
            const bound = waiting ? Math.max(this.host.offlineQueue, JOINING_QUEUE) : this.host.offlineQueue;
            if (bound === 0) {
                return reject(new RoomcastError('disconnected', 'not connected (no offline queue)'));
            }
            if (this.queue.length >= bound) {
                return reject(new RoomcastError('queue_full', `${bound} publishes already wait`));
            }
            if (waiting)
                this.startClock(p);
            this.queue.push(p);
        });
    }
    /**
     * Stored messages, newest first, one page (the REST API's history, with this client's
     * token): `limit` 1 to 100 (default 20), `before` a seq (the previous page's
     * `nextBefore`). What a joined session missed is replayed by the join itself; this
     * is for scrolling back further.
     */
    async history(options = {}) {
        const q = new URLSearchParams();
        if (options.limit !== undefined)
            q.set('limit', String(options.limit));
        if (options.before !== undefined)
            q.set('before', String(options.before));
        const page = (await this.host.get(`/sessions/${encodeURIComponent(this.id)}/history?${q}`));
        return { messages: page.messages, nextBefore: page.next_before ?? null };
    }
    /**
     * Who is present, one page by `client_id` (the REST API's presence list): for sessions
     * bigger than the live `presence` map covers. `limit` 1 to 1000 (default 100), `after`
     * the previous page's `nextAfter`.
     */
    async members(options = {}) {
        const q = new URLSearchParams();
        if (options.limit !== undefined)
            q.set('limit', String(options.limit));
        if (options.after !== undefined)
            q.set('after', options.after);
        const page = (await this.host.get(`/sessions/${encodeURIComponent(this.id)}/presence/users?${q}`));
        return { members: page.members, nextAfter: page.next_after ?? null };
    }
    /** An ephemeral signal to every member, or to one `client_id`; never stored. */
    signal(data, to) {
        return this.joinedSend({ type: 'signal', session: this.id, data, ...(to ? { to } : {}) });
    }
    /** The typing indicator. */
    typing(active) {
        return this.joinedSend({ type: 'typing', session: this.id, active });
    }
    /** Keeps the session active without a message. */
    activity() {
        return this.joinedSend({ type: 'activity', session: this.id });
    }
    /** Leaves the session: others see you go; queued publishes are rejected. */
    leave() {
        if (this.isTerminal())
            return;
        // Joined, or a join on its way: the server has (or will have) us as a member. The
        // leave goes out before `left` is announced: a listener that joins again is then
        // ordered after it, not undone by it.
        const member = this.state === 'joined' || this.joinRef !== undefined || this.repair !== undefined;
        if (member && this.host.connected)
            this.host.send({ type: 'leave', session: this.id });
        this.finish('left', new RoomcastError('closed', 'the session was left'));
    }
    // ----- driven by the client -----
    /** @internal The connection is up (welcome): join, with `since` when we have one. */
    _connected() {
        if (this.isTerminal())
            return;
        // The offline queue's wait had no clock; from now on it counts.
        for (const p of this.queue)
            if (!p.timer)
                this.startClock(p);
        this.join();
    }
    /** @internal The connection is gone. What was in flight goes again after the rejoin,
     * with its key (the server stores it once), its clock still running. */
    _disconnected() {
        if (this.retry)
            clearTimeout(this.retry);
        this.retry = undefined;
        this.stopJoinClock();
        this.joinRef = undefined;
        this.leaveRef = undefined;
        // A repair that did not finish is finished by the rejoin (same `since` rules).
        if (this.repair === 'gap')
            this.repair = undefined;
        const unanswered = [...this.inflight.values()];
        for (const ref of this.inflight.keys())
            this.host.forget(ref);
        this.inflight.clear();
        if (this.host.offlineQueue === 0) {
            // Never sent: certainly not stored.
            for (const p of this.queue.splice(0)) {
                this.settle(p, new RoomcastError('not_sent', 'the connection dropped before it was sent (nothing was stored)'));
            }
        }
        else {
            for (const p of this.queue.splice(this.host.offlineQueue)) {
                this.settle(p, new RoomcastError('queue_full', 'more publishes waited than the offline queue holds'));
            }
            // Offline, the wait has no clock until the connection is back.
            for (const p of this.queue)
                this.stopClock(p);
        }
        // Ahead of what was never sent, in the order they were sent.
        for (const p of unanswered)
            p.ref = undefined;
        this.queue.unshift(...unanswered);
        if (!this.isTerminal() && this.state !== 'joining')
            this.setState('joining');
    }
    /** @internal The client closed, gave up, or the connection closed with 4000: what was
     * in flight is rejected too. */
    _end(state, error) {
        if (this.isTerminal())
            return;
        for (const [ref, p] of this.inflight) {
            this.host.forget(ref);
            this.settle(p, error);
        }
        this.inflight.clear();
        this.finish(state, error);
    }
    /** @internal A frame for this session. */
    _frame(f) {
        switch (f.type) {
            case 'joined':
                if (f.ref === this.joinRef)
                    this.onJoined(f);
                break;
            case 'message':
                this.onMessage(f);
                break;
            case 'presence':
                if (f.event === 'leave')
                    this.presence.delete(f.member.client_id);
                else
                    this.presence.set(f.member.client_id, f.member);
                this.emit('presence', { event: f.event, member: f.member });
                break;
            case 'typing':
                this.emit('typing', { from: f.from, active: f.active });
                break;
            case 'signal':
                this.emit('signal', { from: f.from, data: f.data });
                break;
            case 'session':
                this.emit('lifecycle', { event: f.event, reason: f.reason ?? null, at: f.at });
                if (f.event === 'ended') {
                    this.host.noteEnded();
                    this.finish('ended', new RoomcastError('session_ended', f.reason ?? 'the session ended'));
                }
                break;
            default:
                break;
        }
    }
    /** @internal The ack of one of our refs. */
    _ack(ref, seq) {
        if (ref === this.leaveRef) {
            this.leaveRef = undefined;
            this.join();
            return;
        }
        const p = this.inflight.get(ref);
        if (!p)
            return;
        this.inflight.delete(ref);
        if (typeof seq === 'number')
            this.settle(p, undefined, seq);
        else
            this.settle(p, new RoomcastError('internal', 'ack without a seq'));
    }
    /** @internal The error answering one of our refs. */
    _error(ref, e) {
        if (ref === this.leaveRef) {
            // `not_joined`: the server already forgot us; join all the same.
            this.leaveRef = undefined;
            this.join();
            return;
        }
        if (ref === this.joinRef) {
            this.joinRef = undefined;
            this.stopJoinClock();
            this.onJoinError(e);
            return;
        }
        const p = this.inflight.get(ref);
        if (!p)
            return;
        this.inflight.delete(ref);
        this.settle(p, e);
        if (e.code === 'session_ended')
            this.finish('ended', e);
    }
    // ----- internals -----
    join() {
        // One join at a time: a second one on this connection would be refused as "already
        // joined" and fail the session.
        if (this.isTerminal() || !this.host.connected || this.joinRef !== undefined)
            return;
        const since = this.repair === 'reset' ? 0 : this.lastSeq;
        this.joinRef = this.host.ref('j', this);
        const frame = { type: 'join', session: this.id, ref: this.joinRef };
        if (this.role)
            frame.role = this.role;
        if (this.name)
            frame.name = this.name;
        if (since !== undefined)
            frame.since = since;
        // A reset asks for the whole window whatever the numbering; otherwise the epoch makes
        // the server tell a numbering that started over from one that merely moved on.
        if (since !== undefined && this.repair !== 'reset') {
            if (this.epoch)
                frame.epoch = this.epoch;
            // And the message seen at `since`: a fork of the same numbering is told apart too.
            if (this.lastId)
                frame.since_id = this.lastId;
        }
        this.host.send(frame);
        // A join the server never answers would leave the session joining for good: give the
        // connection up, and the next one joins again.
        this.stopJoinClock();
        const ref = this.joinRef;
        this.joinTimer = setTimeout(() => {
            this.joinTimer = undefined;
            if (this.joinRef === ref)
                this.host.restart(`no answer to the join of ${this.id}`);
        }, this.host.joinTimeoutMs);
        if (this.state !== 'joining')
            this.setState('joining');
    }
    stopJoinClock() {
        if (this.joinTimer)
            clearTimeout(this.joinTimer);
        this.joinTimer = undefined;
    }
    onJoined(f) {
        this.joinRef = undefined;
        this.stopJoinClock();
        const asked = this.repair === 'reset' ? 0 : this.lastSeq;
        const reset = this.repair === 'reset' || (asked !== undefined && !f.recovered);
        this.repair = undefined;
        // Recovered or reset, what follows belongs to this numbering.
        this.epoch = f.epoch || undefined;
        this.presence.clear();
        for (const m of f.presence)
            this.presence.set(m.client_id, m);
        // Joined, quietly first: what waited goes out before anything a listener publishes.
        this.state = 'joined';
        if (reset) {
            this.lastSeq = f.seq;
            this.lastId = f.seq_id;
        }
        for (const p of this.queue.splice(0))
            this.sendPublish(p);
        this.emit('state', 'joined');
        this.emit('sync', [...this.presence.values()]);
        if (reset) {
            this.emit('reset', { seq: f.seq, history: f.history });
        }
        else {
            for (const m of f.history) {
                // A listener may have left or closed meanwhile.
                if (this.state !== 'joined')
                    return;
                this.deliver(m);
            }
            // Without `since` there is nothing to replay: live messages start after `seq`.
            if (this.lastSeq === undefined) {
                this.lastSeq = f.seq;
                this.lastId = f.seq_id;
            }
        }
    }
    onMessage(f) {
        // While repairing, the coming `joined` carries everything up to its seq.
        if (this.state !== 'joined' || this.repair)
            return;
        const m = { seq: f.seq, ts: f.ts, from: f.from, data: f.data };
        if (f.id !== undefined)
            m.id = f.id;
        const last = this.lastSeq ?? f.seq - 1;
        if (f.seq === last + 1) {
            this.deliver(m);
        }
        else if (f.seq === last && f.id && this.lastId && f.id !== this.lastId) {
            // Another message under the seq we processed last: the numbering restarted or
            // forked (the server closes with 4010 then; this covers one that does not).
            this.repairStream('reset');
        }
        else if (f.seq <= last) {
            // A message we have: drop it.
        }
        else {
            // A hole the server should have filled: ask for it again rather than skip it.
            this.repairStream('gap');
        }
    }
    deliver(m) {
        if (this.lastSeq !== undefined && m.seq <= this.lastSeq)
            return;
        this.lastSeq = m.seq;
        this.lastId = m.id;
        this.emit('message', m);
    }
    /** Leave and join again on this connection: with `since` for a gap, from 0 for a reset. */
    repairStream(kind) {
        this.repair = kind;
        this.setState('joining');
        this.leaveRef = this.host.ref('l', this);
        this.host.send({ type: 'leave', session: this.id, ref: this.leaveRef });
    }
    onJoinError(e) {
        switch (e.code) {
            case 'unavailable':
            case 'rate_limited':
                // `unavailable` is followed by close 1013 and the reconnect rejoins; a rate limit
                // leaves the connection up, so try again when the server says.
                this.retry = setTimeout(() => {
                    this.retry = undefined;
                    this.join();
                }, e.retryAfterMs ?? 1000);
                break;
            case 'session_ended':
                this.finish('ended', e);
                break;
            default:
                this.finish('failed', e);
        }
    }
    sendPublish(p) {
        const ref = this.host.ref('p', this);
        p.ref = ref;
        this.inflight.set(ref, p);
        if (!p.timer)
            this.startClock(p);
        const sent = this.host.send({ type: 'publish', session: this.id, data: p.data, ref, idempotency_key: p.key });
        if (sent === 'too_large') {
            this.inflight.delete(ref);
            this.host.forget(ref);
            this.settle(p, new RoomcastError('too_large', 'over the frame size limit (maxFrameBytes)'));
        }
        else if (sent === 'encode') {
            this.inflight.delete(ref);
            this.host.forget(ref);
            this.settle(p, new RoomcastError('encode', 'the data has no wire form (a BigInt? a cycle?): nothing was sent'));
        }
        else if (!sent) {
            this.inflight.delete(ref);
            this.host.forget(ref);
            this.settle(p, new RoomcastError('disconnected', 'not connected'));
        }
        else {
            p.sent = true;
        }
    }
    /** The publish timeout: from when it could be sent (queued while connecting or joining,
     * or sent) until its answer. */
    startClock(p) {
        p.timer = setTimeout(() => {
            p.timer = undefined;
            const queued = this.queue.indexOf(p);
            if (queued >= 0 && !p.sent) {
                // Never sent: certainly not stored.
                this.queue.splice(queued, 1);
                this.settle(p, new RoomcastError('not_sent', 'not sent in time: the session was not joined (nothing was stored)'));
                return;
            }
            if (queued >= 0) {
                // Sent before a drop, waiting to go again: it may have been stored.
                this.queue.splice(queued, 1);
                this.settle(p, new RoomcastError('timeout', 'no ack in time (it may have been stored: publish again with this key)'));
                return;
            }
            if (p.ref && this.inflight.delete(p.ref)) {
                this.host.forget(p.ref);
            }
            else {
                return;
            }
            this.settle(p, new RoomcastError('timeout', 'no ack in time (it may have been stored: publish again with this key)'));
        }, p.timeoutMs);
    }
    stopClock(p) {
        if (p.timer)
            clearTimeout(p.timer);
        p.timer = undefined;
    }
    joinedSend(frame) {
        if (this.state !== 'joined' || this.repair)
            return false;
        return this.host.send(frame) === true;
    }
    settle(p, error, seq) {
        if (p.timer)
            clearTimeout(p.timer);
        if (error) {
            // One error per publish (a session's end rejects many), naming its key.
            const own = new RoomcastError(error.code, error.message, error.retryAfterMs);
            own.key = p.key;
            p.reject(own);
        }
        else {
            p.resolve({ seq: seq });
        }
    }
    finish(state, error) {
        if (this.retry)
            clearTimeout(this.retry);
        this.retry = undefined;
        this.joinRef = undefined;
        for (const p of this.queue.splice(0)) {
            // Sent before a drop and waiting to go again: its outcome is unknown, whatever ended
            // the session.
            const unknown = new RoomcastError('disconnected', 'the connection ended before the ack (it may have been stored: publish again with this key)');
            this.settle(p, p.sent ? unknown : error);
        }
        // A leave keeps what is in flight: its acks come back before the leave's.
        if (state !== 'left') {
            for (const [ref, p] of this.inflight) {
                this.host.forget(ref);
                this.settle(p, error);
            }
            this.inflight.clear();
        }
        this.failure = error;
        this.host.detach(this);
        this.setState(state, state === 'left' ? undefined : error);
    }
    terminalError() {
        switch (this.state) {
            case 'left':
                return new RoomcastError('closed', 'the session was left');
            case 'ended':
            case 'failed':
                return this.failure;
            default:
                return undefined;
        }
    }
    isTerminal() {
        return this.state === 'left' || this.state === 'ended' || this.state === 'failed';
    }
    setState(state, error) {
        this.state = state;
        this.emit('state', state, error);
    }
}
