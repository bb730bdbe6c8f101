// Test helpers of the end-to-end suite: start a cluster of `cluster_node` processes (the
// test server in tests/server, built as an example) on free loopback ports, connect
// official socket.io clients to them, and wait for things with bounded timeouts.
//
// Environment:
//   CLUSTER_NODE_BIN  path of the compiled `cluster_node` test server (required)
//   E2E_BACKEND       `gossip` (default) or `redis`
//   E2E_REDIS_URL     redis URL, with E2E_BACKEND=redis
//   E2E_RUST_LOG      RUST_LOG of the server processes (default `info`)
//   E2E_VERBOSE=1     stream the server logs to stderr while the tests run
//   E2E_LOG_DIR       also append the full log of every server process to files there

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { io } from 'socket.io-client';

export { sleep };

/** The backend under test, see `nodeEnv`. */
export const BACKEND = process.env.E2E_BACKEND ?? 'gossip';

/**
 * How long the servers wait for a cluster request (SOCKETIO_CLUSTER_REQUEST_TIMEOUT_MS),
 * unless a node's spec sets `requestTimeoutMs`. Far longer than any bound of the tests: a
 * request that waited for it (instead of ending because every answer came, or because a
 * dead node was dropped) fails its test instead of passing a little late.
 */
export const REQUEST_TIMEOUT_MS = 30_000;

/** How long a silent mesh connection lives (SOCKETIO_CLUSTER_PEER_TIMEOUT_MS). */
export const PEER_TIMEOUT_MS = 1500;

const READY_TIMEOUT_MS = 30_000;
const MEMBERS_TIMEOUT_MS = 20_000;
const CONNECT_TIMEOUT_MS = 10_000;
const LOG_TAIL_LINES = 300;

// ---------------------------------------------------------------------------
// Generic bounded waits
// ---------------------------------------------------------------------------

/** Rejects with `what` if `promise` does not settle within `ms`. */
export async function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Polls `check` (sync or async) every `intervalMs` until it returns a truthy value,
 * at most `timeoutMs` long. Returns that value, or throws with the last observation.
 */
export async function waitUntil(what, check, { timeoutMs = 10_000, intervalMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  let lastErr;
  for (let attempt = 0; attempt < 100_000; attempt++) {
    try {
      last = await check();
      lastErr = undefined;
      if (last) return last;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() >= deadline) break;
    await sleep(intervalMs);
  }
  const detail = lastErr ? `last error: ${lastErr.message}` : `last value: ${JSON.stringify(last)}`;
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (${detail})`);
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

const handedOut = new Set();

function bindTcp() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function bindUdp() {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket('udp4');
    sock.once('error', reject);
    sock.bind(0, '127.0.0.1', () => {
      const { port } = sock.address();
      sock.close(() => resolve(port));
    });
  });
}

/** A loopback port that was free a moment ago (`tcp` or `udp`), never handed out twice. */
export async function freePort(kind) {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = kind === 'udp' ? await bindUdp() : await bindTcp();
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error(`no free ${kind} port found`);
}

async function freshPorts() {
  return {
    httpPort: await freePort('tcp'),
    gossipPort: await freePort('udp'),
    meshPort: await freePort('udp'),
  };
}

// ---------------------------------------------------------------------------
// Server environment: the ONE place that knows how a node is configured.
// ---------------------------------------------------------------------------

/**
 * Environment of one server process.
 *
 * `spec`: { name, httpPort, gossipPort, meshPort, seeds: [ports], secret, clusterId, parser,
 *   requestTimeoutMs }
 *
 * With E2E_BACKEND=gossip (default) the node joins the gossip cluster of `clusterId`
 * authenticated by `secret`; with E2E_BACKEND=redis it talks through the redis
 * server at E2E_REDIS_URL instead and the gossip settings are not used.
 */
export function nodeEnv(spec) {
  const env = {};
  // Start from the runner's environment minus anything that configures a node.
  for (const [key, value] of Object.entries(process.env)) {
    if (key.startsWith('SOCKETIO_CLUSTER_')) continue;
    if (['PORT', 'BIND', 'PARSER', 'RUST_LOG'].includes(key)) continue;
    env[key] = value;
  }
  env.PORT = String(spec.httpPort);
  env.RUST_LOG = process.env.E2E_RUST_LOG ?? 'info';
  env.SOCKETIO_CLUSTER_NODE_NAME = spec.name;
  if (spec.parser) env.PARSER = spec.parser;
  // socketioxide drops the packets that do not fit in a socket's buffer (default 128)
  // when a client reads slower than it is sent to. A broadcast received from another
  // node cannot report that to its sender, so the bursts of the order test (1000 events)
  // need a buffer that holds them.
  env.MAX_BUFFER_SIZE = '4096';
  // Settings of another server binary (`spec.bin`): a function of the spec.
  Object.assign(env, spec.env?.(spec) ?? {});

  switch (BACKEND) {
    case 'gossip':
      Object.assign(env, {
        SOCKETIO_CLUSTER_ID: spec.clusterId,
        SOCKETIO_CLUSTER_GOSSIP_ADDR: `127.0.0.1:${spec.gossipPort}`,
        SOCKETIO_CLUSTER_MESH_ADDR: `127.0.0.1:${spec.meshPort}`,
        SOCKETIO_CLUSTER_SEEDS: spec.seeds.map((p) => `127.0.0.1:${p}`).join(','),
        SOCKETIO_CLUSTER_SECRET: spec.secret,
        SOCKETIO_CLUSTER_GOSSIP_INTERVAL_MS: '100',
        SOCKETIO_CLUSTER_PEER_TIMEOUT_MS: String(PEER_TIMEOUT_MS),
        SOCKETIO_CLUSTER_REQUEST_TIMEOUT_MS: String(spec.requestTimeoutMs ?? REQUEST_TIMEOUT_MS),
      });
      break;
    case 'redis': {
      const url = process.env.E2E_REDIS_URL;
      if (!url) throw new Error('E2E_BACKEND=redis needs E2E_REDIS_URL');
      env.SOCKETIO_CLUSTER_BACKEND = url;
      env.SOCKETIO_CLUSTER_REQUEST_TIMEOUT_MS = String(spec.requestTimeoutMs ?? REQUEST_TIMEOUT_MS);
      break;
    }
    default:
      throw new Error(`unknown E2E_BACKEND ${JSON.stringify(BACKEND)}`);
  }
  return env;
}

// ---------------------------------------------------------------------------
// Server processes
// ---------------------------------------------------------------------------

/** Every process started by this test file, killed on exit whatever happens. */
const allProcs = new Set();
process.on('exit', () => {
  for (const proc of allProcs) {
    try {
      proc.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

function nodeBin() {
  const bin = process.env.CLUSTER_NODE_BIN;
  if (!bin) {
    throw new Error('CLUSTER_NODE_BIN must point to the cluster_node example binary');
  }
  return bin;
}

/** One `cluster_node` process. */
export class Node {
  constructor(spec) {
    this.spec = spec;
    this.name = spec.name;
    this.proc = null;
    this.logs = [];
    this.watchers = [];
    this.ctl = null;
    if (process.env.E2E_LOG_DIR) fs.mkdirSync(process.env.E2E_LOG_DIR, { recursive: true });
  }

  get httpPort() {
    return this.spec.httpPort;
  }

  get url() {
    return `http://127.0.0.1:${this.spec.httpPort}`;
  }

  /**
   * Resolves to whether the process is stopped (a SIGSTOP took effect: a signal is
   * delivered, not acted on, when `kill` returns), waiting at most 5 s. Reads its state
   * in /proc (Linux); true at once elsewhere.
   */
  async waitStopped() {
    if (!fs.existsSync('/proc/self/stat')) return true;
    for (let i = 0; i < 500; i += 1) {
      try {
        const stat = fs.readFileSync(`/proc/${this.proc.pid}/stat`, 'utf8');
        if (stat.slice(stat.lastIndexOf(') ') + 2).startsWith('T')) return true;
      } catch {
        return false;
      }
      await sleep(10);
    }
    return false;
  }

  get alive() {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /**
   * Collects, from now on, this node's log lines that match `pattern` (a regexp): the
   * returned array fills as they are written.
   */
  watchLogs(pattern) {
    const seen = [];
    this.watchers.push({ pattern, seen });
    return seen;
  }

  log(line) {
    this.logs.push(line);
    for (const { pattern, seen } of this.watchers) if (pattern.test(line)) seen.push(line);
    if (this.logs.length > LOG_TAIL_LINES) this.logs.shift();
    if (process.env.E2E_VERBOSE === '1') process.stderr.write(`[${this.name}] ${line}\n`);
    const dir = process.env.E2E_LOG_DIR;
    if (dir) {
      const file = path.join(dir, `${this.spec.clusterId}-${this.name}.log`);
      fs.appendFileSync(file, `${line}\n`);
    }
  }

  /** Spawns the process and resolves once it printed `READY <port>` (or `spec.ready`). */
  start() {
    const proc = spawn(this.spec.bin ?? nodeBin(), [], {
      env: nodeEnv(this.spec),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    allProcs.add(proc);
    proc.once('exit', () => allProcs.delete(proc));

    const lines = (stream, prefix, onLine) => {
      let buf = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk) => {
        buf += chunk;
        let idx;
        while ((idx = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, idx);
          buf = buf.slice(idx + 1);
          this.log(`${prefix}${line}`);
          onLine?.(line);
        }
      });
    };

    const ready = new Promise((resolve, reject) => {
      lines(proc.stdout, 'stdout: ', (line) => {
        const m = (this.spec.ready ?? /^READY (\d+)$/).exec(line.trim());
        if (m) resolve(Number(m[1]));
      });
      lines(proc.stderr, '');
      proc.once('error', reject);
      proc.once('exit', (code, signal) =>
        reject(new Error(`${this.name} exited before READY (code ${code}, signal ${signal})`)),
      );
    });
    return withTimeout(ready, READY_TIMEOUT_MS, `${this.name} to print READY`).then((port) => {
      if (port !== this.spec.httpPort) {
        throw new Error(`${this.name} READY on ${port}, expected ${this.spec.httpPort}`);
      }
    });
  }

  /** Kills the process with `signal` and waits (bounded) until it is gone. */
  async kill(signal = 'SIGKILL') {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((resolve) => proc.once('exit', resolve));
    proc.kill(signal);
    try {
      await withTimeout(exited, 5000, `${this.name} to exit after ${signal}`);
    } catch {
      proc.kill('SIGKILL');
      await withTimeout(exited, 5000, `${this.name} to exit after SIGKILL`);
    }
  }

  /** Graceful stop: SIGTERM, SIGKILL after a few seconds. */
  async stop() {
    this.ctl?.disconnect();
    this.ctl = null;
    await this.kill('SIGTERM');
  }

  /** The control client of this node (on `/admin`), connected on demand. */
  async control() {
    if (!this.ctl || !this.ctl.connected) {
      this.ctl?.disconnect();
      this.ctl = await connect(this, { ns: '/admin', parser: this.spec.parserModule });
    }
    return this.ctl;
  }

  /** Number of other live nodes this node sees. */
  async members() {
    if (this.spec.bin) {
      // Another example binary: it answers `GET /members` instead of the /admin events.
      const res = await fetch(`${this.url}/members`);
      return (await res.json()).count;
    }
    const res = await request(await this.control(), 'members');
    return res.count;
  }
}

/**
 * A set of nodes sharing one random cluster id and secret, seeded by the first node.
 *
 * options: { size = 3, parser: 'msgpack' | undefined, parserModule: socket.io client parser,
 *   node: spec fields of every node, to run another server binary: `bin` (its path; such a
 *   binary must serve `GET /members` for `waitMembers`), `ready` (a regexp of the stdout
 *   line telling it listens, capturing the port), `env` (a function of the node's spec
 *   returning more variables) }
 */
export class Cluster {
  constructor({ size = 3, parser, parserModule, node = {} } = {}) {
    this.size = size;
    this.nodeSpec = node;
    this.parser = parser;
    this.parserModule = parserModule;
    this.clusterId = `e2e-${randomBytes(6).toString('hex')}`;
    this.secret = randomBytes(32).toString('hex');
    this.nodes = [];
    this.clients = new Set();
    this.failed = false;
  }

  /** Starts the nodes one after the other, then waits for the full membership. */
  async start() {
    try {
      for (let i = 0; i < this.size; i++) {
        await this.addNode();
      }
      await this.waitMembers();
    } catch (err) {
      this.failed = true;
      throw err;
    }
  }

  get seedPort() {
    return this.nodes[0].spec.gossipPort;
  }

  /**
   * Starts one more node. `overrides` change its spec (e.g. a wrong `secret`). A node
   * that cannot start (typically a port taken in the meantime) is retried with new ports.
   */
  async addNode(overrides = {}) {
    const name = overrides.name ?? `node${this.nodes.length + 1}`;
    let lastErr;
    for (let attempt = 0; attempt < 3; attempt++) {
      const ports = await freshPorts();
      const spec = {
        name,
        ...ports,
        // The first node seeds itself, every other node is seeded by the first one.
        seeds: [this.nodes.length === 0 ? ports.gossipPort : this.seedPort],
        secret: this.secret,
        clusterId: this.clusterId,
        parser: this.parser,
        parserModule: this.parserModule,
        ...this.nodeSpec,
        ...overrides,
      };
      const node = new Node(spec);
      try {
        await node.start();
        this.nodes.push(node);
        return node;
      } catch (err) {
        lastErr = err;
        await node.kill();
        console.error(`${name} failed to start (attempt ${attempt + 1}): ${err.message}`);
        console.error(node.logs.slice(-30).join('\n'));
      }
    }
    throw lastErr;
  }

  /** Restarts a stopped/killed node with the very same spec (ports, secret, ...). */
  async restart(node) {
    await node.kill();
    node.ctl?.disconnect();
    node.ctl = null;
    node.log('---- restart ----');
    await node.start();
  }

  /** Waits until every listed node sees `expected` other members. */
  async waitMembers(nodes = this.nodes, expected = nodes.length - 1) {
    // Redis keeps no membership view: a node is in once it is READY (subscribed).
    if (BACKEND === 'redis') return;
    for (const node of nodes) {
      await waitUntil(
        `${node.name} to see ${expected} members`,
        async () => (await node.members()) === expected,
        { timeoutMs: MEMBERS_TIMEOUT_MS, intervalMs: 200 },
      );
    }
  }

  /** A socket.io client connected to `nodes[index]`, closed by `closeClients`/`stop`. */
  async client(index, { ns = '/' } = {}) {
    const socket = await connect(this.nodes[index], { ns, parser: this.parserModule });
    this.clients.add(socket);
    return socket;
  }

  /** One client per node of the initial `size`, in node order. */
  async onePerNode(opts) {
    return Promise.all(Array.from({ length: this.size }, (_, i) => this.client(i, opts)));
  }

  /**
   * Puts one client per node (`onePerNode`) in a fresh room named after `prefix`; each
   * answers "ask" with `{ node, echo }` (its node number from 1, the data asked). Then the
   * client of node 1 asks the room with emit_with_ack (timeout 3 s). Resolves with the
   * clients and the answer of that request.
   */
  async askEveryNode(prefix, data) {
    const room = uniq(prefix);
    const clients = await this.onePerNode();
    for (const [i, s] of clients.entries()) {
      await request(s, 'join', room);
      s.on('ask', (asked, cb) => cb({ node: i + 1, echo: asked }));
    }
    const res = await request(clients[0], 'emit_with_ack', {
      event: 'ask',
      data,
      to: room,
      timeout_ms: 3000,
    });
    return { clients, res };
  }

  /**
   * Resolves once nothing sent so far can still reach `sockets` (clients of namespace
   * `ns`): they join a room of their own, a client on every node broadcasts a marker to
   * it, and each socket waits for every marker. Two emits from one node reach a client in
   * the order they were made, so anything a node sent before its marker has arrived by
   * then, however late; a test then asserts on what its records hold. Better than
   * watching for a while, which lets a late packet pass.
   */
  async settle(sockets, { ns = '/' } = {}) {
    const room = uniq('marker-room');
    const event = uniq('marker');
    const recs = sockets.map((s) => record(s, event));
    for (const s of sockets) await request(s, 'join', room);
    const senders = await this.onePerNode({ ns });
    for (const s of senders) await request(s, 'broadcast', { event, data: 1, to: room });
    for (const rec of recs) await rec.waitCount(senders.length);
    for (const s of senders) {
      s.disconnect();
      this.clients.delete(s);
    }
  }

  /** Disconnects every client created with `client`. */
  closeClients() {
    for (const socket of this.clients) socket.disconnect();
    this.clients.clear();
  }

  /** Stops everything; prints the server logs if a test failed. */
  async stop() {
    this.closeClients();
    if (this.failed) this.dumpLogs();
    await Promise.allSettled(this.nodes.map((n) => n.stop()));
  }

  dumpLogs() {
    for (const node of this.nodes) {
      console.error(`\n===== last ${node.logs.length} log lines of ${node.name} =====`);
      console.error(node.logs.join('\n'));
    }
  }

  /**
   * Declares a test whose failure marks the cluster as failed (so the server logs are
   * printed when it stops) and whose clients are closed at the end.
   */
  test(name, fn, { timeout = 60_000 } = {}) {
    test(name, { timeout }, async (t) => {
      try {
        await fn(t);
      } catch (err) {
        this.failed = true;
        throw err;
      } finally {
        this.closeClients();
      }
    });
  }
}

/**
 * The cluster of a test file: started before its first test, stopped after its last.
 * `options` as for `Cluster`.
 */
export function useCluster(options) {
  const cluster = new Cluster(options);
  before(async () => {
    await cluster.start();
  }, { timeout: 180_000 });
  after(async () => {
    await cluster.stop();
  }, { timeout: 60_000 });
  return cluster;
}

/**
 * A cluster of one of the examples users copy (`bin`, configured by `BIND` and the
 * `SOCKETIO_CLUSTER_*` variables) for a test file: `size` processes started before its
 * first test, stopped after its last. `ready` matches the stdout line that tells a
 * process listens, capturing the port. Such an example has no `members` event: its tests
 * wait for the cluster through what it delivers.
 */
export function useExampleCluster({ bin, ready, size = 3 }) {
  const cluster = new Cluster({
    size,
    node: {
      bin,
      ready,
      env: (spec) => ({ BIND: `127.0.0.1:${spec.httpPort}`, NO_COLOR: '1' }),
    },
  });
  before(async () => {
    if (!bin) throw new Error('the example binary is not set');
    for (let i = 0; i < size; i++) await cluster.addNode();
  }, { timeout: 120_000 });
  after(async () => {
    await cluster.stop();
  }, { timeout: 60_000 });
  return cluster;
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/**
 * Connects an official socket.io client (websocket only, no reconnection) to `node`
 * (anything with a `url` and a `name`). Other `options` go to the client as they are.
 */
export async function connect(node, { ns = '/', parser, ...options } = {}) {
  const socket = io(`${node.url}${ns}`, {
    transports: ['websocket'],
    reconnection: false,
    forceNew: true,
    timeout: CONNECT_TIMEOUT_MS,
    ...(parser ? { parser } : {}),
    ...options,
  });
  const connected = new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', reject);
  });
  try {
    await withTimeout(connected, CONNECT_TIMEOUT_MS, `connect to ${node.name}${ns}`);
  } catch (err) {
    socket.disconnect();
    throw err;
  }
  return socket;
}

/** Emits `event` with an ack and resolves with the answer; `{error}` answers throw. */
export async function request(socket, event, payload, timeoutMs = 15_000) {
  const args = payload === undefined ? [] : [payload];
  let res;
  try {
    res = await socket.timeout(timeoutMs).emitWithAck(event, ...args);
  } catch (err) {
    throw new Error(`no answer to "${event}" from ${socket.io.uri} (socket ${socket.id}): ${err.message}`);
  }
  if (res && typeof res === 'object' && 'error' in res) {
    throw new Error(`${event} failed: ${res.error}`);
  }
  return res;
}

/**
 * Records every `event` received by `socket`. `args` holds the argument list of each
 * reception; `values` the first argument.
 */
export function record(socket, event) {
  const rec = {
    args: [],
    get values() {
      return this.args.map((a) => a[0]);
    },
    get count() {
      return this.args.length;
    },
    /** Waits until at least `n` events were received. */
    waitCount(n, timeoutMs = 10_000) {
      return waitUntil(`${n} x "${event}" (got ${this.args.length})`, () => this.args.length >= n, {
        timeoutMs,
        intervalMs: 10,
      });
    },
  };
  socket.on(event, (...args) => rec.args.push(args));
  return rec;
}

/** Resolves with the disconnect reason of `socket`, bounded. */
export function disconnected(socket, timeoutMs = 10_000) {
  return withTimeout(
    new Promise((resolve) => socket.once('disconnect', (reason) => resolve(reason))),
    timeoutMs,
    'client disconnect',
  );
}

/** How long the negative checks wait for something that must NOT arrive. */
export const SETTLE_MS = 400;

/** Unique event/room name. */
let counter = 0;
export function uniq(prefix) {
  counter += 1;
  return `${prefix}-${counter}-${randomBytes(3).toString('hex')}`;
}

/** The median of a list of numbers. */
export function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}
