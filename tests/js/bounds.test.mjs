// A web client can hurt only itself: whatever a client sends or answers is checked against
// the bounds of the wire between nodes on the node that holds it, and what cannot cross is
// refused for that one ack or emit. No link between nodes closes because of a client.
//
// socketioxide takes up to 10,000 binary attachments in one packet from a client; a node
// takes at most 4,096 in one payload from a peer.

import assert from 'node:assert/strict';
import * as parser from 'socket.io-parser';
import { BACKEND, record, request, uniq, useCluster } from './cluster.mjs';

/**
 * The client's own parser takes at most 10 attachments in a packet it receives: these
 * clients take as many as the server sends, so that what crosses (or not) is the cluster's
 * doing.
 */
const lenient = {
  protocol: parser.protocol,
  Encoder: parser.Encoder,
  Decoder: class extends parser.Decoder {
    constructor(opts) {
      super({ ...(typeof opts === 'object' ? opts : {}), maxAttachments: 10_000 });
    }
  },
};

const cluster = useCluster({ size: 3, parserModule: lenient });
const gossip = BACKEND === 'gossip';

/** More binary attachments than a node takes from a peer in one payload. */
const TOO_MANY = 4097;
const manyEmptyBuffers = () => Array.from({ length: TOO_MANY }, () => Buffer.alloc(0));

/** Log lines of every node, from now on, that tell of a link between nodes closed. */
function watchLinks() {
  return cluster.nodes.map((node) => node.watchLogs(/closing mesh connection|malformed frame/));
}

function assertNoLinkClosed(watched) {
  for (const [i, lines] of watched.entries()) {
    assert.deepEqual(lines, [], `node${i + 1} closed no link to a peer`);
  }
}

async function membersOfEveryNode() {
  return Promise.all(cluster.nodes.map(async (n) => n.members()));
}

cluster.test('an ack with more binary attachments than a node takes is an error for that socket alone, and every honest answer arrives', async () => {
  const watched = watchLinks();
  const room = uniq('bad-ack');
  const honest = await cluster.onePerNode();
  // The client that answers with too many attachments is on node 3; node 1 asks.
  const bad = await cluster.client(2);
  for (const s of [...honest, bad]) await request(s, 'join', room);
  for (const [i, s] of honest.entries()) {
    s.on('ask', (asked, cb) => cb({ node: i + 1, echo: asked }));
  }
  bad.on('ask', (_asked, cb) => cb(manyEmptyBuffers()));

  for (let round = 0; round < 3; round++) {
    const res = await request(honest[0], 'emit_with_ack', {
      event: 'ask',
      data: round,
      to: room,
      timeout_ms: 3000,
    });
    const answered = res.acks.filter((a) => a.id !== bad.id);
    assert.deepEqual(
      answered.map((a) => a.data).sort((x, y) => x.node - y.node),
      [1, 2, 3].map((node) => ({ node, echo: round })),
      `round ${round}: every honest answer, node 3's included (${JSON.stringify(res)})`,
    );
    if (gossip) {
      assert.deepEqual(res.acks.length, 3, `round ${round}: the bad answer is no ack`);
      assert.equal(res.errors.length, 1, `round ${round}: ${JSON.stringify(res.errors)}`);
      assert.equal(res.errors[0].id, bad.id);
      assert.match(res.errors[0].error, /4097 binary attachments.*4096/);
    } else {
      // Redis carries the answer as it is (no bound between nodes there): it arrives.
      assert.equal(res.acks.length + res.errors.length, 4, JSON.stringify(res));
    }
  }
  assertNoLinkClosed(watched);
  if (gossip) assert.deepEqual(await membersOfEveryNode(), [2, 2, 2]);
}, { timeout: 120_000 });

cluster.test('a relayed event with more binary attachments than a node takes is refused for that emit; other traffic flows', async () => {
  const watched = watchLinks();
  const room = uniq('bad-relay');
  const clients = await cluster.onePerNode();
  for (const s of clients) await request(s, 'join', room);
  const big = uniq('big');
  const small = uniq('small');
  const bigRecs = clients.map((s) => record(s, big));
  const smallRecs = clients.map((s) => record(s, small));

  const relay = request(clients[0], 'broadcast', {
    event: big,
    data: 'many',
    to: room,
    binaries: manyEmptyBuffers(),
  });
  if (gossip) {
    await assert.rejects(relay, /4097 binary attachments.*4096/);
  } else {
    await relay;
  }
  await request(clients[1], 'broadcast', { event: small, data: 'after', to: room });
  for (const rec of smallRecs) await rec.waitCount(1);
  await cluster.settle(clients);
  for (const [i, rec] of smallRecs.entries()) {
    assert.deepEqual(rec.values, ['after'], `client of node ${i + 1}`);
  }
  for (const [i, rec] of bigRecs.entries()) {
    // Refused for the whole emit (gossip); carried everywhere (Redis).
    assert.equal(rec.count, gossip ? 0 : 1, `client of node ${i + 1}`);
    if (!gossip) assert.equal(rec.args[0][1].length, TOO_MANY);
  }
  assertNoLinkClosed(watched);
  if (gossip) assert.deepEqual(await membersOfEveryNode(), [2, 2, 2]);
}, { timeout: 120_000 });
