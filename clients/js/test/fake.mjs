// A scripted stand-in for the gateway's socket, for the client's policy tests (close
// codes, backoff, repair). The real gateway is tested in gateway.test.mjs.

export class FakeSocket {
  static all = [];

  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.readyState = 1;
    this.binaryType = 'blob';
    this.sent = [];
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    FakeSocket.all.push(this);
  }

  static reset() {
    FakeSocket.all = [];
  }

  static last() {
    return FakeSocket.all[FakeSocket.all.length - 1];
  }

  send(data) {
    this.sent.push(JSON.parse(data));
  }

  close() {
    this.readyState = 3;
  }

  // ----- the server's side -----

  frame(f) {
    this.onmessage?.({ data: JSON.stringify(f) });
  }

  welcome(heartbeat_ms = 25000) {
    this.frame({ type: 'welcome', client_id: 'c1', node: 'n1', heartbeat_ms, protocol: 1 });
  }

  /** The server closes with `code`. */
  shut(code, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** Frames of `type` the client sent. */
  sentOf(type) {
    return this.sent.filter((f) => f.type === type);
  }

  /** Answers the client's last join of `session`. */
  joined(
    session,
    seq,
    { recovered = true, history = [], presence = [], epoch = 'e1', seq_id = `m${seq}` } = {},
  ) {
    const join = this.sentOf('join').filter((j) => j.session === session).pop();
    if (!join) throw new Error(`no join of ${session} was sent`);
    this.frame({
      type: 'joined',
      session,
      seq,
      epoch,
      seq_id,
      recovered,
      history,
      presence,
      ref: join.ref,
    });
    return join;
  }

  message(session, seq, data = { n: seq }, id = `m${seq}`) {
    this.frame({ type: 'message', session, ...entry(seq, data, id) });
  }
}

/** A stored message; its id is `m<seq>` unless another branch's is given. */
export function entry(seq, data = { n: seq }, id = `m${seq}`) {
  return { seq, id, ts: 1000 + seq, from: { client_id: 'c9', user: 'ann', role: 'controller' }, data };
}

/** Resolves when `cond()` holds, or rejects after `ms`. */
export async function until(cond, what, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
