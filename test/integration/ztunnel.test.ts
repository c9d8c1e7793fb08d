import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import http2 from "node:http2";
import type net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import tls from "node:tls";
import { after, before, describe, it } from "node:test";
import { pino } from "pino";
import { loadOrCreateRoot } from "../../src/controlplane/ca/root.js";
import { startZtunnel } from "../../src/ztunnel/daemon.js";
import type { RunningZtunnel } from "../../src/ztunnel/daemon.js";
import { createKeyAndCsr } from "../../src/ztunnel/identity/csr.js";
import { connectTcp } from "../../src/sockets/index.js";
import { createMeshNet } from "../support/meshnet.js";
import type { MeshNet, MeshPod } from "../support/meshnet.js";
import type { TcpServer } from "../support/meshnet-tcp.js";
import { rootOnly } from "../support/netns.js";
import { until } from "../support/wait.js";

// Two ztunnels, each in the network namespace of the ztunnel pod on a single node, behind the
// rules the node agents programmed from the planner (host rules and in-pod TPROXY rules). Pods
// are real network namespaces created through the CNI chain; the control plane is the xDS server
// and CA. Everything the tests check crosses the kernel: TPROXY capture, spoofed sources, marks.

const CLIENT_ID = "spiffe://cluster.local/ns/mesh/sa/client";
const SERVER_ID = "spiffe://cluster.local/ns/mesh/sa/server";
const ECHO_PORT = 8080;
const CERT_LIFETIME_SECONDS = 12;

type LogLine = Record<string, unknown>;

interface TestZtunnel {
  readonly running: RunningZtunnel;
  readonly pod: MeshPod;
  readonly access: LogLine[];
}

async function startTestZtunnel(mesh: MeshNet, node: string): Promise<TestZtunnel> {
  const pod = mesh.ztunnelOn(node);
  const access: LogLine[] = [];
  const running = await startZtunnel({
    // The control plane listens on the test process's loopback; the ztunnel's own control
    // connections are made from here, its data-path sockets inside the ztunnel pod.
    xdsAddress: `127.0.0.1:${mesh.controlPlane.grpcPort}`,
    rootCaPem: mesh.rootCaPem,
    token: () => mesh.tokenFor(pod.name),
    node,
    podName: pod.name,
    podNamespace: pod.namespace,
    podIp: pod.ip,
    trustDomain: mesh.trustDomain,
    adminAddr: "127.0.0.1:0",
    metricsAddr: "127.0.0.1:0",
    readinessAddr: "127.0.0.1:0",
    netnsPath: pod.netnsPath,
    certificateLifetimeSeconds: CERT_LIFETIME_SECONDS,
    drainTimeoutMs: 10_000,
    connectTimeoutMs: 3_000,
    log: pino({ level: "warn" }),
    accessLog: pino(
      { level: "info" },
      { write: (line: string) => void access.push(JSON.parse(line) as LogLine) },
    ),
  });
  return { running, pod, access };
}

/** The access-log lines of `zt` matching every field of `fields`, waiting until one exists. */
async function logged(zt: TestZtunnel, fields: LogLine, what: string): Promise<LogLine> {
  let found: LogLine | undefined;
  await until(
    what,
    () => {
      found = zt.access.find((l) => Object.entries(fields).every(([k, v]) => l[k] === v));
      return found !== undefined;
    },
    5_000,
  );
  return found as LogLine;
}

/** Open an HTTP/2 session to `target:15008` from inside `fromNetns`, over TLS with `cred`. */
async function rawHbone(
  fromNetns: string,
  target: string,
  cred: { certChainPem: string; keyPem: string },
  roots: string,
): Promise<{ session: http2.ClientHttp2Session; socket: tls.TLSSocket }> {
  const tcp = await connectTcp({ host: target, port: 15008, netnsPath: fromNetns, timeoutMs: 3_000 });
  const socket = tls.connect({
    socket: tcp,
    cert: cred.certChainPem,
    key: cred.keyPem,
    ca: roots,
    ALPNProtocols: ["h2"],
    minVersion: "TLSv1.3",
    checkServerIdentity: () => undefined,
  });
  await new Promise<void>((resolve, reject) => {
    socket.once("secureConnect", () => resolve());
    socket.once("error", reject);
  });
  const session = http2.connect(`https://${target}:15008`, { createConnection: () => socket });
  session.on("error", () => undefined);
  return { session, socket };
}

function connectStatus(session: http2.ClientHttp2Session, authority: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ":method": "CONNECT", ":authority": authority });
    stream.on("response", (headers) => resolve(Number(headers[":status"])));
    stream.on("error", reject);
    stream.on("close", () => reject(new Error(`stream closed without a response (code ${stream.rstCode})`)));
  });
}

const openFds = (): number => readdirSync("/proc/self/fd").length;

describe("ztunnel in network namespaces", { ...rootOnly, timeout: 240_000 }, () => {
  let mesh: MeshNet;
  let zt1: TestZtunnel;
  let zt2: TestZtunnel;
  let echo: TcpServer;
  let plainEcho: TcpServer;
  const scratch = mkdtempSync(join(tmpdir(), "offmesh-zt-"));

  before(async () => {
    mesh = await createMeshNet("zt");
    zt1 = await startTestZtunnel(mesh, "single1");
    zt2 = await startTestZtunnel(mesh, "single2");
    await Promise.all([zt1.running.ready, zt2.running.ready]);
    echo = await mesh.serveTcp("server", ECHO_PORT);
    plainEcho = await mesh.serveTcp("plain-server", ECHO_PORT);
  });
  after(async () => {
    await zt1?.running.stop();
    await zt2?.running.stop();
    await echo?.stop();
    await plainEcho?.stop();
    await mesh?.close();
    rmSync(scratch, { recursive: true, force: true });
  });

  it("carries meshed → meshed over HBONE; the server sees the client's pod IP; both proxies log both identities", async () => {
    const client = mesh.pod("client");
    const server = mesh.pod("server");
    const r = await mesh.probeTcp("client", server.ip, ECHO_PORT, { payload: "hello over hbone" });
    assert.equal(r.outcome, "replied", JSON.stringify(r));
    assert.equal(r.echo, "hello over hbone");
    assert.equal(r.greeting?.remoteAddress, client.ip, "source address preserved end to end");
    const out = await logged(
      zt1,
      { direction: "outbound", "dst.workload": "server" },
      "outbound log at single1",
    );
    assert.equal(out["src.identity"], CLIENT_ID);
    assert.equal(out["dst.identity"], SERVER_ID);
    assert.equal(out["dst.hbone_addr"], `${server.ip}:${ECHO_PORT}`);
    const inb = await logged(
      zt2,
      { direction: "inbound", "dst.workload": "server" },
      "inbound log at single2",
    );
    assert.equal(inb["src.identity"], CLIENT_ID);
    assert.equal(inb["dst.identity"], SERVER_ID);
    assert.equal(inb["src.addr"]?.toString().split(":")[0], client.ip);
    assert.ok(Number(inb["bytes_recv"]) >= "hello over hbone".length, JSON.stringify(inb));

    const metrics = await (await fetch(`${zt2.running.metricsUrl}/metrics`)).text();
    assert.match(
      metrics,
      new RegExp(
        `istio_tcp_connections_opened_total\\{reporter="destination".*source_principal="${CLIENT_ID}".*destination_principal="${SERVER_ID}".*connection_security_policy="mutual_tls"\\} [1-9]`,
      ),
    );
    assert.match(metrics, /istio_tcp_received_bytes_total\{reporter="destination"/);
  });

  it("passes a meshed pod's connection to a non-mesh server through in clear, from the pod's address", async () => {
    const client = mesh.pod("client");
    const plain = mesh.pod("plain-server");
    const r = await mesh.probeTcp("client", plain.ip, ECHO_PORT, { payload: "to legacy" });
    assert.equal(r.outcome, "replied", JSON.stringify(r));
    assert.equal(r.greeting?.remoteAddress, client.ip);
    const out = await logged(
      zt1,
      { direction: "outbound", "dst.workload": "plain-server" },
      "passthrough log",
    );
    assert.equal(out["dst.identity"], undefined, "no identity: not mTLS");
    assert.equal(out["dst.hbone_addr"], undefined);
  });

  it("takes a non-mesh client's connection to a meshed pod on the inbound plaintext port", async () => {
    const plainClient = mesh.pod("plain-client");
    const r = await mesh.probeTcp("plain-client", mesh.pod("server").ip, ECHO_PORT, {
      payload: "plaintext in",
    });
    assert.equal(r.outcome, "replied", JSON.stringify(r));
    assert.equal(r.greeting?.remoteAddress, plainClient.ip);
    const inb = await logged(
      zt2,
      { direction: "inbound", "src.workload": "plain-client" },
      "plaintext inbound log",
    );
    assert.equal(inb["src.identity"], undefined);
    assert.equal(inb["dst.identity"], SERVER_ID);
  });

  it("enforces a DENY policy for the client's principal, and logs the denial", async () => {
    mesh.source.upsertPolicy({
      namespace: "mesh",
      name: "deny-client",
      spec: {
        selector: { matchLabels: { app: "server" } },
        action: "DENY",
        rules: [{ from: [{ source: { principals: ["cluster.local/ns/mesh/sa/client"] } }] }],
      },
    });
    await until("policy at single2", () => zt2.running.state.policy("mesh/deny-client") !== undefined, 5_000);
    try {
      const r = await mesh.probeTcp("client", mesh.pod("server").ip, ECHO_PORT);
      assert.notEqual(r.outcome, "replied", JSON.stringify(r));
      const denied = await logged(zt2, { direction: "inbound", error: "denied" }, "denial log");
      assert.equal(denied["src.identity"], CLIENT_ID);
      assert.match(String(denied["reason"]), /deny-client/);
      // A plaintext client is not matched by a principal rule.
      const plain = await mesh.probeTcp("plain-client", mesh.pod("server").ip, ECHO_PORT);
      assert.equal(plain.outcome, "replied", JSON.stringify(plain));
    } finally {
      mesh.source.deletePolicy("mesh", "deny-client");
      await until(
        "policy removed at single2",
        () => zt2.running.state.policy("mesh/deny-client") === undefined,
        5_000,
      );
    }
  });

  it("enforces an ALLOW policy by principal: the named client passes, a source without identity does not", async () => {
    mesh.source.upsertPolicy({
      namespace: "mesh",
      name: "allow-client",
      spec: {
        selector: { matchLabels: { app: "server" } },
        action: "ALLOW",
        rules: [{ from: [{ source: { principals: ["cluster.local/ns/mesh/sa/client"] } }] }],
      },
    });
    await until(
      "policy at single2",
      () => zt2.running.state.policy("mesh/allow-client") !== undefined,
      5_000,
    );
    try {
      const ok = await mesh.probeTcp("client", mesh.pod("server").ip, ECHO_PORT);
      assert.equal(ok.outcome, "replied", JSON.stringify(ok));
      const plain = await mesh.probeTcp("plain-client", mesh.pod("server").ip, ECHO_PORT);
      assert.notEqual(plain.outcome, "replied", JSON.stringify(plain));
      await logged(
        zt2,
        { direction: "inbound", "src.workload": "plain-client", error: "denied" },
        "denial log",
      );
    } finally {
      mesh.source.deletePolicy("mesh", "allow-client");
      await until("policy removed", () => zt2.running.state.policy("mesh/allow-client") === undefined, 5_000);
    }
  });

  it("serves two meshed pods of the same node in-process, policy applied, without HBONE", async () => {
    const neighbour = await mesh.addPod({
      name: "neighbour",
      namespace: "mesh",
      node: "single1",
      serviceAccount: "neighbour",
      labels: { app: "neighbour" },
    });
    const neighbourEcho = await mesh.serveTcp("neighbour", ECHO_PORT);
    try {
      await until(
        "neighbour known to single1's ztunnel",
        () => zt1.running.state.workloadByIp(neighbour.ip) !== undefined,
        5_000,
      );
      const r = await mesh.probeTcp("client", neighbour.ip, ECHO_PORT, { payload: "next door" });
      assert.equal(r.outcome, "replied", JSON.stringify(r));
      assert.equal(r.greeting?.remoteAddress, mesh.pod("client").ip);
      const out = await logged(zt1, { direction: "outbound", "dst.workload": "neighbour" }, "local log");
      assert.equal(out["dst.identity"], "spiffe://cluster.local/ns/mesh/sa/neighbour");
      assert.equal(out["dst.hbone_addr"], undefined, "no tunnel between a proxy and itself");

      mesh.source.upsertPolicy({
        namespace: "mesh",
        name: "deny-neighbour",
        spec: {
          selector: { matchLabels: { app: "neighbour" } },
          action: "DENY",
          rules: [{ from: [{ source: { principals: ["cluster.local/ns/mesh/sa/client"] } }] }],
        },
      });
      await until(
        "policy at single1",
        () => zt1.running.state.policy("mesh/deny-neighbour") !== undefined,
        5_000,
      );
      const denied = await mesh.probeTcp("client", neighbour.ip, ECHO_PORT);
      assert.notEqual(denied.outcome, "replied", JSON.stringify(denied));
      const line = await logged(
        zt1,
        { direction: "inbound", "dst.workload": "neighbour", error: "denied" },
        "local denial",
      );
      assert.equal(line["src.identity"], CLIENT_ID);
    } finally {
      mesh.source.deletePolicy("mesh", "deny-neighbour");
      await neighbourEcho.stop();
      await mesh.deletePod("neighbour");
    }
  });

  it("refuses a client certificate from another trust domain before any request", async () => {
    const foreign = await loadOrCreateRoot(join(scratch, "foreign-ca"), { trustDomain: "evil.example" });
    const identity = "spiffe://evil.example/ns/mesh/sa/client";
    const { keyPem, csrPem } = await createKeyAndCsr(identity);
    const leaf = await foreign.signWorkload(csrPem, identity, 3600);
    const before = zt2.access.length;
    // Trusting both roots on our side: the refusal must come from the server.
    await assert.rejects(async () => {
      const { session } = await rawHbone(
        zt1.pod.netnsPath,
        mesh.pod("server").ip,
        { certChainPem: leaf, keyPem },
        mesh.rootCaPem + foreign.certPem,
      );
      try {
        await connectStatus(session, `${mesh.pod("server").ip}:${ECHO_PORT}`);
      } finally {
        session.destroy();
      }
    });
    assert.equal(zt2.access.length, before, "no connection reached the handler");
  });

  it("answers a malformed CONNECT 400 and an unreachable target 503", async () => {
    const cred = await zt1.running.certificates.get(CLIENT_ID);
    const server = mesh.pod("server");
    const { session } = await rawHbone(zt1.pod.netnsPath, server.ip, cred, mesh.rootCaPem);
    try {
      assert.equal(await connectStatus(session, "not-an-address"), 400);
      assert.equal(
        await connectStatus(session, `${mesh.pod("client").ip}:${ECHO_PORT}`),
        400,
        "not served here",
      );
      assert.equal(await connectStatus(session, `${server.ip}:9`), 503, "nothing listens on port 9");
    } finally {
      session.destroy();
    }
  });

  it("leaves no file descriptor behind after 10,000 sequential connections", async () => {
    const server = mesh.pod("server");
    const client = mesh.pod("client");
    const once = async (): Promise<void> => {
      const s: net.Socket = await connectTcp({
        host: server.ip,
        port: ECHO_PORT,
        netnsPath: client.netnsPath,
      });
      await new Promise<void>((resolve, reject) => {
        s.once("data", () => resolve());
        s.once("error", reject);
      });
      s.end();
      await new Promise<void>((resolve) => s.once("close", () => resolve()));
    };
    await once(); // warm: pooled HBONE connection, certificates
    await new Promise((r) => setTimeout(r, 500));
    const before = openFds();
    for (let i = 0; i < 10_000; i++) await once();
    let afterCount = openFds();
    await until(
      `fds back to ${before}`,
      () => {
        afterCount = openFds();
        return afterCount <= before;
      },
      10_000,
    );
    assert.ok(afterCount <= before, `${afterCount} fds open, ${before} before`);
    assert.equal(zt1.running.ztunnel.stats().open, 0);
    assert.equal(zt2.running.ztunnel.stats().open, 0);
  });

  it("renews certificates without dropping traffic", async () => {
    const server = mesh.pod("server");
    const client = mesh.pod("client");
    const serial = (): string | undefined =>
      zt1.running.certificates.dump().find((c) => c.identity === CLIENT_ID)?.certChain[0]?.serialNumber;
    const first = serial();
    assert.ok(first, "the client's certificate is held");
    const s: net.Socket = await connectTcp({ host: server.ip, port: ECHO_PORT, netnsPath: client.netnsPath });
    let received = "";
    s.on("data", (d: Buffer) => (received += d.toString()));
    await until("greeting", () => received.includes("\n"), 5_000);
    const renewed = new Promise<void>((resolve) =>
      zt1.running.certificates.on("renewed", (identity) => {
        if (identity === CLIENT_ID) resolve();
      }),
    );
    let sent = 0;
    const ticker = setInterval(() => {
      s.write(`tick${sent}\n`);
      sent += 1;
    }, 100);
    try {
      await renewed;
      await new Promise((r) => setTimeout(r, 500));
      assert.notEqual(serial(), first, "a new certificate");
      const fresh = await mesh.probeTcp("client", server.ip, ECHO_PORT, { payload: "after renewal" });
      assert.equal(fresh.outcome, "replied", JSON.stringify(fresh));
    } finally {
      clearInterval(ticker);
    }
    await until("every tick echoed", () => received.includes(`tick${sent - 1}\n`), 5_000);
    s.destroy();
  });

  it("serves readiness and the config dump", async () => {
    assert.equal((await fetch(`${zt1.running.readinessUrl}/healthz/ready`)).status, 200);
    const dump = (await (await fetch(`${zt1.running.adminUrl}/config_dump`)).json()) as {
      workloads: { name: string }[];
      servedNodes: { nodes: string[] } | null;
      certificates: { identity: string; state: string }[];
    };
    assert.ok(dump.workloads.some((w) => w.name === "server"));
    assert.deepEqual(dump.servedNodes?.nodes, ["single1"]);
    assert.ok(dump.certificates.some((c) => c.identity === CLIENT_ID && c.state === "Available"));
  });

  // Last: it replaces single1's ztunnel.
  it("hands over to a new ztunnel on the same ports while the old one drains its connections", async () => {
    const server = mesh.pod("server");
    const client = mesh.pod("client");
    const s: net.Socket = await connectTcp({ host: server.ip, port: ECHO_PORT, netnsPath: client.netnsPath });
    let received = "";
    s.on("data", (d: Buffer) => (received += d.toString()));
    await until("greeting", () => received.includes("\n"), 5_000);

    const successor = await startTestZtunnel(mesh, "single1");
    try {
      await successor.running.ready;
      const answer = await fetch(`${zt1.running.adminUrl}/quitquitquit`, { method: "POST" });
      assert.equal(await answer.text(), "draining\n");
      await until("old ztunnel stops listening", () => zt1.running.ztunnel.stats().draining, 5_000);

      s.write("still here\n");
      await until("echo on the draining ztunnel", () => received.includes("still here\n"), 5_000);
      const fresh = await mesh.probeTcp("client", server.ip, ECHO_PORT, { payload: "to the successor" });
      assert.equal(fresh.outcome, "replied", JSON.stringify(fresh));
      await logged(
        successor,
        { direction: "outbound", "dst.workload": "server" },
        "successor took the new connection",
      );
      assert.equal(zt1.running.ztunnel.stats().open > 0, true, "the old connection is still open");

      s.end();
      await zt1.running.stopped;
      assert.equal(zt1.running.ztunnel.stats().open, 0);
    } finally {
      s.destroy();
      await successor.running.stop();
    }
  });
});
