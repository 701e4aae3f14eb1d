// The display: creates a session (REST), shows its join code and a QR code of the
// controller page, and renders the session live through the SDK: slides, a note, a
// pointer (signals), presence, typing, and the connection's state. `?gateways=` takes a
// comma-separated list of WebSocket URLs (default: this server's /ws).
import { RoomcastClient } from './sdk/index.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const gateways = (params.get('gateways') || '/ws').split(',').filter(Boolean);

const SLIDES = [
  ['Roomcast', 'A phone drives this screen. Join with the code on the right.'],
  ['Sessions', 'Controllers and displays meet in a session: a room with its own history.'],
  ['Ordered', 'Every message carries a seq. Everyone sees the same order.'],
  ['Exactly once', 'After a reconnect, the SDK asks for what it missed: nothing lost, nothing twice.'],
  ['Any gateway', 'Stateless gateways share Redis. Kill one; clients move to another.'],
  ['Try it', 'Tap Next, drag on the pad, or say something.'],
];

const state = { slide: 0, note: '' };

function showProblem(text) {
  $('problem').textContent = text;
  $('problem').hidden = !text;
}

function render() {
  const [title, body] = SLIDES[state.slide];
  $('slide-title').textContent = `${state.slide + 1}. ${title}`;
  $('slide-body').textContent = body;
  $('note').textContent = state.note;
}

/** One action from a controller: the shared state is the fold of them, in seq order. */
function apply(message) {
  const action = message.data || {};
  let text;
  if (action.kind === 'slide' && Number.isInteger(action.n)) {
    state.slide = Math.min(Math.max(action.n, 0), SLIDES.length - 1);
    text = `slide ${state.slide + 1}`;
  } else if (action.kind === 'note' && typeof action.text === 'string') {
    state.note = action.text;
    text = `note: ${action.text}`;
  } else {
    text = 'unknown action';
  }
  const li = document.createElement('li');
  li.value = message.seq;
  li.dataset.seq = String(message.seq);
  li.textContent = `${text} (${message.from.name || message.from.user})`;
  $('log').append(li);
  $('log').scrollTop = $('log').scrollHeight;
}

function renderPresence(room) {
  const list = $('presence');
  list.replaceChildren();
  for (const m of room.presence.values()) {
    const li = document.createElement('li');
    li.textContent = `${m.name || m.user} `;
    const role = document.createElement('span');
    role.className = 'role';
    role.textContent = m.client_id === room.me ? `${m.role} (this screen)` : m.role;
    li.append(role);
    list.append(li);
  }
}

async function session() {
  // A reload keeps the same session: it lives in this tab's storage until it ends.
  const saved = JSON.parse(sessionStorage.getItem('roomcast-demo') || 'null');
  if (saved && saved.expires_at > Date.now() + 60_000) return saved;
  const r = await fetch('/api/v1/sessions', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ metadata: { app: 'roomcast-demo' } }),
  });
  const body = await r.json();
  if (!r.ok) throw new Error(body.detail || `HTTP ${r.status}`);
  sessionStorage.setItem('roomcast-demo', JSON.stringify(body));
  return body;
}

async function start() {
  render();
  let created;
  try {
    created = await session();
  } catch (e) {
    showProblem(`Could not create a session: ${e.message}`);
    return;
  }
  $('code').textContent = created.code;
  const remote = new URL(`/demo/remote?code=${created.code}`, location.href);
  if (params.get('gateways')) remote.searchParams.set('gateways', params.get('gateways'));
  $('remote-link').href = remote.toString();
  $('qr').src = `/demo/qr.svg?text=${encodeURIComponent(remote.toString())}`;

  const client = new RoomcastClient({ urls: gateways, token: created.display_token });
  const room = client.session(created.id, { role: 'display', name: 'Screen', since: 0 });
  client.on('state', (s) => {
    $('badge').dataset.state = s;
    $('badge').textContent = s === 'connected' ? `connected · ${client.node}` : s;
    room.me = client.clientId;
  });
  room.on('message', (m) => {
    apply(m);
    render();
  });
  room.on('reset', ({ history }) => {
    // The numbering restarted or the gap was too long: rebuild from the window.
    state.slide = 0;
    state.note = '';
    $('log').replaceChildren();
    for (const m of history) apply(m);
    render();
  });
  room.on('state', (s, error) => {
    if (s === 'joined') renderPresence(room);
    if (s === 'ended') {
      sessionStorage.removeItem('roomcast-demo');
      showProblem('This session has ended. Reload for a new one.');
    } else if (s === 'failed') showProblem(`Cannot join: ${error?.message}`);
  });
  room.on('presence', () => renderPresence(room));
  let typingTimer;
  room.on('typing', ({ from, active }) => {
    clearTimeout(typingTimer);
    $('typing').textContent = active ? `${from.name || from.user} is typing…` : '';
    if (active) typingTimer = setTimeout(() => ($('typing').textContent = ''), 4000);
  });
  room.on('signal', ({ data }) => {
    const p = $('pointer');
    if (!data || typeof data.x !== 'number' || typeof data.y !== 'number') return;
    p.hidden = Boolean(data.up);
    p.style.left = `${Math.min(Math.max(data.x, 0), 1) * 100}%`;
    p.style.top = `${Math.min(Math.max(data.y, 0), 1) * 100}%`;
  });
  client.connect();
  window.roomcast = { client, room };
}

start();
