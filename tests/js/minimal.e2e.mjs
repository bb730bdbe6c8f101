// The minimal example (examples/minimal.rs) as a cluster of three processes: a `message`
// sent to one node reaches the clients of the other nodes, not its sender. Started by
// `tests/e2e_js.rs` with MINIMAL_BIN set to the example binary.

import assert from 'node:assert/strict';
import { SETTLE_MS, connect, record, sleep, uniq, useExampleCluster, waitUntil } from './cluster.mjs';

const cluster = useExampleCluster({
  bin: process.env.MINIMAL_BIN,
  // Its log line (tracing, on stdout) once the HTTP listener is bound.
  ready: /listening on http:\/\/127\.0\.0\.1:(\d+)/,
});

cluster.test('a message reaches the clients of every other node', async () => {
  const clients = [];
  for (const node of cluster.nodes) {
    const socket = await connect(node);
    cluster.clients.add(socket);
    clients.push(socket);
  }
  const [sender] = clients;
  const recs = clients.map((s) => record(s, 'message'));

  // Until the nodes have found each other a message stays on its node: send again until
  // every other client got one.
  const text = uniq('hello');
  await waitUntil(
    'the clients of node2 and node3 to get the message of node1',
    () => {
      if (recs.slice(1).every((r) => r.count > 0)) return true;
      sender.emit('message', { text });
      return false;
    },
    { timeoutMs: 30_000, intervalMs: 300 },
  );
  await sleep(SETTLE_MS);
  for (const [i, rec] of recs.slice(1).entries()) {
    assert.ok(rec.values.every((m) => m.text === text), `client of node${i + 2}: ${JSON.stringify(rec.values)}`);
  }
  assert.equal(recs[0].count, 0, 'the sender does not get its own message');
});
