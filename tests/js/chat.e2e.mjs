// The chat example (examples/chat.rs) as a cluster of three processes: nicknames, rooms,
// and messages that reach the room's members on other nodes, and only them. Started by
// `tests/e2e_js.rs` with CHAT_BIN set to the example binary.

import assert from 'node:assert/strict';
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

  // Until the nodes have found each other a notice stays on its node: bob announces
  // himself again until alice, on another node, hears it.
  await waitUntil(
    'alice (node1) to hear bob (node3) join',
    async () => {
      if (alice.notices.values.includes('bob is here')) return true;
      await request(bob.socket, 'join', room);
      return false;
    },
    { timeoutMs: 30_000, intervalMs: 300 },
  );

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

  // Nicknames are tracked with presence (gossip backend): the room's members see bob join
  // and alice renamed, carol in another room sees neither.
  if (BACKEND !== 'redis') {
    const inRoom = (u, nick) => u.diffs.values.some((d) => d.topic === room && d.joins[nick]);
    await waitUntil('alice to see bob in the room', () => inRoom(alice, 'bob') || alice.states.values.some((s) => s.state.bob));
    await waitUntil('bob to see alicia in the room', () => inRoom(bob, 'alicia'));
    assert.ok(bob.diffs.values.some((d) => d.topic === room && d.leaves.alice), 'the old nickname left');
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
  // Until the nodes have found each other an admin notice reaches fewer: send it again
  // until both other nodes answer.
  await waitUntil(
    'both other nodes to answer an admin notice',
    async () => {
      if (alice.notices.values.some(answered)) return true;
      alice.socket.emit('message', `/admin ${text}`);
      return false;
    },
    { timeoutMs: 30_000, intervalMs: 500 },
  );
  const notice = `[admin] alice@node1: ${text}`;
  for (const u of [alice, carol, bob]) {
    await waitUntil('every connection to show the admin notice', () => u.notices.values.includes(notice));
  }
  assert.equal(alice.messages.count, 0, 'an admin notice is no chat message');
});
