// The minimal example (examples/minimal.rs) as a cluster of three processes: a `message`
// sent to one node reaches the clients of the other nodes, not its sender; on SIGTERM a
// node leaves gracefully. Started by `tests/e2e_js.rs` with MINIMAL_BIN set to the
// example binary.

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

  // Every node's constructor returned once it had joined: the first message reaches the
  // clients of the other nodes (sent once, never again).
  const text = uniq('hello');
  sender.emit('message', { text });
  await waitUntil('the clients of node2 and node3 to get the message of node1', () =>
    recs.slice(1).every((r) => r.count > 0),
  );
  await sleep(SETTLE_MS);
  for (const [i, rec] of recs.slice(1).entries()) {
    assert.ok(rec.values.every((m) => m.text === text), `client of node${i + 2}: ${JSON.stringify(rec.values)}`);
  }
  assert.equal(recs[0].count, 0, 'the sender does not get its own message');
});

cluster.test('SIGTERM: node3 leaves gracefully, and the others drop it at once', async () => {
  const node3 = cluster.nodes[2];
  const proc = node3.proc;
  await node3.kill('SIGTERM');
  assert.equal(proc.signalCode, null, 'node3 handled SIGTERM instead of dying of it');
  assert.equal(proc.exitCode, 0, 'node3 exited normally');
  assert.ok(node3.logs.some((l) => l.includes('leaving the cluster')), 'node3 says it leaves');
  // A graceful leave, not failure detection: the others log it as a leave.
  const leave = /member left: it (left the cluster|closed its connection to leave)/;
  for (const node of cluster.nodes.slice(0, 2)) {
    await waitUntil(`${node.name} to log node3's leave`, () =>
      node.logs.some((l) => leave.test(l) && l.includes('node3')),
    { timeoutMs: 10_000, intervalMs: 50 });
  }
});
