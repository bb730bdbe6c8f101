// Process-level security: a node started with a wrong secret never joins the cluster
// and cannot exchange broadcasts with it.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { BACKEND, SETTLE_MS, record, request, sleep, uniq, useCluster } from './cluster.mjs';

const cluster = useCluster({ size: 3 });
const gossip = BACKEND === 'gossip';

cluster.test('a node with a wrong secret never becomes a member', async (t) => {
  if (!gossip) {
    t.skip(`the shared secret belongs to the gossip backend (E2E_BACKEND=${BACKEND})`);
    return;
  }
  const intruder = await cluster.addNode({
    name: 'intruder',
    secret: randomBytes(32).toString('hex'),
  });

  // Over a bounded window (many gossip intervals and peer timeouts) the members stay 2.
  const members = cluster.nodes.slice(0, 3);
  const deadline = Date.now() + 6000;
  for (let round = 0; round < 100 && Date.now() < deadline; round++) {
    for (const node of members) {
      assert.equal(await node.members(), 2, `${node.name} must keep exactly 2 members`);
    }
    await sleep(250);
  }

  // Broadcasts do not cross the trust boundary, in either direction.
  const room = uniq('sec');
  const inside = await cluster.onePerNode();
  const outside = await cluster.client(3);
  for (const s of [...inside, outside]) await request(s, 'join', room);

  const event = uniq('sec-ev');
  const insideRecs = inside.map((s) => record(s, event));
  const outsideRec = record(outside, event);
  await request(inside[0], 'broadcast', { event, data: 'members only', to: room });
  for (const rec of insideRecs) await rec.waitCount(1);
  await sleep(SETTLE_MS * 2);
  assert.equal(outsideRec.count, 0, 'the intruder client must not get the broadcast');

  await request(outside, 'broadcast', { event, data: 'intrusion', to: room });
  await outsideRec.waitCount(1); // its own, local one
  await sleep(SETTLE_MS * 2);
  for (const rec of insideRecs) assert.deepEqual(rec.values, ['members only']);

  // The intruder cannot list the sockets of the cluster either (an error is fine too).
  const listed = await request(outside, 'fetch_sockets', { to: room, rooms: false }).catch(
    (err) => ({ sockets: [], err }),
  );
  const insideIds = new Set(inside.map((s) => s.id));
  assert.ok(!listed.sockets.some((s) => insideIds.has(s.id)), 'no member socket leaks');
  assert.equal(intruder.alive, true);
}, { timeout: 120_000 });
