import assert from "node:assert/strict";
import type net from "node:net";
import { after, before, describe, it } from "node:test";
import { connectTcp } from "../../src/sockets/index.js";
import { createMeshNet } from "../support/meshnet.js";
import type { MeshNet } from "../support/meshnet.js";
import type { TcpServer } from "../support/meshnet-tcp.js";
import { rootOnly } from "../support/netns.js";
import { until } from "../support/wait.js";
import { OFFMESH_BIN, startZtunnelProcess, ztunnelRunArgs } from "../support/ztunnel-process.js";
import type { ZtunnelProcess } from "../support/ztunnel-process.js";

// `offmesh ztunnel run` as a user runs it: one process per node, started inside the ztunnel pod's
// network namespace with files for the root certificate and the token, reached only through that
// namespace (readiness, metrics, admin), and stopped with signals.

const CLIENT_ID = "spiffe://cluster.local/ns/mesh/sa/client";
const SERVER_ID = "spiffe://cluster.local/ns/mesh/sa/server";
const ECHO_PORT = 8080;

describe("offmesh ztunnel run (processes in the ztunnel pods)", { ...rootOnly, timeout: 240_000 }, () => {
  let mesh: MeshNet;
  let zt1: ZtunnelProcess;
  let zt2: ZtunnelProcess;
  let echo: TcpServer;

  before(async () => {
    mesh = await createMeshNet("ztcli");
    [zt1, zt2] = await Promise.all([
      startZtunnelProcess(mesh, "single1"),
      // Debug shows its idle memory releases; a 1 s quiet tick makes them come soon.
      startZtunnelProcess(mesh, "single2", { logLevel: "debug", extraArgs: ["--idle-trim-seconds", "1"] }),
    ]);
    echo = await mesh.serveTcp("server", ECHO_PORT);
  });
  after(async () => {
    await zt1?.stop();
    await zt2?.stop();
    await echo?.stop();
    await mesh?.close();
  });

  it("carries client → server over HBONE; the server sees the client's IP; both access logs name both identities", async () => {
    const client = mesh.pod("client");
    const server = mesh.pod("server");
    const r = await mesh.probeTcp("client", server.ip, ECHO_PORT, { payload: "through two processes" });
    assert.equal(r.outcome, "replied", JSON.stringify(r));
    assert.equal(r.echo, "through two processes");
    assert.equal(r.greeting?.remoteAddress, client.ip, "source address preserved end to end");

    const out = await zt1.waitForAccessLog({ direction: "outbound", "dst.workload": "server" });
    assert.equal(out["src.identity"], CLIENT_ID);
    assert.equal(out["dst.identity"], SERVER_ID);
    assert.equal(out["dst.hbone_addr"], `${server.ip}:${ECHO_PORT}`);
    assert.equal(out["msg"], "connection complete");
    const inb = await zt2.waitForAccessLog({ direction: "inbound", "dst.workload": "server" });
    assert.equal(inb["src.identity"], CLIENT_ID);
    assert.equal(inb["dst.identity"], SERVER_ID);
    assert.equal(String(inb["src.addr"]).split(":")[0], client.ip);
  });

  it("serves Prometheus metrics on :15020 inside the pod's namespace", async () => {
    const source = await zt1.metrics();
    assert.match(
      source,
      new RegExp(
        `istio_tcp_connections_opened_total\\{reporter="source".*destination_principal="${SERVER_ID}".*\\} [1-9]`,
      ),
    );
    const destination = await zt2.metrics();
    assert.match(
      destination,
      new RegExp(
        `istio_tcp_connections_opened_total\\{reporter="destination".*source_principal="${CLIENT_ID}".*destination_principal="${SERVER_ID}".*\\} [1-9]`,
      ),
    );
  });

  it("returns freed memory to the kernel once traffic has stopped (--idle-trim-seconds)", async () => {
    const inbound = await zt2.waitForAccessLog({ direction: "inbound", "dst.workload": "server" });
    const after = Number(inbound["time"]);
    const releaseAfterTraffic = (): Record<string, unknown> | undefined =>
      zt2
        .logLines()
        .find(
          (l) =>
            l["msg"] === "freed memory returned to the kernel" &&
            l["why"] === "quiet" &&
            Number(l["time"]) > after,
        );
    await until("a release logged after the connection", () => releaseAfterTraffic() !== undefined);
    const release = releaseAfterTraffic();
    assert.equal(typeof release?.["released"], "boolean");
    assert.ok(Number(release?.["rssAfterMb"]) > 0, JSON.stringify(release));
    // And once at start, when the first configuration had arrived (gc() only with --expose-gc).
    const atReady = zt2.logLines().find((l) => l["why"] === "ready");
    assert.equal(atReady?.["msg"], "freed memory returned to the kernel");
  });

  it("exits 2 naming --idle-trim-seconds when it is not a number of seconds", async () => {
    const pod = mesh.ztunnelOn("single1");
    const args = ztunnelRunArgs(mesh, pod, { rootCert: "/dev/null", tokenFile: "/dev/null" });
    const res = await mesh.exec(
      pod.name,
      process.execPath,
      [OFFMESH_BIN, ...args, "--idle-trim-seconds", "-1"],
      {
        allowFail: true,
        timeoutMs: 20_000,
      },
    );
    assert.equal(res.code, 2, res.stderr);
    assert.match(res.stderr, /--idle-trim-seconds <s>' argument '-1' is invalid/);
  });

  it("exits 1 naming --root-cert when the root certificate cannot be read", async () => {
    const pod = mesh.ztunnelOn("single1");
    const args = ztunnelRunArgs(mesh, pod, {
      rootCert: "/nonexistent/root-cert.pem",
      tokenFile: "/dev/null",
    });
    const res = await mesh.exec(pod.name, process.execPath, [OFFMESH_BIN, ...args], {
      allowFail: true,
      timeoutMs: 20_000,
    });
    assert.equal(res.code, 1, res.stderr);
    assert.match(res.stderr, /--root-cert \/nonexistent\/root-cert\.pem: .*ENOENT/);
  });

  it("exits 2 when a required flag is missing", async () => {
    const pod = mesh.ztunnelOn("single1");
    const args = ztunnelRunArgs(mesh, pod, { rootCert: "/dev/null", tokenFile: "/dev/null" });
    const withoutNode = args.filter((a, i) => a !== "--node" && args[i - 1] !== "--node");
    assert.equal(withoutNode.length, args.length - 2);
    const res = await mesh.exec(pod.name, process.execPath, [OFFMESH_BIN, ...withoutNode], {
      allowFail: true,
      timeoutMs: 20_000,
    });
    assert.equal(res.code, 2, res.stderr);
    assert.match(res.stderr, /required option '--node <name>' not specified/);
  });

  // Last: it ends single1's ztunnel.
  it("drains on SIGTERM: an open connection keeps working, and the process exits 0 once it closes", async () => {
    const server = mesh.pod("server");
    const client = mesh.pod("client");
    const s: net.Socket = await connectTcp({ host: server.ip, port: ECHO_PORT, netnsPath: client.netnsPath });
    let received = "";
    s.on("data", (d: Buffer) => (received += d.toString()));
    s.on("error", () => undefined);
    try {
      await until("greeting", () => received.includes("\n"), 5_000);
      process.kill(zt1.pid, "SIGTERM");
      await zt1.waitForLog({ msg: "ztunnel draining" });
      assert.equal(zt1.exitCode(), undefined, "still running while a connection is open");
      const ready = await zt1
        .http(15021, "/healthz/ready")
        .catch((err: Error) => ({ status: 0, body: err.message }));
      assert.notEqual(ready.status, 200, "not ready while draining");

      s.write("still here\n");
      await until("echo through the draining ztunnel", () => received.includes("still here\n"), 5_000);
      s.end();
      const code = await Promise.race([
        zt1.exited,
        new Promise<string>((r) =>
          setTimeout(() => r("still running 15 s after the connection closed"), 15_000),
        ),
      ]);
      assert.equal(code, 0, zt1.stderr());
      await zt1.waitForLog({ msg: "ztunnel stopped" }, 1_000);
      const out = await zt1.waitForAccessLog({
        direction: "outbound",
        "dst.workload": "server",
        bytes_sent: 11,
      });
      assert.equal(out["msg"], "connection complete");
    } finally {
      s.destroy();
    }
  });

  // Last: it ends single2's ztunnel.
  it("drains and exits 0 on POST /quitquitquit (admin port, inside the pod's namespace)", async () => {
    const answer = await zt2.quit();
    assert.equal(answer.status, 200);
    assert.equal(answer.body, "draining\n");
    const code = await Promise.race([
      zt2.exited,
      new Promise<string>((r) => setTimeout(() => r("still running 15 s after /quitquitquit"), 15_000)),
    ]);
    assert.equal(code, 0, zt2.stderr());
    await zt2.waitForLog({ msg: "ztunnel stopped" }, 1_000);
  });
});
