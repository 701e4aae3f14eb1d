// The demo in real Chromium (Debian's, driven by playwright-core; nothing downloads a
// browser): a display page and a phone-sized controller page in separate contexts. The
// controller joins by code and sends 20 actions; the display shows them all, in order.
// Then the display's gateway is killed: it reconnects to the other one and shows what
// was published meanwhile. Screenshots go to test-output/.

import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { startGateway, startRedis } from './harness.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const OUT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'test-output');
const skip = process.env.ROOMCAST_SKIP_BROWSER === '1';

let redis;
let browser;

before(async () => {
  if (skip) return;
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no Chromium at ${CHROMIUM}: make sdk-test installs Debian's chromium`);
  }
  mkdirSync(OUT, { recursive: true });
  redis = await startRedis();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

after(async () => {
  await browser?.close();
  redis?.stop();
});

/** The display's log: [seq, text] per action, in the order shown. */
async function log(page) {
  return page.$$eval('#log li', (items) => items.map((li) => [Number(li.dataset.seq), li.textContent]));
}

test('a phone drives the display through the demo, across a gateway kill', { skip }, async () => {
  const env = { ROOMCAST_DEMO: 'true' };
  const a = await startGateway(redis.url, env);
  const b = await startGateway(redis.url, env);
  try {
    const screen = await (await browser.newContext({ viewport: { width: 1280, height: 760 } })).newPage();
    const errors = [];
    screen.on('pageerror', (e) => errors.push(e));
    await screen.goto(`${a.http}/demo/?gateways=${a.ws},${b.ws}`);
    await screen.waitForFunction(() => /^[A-Z2-9]{6}$/.test(document.getElementById('code').textContent));
    await screen.waitForSelector('#badge[data-state="connected"]');
    const code = await screen.textContent('#code');
    // The QR code is an image the page loads after the code is shown: wait for it (a
    // check made at once raced its load on a busy machine).
    await screen.waitForFunction(
      () => {
        const img = document.getElementById('qr');
        return img.complete && img.naturalWidth > 0;
      },
      null,
      { timeout: 10_000 },
    );
    const remoteHref = await screen.getAttribute('#remote-link', 'href');
    assert.ok(remoteHref.includes(`code=${code}`), remoteHref);

    const phone = await (
      await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true })
    ).newPage();
    phone.on('pageerror', (e) => errors.push(e));
    // The QR link carries the code: the controller joins at once, no tap.
    await phone.goto(`${b.http}/demo/remote?code=${code}&name=Ann`);
    assert.equal(await phone.inputValue('#code'), code, 'the QR link fills the code in');
    await phone.waitForSelector('#badge[data-state="connected"]');
    assert.ok(await phone.isHidden('#join'), 'joined without a tap');
    await screen.waitForFunction(() => document.getElementById('presence').textContent.includes('Ann'));

    // 20 actions: Next and a note, taking turns; each acked before the next.
    const expected = [];
    const act = async (i, text) => {
      if (text === undefined) {
        await phone.click('#next');
      } else {
        await phone.fill('#text', text);
        await phone.click('#send');
      }
      await phone.waitForFunction((n) => document.getElementById('acked').textContent === `sent #${n}`, i);
      expected.push([i, text === undefined ? 'slide' : `note: ${text}`]);
    };
    for (let i = 1; i <= 20; i++) await act(i, i % 2 === 0 ? `action ${i}` : undefined);
    await screen.waitForFunction(() => document.querySelectorAll('#log li').length >= 20);
    const shown = await log(screen);
    assert.deepEqual(
      shown.map(([seq]) => seq),
      expected.map(([seq]) => seq),
      'all 20, in order',
    );
    for (const [i, [, text]] of shown.entries()) assert.ok(text.startsWith(expected[i][1]), `${text} vs ${expected[i][1]}`);
    assert.match(await screen.textContent('#slide-title'), /^6\. /, 'ten Nexts from slide 1 stop at the last slide');
    assert.equal(await screen.textContent('#note'), 'action 20');
    await screen.screenshot({ path: path.join(OUT, 'display.png'), fullPage: true });
    await phone.screenshot({ path: path.join(OUT, 'remote.png') });

    // The display's gateway dies; the phone, on the other one, goes on.
    a.stop();
    await a.exited;
    for (let i = 21; i <= 25; i++) await act(i, `after the kill ${i}`);
    await screen.waitForFunction(() => document.querySelectorAll('#log li').length >= 25, null, { timeout: 20_000 });
    await screen.waitForSelector('#badge[data-state="connected"]');
    const after = await log(screen);
    assert.deepEqual(
      after.map(([seq]) => seq),
      expected.map(([seq]) => seq),
      'everything published meanwhile, once, in order',
    );
    assert.equal(await screen.textContent('#note'), 'after the kill 25');
    const node = await screen.evaluate(() => window.roomcast.client.node);
    const phoneNode = await phone.evaluate(() => window.roomcast.client.node);
    assert.equal(node, phoneNode, 'the display now shares the phone\'s gateway');
    await screen.screenshot({ path: path.join(OUT, 'display-after-kill.png') });
    assert.deepEqual(errors, [], 'no script error on either page');
  } finally {
    a.stop();
    b.stop();
  }
});
