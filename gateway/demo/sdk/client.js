/**
 * The connection: one WebSocket to one of the gateway URLs, kept up across failures.
 * It owns reconnecting (backoff with full jitter, rotating over the URLs, each close code
 * handled as docs/PROTOCOL.md says), the token (refreshed after close 4001), the
 * dead-connection watch, and routing frames to the sessions, which rejoin on every new
 * connection with `since`.
 */
import { Backoff } from './backoff.js';
import { jsonCodec } from './codec.js';
import { Emitter } from './emitter.js';
import { RoomcastError } from './errors.js';
import { Close } from './protocol.js';
import { Session } from './session.js';
const OPEN = 1;
/** How long `wake()` waits for any frame after its ping before dropping the socket. */
const WAKE_PROBE_MS = 3000;
const utf8 = new TextEncoder();
export class RoomcastClient extends Emitter {
    options;
    state = 'closed';
    /** This connection's id, as others see it in `from` and presence. */
    clientId;
    /** The gateway node serving this connection. */
    node;
    offlineQueue;
    publishTimeoutMs;
    joinTimeoutMs;
    urls;
    codec;
    backoff;
    WS;
    sessions = new Map();
    refs = new Map();
    refCounter = 0;
    urlIndex = 0;
    ws;
    welcomed = false;
    stopped = true;
    token;
    tokenStale = true;
    reconnectTimer;
    watchTimer;
    lastReceived = 0;
    pinged = false;
    heartbeatMs = 25_000;
    retryAfterMs = 0;
    /** Bumped by every attempt and by `close()`: a token answer for an older one is dropped. */
    attempt = 0;
    connectTimer;
    /** When the token is refreshed in band (a token function only). */
    refreshTimer;
    /** `refresh` frames awaiting their answer. */
    refreshRefs = new Set();
    /** The server's clock less this device's, from `welcome` (0 before one). */
    skewMs = 0;
    constructor(options) {
        super();
        this.options = options;
        this.urls = (Array.isArray(options.urls) ? options.urls : [options.urls]).map(resolveUrl);
        if (this.urls.length === 0)
            throw new Error('at least one URL is needed');
        this.codec = options.format && options.format !== 'json' ? options.format : jsonCodec;
        this.backoff = new Backoff(options.reconnect);
        this.offlineQueue = options.offlineQueue ?? 0;
        this.publishTimeoutMs = options.publishTimeoutMs ?? 10_000;
        this.joinTimeoutMs = options.joinTimeoutMs ?? 10_000;
        const WS = options.WebSocket ?? globalThis.WebSocket;
        if (!WS) {
            throw new Error('no WebSocket here: on Node 20 run node with --experimental-websocket, or pass one: ' +
                "import WebSocket from 'ws', then new RoomcastClient({ ..., WebSocket })");
        }
        this.WS = WS;
        if (typeof options.token === 'string') {
            this.token = options.token;
            this.tokenStale = false;
        }
    }
    /** @internal Whether a publish made now can wait for the (re)join: connecting or up. */
    get waiting() {
        return !this.stopped && (this.state === 'connecting' || this.state === 'connected');
    }
    get connected() {
        return this.welcomed && this.ws !== undefined && this.ws.readyState === OPEN;
    }
    /** Connects (and keeps reconnecting until `close()`). */
    connect() {
        if (!this.stopped)
            return;
        this.stopped = false;
        this.backoff.reset();
        this.listenForResume();
        this.open();
    }
    /**
     * The device says the network or the page is back (the client calls this itself on a
     * browser's `online` and `visibilitychange` unless `wakeOnResume` is false): waiting
     * for a reconnect, reconnect now instead of after the backoff; connected, make sure
     * the socket still works (mobile browsers often drop a hidden page's socket without a
     * close event): ping, and reconnect if nothing answers within 3 s.
     */
    wake() {
        if (this.stopped)
            return;
        if (this.reconnectTimer) {
            clearTimeout(this.reconnectTimer);
            this.reconnectTimer = undefined;
            this.open();
            return;
        }
        const ws = this.ws;
        if (!ws || !this.welcomed)
            return;
        const asked = Date.now();
        this.send({ type: 'ping' });
        setTimeout(() => {
            if (this.ws === ws && this.lastReceived < asked)
                this.abandon(ws, 'no answer after the device resumed: connection dead');
        }, Math.min(WAKE_PROBE_MS, this.options.deadAfterMs ?? WAKE_PROBE_MS));
    }
    resumeListening = false;
    /** Browsers: wake on `online` and when the page becomes visible. */
    listenForResume() {
        if (this.resumeListening || this.options.wakeOnResume === false)
            return;
        const g = globalThis;
        if (typeof g.addEventListener !== 'function')
            return;
        this.resumeListening = true;
        g.addEventListener('online', this.onResume);
        g.document?.addEventListener?.('visibilitychange', this.onVisible);
    }
    stopListening() {
        if (!this.resumeListening)
            return;
        this.resumeListening = false;
        const g = globalThis;
        g.removeEventListener?.('online', this.onResume);
        g.document?.removeEventListener?.('visibilitychange', this.onVisible);
    }
    onResume = () => this.wake();
    onVisible = () => {
        const g = globalThis;
        if (g.document?.visibilityState === 'visible')
            this.wake();
    };
    /**
     * Drops the connection and stops reconnecting, but keeps the sessions: the next
     * `connect()` rejoins each where it left off (`since`). What was in flight is rejected
     * with `disconnected`, like any drop.
     */
    disconnect() {
        if (this.stopped)
            return;
        this.stopped = true;
        this.attempt++;
        if (this.reconnectTimer)
            clearTimeout(this.reconnectTimer);
        this.reconnectTimer = undefined;
        const ws = this.ws;
        this.dropSocket();
        ws?.close(Close.Normal);
        for (const s of this.sessions.values())
            s._disconnected();
        this.setState('closed', {});
    }
    /** Closes for good: no reconnect; the sessions end, what waits is rejected with `closed`. */
    close() {
        this.stopListening();
        const wasOpen = !this.stopped;
        this.stopped = true;
        this.attempt++;
        if (this.reconnectTimer)
            clearTimeout(this.reconnectTimer);
        this.reconnectTimer = undefined;
        const ws = this.ws;
        this.dropSocket();
        ws?.close(Close.Normal);
        const closed = new RoomcastError('closed', 'the client was closed');
        for (const s of [...this.sessions.values()])
            s._end('left', closed);
        if (wasOpen || this.state !== 'closed')
            this.setState('closed', {});
    }
    /**
     * The session `id`, joined as soon as the client is connected (and rejoined with
     * `since` after every reconnect). The same id answers the same object until it is left.
     */
    session(id, opts = {}) {
        // `T` is the app's word for what the session's messages hold: one object per id
        // whatever type each caller names.
        const existing = this.sessions.get(id);
        if (existing)
            return existing;
        const s = new Session(this, id, opts);
        this.sessions.set(id, s);
        if (this.connected)
            s._connected();
        return s;
    }
    // ----- SessionHost -----
    /** @internal Sends one frame: `false` when not connected, `'too_large'` when the
     * encoded frame exceeds `maxFrameBytes` (nothing is sent then). */
    send(frame) {
        const ws = this.ws;
        if (!ws || ws.readyState !== OPEN)
            return false;
        let bytes;
        try {
            bytes = this.codec.encode(frame);
        }
        catch {
            // The app's data has no wire form (a BigInt, a cycle): its error, not the link's.
            return 'encode';
        }
        if (!fits(bytes, this.options.maxFrameBytes ?? 65_536))
            return 'too_large';
        try {
            ws.send(bytes);
            return true;
        }
        catch {
            return false;
        }
    }
    /** @internal Gives up the current connection as if it had dropped (it reconnects). */
    restart(reason) {
        if (this.ws)
            this.abandon(this.ws, reason);
    }
    /** Gives a socket up as if it had closed with 1006 (a close event that follows finds
     * it already dropped), then closes it. */
    abandon(ws, reason) {
        this.onClose(ws, Close.Abnormal, reason);
        try {
            ws.close();
        }
        catch {
            // Never opened, or already closing: it is forgotten either way.
        }
    }
    /** @internal */
    ref(prefix, owner) {
        const ref = `${prefix}${(this.refCounter = (this.refCounter + 1) % Number.MAX_SAFE_INTEGER)}`;
        this.refs.set(ref, owner);
        return ref;
    }
    /** @internal */
    forget(ref) {
        this.refs.delete(ref);
    }
    /** @internal */
    detach(session) {
        if (this.sessions.get(session.id) === session)
            this.sessions.delete(session.id);
    }
    // ----- the connection -----
    open() {
        if (this.stopped)
            return;
        const attempt = ++this.attempt;
        const url = this.urls[this.urlIndex % this.urls.length];
        this.setState('connecting', { url });
        const source = this.options.token;
        // A fixed token is tried whatever this device's clock says of its `exp`: the server
        // decides (a clock running ahead must not keep a display offline).
        if (typeof source === 'string')
            return this.openSocket(url, source);
        const fresh = this.usableToken();
        if (fresh !== undefined)
            return this.openSocket(url, fresh);
        // Ask the token function, then open, unless this attempt was overtaken meanwhile
        // (close(), or close() and connect() again).
        Promise.resolve()
            .then(source)
            .then((token) => {
            if (attempt !== this.attempt)
                return;
            this.token = token;
            this.tokenStale = false;
            this.openSocket(url, token);
        }, (e) => {
            if (attempt !== this.attempt)
                return;
            if (e instanceof Error && e.name === 'UnauthorizedError') {
                // The app says no token will come: stop, do not retry.
                return this.fail(new RoomcastError('unauthorized', e.message), { reason: 'token' });
            }
            this.emit('error', new RoomcastError('unauthorized', `the token function failed: ${String(e)}`));
            this.urlIndex++;
            this.scheduleReconnect({ reason: 'token' }, this.backoff.next());
        });
    }
    openSocket(url, token) {
        if (this.ws) {
            // Never two sockets: a leftover one would stay a member on the server.
            const old = this.ws;
            this.dropSocket();
            old.close(Close.Normal);
        }
        this.endedSeen = false;
        let ws;
        try {
            ws = new this.WS(withToken(url, token), this.codec.protocol);
        }
        catch (e) {
            this.fail(new RoomcastError('protocol', `cannot open ${url}: ${String(e)}`), {});
            return;
        }
        ws.binaryType = 'arraybuffer';
        this.ws = ws;
        this.welcomed = false;
        ws.onmessage = (ev) => this.onData(ws, ev.data);
        ws.onclose = (ev) => this.onClose(ws, ev.code, ev.reason);
        // Browsers follow an error with a close (1006); Node 20's built-in WebSocket reports a
        // refused connection with the error alone. Either way the socket is done: handle it
        // as an abnormal close now (a close event after it finds the socket already dropped).
        ws.onerror = () => this.abandon(ws, 'connection error');
        // A server that accepts but never says `welcome` (frozen mid-handshake): next URL.
        this.connectTimer = setTimeout(() => {
            if (this.ws !== ws || this.welcomed)
                return;
            this.abandon(ws, 'no welcome in time');
        }, this.options.connectTimeoutMs ?? 10_000);
    }
    onData(ws, data) {
        if (ws !== this.ws)
            return;
        this.lastReceived = Date.now();
        this.pinged = false;
        let f;
        try {
            f = this.codec.decode(data);
        }
        catch (e) {
            this.emit('error', new RoomcastError('protocol', `undecodable frame: ${String(e)}`));
            return;
        }
        switch (f.type) {
            case 'welcome':
                this.onWelcome(f);
                break;
            case 'joined':
            case 'message':
            case 'signal':
            case 'typing':
            case 'presence':
            case 'session':
                this.sessions.get(f.session)?._frame(f);
                break;
            case 'direct':
                this.emit('direct', { data: f.data, ts: f.ts });
                break;
            case 'refreshed':
                if (f.ref && this.refreshRefs.delete(f.ref))
                    this.scheduleRefresh();
                break;
            case 'ack': {
                const owner = f.ref ? this.refs.get(f.ref) : undefined;
                if (f.ref && owner) {
                    this.refs.delete(f.ref);
                    owner._ack(f.ref, f.seq);
                }
                break;
            }
            case 'error': {
                const err = new RoomcastError(f.code, f.message, f.retry_after_ms ?? undefined);
                // A close may follow a join's or the connection's error (1013): its backoff
                // honours this. A publish's rate limit says nothing about reconnecting.
                if (f.retry_after_ms && (!f.ref || f.ref.startsWith('j'))) {
                    this.retryAfterMs = f.retry_after_ms;
                }
                const owner = f.ref ? this.refs.get(f.ref) : undefined;
                if (f.ref && owner) {
                    this.refs.delete(f.ref);
                    owner._error(f.ref, err);
                }
                else {
                    // A refused refresh lands here too: the old expiry stands, and its 4001 makes
                    // the client ask the token function again and reconnect.
                    if (f.ref)
                        this.refreshRefs.delete(f.ref);
                    this.emit('error', err);
                }
                break;
            }
            default:
                break;
        }
    }
    onWelcome(f) {
        this.welcomed = true;
        this.clientId = f.client_id;
        this.node = f.node;
        this.heartbeatMs = f.heartbeat_ms > 0 ? f.heartbeat_ms : 25_000;
        this.retryAfterMs = 0;
        if (typeof f.time === 'number' && f.time > 0)
            this.skewMs = f.time - Date.now();
        this.backoff.reset();
        this.watch();
        this.scheduleRefresh();
        // Sessions join first: one created by a `connected` listener joins once, by itself.
        const sessions = [...this.sessions.values()];
        for (const s of sessions)
            s._connected();
        this.setState('connected', { url: this.urls[this.urlIndex % this.urls.length] });
    }
    /**
     * Browsers do not show WebSocket pings to pages, so the client watches for silence:
     * after one heartbeat without a frame it sends a `ping`, and a connection silent past
     * `deadAfterMs` (1.5 heartbeats) is dead: drop it and reconnect elsewhere.
     */
    watch() {
        if (this.watchTimer)
            clearInterval(this.watchTimer);
        const deadAfter = this.options.deadAfterMs ?? Math.round(this.heartbeatMs * 1.5);
        // Ask before declaring it dead, whatever deadAfterMs says.
        const pingAfter = Math.min(this.heartbeatMs, deadAfter / 2);
        const every = Math.max(50, pingAfter / 4);
        this.lastReceived = Date.now();
        this.watchTimer = setInterval(() => {
            const silent = Date.now() - this.lastReceived;
            if (silent >= deadAfter) {
                if (this.ws)
                    this.abandon(this.ws, 'no frame from the server: connection dead');
            }
            else if (silent >= pingAfter && !this.pinged) {
                this.pinged = true;
                this.send({ type: 'ping' });
            }
        }, every);
    }
    onClose(ws, code, reason) {
        if (ws !== this.ws)
            return;
        const welcomed = this.welcomed;
        this.dropSocket();
        for (const s of this.sessions.values())
            s._disconnected();
        if (this.stopped) {
            this.setState('closed', { code, reason });
            return;
        }
        // A failure before `welcome` may be a refusal before the upgrade (401 for a token
        // that expired meanwhile): browsers show it only as 1006, so refresh the token.
        if (!welcomed && typeof this.options.token === 'function')
            this.tokenStale = true;
        const detail = { code, reason };
        switch (code) {
            case Close.InvalidPayload:
            case Close.Policy:
                return this.fail(new RoomcastError('protocol', `closed ${code}: ${reason}`), detail);
            case Close.Forbidden:
                // A token function may know better (a new grant): ask it again, with backoff.
                // A fixed token would be refused again, forever.
                if (typeof this.options.token !== 'function') {
                    return this.fail(new RoomcastError('forbidden', `closed 4003: ${reason}`), detail);
                }
                this.tokenStale = true;
                this.urlIndex++;
                return this.scheduleReconnect(detail, this.backoff.next());
            case Close.SessionEnded: {
                // The ended session got its `ended` event first; without one, which session
                // ended is unknown, and the protocol says not to come back.
                const ended = new RoomcastError('session_ended', reason || 'the session ended');
                if (!this.endedSeen)
                    for (const s of [...this.sessions.values()])
                        s._end('ended', ended);
                this.endedSeen = false;
                if (this.sessions.size === 0) {
                    this.stopped = true;
                    this.setState('closed', detail);
                    return;
                }
                return this.scheduleReconnect(detail, this.backoff.next());
            }
            case Close.TokenExpired:
                if (typeof this.options.token !== 'function') {
                    return this.fail(new RoomcastError('token_expired', 'the token expired and cannot be refreshed'), detail);
                }
                this.tokenStale = true;
                return this.scheduleReconnect(detail, 0);
            case Close.GoingAway:
                // The node drains (or timed us out): another node, at once, spread a little.
                this.urlIndex++;
                return this.scheduleReconnect(detail, Math.floor(Math.random() * 250));
            case Close.TryAgainLater:
            case Close.RateLimited: {
                this.urlIndex++;
                const floor = Math.max(this.retryAfterMs, 1000);
                this.retryAfterMs = 0;
                return this.scheduleReconnect(detail, this.backoff.next(floor));
            }
            default:
                // 1000, 1006, 1009, 1011, 4008, 4010 and anything unknown: back off, rejoin with
                // since (after a 4010 the answer is recovered: false, which the session reports).
                this.urlIndex++;
                return this.scheduleReconnect(detail, this.backoff.next());
        }
    }
    /**
     * With a token function and a token that has an `exp`: ask the function for a new token
     * before it expires, by the server's clock (a quarter of the time left ahead, at most a
     * minute), and send it in band (`refresh`): the connection, its sessions and presence
     * stay as they are. If the server refuses it, its 4001 at the old expiry reconnects.
     */
    scheduleRefresh() {
        if (this.refreshTimer)
            clearTimeout(this.refreshTimer);
        this.refreshTimer = undefined;
        const source = this.options.token;
        const exp = this.token ? jwtExp(this.token) : undefined;
        if (typeof source !== 'function' || exp === undefined || !this.connected)
            return;
        const left = exp * 1000 - (Date.now() + this.skewMs);
        const delay = Math.max(0, left - Math.min(60_000, left / 4));
        const ws = this.ws;
        this.refreshTimer = setTimeout(() => {
            this.refreshTimer = undefined;
            Promise.resolve()
                .then(source)
                .then((token) => {
                if (this.ws !== ws || !this.connected)
                    return;
                this.token = token;
                const ref = `r${(this.refCounter = (this.refCounter + 1) % Number.MAX_SAFE_INTEGER)}`;
                this.refreshRefs.add(ref);
                this.send({ type: 'refresh', token, ref });
            }, (e) => {
                this.emit('error', new RoomcastError('unauthorized', `the token function failed: ${String(e)}`));
            });
        }, delay);
    }
    /** Set when a session's `ended` event arrived on this connection (before its 4000). */
    endedSeen = false;
    /** @internal A session of ours received its `ended` event. */
    noteEnded() {
        this.endedSeen = true;
    }
    scheduleReconnect(detail, delayMs) {
        if (this.reconnectTimer)
            clearTimeout(this.reconnectTimer);
        // The timer first, the event after: a listener that calls close() or connect()
        // finds the reconnect armed and cancels or supersedes it.
        this.reconnectTimer = setTimeout(() => {
            this.reconnectTimer = undefined;
            this.open();
        }, delayMs);
        this.setState('disconnected', { ...detail, delayMs });
    }
    fail(error, detail) {
        this.stopped = true;
        this.attempt++;
        if (this.reconnectTimer)
            clearTimeout(this.reconnectTimer);
        this.reconnectTimer = undefined;
        for (const s of [...this.sessions.values()])
            s._end('failed', error);
        // Closed first, then why: a listener that calls connect() from either event starts
        // from `closed` and is not undone by what follows.
        this.setState('closed', detail);
        this.emit('error', error);
    }
    dropSocket() {
        if (this.watchTimer)
            clearInterval(this.watchTimer);
        this.watchTimer = undefined;
        if (this.refreshTimer)
            clearTimeout(this.refreshTimer);
        this.refreshTimer = undefined;
        this.refreshRefs.clear();
        if (this.connectTimer)
            clearTimeout(this.connectTimer);
        this.connectTimer = undefined;
        const ws = this.ws;
        if (ws) {
            ws.onmessage = null;
            ws.onclose = null;
            ws.onerror = null;
        }
        this.ws = undefined;
        this.welcomed = false;
        for (const ref of [...this.refs.keys()])
            this.refs.delete(ref);
    }
    /** The token to use now, or undefined when the token function must be asked. */
    /** @internal A GET of the REST API with this client's token (the session's reads). */
    async get(path) {
        const source = this.options.token;
        const token = typeof source === 'string' ? source : (this.usableToken() ?? (await source()));
        const base = this.options.apiUrl ?? apiBase(this.urls[this.urlIndex % this.urls.length]);
        const fetchFn = globalThis.fetch;
        if (!fetchFn)
            throw new RoomcastError('protocol', 'no fetch here: the REST reads need fetch (Node 18+ or a browser)');
        let r;
        try {
            r = await fetchFn(`${base}${path}`, { headers: { authorization: `Bearer ${token}` } });
        }
        catch (e) {
            throw new RoomcastError('unavailable', `the REST API could not be reached: ${String(e)}`);
        }
        const body = (await r.json().catch(() => null));
        if (!r.ok) {
            const retry = Number(r.headers.get('retry-after'));
            throw new RoomcastError(body?.code ?? 'internal', body?.detail ?? `HTTP ${r.status}`, Number.isFinite(retry) && retry > 0 ? retry * 1000 : undefined);
        }
        return body;
    }
    usableToken() {
        if (this.tokenStale || !this.token || expired(this.token))
            return undefined;
        return this.token;
    }
    setState(state, detail) {
        this.state = state;
        this.emit('state', state, detail);
    }
}
/**
 * Whether an encoded frame is at most `max` bytes. A string's UTF-8 length is between its
 * length and three times it (per UTF-16 unit), so only frames near the limit are measured:
 * the common small frame is not encoded a second time.
 */
function fits(frame, max) {
    if (typeof frame !== 'string')
        return frame.length <= max;
    if (frame.length * 3 <= max)
        return true;
    if (frame.length > max)
        return false;
    return utf8.encode(frame).length <= max;
}
/** `/ws` or `ws.example/ws` against the page, `http(s)` → `ws(s)`. */
function resolveUrl(url) {
    const base = globalThis.location?.href;
    const u = base ? new URL(url, base) : new URL(url);
    if (u.protocol === 'http:')
        u.protocol = 'ws:';
    if (u.protocol === 'https:')
        u.protocol = 'wss:';
    return u.toString();
}
function withToken(url, token) {
    const u = new URL(url);
    u.searchParams.set('token', token);
    return u.toString();
}
/** Whether a JWT's `exp` has passed (or passes within `marginMs`); unreadable tokens are not. */
function expired(token, marginMs = 5000) {
    const exp = jwtExp(token);
    return exp !== undefined && exp * 1000 < Date.now() + marginMs;
}
/** A JWT's `exp` (Unix seconds), when it has a readable one. */
function jwtExp(token) {
    const payload = token.split('.')[1];
    if (!payload)
        return undefined;
    try {
        const json = atob(payload.replace(/-/g, '+').replace(/_/g, '/'));
        const exp = JSON.parse(json).exp;
        return typeof exp === 'number' ? exp : undefined;
    }
    catch {
        return undefined;
    }
}
/** The REST API's base for a WebSocket URL: the same origin, `…/ws` replaced by
 * `…/api/v1` (a relative `/ws` gives the relative `/api/v1`). */
export function apiBase(wsUrl) {
    const m = /^(wss?):\/\/([^/]+)(\/.*)?$/.exec(wsUrl);
    const path = (m ? m[3] ?? '' : wsUrl).replace(/\?.*$/, '').replace(/\/ws\/?$/, '').replace(/\/$/, '');
    if (!m)
        return `${path}/api/v1`;
    const scheme = m[1] === 'wss' ? 'https' : 'http';
    return `${scheme}://${m[2]}${path}/api/v1`;
}
