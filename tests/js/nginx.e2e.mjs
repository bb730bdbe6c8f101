// A real nginx in front of three `cluster_node` processes, configured by the file users
// copy (examples/nginx/nginx.conf) with only its addresses replaced. Polling-only and
// WebSocket-only clients connect through it; each reports the node it landed on, and a
// broadcast from behind each node reaches every client behind every node.
//
// Started by `tests/e2e_js.rs` with CLUSTER_NODE_BIN set; NGINX names the nginx binary
// (default `nginx`).
//
// nginx keys its sticky sessions on the client address (`hash $remote_addr consistent`),
// so clients connect from different loopback addresses (127.0.1.x for polling, 127.0.2.x
// for WebSocket) until every node has clients of both transports.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  connect,
  freePort,
  record,
  request,
  uniq,
  useCluster,
  waitUntil,
  withTimeout,
} from './cluster.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const CONF = path.join(here, '..', '..', 'examples', 'nginx', 'nginx.conf');
/** At most this many client addresses are tried per transport. */
const MAX_CLIENTS = 40;

const cluster = useCluster({ size: 3 });

/**
 * The shipped configuration with its node addresses replaced by the cluster's and its
 * listening address by `port`. Every address must be found exactly once.
 */
function nginxConf(nodes, port) {
  assert.equal(nodes.length, 3, 'three nodes behind nginx');
  let conf = fs.readFileSync(CONF, 'utf8');
  const replace = (from, to) => {
    const parts = conf.split(from);
    assert.equal(parts.length, 2, `${CONF} must contain ${from} exactly once`);
    conf = parts.join(to);
  };
  nodes.forEach((node, i) => replace(`server 127.0.0.1:300${i + 1};`, `server 127.0.0.1:${node.httpPort};`));
  replace('listen 127.0.0.1:8080;', `listen 127.0.0.1:${port};`);
  return conf;
}

/** nginx with its pid file, logs and temporary files in a directory of its own. */
class Nginx {
  async start(nodes) {
    for (let attempt = 0; attempt < 3; attempt++) {
      this.port = await freePort('tcp');
      this.prefix = fs.mkdtempSync(path.join(os.tmpdir(), 'sio-nginx-'));
      // Run as root, nginx's workers run as an unprivileged user that needs the temp paths.
      fs.chmodSync(this.prefix, 0o755);
      const conf = path.join(this.prefix, 'nginx.conf');
      fs.writeFileSync(conf, nginxConf(nodes, this.port));
      this.stderr = '';
      this.proc = spawn(
        process.env.NGINX ?? 'nginx',
        ['-p', this.prefix, '-c', conf, '-e', 'stderr', '-g', 'daemon off;'],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      this.proc.stderr.on('data', (d) => {
        this.stderr += d;
      });
      try {
        await waitUntil(`nginx to listen on ${this.port}`, () => this.listening(), {
          timeoutMs: 10_000,
          intervalMs: 100,
        });
        return;
      } catch (err) {
        console.error(`nginx did not start (attempt ${attempt + 1}): ${err.message}\n${this.logs()}`);
        await this.stop();
      }
    }
    throw new Error('nginx did not start');
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  listening() {
    if (this.proc.exitCode !== null) throw new Error(`nginx exited: ${this.logs()}`);
    return new Promise((resolve) => {
      const sock = net.connect(this.port, '127.0.0.1');
      sock.once('connect', () => {
        sock.destroy();
        resolve(true);
      });
      sock.once('error', () => resolve(false));
    });
  }

  logs() {
    const error = path.join(this.prefix ?? '', 'error.log');
    return `${this.stderr}${fs.existsSync(error) ? fs.readFileSync(error, 'utf8') : ''}`;
  }

  accessLog() {
    const file = path.join(this.prefix ?? '', 'access.log');
    return fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
  }

  /** Fast shutdown (SIGTERM: the master stops its workers), SIGKILL if it hangs. */
  async stop() {
    const proc = this.proc;
    if (proc && proc.exitCode === null && proc.signalCode === null) {
      const exited = new Promise((resolve) => proc.once('exit', resolve));
      proc.kill('SIGTERM');
      try {
        await withTimeout(exited, 10_000, 'nginx to stop');
      } catch {
        proc.kill('SIGKILL');
      }
    }
    if (this.prefix) fs.rmSync(this.prefix, { recursive: true, force: true });
  }
}

const nginx = new Nginx();
const agents = [];
after(async () => {
  for (const agent of agents) agent.destroy();
  if (cluster.failed) console.error(`===== nginx =====\n${nginx.logs()}\n${nginx.accessLog()}`);
  await nginx.stop();
}, { timeout: 30_000 });

/** A client through nginx, from the local address `from`, with only `transport`. */
async function viaNginx(transport, from) {
  const options = { transports: [transport] };
  if (transport === 'polling') {
    // Long-polling requests go through the http agent: bind its sockets to `from`.
    const agent = new http.Agent({ keepAlive: true, localAddress: from });
    agents.push(agent);
    options.agent = agent;
  } else {
    options.localAddress = from;
  }
  const socket = await connect({ url: nginx.url, name: `nginx (from ${from})` }, options);
  cluster.clients.add(socket);
  return socket;
}

/**
 * Clients of `transport` from successive local addresses until every node has one;
 * returns them, each with the node it landed on.
 */
async function onEveryNode(transport, subnet) {
  const clients = [];
  const nodes = new Set();
  for (let i = 1; i <= MAX_CLIENTS && nodes.size < cluster.size; i++) {
    const socket = await viaNginx(transport, `127.0.${subnet}.${i}`);
    const { node } = await request(socket, 'whoami');
    assert.equal(socket.io.engine.transport.name, transport);
    clients.push({ socket, node, transport });
    nodes.add(node);
  }
  assert.equal(
    nodes.size,
    cluster.size,
    `${transport} clients from ${MAX_CLIENTS} addresses reached only ${[...nodes]}`,
  );
  return clients;
}

cluster.test('polling and WebSocket clients through nginx get broadcasts from every node', async () => {
  await nginx.start(cluster.nodes);
  const clients = [...(await onEveryNode('polling', 1)), ...(await onEveryNode('websocket', 2))];
  const event = uniq('via-nginx');
  const recs = clients.map((c) => record(c.socket, event));

  // One broadcast from a client behind each node, alternating transports.
  const senders = cluster.nodes.map((n, i) =>
    clients.find((c) => c.node === n.name && c.transport === (i % 2 ? 'websocket' : 'polling')),
  );
  for (const sender of senders) {
    assert.ok(sender, 'a sender behind every node');
    await request(sender.socket, 'broadcast', { event, data: sender.node });
  }

  for (const rec of recs) await rec.waitCount(senders.length);
  // No duplicate is still on its way: markers from every node arrived after.
  await cluster.settle(clients.map((c) => c.socket));
  const expected = senders.map((s) => s.node).sort();
  for (const [i, rec] of recs.entries()) {
    const { node, transport } = clients[i];
    assert.deepEqual([...rec.values].sort(), expected, `${transport} client on ${node}`);
  }
  // The polling clients stayed on their node the whole time (sticky sessions): a request
  // landing on another node would have ended the session.
  for (const { socket, node, transport } of clients) {
    assert.ok(socket.connected, `${transport} client on ${node} still connected`);
    assert.equal((await request(socket, 'whoami')).node, node);
  }
});
