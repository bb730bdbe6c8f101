// Fault tolerance: a node is SIGKILLed; the survivors keep answering quickly, and the
// node rejoins the cluster when it is restarted.

import assert from 'node:assert/strict';
import {
  BACKEND,
  REQUEST_TIMEOUT_MS,
  SETTLE_MS,
  record,
  request,
  sleep,
  uniq,
  useCluster,
  waitUntil,
} from './cluster.mjs';

const cluster = useCluster({ size: 3 });

cluster.test('SIGKILL of node 3: fetch_sockets answers fast, node 3 rejoins after a restart', async () => {
  const room = uniq('fault');
  const clients = await cluster.onePerNode();
  for (const s of clients) await request(s, 'join', room);
  const [c1, c2, c3] = clients;
  const initial = await request(c1, 'fetch_sockets', { to: room, rooms: false });
  assert.equal(initial.sockets.length, 3);

  // Kill node 3 without any chance to say goodbye, then ask node 1 at once.
  const node3 = cluster.nodes[2];
  await node3.kill('SIGKILL');
  const t0 = process.hrtime.bigint();
  const survivors = await request(c1, 'fetch_sockets', { to: room, rooms: false }, 2 * REQUEST_TIMEOUT_MS);
  const tookMs = Number(process.hrtime.bigint() - t0) / 1e6;
  console.log(`fetch_sockets after SIGKILL took ${Math.round(tookMs)} ms (${BACKEND} backend)`);

  const ids = survivors.sockets.map((s) => s.id).sort();
  assert.deepEqual(ids, [c1.id, c2.id].sort(), 'the sockets of nodes 1 and 2');
  assert.ok(!ids.includes(c3.id));
  if (BACKEND === 'gossip') {
    assert.ok(
      tookMs < 4000,
      `fetch_sockets must not wait for the request timeout (${REQUEST_TIMEOUT_MS} ms): took ${tookMs} ms`,
    );
  }
  // With Redis a dead node costs the request timeout: Redis cannot tell who is gone.

  // The survivors notice the death.
  await cluster.waitMembers(cluster.nodes.slice(0, 2), 1);

  // Restart node 3 with the same ports and secret: it becomes a member again.
  await cluster.restart(node3);
  await cluster.waitMembers();

  const fresh = await cluster.client(2);
  await request(fresh, 'join', room);
  // The mesh may need a moment after the membership: wait until node 1 sees the socket.
  await waitUntil('node 1 to list the socket of the restarted node 3', async () => {
    const { sockets } = await request(c1, 'fetch_sockets', { to: room, rooms: false });
    return sockets.some((s) => s.id === fresh.id);
  });

  const event = uniq('after-restart');
  const recs = [c1, c2, fresh].map((s) => record(s, event));
  await request(c1, 'broadcast', { event, data: 'welcome back', to: room });
  for (const rec of recs) await rec.waitCount(1);
  await sleep(SETTLE_MS);
  for (const rec of recs) assert.deepEqual(rec.values, ['welcome back']);
}, { timeout: 120_000 });
