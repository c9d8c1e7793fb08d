import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { nodeNetns } from "../../src/lab/names.js";
import { UDP_CHECK_PORT } from "../../src/lab/verify-paths.js";
import {
  askUdpEchoFrom,
  peerIp,
  startTcpEchoIn,
  startUdpEcho,
  tcpEcho,
} from "../../src/lab/verify-traffic.js";
import { startsTlsRecord } from "../../src/lab/verify-wire.js";
import { rootOnly } from "../support/netns.js";
import { ipsetMembers, netnsNames, processesIn } from "./support/kernel.js";
import { markerFor, offmesh, podOf, useLab } from "./support/lab.js";
import {
  accessLine,
  applyPolicy,
  deletePolicy,
  echo,
  echoEventually,
  echoOk,
  markerFrames,
  offHostLinks,
  onTheWire,
  placeOf,
  target,
  ztunnelFor,
} from "./support/mesh.js";

// The mesh's paths on the default lab: across nodes over HBONE, within a CPU node through its
// DPU, out of the mesh, into the mesh from its own node, L4 policy, and a single node's pods.

const lab = useLab("m");
const tmp = mkdtempSync(join(tmpdir(), "omt-e2e-mesh-"));
after(() => rmSync(tmp, { recursive: true, force: true }));
const ALL_ZTUNNELS = ["ztunnel-master-dpu", "ztunnel-worker1-dpu", "ztunnel-edge1"];
const TEST = { timeout: 120_000 };

describe("lab mesh paths", { ...rootOnly, timeout: 600_000 }, () => {
  it(
    "1. meshed master → meshed worker1: only TLS to 15008 between nodes, client IP kept, both DPU ztunnels log both identities, no proxy on a CPU",
    TEST,
    async () => {
      const v = await lab.view();
      const client = podOf(v, "default/client");
      const server = podOf(v, "default/server");
      const marker = markerFor("case1");
      lab.logs.mark(ALL_ZTUNNELS);
      const { result, frames, map } = await onTheWire(lab, () => echo(placeOf(client), server, marker));
      assert.ok(result.ok, `default/client → default/server failed: ${result.ok ? "" : result.error}`);
      assert.equal(peerIp(result.greeting), client.ip, "the server sees the client's pod IP");

      const out = await accessLine(lab, "ztunnel-master-dpu", {
        direction: "outbound",
        srcIp: client.ip,
        to: target(server),
      });
      const inb = await accessLine(lab, "ztunnel-worker1-dpu", {
        direction: "inbound",
        srcIp: client.ip,
        to: target(server),
      });
      for (const e of [out, inb]) {
        assert.equal(e.srcIdentity, client.identity);
        assert.equal(e.dstIdentity, server.identity);
        assert.equal(e.error, undefined);
      }
      assert.equal(
        out.dstAddr,
        `${server.ip}:15008`,
        "the master-dpu ztunnel tunnels to the server's HBONE port",
      );

      const between = offHostLinks(map, frames, client.ip, server.ip);
      assert.ok(between.length > 0, "the flow crossed between the DPUs");
      for (const f of between) {
        assert.equal(f.protocol, "tcp");
        assert.ok(
          f.srcPort === 15008 || f.dstPort === 15008,
          `a frame between nodes on ports ${f.srcPort}→${f.dstPort}`,
        );
      }
      assert.ok(between.some(startsTlsRecord), "the data between nodes is TLS records");
      const seen = markerFrames(map, frames, marker);
      assert.equal(seen.between.length, 0, "the plaintext marker never crosses between nodes");
      assert.ok(seen.host > 0, "the capture saw the marker on the CPU–DPU cables (so it saw the flow)");

      const names = await netnsNames();
      const cpuNamespaces = names.filter(
        (n) =>
          n === nodeNetns(lab.name, "master") ||
          n === nodeNetns(lab.name, "worker1") ||
          n.startsWith(`${lab.name}-p-master.`) ||
          n.startsWith(`${lab.name}-p-worker1.`),
      );
      const procs = await processesIn(cpuNamespaces);
      assert.ok(
        procs.some((p) => p.kind === "agent"),
        "the CPU agents were seen (the scan works)",
      );
      assert.deepEqual(
        procs.filter((p) => p.kind === "ztunnel"),
        [],
        "no proxy runs in a CPU node's namespaces",
      );
    },
  );

  it(
    "2. meshed → meshed on one CPU node goes through its DPU's ztunnel, and an L4 DENY there blocks it and is logged",
    TEST,
    async () => {
      const v = await lab.view();
      const client = podOf(v, "default/client");
      const neighbour = podOf(v, "default/neighbour");
      lab.logs.mark(ALL_ZTUNNELS);
      const marker = markerFor("case2");
      const { result, frames, map } = await onTheWire(lab, () => echo(placeOf(client), neighbour, marker));
      assert.ok(result.ok, `default/client → default/neighbour failed: ${result.ok ? "" : result.error}`);
      assert.equal(peerIp(result.greeting), client.ip);
      const line = await accessLine(lab, "ztunnel-master-dpu", {
        direction: "outbound",
        srcIp: client.ip,
        to: target(neighbour),
      });
      assert.equal(line.dstAddr, target(neighbour), "straight to the pod: no HBONE");
      assert.equal(line.srcIdentity, client.identity);
      assert.equal(line.dstIdentity, neighbour.identity);
      assert.deepEqual(
        offHostLinks(map, frames, client.ip, neighbour.ip),
        [],
        "the flow never leaves the master/master-dpu pair",
      );

      const manifest = join(tmp, "deny.yaml");
      writeFileSync(
        manifest,
        [
          "apiVersion: security.istio.io/v1",
          "kind: AuthorizationPolicy",
          "metadata: { name: e2e-deny-neighbour, namespace: default }",
          "spec:",
          "  selector: { matchLabels: { app: neighbour } }",
          "  action: DENY",
          "  rules:",
          '    - to: [{ operation: { ports: ["8080"] } }]',
          "",
        ].join("\n"),
      );
      const applied = await offmesh(["lab", "apply", "--name", lab.name, "-f", manifest]);
      assert.equal(applied.code, 0, applied.stderr);
      try {
        lab.logs.mark(ALL_ZTUNNELS);
        const deadline = Date.now() + 20_000;
        let r = await echo(placeOf(client), neighbour, markerFor("deny"));
        while (r.ok && Date.now() < deadline) {
          await new Promise((res) => setTimeout(res, 200));
          r = await echo(placeOf(client), neighbour, markerFor("deny"));
        }
        assert.equal(r.ok, false, "the DENY policy blocks default/client → default/neighbour");
        const denied = await accessLine(lab, "ztunnel-master-dpu", {
          direction: "outbound",
          srcIp: client.ip,
          to: target(neighbour),
          error: true,
        });
        assert.match(denied.error ?? "", /denied/);
        assert.match(denied.reason ?? "", /default\/e2e-deny-neighbour/);
      } finally {
        const deleted = await offmesh(["lab", "delete", "--name", lab.name, "-f", manifest]);
        assert.equal(deleted.code, 0, deleted.stderr);
      }
      await echoEventually(placeOf(client), neighbour);
    },
  );

  it(
    "3. meshed → non-mesh on the same and another node and → the internet succeed; UDP is not captured",
    TEST,
    async () => {
      const v = await lab.view();
      const client = podOf(v, "default/client");
      lab.logs.mark(ALL_ZTUNNELS);
      for (const ref of ["legacy/neighbour", "legacy/server"]) {
        const to = podOf(v, ref);
        await echoOk(placeOf(client), to, markerFor("case3"), client.ip);
        const line = await accessLine(lab, "ztunnel-master-dpu", {
          direction: "outbound",
          srcIp: client.ip,
          to: target(to),
        });
        assert.equal(line.dstAddr, target(to), `${ref}: passthrough, no HBONE`);
        assert.equal(line.dstIdentity, undefined, `${ref} has no identity`);
      }

      const internet = await startTcpEchoIn(`${lab.name}-internet`, v.spec.internet.address, "internet");
      try {
        const r = await tcpEcho({
          netns: client.netns,
          host: v.spec.internet.address,
          port: internet.port,
          payload: markerFor("inet"),
        });
        assert.ok(r.ok, `default/client → the internet failed: ${r.ok ? "" : r.error}`);
        await accessLine(lab, "ztunnel-master-dpu", {
          direction: "outbound",
          srcIp: client.ip,
          to: `${v.spec.internet.address}:${internet.port}`,
        });
      } finally {
        await internet.close();
      }

      for (const ref of ["default/server", "legacy/server"]) {
        const to = podOf(v, ref);
        const udp = await startUdpEcho({
          netns: to.netns,
          port: UDP_CHECK_PORT,
          stateDir: lab.stateDir,
          lifetimeMs: 20_000,
        });
        try {
          const payload = markerFor("udp");
          const r = await askUdpEchoFrom({
            netns: client.netns,
            host: to.ip,
            port: UDP_CHECK_PORT,
            payload,
            stateDir: lab.stateDir,
          });
          assert.ok(
            !("error" in r),
            `UDP default/client → ${ref}:${UDP_CHECK_PORT}: ${"error" in r ? r.error : ""}`,
          );
          assert.equal(r.payload, payload);
          assert.match(
            r.peer,
            new RegExp(`^${client.ip.replace(/\./g, "\\.")}:`),
            "the UDP echo sees the client's pod IP",
          );
        } finally {
          udp.close();
        }
      }
    },
  );

  it(
    "4. a non-mesh pod and a host process → a meshed pod on the same CPU node are captured (bug 15)",
    TEST,
    async () => {
      const v = await lab.view();
      const neighbour = podOf(v, "default/neighbour");
      const plain = podOf(v, "legacy/client");
      const master = v.nodes.find((n) => n.name === "master");
      assert.ok(master);
      const sources = [
        { place: placeOf(plain), ip: plain.ip },
        { place: { netns: nodeNetns(lab.name, "master"), label: "host of master" }, ip: master.ip },
      ];
      for (const s of sources) {
        lab.logs.mark(ALL_ZTUNNELS);
        const marker = markerFor("case4");
        const { frames, map } = await onTheWire(lab, () => echoOk(s.place, neighbour, marker, s.ip));
        const line = await accessLine(lab, "ztunnel-master-dpu", {
          direction: "inbound",
          srcIp: s.ip,
          to: target(neighbour),
        });
        assert.equal(line.srcIdentity, undefined, `${s.place.label} has no identity: plaintext inbound`);
        assert.equal(line.dstIdentity, neighbour.identity);
        assert.equal(line.error, undefined);
        assert.deepEqual(offHostLinks(map, frames, s.ip, neighbour.ip), [], "it stays within the pair");
        assert.ok(markerFrames(map, frames, marker).host > 0, "it went over the master–master-dpu cable");
      }
    },
  );

  it(
    "5. an L4 DENY blocks and is logged; ALLOW by principal admits the named client and denies others",
    TEST,
    async () => {
      const v = await lab.view();
      const client = podOf(v, "default/client");
      const server = podOf(v, "default/server");
      const edge = podOf(v, "default/edge");
      const plain = podOf(v, "legacy/client");

      await applyPolicy(lab, "default", "e2e-deny-server", {
        selector: { matchLabels: { app: "server" } },
        action: "DENY",
        rules: [{ from: [{ source: { principals: [client.identity.replace("spiffe://", "")] } }] }],
      });
      try {
        lab.logs.mark(ALL_ZTUNNELS);
        const denied = await deniedEventually(placeOf(client), server);
        assert.equal(denied, true);
        const line = await accessLine(lab, "ztunnel-worker1-dpu", {
          direction: "inbound",
          srcIp: client.ip,
          to: target(server),
          error: true,
        });
        assert.match(line.reason ?? line.error ?? "", /e2e-deny-server/);
        assert.equal(line.srcIdentity, client.identity);
        // Another principal is not matched by the DENY.
        await echoOk(placeOf(edge), server, markerFor("case5"), edge.ip);
      } finally {
        await deletePolicy(lab, "default", "e2e-deny-server");
      }
      await echoEventually(placeOf(client), server);

      await applyPolicy(lab, "default", "e2e-allow-client", {
        selector: { matchLabels: { app: "server" } },
        action: "ALLOW",
        rules: [{ from: [{ source: { principals: [client.identity.replace("spiffe://", "")] } }] }],
      });
      try {
        lab.logs.mark(ALL_ZTUNNELS);
        assert.equal(
          await deniedEventually(placeOf(edge), server),
          true,
          "default/edge is not the allowed principal",
        );
        const line = await accessLine(lab, "ztunnel-worker1-dpu", {
          direction: "inbound",
          srcIp: edge.ip,
          to: target(server),
          error: true,
        });
        assert.equal(line.srcIdentity, edge.identity);
        assert.equal(
          (await echo(placeOf(plain), server, markerFor("plain"))).ok,
          false,
          "a source without identity is not allowed",
        );
        await echoOk(placeOf(client), server, markerFor("allowed"), client.ip);
      } finally {
        await deletePolicy(lab, "default", "e2e-allow-client");
      }
      await echoEventually(placeOf(edge), server);
    },
  );

  it("8. a single node's pods are meshed by its own ztunnel and talk to CPU-node pods", TEST, async () => {
    const v = await lab.view();
    const edge = podOf(v, "default/edge");
    const client = podOf(v, "default/client");
    assert.ok(
      (await ipsetMembers(nodeNetns(lab.name, "edge1"))).includes(edge.ip),
      "edge1 captures its own pod",
    );
    assert.equal(ztunnelFor(v, edge), "ztunnel-edge1");
    for (const [from, to, fromZ, toZ] of [
      [edge, client, "ztunnel-edge1", "ztunnel-master-dpu"],
      [client, edge, "ztunnel-master-dpu", "ztunnel-edge1"],
    ] as const) {
      lab.logs.mark(ALL_ZTUNNELS);
      const marker = markerFor("case8");
      const { frames, map } = await onTheWire(lab, () => echoOk(placeOf(from), to, marker, from.ip));
      const out = await accessLine(lab, fromZ, { direction: "outbound", srcIp: from.ip, to: target(to) });
      const inb = await accessLine(lab, toZ, { direction: "inbound", srcIp: from.ip, to: target(to) });
      for (const e of [out, inb]) {
        assert.equal(e.srcIdentity, from.identity);
        assert.equal(e.dstIdentity, to.identity);
      }
      const between = offHostLinks(map, frames, from.ip, to.ip);
      assert.ok(
        between.length > 0 && between.every((f) => f.srcPort === 15008 || f.dstPort === 15008),
        "HBONE between edge1 and master-dpu",
      );
      assert.equal(markerFrames(map, frames, marker).between.length, 0);
    }
  });
});

/** Retry until the exchange is refused (a policy takes a moment to reach the ztunnels). */
async function deniedEventually(
  from: { netns: string; label: string },
  to: Parameters<typeof echo>[1],
  ms = 20_000,
): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (!(await echo(from, to, markerFor("policy"))).ok) return true;
    await new Promise((r) => setTimeout(r, 200));
  }
  return false;
}
