import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, symlinkSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { pino } from "pino";
import { NodeAgent } from "../../src/agent/agent.js";
import { AgentMetrics } from "../../src/agent/metrics.js";
import { MemoryClusterSource } from "../../src/cluster/memory.js";
import type { ClusterPod } from "../../src/cluster/types.js";
import { installConflist } from "../../src/cni/conflist-install.js";
import { CniRuntime, createPodNetns, deletePodNetns, kubernetesCniArgs } from "../../src/cni/runtime.js";
import type { CniResult, RuntimeConflist } from "../../src/cni/runtime.js";
import { serveAgentSocket } from "../../src/cni/socket.js";
import type { AgentSocketServer } from "../../src/cni/socket.js";
import { Runner } from "../../src/netapply/exec.js";
import { Reconciler } from "../../src/netapply/reconciler.js";
import { ambient, namespace, pod, SEED_NODES, seedTopologyText } from "../support/cluster.js";
import { createNetns, rootOnly, testNetnsName } from "../support/netns.js";
import type { TestNetns } from "../support/netns.js";
import { ipsetMembers } from "../support/kernel.js";
import { fromRoot } from "../support/paths.js";
import { createWire } from "../support/wire.js";

// The node agent against the real kernel: nodes are namespaces on a bridge, pods are created
// through the full CNI chain (ptp + host-local + portmap + offmesh-cni) exactly as a runtime would,
// and the cluster is a MemoryClusterSource the tests change.

const scratch = mkdtempSync(join(tmpdir(), "offmesh-agent-"));
const cniBin = join(scratch, "bin");
mkdirSync(cniBin);
symlinkSync(fromRoot("bin/offmesh-cni"), join(cniBin, "offmesh-cni"));
const podNetns: string[] = [];
after(async () => {
  for (const ns of podNetns) await deletePodNetns(ns).catch(() => undefined);
  rmSync(scratch, { recursive: true, force: true });
});

interface TestAgent {
  readonly agent: NodeAgent;
  readonly node: TestNetns;
  readonly runtime: CniRuntime;
  conflist(): RuntimeConflist;
  stop(): Promise<void>;
}

async function startAgent(
  node: TestNetns,
  nodeName: string,
  source: MemoryClusterSource,
  tag: string,
): Promise<TestAgent> {
  const dir = join(scratch, tag);
  mkdirSync(dir, { recursive: true });
  const runner = new Runner(node.path);
  const socketPath = join(dir, "cni.sock");
  const agent = new NodeAgent({
    nodeName,
    source,
    runner,
    applier: new Reconciler({ runner, stateDir: join(dir, "state") }),
    metrics: new AgentMetrics(),
    log: pino({ level: "silent" }),
    installConflist: (c) => installConflist(join(dir, "net.d"), c),
    conflistOptions: { ipamDataDir: join(dir, "ipam"), agentSocket: socketPath },
    resyncMs: 3_600_000,
    podWaitMs: 500,
  });
  const server: AgentSocketServer = await serveAgentSocket(socketPath, (req) => agent.handle(req));
  await agent.start();
  const runtime = new CniRuntime({
    cniPath: [cniBin, "/usr/lib/cni"],
    cacheDir: join(dir, "cache"),
    hostNetns: node.path,
    timeoutMs: 20_000,
  });
  return {
    agent,
    node,
    runtime,
    conflist: () =>
      JSON.parse(readFileSync(join(dir, "net.d", "10-offmesh.conflist"), "utf8")) as RuntimeConflist,
    stop: async () => {
      await agent.stop();
      await server.close();
    },
  };
}

let podSeq = 0;
/** Create a pod's sandbox through the CNI chain, as the kubelet would after the API has the pod. */
async function addPod(
  t: TestAgent,
  p: ClusterPod,
): Promise<{ ip: string; netns: string; result: CniResult }> {
  const name = testNetnsName(`pod${podSeq++}`);
  const netns = await createPodNetns(name);
  podNetns.push(name);
  const result = await t.runtime.add(t.conflist(), {
    containerId: `c-${p.uid}`,
    netns,
    ifName: "eth0",
    args: kubernetesCniArgs({ namespace: p.namespace, name: p.name, uid: p.uid }),
  });
  const ip = result.ips?.[0]?.address.split("/")[0];
  assert.ok(ip, "the chain returned an address");
  return { ip, netns, result };
}

async function delPod(t: TestAgent, p: ClusterPod, netns: string): Promise<void> {
  await t.runtime.del(t.conflist(), {
    containerId: `c-${p.uid}`,
    netns,
    ifName: "eth0",
    args: kubernetesCniArgs({ namespace: p.namespace, name: p.name, uid: p.uid }),
  });
}

const members = ipsetMembers;
const table = (node: TestNetns, id: number | string): string =>
  node.sh("ip", ["route", "show", "table", String(id)]);
const rules = (node: TestNetns): string => node.sh("ip", ["rule"]);

function seedSource(): MemoryClusterSource {
  const source = new MemoryClusterSource();
  source.setTopology({ text: seedTopologyText(), source: "cluster-conf.yaml" });
  for (const n of SEED_NODES) source.upsertNode(n);
  source.upsertNamespace(ambient("apps"));
  source.upsertNamespace(namespace("plain"));
  source.upsertNamespace(namespace("istio-system"));
  return source;
}

describe("node agent on a CPU node", { ...rootOnly }, () => {
  let node: TestNetns;
  let source: MemoryClusterSource;
  let t: TestAgent;

  before(async () => {
    const wire = createWire("cpu");
    node = createNetns("cpu-master");
    wire.plug(node, "ens32", "192.168.50.130/24");
    source = seedSource();
    t = await startAgent(node, "master", source, "cpu");
  });
  after(async () => t?.stop());

  it("starts on a node with no pods yet and programs the CPU rules (bug 22)", () => {
    const s = t.agent.status();
    assert.equal(s.ready, true, s.notReadyReason);
    assert.equal(s.role, "cpu");
    assert.equal(s.pair, "master-dpu");
    assert.deepEqual(members(node), []);
    assert.match(rules(node), /^90:\s+from all fwmark 0x80\/0x80 lookup 101/m);
    assert.match(table(node, 101), /default via 192\.168\.50\.131 dev ens32 proto 176/);
    assert.match(table(node, "main"), /10\.244\.1\.0\/24 via 192\.168\.50\.131 dev ens32 proto 176/);
    assert.match(
      node.sh("iptables-save", ["-t", "mangle"]),
      /-A ztunnel-PREROUTING -i ens32 -j MARK --set-xmark 0x200\/0x200/,
    );
  });

  it("installs the planned conflist with MTU and the chained offmesh-cni plugin", () => {
    const c = t.conflist();
    assert.deepEqual(
      c.plugins.map((p) => p.type),
      ["ptp", "portmap", "offmesh-cni"],
    );
    assert.equal(c.plugins[0]?.mtu, 1500);
  });

  let sleep: ClusterPod;
  let sleepNetns = "";
  let sleepIp = "";
  it("captures a meshed pod before its CNI ADD returns", async () => {
    sleep = pod({ uid: "uid-sleep", name: "sleep", namespace: "apps", nodeName: "master", phase: "Pending" });
    source.upsertPod(sleep);
    const added = await addPod(t, sleep);
    // Checked right after ADD returned, before the API has the address: the CNI step put it there.
    assert.deepEqual(members(node), [added.ip]);
    assert.match(
      table(node, 100),
      new RegExp(`^${added.ip.replace(/\./g, "\\.")} via 192\\.168\\.50\\.131 dev ens32 proto 176`, "m"),
    );
    sleepNetns = added.netns;
    sleepIp = added.ip;
    source.upsertPod({ ...sleep, ips: [added.ip] });
  });

  it("gives the pod its address from host-local and a default route via the node's gateway", () => {
    const podNs = sleepNetns.split("/").at(-1) ?? "";
    const inPod = (args: string[]): string => node.sh("ip", ["netns", "exec", podNs, ...args]);
    assert.match(
      inPod(["ip", "-4", "addr", "show", "eth0"]),
      new RegExp(`inet ${sleepIp.replace(/\./g, "\\.")}/`),
    );
    assert.match(inPod(["ip", "route"]), /default via 10\.244\.0\.1 dev eth0/);
  });

  it("does not capture a pod of a namespace outside the mesh, and says so", async () => {
    const web = pod({
      uid: "uid-web",
      name: "web",
      namespace: "plain",
      nodeName: "master",
      phase: "Pending",
    });
    source.upsertPod(web);
    const added = await addPod(t, web);
    source.upsertPod({ ...web, ips: [added.ip] });
    await t.agent.resync();
    assert.deepEqual(members(node), [sleepIp]);
  });

  it("follows a namespace joining and leaving the mesh", async () => {
    source.upsertNamespace(ambient("plain"));
    await t.agent.resync();
    assert.equal(members(node).length, 2);
    source.upsertNamespace(namespace("plain"));
    await t.agent.resync();
    assert.deepEqual(members(node), [sleepIp]);
  });

  it("honours a pod's opt-out label", async () => {
    source.upsertPod({ ...sleep, ips: [sleepIp], labels: { "istio.io/dataplane-mode": "none" } });
    await t.agent.resync();
    assert.deepEqual(members(node), []);
    assert.doesNotMatch(table(node, 100), new RegExp(sleepIp.replace(/\./g, "\\.")));
    source.upsertPod({ ...sleep, ips: [sleepIp] });
    await t.agent.resync();
    assert.deepEqual(members(node), [sleepIp]);
  });

  it("repairs drift on resync and counts it", async () => {
    node.sh("ipset", ["del", "ztunnel-pods-ips", sleepIp]);
    node.sh("iptables", [
      "-t",
      "mangle",
      "-D",
      "ztunnel-PREROUTING",
      "-i",
      "ens32",
      "-j",
      "MARK",
      "--set-xmark",
      "0x200/0x200",
    ]);
    node.sh("ip", ["route", "add", "10.244.77.0/24", "via", "192.168.50.131", "proto", "176"]);
    const before = t.agent.status().driftRepairs;
    await t.agent.resync();
    assert.deepEqual(members(node), [sleepIp]);
    assert.match(node.sh("iptables-save", ["-t", "mangle"]), /-A ztunnel-PREROUTING -i ens32 -j MARK/);
    assert.doesNotMatch(table(node, "main"), /10\.244\.77\.0/);
    assert.equal(t.agent.status().driftRepairs, before + 1);
    const last = t.agent.status().lastApply;
    await t.agent.resync();
    assert.equal(
      t.agent.status().lastApply?.writes,
      0,
      `a second resync writes nothing (before: ${JSON.stringify(last)})`,
    );
  });

  it("keeps the routes to other nodes' pods as nodes come and go, and replaces a wrong gateway", async () => {
    source.deleteNode("worker1");
    await t.agent.resync();
    assert.doesNotMatch(table(node, "main"), /10\.244\.3\.0\/24/, "a vanished node's route is removed");
    source.upsertNode({
      name: "worker2",
      internalIPs: ["192.168.50.140"],
      podCIDRs: ["10.244.9.0/24"],
      labels: {},
    });
    await t.agent.resync();
    assert.match(
      table(node, "main"),
      /10\.244\.9\.0\/24 via 192\.168\.50\.131 dev ens32 proto 176/,
      "a new node, even one not in the topology, is reached through this CPU's DPU",
    );
    node.sh("ip", [
      "route",
      "replace",
      "10.244.9.0/24",
      "via",
      "192.168.50.140",
      "dev",
      "ens32",
      "proto",
      "176",
    ]);
    await t.agent.resync();
    assert.match(table(node, "main"), /10\.244\.9\.0\/24 via 192\.168\.50\.131 dev ens32/);
    source.deleteNode("worker2");
    source.upsertNode(SEED_NODES[3] ?? assert.fail("seed node"));
    await t.agent.resync();
    assert.match(table(node, "main"), /10\.244\.3\.0\/24 via 192\.168\.50\.131/);
  });

  it("re-derives membership from the cluster on a fresh start, without the CNI step", async () => {
    await t.stop();
    node.sh("ipset", ["flush", "ztunnel-pods-ips"]);
    t = await startAgent(node, "master", source, "cpu");
    assert.deepEqual(members(node), [sleepIp]);
  });

  it("keeps the old topology when a changed one is invalid", async () => {
    source.setTopology({ text: "pairs:\n  - cpuNodeIP: not-an-ip\n", source: "cluster-conf.yaml" });
    await t.agent.resync();
    const s = t.agent.status();
    assert.match(s.topology.error ?? "", /rejected, keeping the previous topology/);
    assert.equal(s.role, "cpu");
    assert.match(rules(node), /^90:/m);
  });

  it("applies a valid topology change: master becomes a single", async () => {
    source.setTopology({
      text: "pairs:\n  - cpuNodeIP: 192.168.50.133\n    dpuNodeIP: 192.168.50.128\n    cpuNodeName: worker1\n    dpuNodeName: worker1-dpu\nsingles:\n  - nodeIP: 192.168.50.130\n    nodeName: master\n  - nodeIP: 192.168.50.131\n    nodeName: master-dpu\n",
      source: "cluster-conf.yaml",
    });
    await t.agent.resync();
    const s = t.agent.status();
    assert.equal(s.topology.error, undefined);
    assert.equal(s.role, "single");
    assert.doesNotMatch(rules(node), /^90:/m, "the CPU's captured-reply rule is gone");
    assert.match(rules(node), /^0:\s+from all lookup local/m, "the local rule is back at 0");
    assert.match(table(node, 101), /blackhole default/, "no ztunnel here yet: held, not sent in clear");
    assert.match(
      table(node, "main"),
      /10\.244\.3\.0\/24 via 192\.168\.50\.128 dev ens32/,
      "a CPU's pods via its DPU",
    );
  });

  it("removes a deleted pod from the set, also before the API forgets it", async () => {
    source.setTopology({ text: seedTopologyText(), source: "cluster-conf.yaml" });
    await t.agent.resync();
    assert.deepEqual(members(node), [sleepIp]);
    await delPod(t, sleep, sleepNetns);
    assert.deepEqual(members(node), []);
    source.deletePod(sleep.uid);
    await t.agent.resync();
    assert.deepEqual(members(node), []);
  });

  it("cleanup leaves nothing of offmesh", async () => {
    await t.stop();
    await new Reconciler({
      runner: new Runner(node.path),
      stateDir: join(scratch, "cpu", "state"),
    }).cleanup();
    assert.doesNotMatch(node.sh("iptables-save", []), /ztunnel-|OFFMESH-/);
    assert.doesNotMatch(node.sh("ipset", ["list", "-n"]), /ztunnel/);
    assert.doesNotMatch(node.sh("ip", ["route", "show", "table", "all"]), /proto 176/);
    assert.match(rules(node), /^0:\s+from all lookup local/m);
    assert.doesNotMatch(rules(node), /^(90|99|100|101|102|103):/m);
  });
});

describe("node agent on a DPU node", { ...rootOnly }, () => {
  let node: TestNetns;
  let source: MemoryClusterSource;
  let t: TestAgent;
  let ztunnel: ClusterPod;
  let ztunnelIp = "";
  let ztunnelNetns = "";

  before(async () => {
    const wire = createWire("dpu");
    node = createNetns("dpu-master");
    wire.plug(node, "ens32", "192.168.50.131/24");
    source = seedSource();
    t = await startAgent(node, "master-dpu", source, "dpu");
  });
  after(async () => t?.stop());

  it("holds meshed traffic while no ztunnel runs (fail closed)", () => {
    const s = t.agent.status();
    assert.equal(s.role, "dpu");
    assert.equal(s.tunnel, "vxlan", "geneve is missing on this kernel; vxlan is detected");
    assert.match(table(node, 101), /blackhole default/);
    assert.match(table(node, 102), /blackhole default/);
    assert.doesNotMatch(node.sh("ip", ["link"]), /istioin/);
  });

  it("captures the paired CPU's meshed pods", async () => {
    source.upsertPod(
      pod({ uid: "uid-x", name: "x", namespace: "apps", nodeName: "master", ips: ["10.244.0.5"] }),
    );
    source.upsertPod(
      pod({ uid: "uid-y", name: "y", namespace: "apps", nodeName: "worker1", ips: ["10.244.3.7"] }),
    );
    await t.agent.resync();
    assert.deepEqual(members(node), ["10.244.0.5"], "its CPU's pods only, not another pair's");
    assert.match(table(node, 100), /blackhole 10\.244\.0\.5 proto 176/);
  });

  it("connects the tunnels when its ztunnel pod starts, and programs the pod", async () => {
    ztunnel = pod({
      uid: "uid-zt-1",
      name: "ztunnel-a",
      namespace: "istio-system",
      nodeName: "master-dpu",
      labels: { app: "ztunnel" },
      phase: "Pending",
    });
    source.upsertPod(ztunnel);
    const added = await addPod(t, ztunnel);
    ztunnelIp = added.ip;
    ztunnelNetns = added.netns;
    source.upsertPod({ ...ztunnel, ips: [ztunnelIp], phase: "Running" });
    await t.agent.resync();
    const link = node.sh("ip", ["-d", "link", "show", "istioin"]);
    assert.match(link, new RegExp(`vxlan id 1000 remote ${ztunnelIp.replace(/\./g, "\\.")}`));
    assert.match(
      table(node, 100),
      /10\.244\.0\.5 via 192\.168\.126\.2 dev istioin proto 176 src 10\.244\.1\.1/,
    );
    assert.match(table(node, 101), /default via 192\.168\.127\.2 dev istioout/);
    const podNs = ztunnelNetns.split("/").at(-1) ?? "";
    const inPod = (args: string[]): string => node.sh("ip", ["netns", "exec", podNs, ...args]);
    assert.match(inPod(["iptables-save", "-t", "mangle"]), /TPROXY --on-port 15001/);
    assert.match(inPod(["ip", "-d", "link", "show", "pistioout"]), /vxlan id 1001 remote 10\.244\.1\.1/);
  });

  it("removes a CPU pod that opts out from the DPU's set too (bug 16)", async () => {
    source.upsertPod(
      pod({
        uid: "uid-x",
        name: "x",
        namespace: "apps",
        nodeName: "master",
        ips: ["10.244.0.5"],
        labels: { "istio.io/dataplane-mode": "none" },
      }),
    );
    await t.agent.resync();
    assert.deepEqual(members(node), []);
    source.upsertPod(
      pod({ uid: "uid-x", name: "x", namespace: "apps", nodeName: "master", ips: ["10.244.0.5"] }),
    );
    await t.agent.resync();
    assert.deepEqual(members(node), ["10.244.0.5"]);
  });

  it("keeps rules in place across a ztunnel restart and follows its new address", async () => {
    await delPod(t, ztunnel, ztunnelNetns);
    source.deletePod(ztunnel.uid);
    await t.agent.resync();
    assert.deepEqual(members(node), ["10.244.0.5"], "membership survives");
    assert.match(table(node, 100), /blackhole 10\.244\.0\.5/, "held while the ztunnel is away");
    assert.match(node.sh("iptables-save", ["-t", "mangle"]), /ztunnel-PREROUTING/);
    const next = pod({ ...ztunnel, uid: "uid-zt-2", name: "ztunnel-b", phase: "Pending", ips: [] });
    source.upsertPod(next);
    const added = await addPod(t, next);
    source.upsertPod({ ...next, ips: [added.ip], phase: "Running" });
    await t.agent.resync();
    assert.notEqual(added.ip, "");
    assert.match(
      node.sh("ip", ["-d", "link", "show", "istioout"]),
      new RegExp(`remote ${added.ip.replace(/\./g, "\\.")}`),
    );
    assert.match(table(node, 100), /10\.244\.0\.5 via 192\.168\.126\.2 dev istioin/);
  });

  it("reports its state for `offmesh agent status`", async () => {
    const res = await t.agent.handle({ op: "status" });
    assert.equal(res.ok, true);
    const s = (res as { status: { members: { ip: string }[]; role: string } }).status;
    assert.equal(s.role, "dpu");
    assert.deepEqual(
      s.members.map((m) => m.ip),
      ["10.244.0.5"],
    );
  });
});
