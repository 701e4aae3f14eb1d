// The controller, made for a phone: join by code (REST `POST /sessions/join`), then
// drive the display through the SDK: slides and notes are published (stored, ordered,
// acked), the pointer and typing are ephemeral.
import { RoomcastClient, isRoomcastError } from './sdk/index.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const gateways = (params.get('gateways') || '/ws').split(',').filter(Boolean);
const SLIDE_COUNT = 6;

let slide = 0;

function showProblem(text) {
  $('problem').textContent = text;
  $('problem').hidden = !text;
}

function explain(e) {
  if (isRoomcastError(e) && e.code === 'rate_limited') {
    return `Slow down: try again in ${Math.ceil((e.retryAfterMs ?? 1000) / 1000)} s.`;
  }
  if (isRoomcastError(e) && (e.code === 'disconnected' || e.code === 'timeout')) {
    return 'Not sent for sure: the connection dropped. Try again.';
  }
  return `Not sent: ${e.message}`;
}

async function join(code, name) {
  const r = await fetch('/api/v1/sessions/join', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ code, name, role: 'controller' }),
  });
  const body = await r.json();
  if (!r.ok) throw new Error(body.detail || `HTTP ${r.status}`);
  return body;
}

function control(joined, name) {
  const client = new RoomcastClient({ urls: gateways, token: joined.token });
  const room = client.session(joined.session_id, { role: 'controller', name, since: 0 });
  client.on('state', (s) => {
    $('badge').dataset.state = s;
    $('badge').textContent = s;
  });
  room.on('message', ({ data }) => {
    if (data?.kind === 'slide' && Number.isInteger(data.n)) {
      slide = data.n;
      $('slide').textContent = String(slide + 1);
    }
  });
  const members = () => ($('members').textContent = String(room.presence.size));
  room.on('presence', members);
  room.on('state', (s, error) => {
    if (s === 'joined') members();
    if (s === 'ended') showProblem('The session has ended.');
    if (s === 'failed') showProblem(`Cannot join: ${error?.message}`);
  });
  // The session's stream started over (its history was lost or forked): say so; the
  // slide is whatever the kept history says.
  room.on('reset', () => showProblem('The session was reset: some earlier actions are gone.'));
  client.on('error', (e) => showProblem(`Connection: ${e.message}`));

  const publish = async (action) => {
    try {
      const { seq } = await room.publish(action);
      $('acked').textContent = `sent #${seq}`;
      showProblem('');
    } catch (e) {
      showProblem(explain(e));
    }
  };
  $('prev').onclick = () => publish({ kind: 'slide', n: Math.max(slide - 1, 0) });
  $('next').onclick = () => publish({ kind: 'slide', n: Math.min(slide + 1, SLIDE_COUNT - 1) });
  $('say').onsubmit = (ev) => {
    ev.preventDefault();
    const text = $('text').value.trim();
    if (!text) return;
    $('text').value = '';
    room.typing(false);
    publish({ kind: 'note', text });
  };
  let typing = false;
  $('text').oninput = () => {
    const now = $('text').value.length > 0;
    if (now !== typing) room.typing((typing = now));
  };

  // The pointer: at most one signal per animation frame.
  let pending = null;
  const point = (ev, up = false) => {
    const box = $('pad').getBoundingClientRect();
    pending = { x: (ev.clientX - box.left) / box.width, y: (ev.clientY - box.top) / box.height, up };
    requestAnimationFrame(() => {
      if (pending) room.signal(pending);
      pending = null;
    });
  };
  $('pad').onpointerdown = (ev) => {
    $('pad').setPointerCapture(ev.pointerId);
    point(ev);
  };
  $('pad').onpointermove = (ev) => {
    if (ev.buttons) point(ev);
  };
  $('pad').onpointerup = (ev) => point(ev, true);

  client.connect();
  window.roomcast = { client, room };
}

$('code').value = (params.get('code') || '').toUpperCase();
if (params.get('name')) $('name').value = params.get('name');
$('join').onsubmit = async (ev) => {
  ev?.preventDefault();
  const code = $('code').value.trim().toUpperCase();
  const name = $('name').value.trim() || 'Phone';
  $('join').querySelector('button').disabled = true;
  try {
    const joined = await join(code, name);
    $('join').hidden = true;
    $('controls').hidden = false;
    showProblem('');
    control(joined, name);
  } catch (e) {
    showProblem(`Cannot join: ${e.message}`);
    $('join').querySelector('button').disabled = false;
  }
};
// Opened from the display's QR code: the link carries the code, so join at once.
if ($('code').value) $('join').requestSubmit();
