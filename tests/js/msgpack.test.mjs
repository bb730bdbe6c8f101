// The same cluster with socketioxide's msgpack parser, driven by clients using
// socket.io-msgpack-parser: broadcast, acks and binary payloads across nodes.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import msgpackParser from 'socket.io-msgpack-parser';
import { record, request, uniq, useCluster } from './cluster.mjs';

const cluster = useCluster({ size: 3, parser: 'msgpack', parserModule: msgpackParser });

cluster.test('msgpack: broadcast from node 1 reaches the clients of all 3 nodes', async () => {
  const room = uniq('mp');
  const clients = await cluster.onePerNode();
  const outsider = await cluster.client(1);
  for (const s of clients) await request(s, 'join', room);
  const event = uniq('mp-ev');
  const recs = clients.map((s) => record(s, event));
  const outsiderRec = record(outsider, event);

  const data = { n: 7, list: [1, 'two', null], nested: { ok: true } };
  await request(clients[0], 'broadcast', { event, data, to: room });

  for (const rec of recs) await rec.waitCount(1);
  await cluster.settle([...clients, outsider]);
  for (const [i, rec] of recs.entries()) assert.deepEqual(rec.values, [data], `node ${i + 1}`);
  assert.equal(outsiderRec.count, 0, 'a socket outside the room must not receive');
});

cluster.test('msgpack: emit_with_ack collects the acks of all 3 nodes', async () => {
  const { clients, res } = await cluster.askEveryNode('mp-ack', 'mp?');
  assert.deepEqual(res.errors, []);
  const byId = new Map(res.acks.map((a) => [a.id, a.data]));
  assert.equal(byId.size, 3);
  for (const [i, s] of clients.entries()) {
    assert.deepEqual(byId.get(s.id), { node: i + 1, echo: 'mp?' });
  }
});

cluster.test('msgpack: binary payloads cross nodes intact', async () => {
  const room = uniq('mp-bin');
  const clients = await cluster.onePerNode();
  for (const s of clients) await request(s, 'join', room);
  const event = uniq('mp-bin-ev');
  const recs = clients.map((s) => record(s, event));
  const payload = randomBytes(2048);

  await request(clients[0], 'broadcast', { event, data: 'blob', binary: payload, to: room });

  for (const rec of recs) await rec.waitCount(1);
  for (const [i, rec] of recs.entries()) {
    const [data, bin] = rec.args[0];
    assert.equal(data, 'blob');
    assert.ok(Buffer.from(bin).equals(payload), `binary intact on node ${i + 1}`);
  }
});
