// The chat example (examples/chat.rs) as a cluster of three processes: nicknames, rooms,
// and messages that reach the room's members on other nodes, and only them. Started by
// `tests/e2e_js.rs` with CHAT_BIN set to the example binary.

import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import { BACKEND, SETTLE_MS, connect, record, request, sleep, uniq, useExampleCluster, waitUntil } from './cluster.mjs';

const cluster = useExampleCluster({
  bin: process.env.CHAT_BIN,
  ready: /listening on http:\/\/127\.0\.0\.1:(\d+)$/,
});

/** A chat user on node `index` with nickname `nick` in `room`. */
async function user(index, nick, room) {
  const socket = await connect(cluster.nodes[index]);
  cluster.clients.add(socket);
  const notices = record(socket, 'notice');
  const messages = record(socket, 'message');
  const states = record(socket, 'presence_state');
  const diffs = record(socket, 'presence_diff');
  assert.equal((await request(socket, 'nick', nick)).nick, nick);
  const me = await request(socket, 'join', room);
  assert.deepEqual(me, { nick, room, node: cluster.nodes[index].name });
  return { socket, notices, messages, states, diffs };
}

cluster.test('rooms and nicknames across three chat nodes', async () => {
  const room = uniq('room');
  const alice = await user(0, 'alice', room);
  const carol = await user(1, 'carol', uniq('other'));
  const bob = await user(2, 'bob', room);

  // Every node's constructor returned once it had joined: bob's first notice, sent when
  // he joined, reaches alice on another node (sent once, never again).
  await waitUntil('alice (node1) to hear bob (node3) join', () => alice.notices.values.includes('bob is here'));

  const text = uniq('hello');
  bob.socket.emit('message', text);
  const expected = { nick: 'bob', text, node: 'node3' };
  for (const u of [alice, bob]) {
    await waitUntil('the message in the room', () => u.messages.values.some((m) => m.text === text));
  }
  assert.deepEqual(alice.messages.values.find((m) => m.text === text), expected);

  const renamed = await request(alice.socket, 'nick', 'alicia');
  assert.equal(renamed.nick, 'alicia');
  await waitUntil('bob to see the rename', () => bob.notices.values.includes('alice is now alicia'));

  // Nicknames are tracked with presence (the socket id the key, the nickname in the
  // meta): the room's members see bob join and alice renamed, in one diff that replaces
  // her meta; carol in another room sees neither.
  if (BACKEND !== 'redis') {
    const nicks = (entries) => Object.values(entries).flat().map((e) => e.meta.nick);
    const inRoom = (u, nick) => u.diffs.values.some((d) => d.topic === room && nicks(d.joins).includes(nick));
    await waitUntil('alice to see bob in the room', () => inRoom(alice, 'bob') || alice.states.values.some((s) => nicks(s.state).includes('bob')));
    await waitUntil('bob to see alicia in the room', () => inRoom(bob, 'alicia'));
    const rename = bob.diffs.values.find((d) => d.topic === room && nicks(d.joins).includes('alicia'));
    assert.deepEqual(nicks(rename.leaves), ['alice'], 'the rename is one diff: alice leaves as alicia joins');
    assert.ok(
      !bob.diffs.values.some((d) => d.topic === room && nicks(d.leaves).includes('alice') && !nicks(d.joins).includes('alicia')),
      'alice never left the room on her own',
    );
    assert.ok(!carol.diffs.values.some((d) => d.topic === room), 'carol gets no diff of the room');
  }

  await sleep(SETTLE_MS);
  assert.equal(carol.messages.count, 0, 'carol, in another room, gets no message');
  assert.ok(!carol.notices.values.some((n) => n.includes('alice') || n.includes('bob')), carol.notices.values.join());
});

cluster.test('an admin notice reaches every node, whose answers the sender sees', async () => {
  const alice = await user(0, 'alice', uniq('a'));
  const carol = await user(1, 'carol', uniq('c'));
  const bob = await user(2, 'bob', uniq('b'));
  const text = uniq('maintenance');
  const answered = (n) =>
    n.startsWith('admin notice answered by: ') && /node2 \(\d+ connections\)/.test(n) && /node3 \(\d+ connections\)/.test(n);
  // Sent once: both other nodes answer the first admin notice.
  alice.socket.emit('message', `/admin ${text}`);
  await waitUntil('both other nodes to answer the admin notice', () => alice.notices.values.some(answered));
  const notice = `[admin] alice@node1: ${text}`;
  for (const u of [alice, carol, bob]) {
    await waitUntil('every connection to show the admin notice', () => u.notices.values.includes(notice));
  }
  assert.equal(alice.messages.count, 0, 'an admin notice is no chat message');
});

// Pages join the lobby three at a time, one on each node, as a crowd arriving: every page
// must end up listing every page. The page applies presence as the presence module
// documents; a page that ignored the diffs coming between its `presence_state` and the
// answer to its `join` missed, for good, whoever joined in that gap.
cluster.test('pages that join at the same moment all see each other', async (t) => {
  const executablePath = process.env.CHROMIUM;
  if (!executablePath) {
    if (process.env.CI) throw new Error('CHROMIUM is not set');
    t.skip('CHROMIUM is not set: no browser');
    return;
  }
  const browser = await chromium.launch({
    executablePath,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync',
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1'],
    timeout: 30_000,
  });
  try {
    const context = await browser.newContext();
    const WAVES = 10;
    const pages = [];
    for (let wave = 0; wave < WAVES; wave++) {
      const loaded = await Promise.all(cluster.nodes.map(async (node) => {
        const page = await context.newPage();
        page.setDefaultTimeout(30_000);
        await page.goto(`${node.url}/`);
        // The page joins the lobby on connect; the answer names its nickname.
        await page.locator('#nick').filter({ hasText: /guest-/ }).waitFor();
        return { page, node: node.name, nick: await page.textContent('#nick') };
      }));
      pages.push(...loaded);
    }
    // Then the crowd moves to a room of its own: three pages at a time (one per node)
    // submit the form together, a wave every 20 ms, without waiting for the answers.
    const room = uniq('crowd');
    const moves = [];
    for (let wave = 0; wave < WAVES; wave++) {
      for (const p of pages.slice(wave * 3, wave * 3 + 3)) {
        moves.push(p.page.evaluate((r) => {
          document.getElementById('r').value = r;
          document.getElementById('who').requestSubmit();
        }, room));
      }
      await sleep(20);
    }
    await Promise.all(moves);
    for (const p of pages) await p.page.locator('#room', { hasText: room }).waitFor();
    const everyone = pages.map((p) => p.nick).sort();
    assert.equal(new Set(everyone).size, pages.length, 'one nickname per page');
    const missing = async () => {
      const out = [];
      for (const p of pages) {
        const listed = (await p.page.textContent('#online')).split(', ');
        const lacks = everyone.filter((n) => !listed.includes(n));
        if (lacks.length) out.push(`${p.nick} (${p.node}) lacks ${lacks.join(' ')}`);
      }
      return out;
    };
    let wrong = [];
    const deadline = Date.now() + 10_000;
    do {
      wrong = await missing();
      if (wrong.length === 0) break;
      await sleep(250);
    } while (Date.now() < deadline);
    assert.deepEqual(wrong, [], `${wrong.length} of ${pages.length} pages miss someone`);
  } finally {
    await browser.close();
  }
}, { timeout: 180_000 });
