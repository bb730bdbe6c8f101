// Log in over HTTP on one node, connect with Socket.IO on another, log out on a third:
// the `sessions` example on a three-node cluster, driven by fetch and the official
// socket.io-client. Needs SESSIONS_NODE_BIN (the compiled `sessions` example).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { io } from 'socket.io-client';
import { BACKEND, Cluster, median, withTimeout } from './cluster.mjs';

const BIN = process.env.SESSIONS_NODE_BIN;
// Without the binary the suite is skipped, and says why; under CI that is a failure.
const SKIP = !BIN && 'SESSIONS_NODE_BIN is not set (build the `sessions` example, feature `sessions`)';
if (SKIP && process.env.CI) {
  throw new Error(`${SKIP}; CI is set, so the shared-sessions suite cannot be skipped`);
}
if (SKIP) console.log(`SKIPPED: ${SKIP}`);

/**
 * Opens a Socket.IO connection to `node` with `cookie`; resolves with
 * `{ socket, welcome }`, or rejects with the connect_error.
 */
async function open(node, cookie) {
  const socket = io(`${node.url}/`, {
    transports: ['websocket'],
    reconnection: false,
    forceNew: true,
    timeout: 5000,
    ...(cookie ? { extraHeaders: { cookie } } : {}),
  });
  const welcome = new Promise((resolve, reject) => {
    socket.once('welcome', resolve);
    socket.once('connect_error', reject);
  });
  try {
    return { socket, welcome: await withTimeout(welcome, 5000, `connection to ${node.name}`) };
  } catch (err) {
    socket.disconnect();
    throw err;
  }
}

/** The connect_error message of a connection that must be refused. */
async function refused(node, cookie) {
  try {
    const { socket } = await open(node, cookie);
    socket.disconnect();
    return null;
  } catch (err) {
    return err.message;
  }
}

describe(`shared login sessions (${BACKEND})`, { skip: SKIP }, () => {
  const cluster = new Cluster({ size: 3, node: { bin: BIN } });
  before(async () => cluster.start(), { timeout: 180_000 });
  after(async () => cluster.stop(), { timeout: 60_000 });

  test('log in on A, connect on B, log out on C, refused everywhere', { timeout: 60_000 }, async () => {
    try {
      const [a, b, c] = cluster.nodes;
      assert.match(await refused(b, undefined), /no session cookie/);

      const login = await fetch(`${a.url}/login?user=ada`, { method: 'POST' });
      assert.equal(login.status, 200);
      const cookie = login.headers.getSetCookie().map((h) => h.split(';')[0]).find((c) => c.startsWith('id='));
      assert.ok(cookie, 'the login sets the session cookie');

      // A log-in returns once every node holds the session: the very first connection
      // on B, made right after the response, is accepted (no retry).
      const { socket, welcome } = await open(b, cookie);
      assert.deepEqual(welcome, { user: 'ada', node: b.name });
      assert.deepEqual(await socket.timeout(5000).emitWithAck('whoami'), { user: 'ada', node: b.name });
      socket.disconnect();

      const me = await fetch(`${c.url}/me`, { headers: { cookie } });
      assert.equal(await me.text(), 'ada', 'C knows the user too');
      const logout = await fetch(`${c.url}/logout`, { method: 'POST', headers: { cookie } });
      assert.equal(logout.status, 200);

      // A log-out returns once every node dropped the session: the first connection
      // made afterwards on any node is refused (no retry).
      for (const node of [a, b, c]) {
        assert.match(await refused(node, cookie), /not logged in: no such session/, node.name);
      }
      assert.equal((await fetch(`${a.url}/me`, { headers: { cookie } })).status, 401);
    } catch (err) {
      cluster.failed = true;
      throw err;
    }
  });

  test('figures: log in on A, then a connection on B, accepted at once', { timeout: 60_000 }, async () => {
    const [a, b] = cluster.nodes;
    const times = [];
    for (let i = 0; i < 20; i++) {
      const started = performance.now();
      const login = await fetch(`${a.url}/login?user=u${i}`, { method: 'POST' });
      const cookie = login.headers.getSetCookie().map((h) => h.split(';')[0]).find((c) => c.startsWith('id='));
      const { socket, welcome } = await open(b, cookie);
      times.push(performance.now() - started);
      assert.equal(welcome.user, `u${i}`);
      socket.disconnect();
    }
    console.log(`[${BACKEND}] login on A -> Socket.IO connection on B accepted at once, 20 runs: median ${median(times).toFixed(1)} ms, max ${Math.max(...times).toFixed(1)} ms`);
  });
});
