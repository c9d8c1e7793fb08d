import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { after, before, describe, it } from "node:test";
import { TYPE_URL } from "../../src/xds/types.js";
import { ipsetMembers } from "../support/kernel.js";
import { CONTROL_PLANE_IP, createMeshNet, isZtunnelPod, MESH_NODES, NODE_NIC } from "../support/meshnet.js";
import type { MeshNet } from "../support/meshnet.js";
import { linkDetails, mangleRules, routeTable, tproxyPackets } from "../support/meshnet-kernel.js";
import type { TcpServer } from "../support/meshnet-tcp.js";
import { rootOnly, testNetnsName } from "../support/netns.js";
import { fromRoot } from "../support/paths.js";

// The mesh harness builds what it claims: two single nodes programmed by their agents, pods
// through the CNI chain, ztunnel pods with their tunnels and in-pod rules, plain traffic flowing,
// meshed traffic held while no ztunnel listens, and a control plane that a ztunnel pod's namespace
// reaches over TLS with the harness's token.

const re = (ip: string): string => ip.replace(/\./g, "\\.");

// An ES module run inside a pod's namespace: asks the control plane's CA (through the lab address)
// for a certificate, with the project's own gRPC client. argv: project root, target, identity.
const CSR_SCRIPT = `
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
const [root, target, identity] = process.argv.slice(1);
const grpc = createRequire(root + "/package.json")("@grpc/grpc-js");
const dist = (p) => import(pathToFileURL(root + "/dist/src/" + p).href);
const { createCaClient, createCertificate } = await dist("xds/grpc.js");
const { x509 } = await dist("identity/x509.js");
const keys = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"]);
const csr = await x509.Pkcs10CertificateRequestGenerator.create({
  keys,
  signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
  extensions: [new x509.SubjectAlternativeNameExtension([{ type: "url", value: identity }])],
});
const client = createCaClient(target, grpc.credentials.createSsl(Buffer.from(process.env.MESH_CA)));
const md = new grpc.Metadata();
md.set("authorization", "Bearer " + process.env.MESH_TOKEN);
try {
  const res = await createCertificate(client, { csr: csr.toString("pem"), validityDuration: 600, metadata: { ImpersonatedIdentity: identity } }, md, { deadline: Date.now() + 8000 });
  process.stdout.write(JSON.stringify({ chain: res.certChain }) + "\\n");
} catch (e) {
  process.stdout.write(JSON.stringify({ code: e.code, details: e.details }) + "\\n");
} finally {
  client.close();
}
`;

describe("mesh network harness", { ...rootOnly }, () => {
  let mesh: MeshNet;
  const servers: TcpServer[] = [];
  let meshedServer: TcpServer | undefined;

  before(async () => {
    mesh = await createMeshNet("meshnet");
  });
  after(async () => {
    for (const s of servers) await s.stop();
    await mesh?.close();
  });

  it("runs two single nodes on one wire, each routing the other's pod network via its address", () => {
    assert.deepEqual(
      mesh.nodes.map((n) => n.name),
      MESH_NODES.map((n) => n.name),
    );
    for (const node of mesh.nodes) {
      const status = node.agent.status();
      assert.equal(status.role, "single");
      assert.equal(status.ready, true, status.notReadyReason);
      const other = mesh.nodes.find((n) => n !== node);
      assert.ok(other);
      assert.match(
        routeTable(node.netns.name, "main"),
        new RegExp(`^${re(other.podCidr)} via ${re(other.ip)} dev ${NODE_NIC} proto 176`, "m"),
      );
    }
  });

  it("creates the pods through the CNI chain, each in its node's pod network and in the cluster", () => {
    const expected = [
      ["ztunnel-single1", "istio-system", "single1"],
      ["ztunnel-single2", "istio-system", "single2"],
      ["client", "mesh", "single1"],
      ["plain-client", "plain", "single1"],
      ["server", "mesh", "single2"],
      ["plain-server", "plain", "single2"],
    ];
    assert.deepEqual(
      mesh.pods().map((p) => [p.name, p.namespace, p.node]),
      expected,
    );
    const snapshot = mesh.source.snapshot();
    for (const p of mesh.pods()) {
      const node = mesh.node(p.node);
      const inPod = execFileSync("ip", ["netns", "exec", p.netnsName, "ip", "-4", "addr", "show", "eth0"], {
        encoding: "utf8",
      });
      assert.match(inPod, new RegExp(`inet ${re(p.ip)}/`), `${p.name} holds its address`);
      assert.ok(
        p.ip.startsWith(node.podCidr.split(".").slice(0, 3).join(".") + "."),
        `${p.name} in ${node.podCidr}`,
      );
      assert.equal(p.netnsPath, `/var/run/netns/${p.netnsName}`);
      assert.deepEqual(snapshot.pods.get(p.uid)?.ips, [p.ip], `${p.name} is registered with its address`);
    }
    assert.equal(mesh.pod("client").serviceAccount, "client");
    assert.equal(mesh.pod("server").serviceAccount, "server");
    assert.equal(mesh.ztunnelOn("single1").name, "ztunnel-single1");
    assert.equal(mesh.ztunnelOn("single2").serviceAccount, "ztunnel");
  });

  it("has each agent capture its node's meshed pods, and only those", () => {
    assert.deepEqual(ipsetMembers(mesh.node("single1").netns), [mesh.pod("client").ip]);
    assert.deepEqual(ipsetMembers(mesh.node("single2").netns), [mesh.pod("server").ip]);
  });

  it("connects each node to its ztunnel pod and programs the pod's TPROXY rules", () => {
    for (const node of mesh.nodes) {
      const z = mesh.ztunnelOn(node.name);
      assert.ok(isZtunnelPod(z));
      const gateway = node.podCidr.replace(/\.0\/24$/, ".1");
      assert.match(linkDetails(node.netns.name, "istioin") ?? "", new RegExp(`remote ${re(z.ip)} `));
      assert.match(linkDetails(node.netns.name, "istioout") ?? "", new RegExp(`remote ${re(z.ip)} `));
      assert.match(linkDetails(z.netnsName, "pistioin") ?? "", new RegExp(`id 1000 remote ${re(gateway)} `));
      assert.match(linkDetails(z.netnsName, "pistioout") ?? "", new RegExp(`id 1001 remote ${re(gateway)} `));
      const mangle = mangleRules(z.netnsName);
      assert.match(mangle, /-i pistioout -p tcp -j TPROXY --on-port 15001 /);
      assert.match(mangle, /-i pistioin -p tcp -j TPROXY --on-port 15006 /);
      assert.match(mangle, /-i pistioin -p tcp -m tcp --dport 15008 -j TPROXY --on-port 15008 /);
    }
    // Only ztunnel pods are given the in-pod rules.
    assert.doesNotMatch(mangleRules(mesh.pod("client").netnsName), /TPROXY/);
  });

  it("lets plain pods talk across the nodes, keeping the client's address", async () => {
    const server = await mesh.serveTcp("plain-server", 8080);
    servers.push(server);
    const res = await mesh.probeTcp("plain-client", mesh.pod("plain-server").ip, server.port, {
      payload: "hello",
    });
    assert.equal(res.outcome, "replied", JSON.stringify(res));
    assert.equal(res.echo, "hello");
    assert.equal(res.greeting?.server, "plain-server");
    assert.equal(res.greeting?.remoteAddress, mesh.pod("plain-client").ip);
  });

  it("holds a meshed client's connection while no ztunnel listens (fail closed, outbound side)", async () => {
    const server = await mesh.serveTcp("server", 8080);
    servers.push(server);
    meshedServer = server;
    const z = mesh.ztunnelOn("single1");
    const before = tproxyPackets(z.netnsName, 15001);
    const res = await mesh.probeTcp("client", mesh.pod("server").ip, server.port, { timeoutMs: 2_000 });
    assert.equal(res.outcome, "timeout", JSON.stringify(res));
    assert.ok(tproxyPackets(z.netnsName, 15001) > before, "the SYNs reached the ztunnel pod's TPROXY rule");
    assert.deepEqual(server.accepted(), [], "nothing reached the server in clear");
  });

  it("holds a plain client's connection to a meshed pod at the server's node (inbound side)", async () => {
    const server = meshedServer;
    assert.ok(server, "the meshed server of the previous test runs");
    const z = mesh.ztunnelOn("single2");
    const before = tproxyPackets(z.netnsName, 15006);
    const res = await mesh.probeTcp("plain-client", mesh.pod("server").ip, server.port, { timeoutMs: 2_000 });
    assert.equal(res.outcome, "timeout", JSON.stringify(res));
    assert.ok(tproxyPackets(z.netnsName, 15006) > before, "the SYNs reached the inbound TPROXY rule");
    assert.deepEqual(server.accepted(), []);
  });

  it("shares the cluster with the control plane, which indexes the pods", () => {
    for (const name of ["client", "server"]) {
      const ip = mesh.pod(name).ip;
      assert.equal(
        mesh.controlPlane.cp.index.resolve(TYPE_URL.address, `/${ip}`).length,
        1,
        `${name} at ${ip}`,
      );
    }
  });

  it("makes the control plane reachable from a ztunnel pod's namespace", async () => {
    assert.equal(mesh.controlPlaneAddress, `${CONTROL_PLANE_IP}:15012`);
    const [host, port] = mesh.controlPlaneAddress.split(":");
    const res = await mesh.probeTcp("ztunnel-single1", host ?? "", Number(port), {
      payload: "",
      timeoutMs: 500,
    });
    assert.equal(res.outcome, "connected", JSON.stringify(res));
  });

  it("lets a ztunnel pod get a certificate from the CA there with its token, over verified TLS", async () => {
    const identity = "spiffe://cluster.local/ns/mesh/sa/client";
    const run = await mesh.exec(
      "ztunnel-single1",
      process.execPath,
      ["--input-type=module", "-e", CSR_SCRIPT, fromRoot(), mesh.controlPlaneAddress, identity],
      { env: { MESH_CA: mesh.rootCaPem, MESH_TOKEN: mesh.tokenFor("ztunnel-single1") }, timeoutMs: 20_000 },
    );
    const answer = JSON.parse(run.stdout.trim()) as { chain?: string[]; code?: number; details?: string };
    assert.ok(answer.chain, JSON.stringify(answer));
    assert.equal(answer.chain.length, 2);
    assert.equal(answer.chain[1], mesh.rootCaPem);
  });

  it("refuses the same request with the token of a pod that is not a ztunnel", async () => {
    const run = await mesh.exec(
      "ztunnel-single1",
      process.execPath,
      [
        "--input-type=module",
        "-e",
        CSR_SCRIPT,
        fromRoot(),
        mesh.controlPlaneAddress,
        "spiffe://cluster.local/ns/mesh/sa/client",
      ],
      { env: { MESH_CA: mesh.rootCaPem, MESH_TOKEN: mesh.tokenFor("plain-client") }, timeoutMs: 20_000 },
    );
    const answer = JSON.parse(run.stdout.trim()) as { chain?: string[]; code?: number };
    assert.equal(answer.chain, undefined);
    assert.equal(answer.code, 7, "PERMISSION_DENIED");
  });

  it("adds and deletes pods later, programming the nodes each time", async () => {
    const extra = await mesh.addPod({
      name: "extra",
      namespace: "mesh",
      node: "single2",
      serviceAccount: "extra",
    });
    assert.deepEqual(
      ipsetMembers(mesh.node("single2").netns).sort(),
      [mesh.pod("server").ip, extra.ip].sort(),
    );
    await mesh.deletePod("extra");
    assert.deepEqual(ipsetMembers(mesh.node("single2").netns), [mesh.pod("server").ip]);
    assert.throws(() => mesh.pod("extra"), /no pod extra/);
    assert.equal(mesh.source.snapshot().pods.has(extra.uid), false);
    assert.doesNotMatch(
      execFileSync("ip", ["netns", "list"], { encoding: "utf8" }),
      new RegExp(extra.netnsName),
    );
  });

  it("removes every namespace it created when closed", async () => {
    const names = [
      ...mesh.pods().map((p) => p.netnsName),
      ...mesh.nodes.map((n) => n.netns.name),
      mesh.controlPlaneNetns.name,
      mesh.wire.ns.name,
    ];
    await mesh.close();
    const left = execFileSync("ip", ["netns", "list"], { encoding: "utf8" });
    for (const name of names) assert.doesNotMatch(left, new RegExp(`^${name}\\b`, "m"));
    assert.doesNotMatch(left, new RegExp(`^${testNetnsName("meshnet-")}`, "m"));
  });
});
