// Cluster-wide presence seen by the official socket.io-client: a socket tracked on one
// node gets `presence_state`; every socket in the topic's room, on every node, gets one
// `presence_diff` per change (a join, then a leave when a tracked socket disconnects).
// On both backends.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { connect, record, request, sleep, uniq, useCluster, waitUntil } from './cluster.mjs';

describe('presence events', () => {
  const cluster = useCluster({ size: 3 });

  test('presence_state on tracking, presence_diff on every node for a join and a leave', { timeout: 60_000 }, async () => {
    const [a, b, c] = cluster.nodes;
    const topic = uniq('lobby');
    const sockets = [];
    try {
      // Ada on node a, watched from node b.
      const ada = await connect(a);
      sockets.push(ada);
      const adaState = record(ada, 'presence_state');
      assert.deepEqual(await request(ada, 'presence_track', { topic, key: 'ada', meta: { device: 'phone' } }), { ok: true });
      await adaState.waitCount(1);
      const first = adaState.values[0];
      assert.equal(first.topic, topic);
      assert.deepEqual(Object.keys(first.state), ['ada']);
      assert.equal(first.state.ada[0].node, a.name);
      assert.deepEqual(first.state.ada[0].meta, { device: 'phone' });
      assert.equal(first.state.ada[0].socket, ada.id);

      // Bob on node b gets the state with Ada in it (from b's replica).
      const bob = await connect(b);
      sockets.push(bob);
      const bobState = record(bob, 'presence_state');
      const bobDiffs = record(bob, 'presence_diff');
      await waitUntil('ada listed on b', async () => {
        const list = await request(bob, 'presence_list', topic);
        return Array.isArray(list.ada);
      });
      await request(bob, 'presence_track', { topic, key: 'bob', meta: { device: 'laptop' } });
      await bobState.waitCount(1);
      assert.deepEqual(Object.keys(bobState.values[0].state).sort(), ['ada', 'bob']);

      // Carol on node c: her join reaches Ada (node a) and Bob (node b) as a diff.
      const adaDiffs = record(ada, 'presence_diff');
      const carol = await connect(c);
      sockets.push(carol);
      await request(carol, 'presence_track', { topic, key: 'carol', meta: {} });
      const joined = (rec) => rec.values.some((d) => d.topic === topic && d.joins.carol);
      await waitUntil('carol joined, seen on a', () => joined(adaDiffs));
      await waitUntil('carol joined, seen on b', () => joined(bobDiffs));
      const d = adaDiffs.values.find((v) => v.joins.carol);
      assert.deepEqual(d.leaves, {});
      assert.equal(d.joins.carol[0].node, c.name);
      assert.equal(d.joins.carol[0].socket, carol.id);

      // Carol disconnects: a leave everywhere, once per socket.
      const carolId = carol.id;
      carol.disconnect();
      const left = (rec) => rec.values.filter((v) => v.topic === topic && v.leaves.carol);
      await waitUntil('carol left, seen on a', () => left(adaDiffs).length > 0);
      await waitUntil('carol left, seen on b', () => left(bobDiffs).length > 0);
      // Once each, counted after longer than the announce interval (1 s): a late duplicate
      // of the join or of the leave (say, from a state exchange after an announce) would
      // have come by then.
      await sleep(1_500);
      const joins = (rec) => rec.values.filter((v) => v.topic === topic && v.joins.carol);
      for (const [who, rec] of [['ada', adaDiffs], ['bob', bobDiffs]]) {
        assert.equal(joins(rec).length, 1, `${who}: one join diff for carol`);
        assert.equal(left(rec).length, 1, `${who}: one leave diff per socket`);
        assert.equal(left(rec)[0].leaves.carol.length, 1, `${who}: one meta leaves`);
        assert.equal(left(rec)[0].leaves.carol[0].socket, carolId);
      }
      const list = await request(ada, 'presence_list', topic);
      assert.deepEqual(Object.keys(list).sort(), ['ada', 'bob']);
    } finally {
      for (const s of sockets) s.disconnect();
    }
  });
});
