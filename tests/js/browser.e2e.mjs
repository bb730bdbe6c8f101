// Headless Chromium opens the demo page of two different nodes, sends a message on one
// and sees it on the other; each page lists the open pages as online, and a page that
// closes drops off the list. Started by `tests/demo.rs` with the demo running:
//
//   DEMO_URL_A, DEMO_URL_B  the pages of two nodes of the demo
//   CHROMIUM                the browser binary (default /usr/bin/chromium)
//
// The page loads the Socket.IO browser client from its own node. The browser may reach
// loopback only: its resolver finds no other host name, and every request the pages make
// elsewhere is refused and recorded; the test fails if there was any.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { chromium } from 'playwright-core';

const WAIT_MS = 20_000;

// Without the background-networking flags Chromium keeps trying to reach its services,
// which a closed network refuses. Playwright adds --headless and a fresh profile directory.
const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // No host resolves but localhost and 127.0.0.1: nothing outside this machine is reached.
  '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
];

/** Whether `url` points at this machine (127.0.0.0/8, ::1, localhost). */
function loopback(url) {
  const { protocol, hostname } = new URL(url);
  if (protocol === 'data:' || protocol === 'blob:' || protocol === 'about:') return true;
  return /^127\.\d+\.\d+\.\d+$/.test(hostname) || hostname === '[::1]' || hostname === 'localhost';
}

/** The requests beyond loopback the pages made (refused), and their script errors. */
const outside = [];

/** Opens `url` in a new page and waits until its socket is connected. */
async function open(context, url) {
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  // Resolves once the page and its scripts are loaded (or refused).
  await page.goto(url);
  assert.deepEqual(outside, [], `${url} reaches beyond loopback`);
  await page.locator('#status', { hasText: 'connected' }).waitFor();
  return page;
}

/** Types `text` in the page's form and sends it. */
async function say(page, text) {
  await page.fill('#m', text);
  await page.click('button');
}

test('a message typed on one node’s page appears on another node’s page, and an admin broadcast on every other node', { timeout: 90_000 }, async () => {
  const [urlA, urlB] = [process.env.DEMO_URL_A, process.env.DEMO_URL_B];
  assert.ok(urlA && urlB, 'DEMO_URL_A and DEMO_URL_B must be set');
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ARGS,
    timeout: WAIT_MS,
  });
  try {
    const context = await browser.newContext();
    // Every request of every page: loopback goes through, anything else is refused and
    // recorded.
    await context.route('**/*', (route) => {
      const url = route.request().url();
      if (loopback(url)) return route.continue();
      outside.push(url);
      return route.abort('blockedbyclient');
    });
    context.on('weberror', (e) => outside.push(`page error: ${e.error().message}`));
    const a = await open(context, urlA);
    const b = await open(context, urlB);

    // Each page names its node and lists the live members.
    const [nodeA, nodeB] = [await a.textContent('#node'), await b.textContent('#node')];
    assert.notEqual(nodeA, nodeB, 'two different nodes');
    for (const page of [a, b]) {
      await page.locator('#members', { hasText: 'node-1, node-2, node-3' }).waitFor();
    }

    // Each page lists both pages as online (presence), and drops a page that closes.
    const [meA, meB] = [a, b].map((p) => p.locator('#me'));
    await meA.filter({ hasText: '@' }).waitFor();
    await meB.filter({ hasText: '@' }).waitFor();
    const [tabA, tabB] = [await meA.textContent(), await meB.textContent()];
    for (const page of [a, b]) {
      await page.locator('#online', { hasText: tabA }).waitFor();
      await page.locator('#online', { hasText: tabB }).waitFor();
    }
    const c = await open(context, urlB);
    await c.locator('#me').filter({ hasText: '@' }).waitFor();
    const tabC = await c.locator('#me').textContent();
    await a.locator('#online', { hasText: tabC }).waitFor();
    await c.close();
    await a.waitForFunction((t) => !document.getElementById('online').textContent.includes(t), tabC);

    const hello = `hello from ${nodeA} ${randomBytes(4).toString('hex')}`;
    await say(a, hello);
    await b.locator('#log li', { hasText: `${nodeA}: ${hello}` }).waitFor();
    await a.locator('#log li', { hasText: `me: ${hello}` }).waitFor();

    const reply = `and back from ${nodeB} ${randomBytes(4).toString('hex')}`;
    await say(b, reply);
    await a.locator('#log li', { hasText: `${nodeB}: ${reply}` }).waitFor();

    // An admin broadcast from page A: page B shows it, page A lists each other node's
    // answer (B's node shows it on one page, the third node on none).
    const notice = `admin from ${nodeA} ${randomBytes(4).toString('hex')}`;
    await a.fill('#t', notice);
    await a.click('#a button');
    await b.locator('#log li', { hasText: `[admin broadcast from ${nodeA}] ${notice}` }).waitFor();
    const answers = await a.locator('#log li', { hasText: 'admin broadcast answered by:' }).textContent();
    const third = ['node-1', 'node-2', 'node-3'].find((n) => n !== nodeA && n !== nodeB);
    assert.match(answers, new RegExp(`${nodeB} \\(1 pages\\)`), answers);
    assert.match(answers, new RegExp(`${third} \\(0 pages\\)`), answers);

    // The pages worked with loopback alone, and asked for nothing else.
    assert.deepEqual(outside, [], 'requests beyond loopback');
    assert.equal(await a.evaluate(() => typeof io), 'function', 'the client served by the node ran');
  } finally {
    await browser.close();
  }
});
