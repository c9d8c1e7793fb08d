import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import type { z } from "zod";
import { planCpuAmbient } from "../../src/netplan/ambientCpu.js";
import { planProxyNodeAmbient } from "../../src/netplan/ambientDpu.js";
import { loadFactsFile } from "../../src/netplan/facts.js";
import type { factsSchema } from "../../src/netplan/facts.js";
import type { NodeFacts } from "../../src/netplan/facts.js";
import { selectMembers } from "../../src/netplan/members.js";
import { mergeFirewalls, planNode } from "../../src/netplan/plan.js";
import {
  renderIpRules,
  renderIpsetSave,
  renderIptablesSave,
  renderOutcome,
  renderPlan,
  renderRoutes,
  routeText,
} from "../../src/netplan/render.js";
import type {
  Firewall,
  IpRule,
  NetState,
  NodePlan,
  OwnedChain,
  PlanOutcome,
  Route,
} from "../../src/netplan/types.js";
import { planZtunnelPod } from "../../src/netplan/ztunnelPod.js";
import { loadTopologyFile } from "../../src/topology/index.js";
import { facts, node, topology } from "../support/netplan.js";
import type { FactsInput } from "../support/netplan.js";

// Unit tests of the ambient planners (members, CPU, DPU/single, ztunnel pod), of their composition
// in planNode/mergeFirewalls, and of the text renderings in render.ts.

type PodInput = z.input<typeof factsSchema>["pods"] extends (infer P)[] | undefined ? P : never;

function planned(outcome: PlanOutcome): NodePlan {
  if (!outcome.planned) assert.fail(`expected a plan, got: ${outcome.reason}`);
  return outcome.plan;
}

function pod(name: string, nodeName: string, ips: string[], extra: Partial<PodInput> = {}): PodInput {
  return { uid: `uid-${name}`, name, namespace: "default", node: nodeName, ips, ...extra };
}

// ---- the seed cluster (examples/seed), rebuilt in code plus a single ---------------------------

const SEED = topology(
  "pairs:",
  "  - cpuNodeIP: 192.168.50.130",
  "    dpuNodeIP: 192.168.50.131",
  "    cpuNodeName: master",
  "    dpuNodeName: master-dpu",
  "  - cpuNodeIP: 192.168.50.133",
  "    dpuNodeIP: 192.168.50.128",
  "    cpuNodeName: worker1",
  "    dpuNodeName: worker1-dpu",
  "singles:",
  "  - nodeIP: 192.168.50.140",
  "    nodeName: edge1",
);

const NODES = {
  master: { ip: "192.168.50.130", cidr: "10.244.0.0/24" },
  "master-dpu": { ip: "192.168.50.131", cidr: "10.244.1.0/24" },
  "worker1-dpu": { ip: "192.168.50.128", cidr: "10.244.2.0/24" },
  worker1: { ip: "192.168.50.133", cidr: "10.244.3.0/24" },
  edge1: { ip: "192.168.50.140", cidr: "10.244.4.0/24" },
} as const;
type SeedNode = keyof typeof NODES;

/** Pods of the whole cluster: two meshed per node plus the odd ones of the seed example. */
const PODS: PodInput[] = [
  pod("sleep", "master", ["10.244.0.5"]),
  pod("productpage", "master", ["10.244.0.6"]),
  pod("node-exporter", "master", ["192.168.50.130"], { hostNetwork: true }),
  pod("reviews-pending", "master", []),
  pod("dpu-agent", "master-dpu", ["10.244.1.7"]),
  pod("ztunnel-master-dpu", "master-dpu", ["10.244.1.2"]),
  pod("httpbin", "worker1", ["10.244.3.7"]),
  pod("w1-dpu-agent", "worker1-dpu", ["10.244.2.7"]),
  pod("edge-app", "edge1", ["10.244.4.6"]),
  pod("ztunnel-edge1", "edge1", ["10.244.4.2"]),
];

function seedFacts(self: SeedNode, extra: Partial<FactsInput> = {}): NodeFacts {
  const me = NODES[self];
  const gw = me.cidr.replace(".0/24", ".1");
  const ztunnel =
    self === "master" || self === "master-dpu"
      ? { ip: "10.244.1.2", ...(self === "master-dpu" ? { hostVeth: "veth1ae58883" } : {}) }
      : self === "worker1" || self === "worker1-dpu"
        ? {
            ip: "10.244.2.2",
            captureDNS: true,
            ...(self === "worker1-dpu" ? { hostVeth: "veth3c9b1d07" } : {}),
          }
        : { ip: "10.244.4.2", hostVeth: "veth7f3e0b21" };
  return facts({
    node: self,
    nic: { name: "ens32", ip: me.ip, mtu: 1500 },
    podCIDRs: [me.cidr],
    podGateway: gw,
    clusterPodCIDRs: ["10.244.0.0/16"],
    nodes: (Object.keys(NODES) as SeedNode[])
      .filter((n) => n !== self)
      .map((n) => ({ name: n, ips: [NODES[n].ip], podCIDRs: [NODES[n].cidr] })),
    ztunnel,
    tunnel: "geneve",
    pods: PODS,
    ...extra,
  });
}

function seedPlan(self: SeedNode, extra: Partial<FactsInput> = {}): NodePlan {
  return planned(planNode(SEED, self, seedFacts(self, extra)));
}

function chain(fw: Firewall | undefined, table: "mangle" | "nat", name: string): OwnedChain {
  const c = fw?.tables.find((t) => t.table === table)?.chains.find((ch) => ch.name === name);
  assert.ok(c, `chain ${table}/${name} is planned`);
  return c;
}

const specs = (c: OwnedChain): string[] => c.rules.map((r) => r.spec);
const allSpecs = (state: NetState): string[] =>
  state.firewalls.flatMap((fw) =>
    fw.tables.flatMap((t) => [...t.jumps.map((j) => j.spec), ...t.chains.flatMap(specs)]),
  );
const routesIn = (state: NetState, table: Route["table"]): Route[] =>
  state.routes.filter((r) => r.table === table);
const memberIps = (state: NetState): string[] => state.ipsets.flatMap((s) => s.members.map((m) => m.ip));
const sysctl = (state: NetState, key: string): string | undefined =>
  state.sysctls.find((s) => s.key === key)?.value;

// ---- members --------------------------------------------------------------------------------

describe("selectMembers (bug 17, bug 26)", () => {
  const select = (self: SeedNode, pods: PodInput[], extra: Partial<FactsInput> = {}) => {
    const f = seedFacts(self, { ...extra, pods });
    return selectMembers(SEED, node(SEED, self), f, f.pods, 4);
  };

  it("excludes hostNetwork pods with a note (bug 17)", () => {
    const m = select("master", [pod("node-exporter", "master", ["192.168.50.130"], { hostNetwork: true })]);
    assert.deepEqual(m.members, []);
    assert.deepEqual(m.notes, [
      "pod default/node-exporter uses the host network; it is not captured (bug 17)",
    ]);
  });

  it("excludes a hostNetwork pod even when its address is inside the pod CIDR (bug 17)", () => {
    const m = select("master", [pod("odd", "master", ["10.244.0.9"], { hostNetwork: true })]);
    assert.deepEqual(m.members, []);
    assert.equal(m.notes.length, 1);
  });

  it("excludes pods without an IP with a note (bug 17)", () => {
    const m = select("master", [pod("pending", "master", [])]);
    assert.deepEqual(m.members, []);
    assert.deepEqual(m.notes, [
      "pod default/pending has no IPv4 address yet; it is not captured until it has one (bug 17)",
    ]);
  });

  it("excludes pods with only an address of the other family, with a note (bug 17)", () => {
    const m = select("master", [pod("v6only", "master", ["fd00::5"])]);
    assert.deepEqual(m.members, []);
    assert.match(m.notes[0] ?? "", /no IPv4 address yet/);
  });

  it("excludes the ztunnel's own address, with a note", () => {
    const m = select("master-dpu", [
      pod("ztunnel", "master-dpu", ["10.244.1.2"]),
      pod("app", "master-dpu", ["10.244.1.7"]),
    ]);
    assert.deepEqual(
      m.members.map((x) => x.ip),
      ["10.244.1.7"],
    );
    assert.deepEqual(m.notes, [
      "pod default/ztunnel has the ztunnel's address 10.244.1.2; the ztunnel is never captured",
    ]);
  });

  it("excludes addresses outside the pod CIDR of the pod's node, with a note", () => {
    const m = select("master", [
      pod("stray", "master", ["10.244.3.9"]),
      pod("outside", "master", ["172.16.0.4"]),
      pod("ok", "master", ["10.244.0.4"]),
    ]);
    assert.deepEqual(
      m.members.map((x) => x.ip),
      ["10.244.0.4"],
    );
    // Notes follow pod order by (node, namespace, name), not the order the facts listed them in.
    assert.deepEqual(m.notes, [
      "pod default/outside address 172.16.0.4 is outside the pod CIDR of node master; not captured",
      "pod default/stray address 10.244.3.9 is outside the pod CIDR of node master; not captured",
    ]);
  });

  it("a DPU checks its CPU's pods against the CPU's pod CIDR, not its own", () => {
    const m = select("master-dpu", [
      pod("a", "master", ["10.244.1.50"]),
      pod("b", "master", ["10.244.0.50"]),
    ]);
    assert.deepEqual(
      m.members.map((x) => x.ip),
      ["10.244.0.50"],
    );
    assert.match(m.notes[0] ?? "", /10\.244\.1\.50 is outside the pod CIDR of node master/);
  });

  it("keeps a duplicated address once (the first pod's), with a note", () => {
    const m = select("master", [
      pod("first", "master", ["10.244.0.5"]),
      pod("second", "master", ["10.244.0.5"]),
      pod("self-dup", "master", ["10.244.0.8", "10.244.0.8"]),
    ]);
    assert.deepEqual(m.members, [
      { ip: "10.244.0.5", comment: "uid-first" },
      { ip: "10.244.0.8", comment: "uid-self-dup" },
    ]);
    assert.equal(m.notes.length, 2);
    assert.match(m.notes[0] ?? "", /10\.244\.0\.5 is already held by pod uid uid-first/);
  });

  it("sorts members numerically: 10.244.0.9 before 10.244.0.10 before 10.244.0.100", () => {
    const m = select("master", [
      pod("c", "master", ["10.244.0.100"]),
      pod("b", "master", ["10.244.0.10"]),
      pod("a", "master", ["10.244.0.9"]),
      pod("d", "master", ["10.244.0.20"]),
    ]);
    assert.deepEqual(
      m.members.map((x) => x.ip),
      ["10.244.0.9", "10.244.0.10", "10.244.0.20", "10.244.0.100"],
    );
  });

  it("a member's comment is its pod's UID", () => {
    const m = select("master", [pod("sleep", "master", ["10.244.0.5"])]);
    assert.deepEqual(m.members, [{ ip: "10.244.0.5", comment: "uid-sleep" }]);
  });

  it("a CPU captures only its own pods", () => {
    const m = select("master", PODS);
    assert.deepEqual(
      m.members.map((x) => x.ip),
      ["10.244.0.5", "10.244.0.6"],
    );
  });

  it("a DPU captures its own pods and its paired CPU's (bug 26)", () => {
    const m = select("master-dpu", PODS);
    assert.deepEqual(
      m.members.map((x) => x.ip),
      ["10.244.0.5", "10.244.0.6", "10.244.1.7"],
    );
  });

  it("a single captures only its own pods", () => {
    const m = select("edge1", PODS);
    assert.deepEqual(
      m.members.map((x) => x.ip),
      ["10.244.4.6"],
    );
  });

  it("another pair's pods are never captured, and produce no note", () => {
    for (const self of ["master", "master-dpu"] as const) {
      const m = select(self, [
        pod("httpbin", "worker1", ["10.244.3.7"]),
        pod("w1", "worker1-dpu", ["10.244.2.7"]),
      ]);
      assert.deepEqual(m.members, [], self);
      assert.deepEqual(m.notes, [], self);
    }
    const w = select("worker1-dpu", PODS);
    assert.deepEqual(
      w.members.map((x) => x.ip),
      ["10.244.2.7", "10.244.3.7"],
    );
  });

  it("a CPU does not capture its DPU's pods, a DPU not a single's", () => {
    assert.deepEqual(select("master", [pod("x", "master-dpu", ["10.244.1.7"])]).members, []);
    assert.deepEqual(select("master-dpu", [pod("x", "edge1", ["10.244.4.6"])]).members, []);
  });

  it("IPv6: canonical addresses, numerically sorted, duplicates in two spellings kept once", () => {
    const topo6 = topology("singles:", "  - nodeName: edge6", "    nodeIP: 'fd00::40'");
    const f = facts({
      nic: { name: "eth0", ip: "fd00::40" },
      podCIDRs: ["fd00:244:4::/64"],
      podGateway: "fd00:244:4::1",
      clusterPodCIDRs: ["fd00:244::/48"],
      ztunnel: { ip: "fd00:244:4::2", hostVeth: "vethz" },
      pods: [
        pod("b", "edge6", ["FD00:244:4:0::10"]),
        pod("a", "edge6", ["fd00:244:4::9"]),
        pod("dup", "edge6", ["fd00:244:4::10"]),
        pod("z", "edge6", ["fd00:244:4:0:0:0:0:2"]),
        pod("v4", "edge6", ["10.244.4.5"]),
      ],
    });
    const m = selectMembers(topo6, node(topo6, "edge6"), f, f.pods, 6);
    assert.deepEqual(m.members, [
      { ip: "fd00:244:4::9", comment: "uid-a" },
      { ip: "fd00:244:4::10", comment: "uid-b" },
    ]);
    assert.equal(m.notes.length, 3, JSON.stringify(m.notes));
  });
});

// ---- CPU ----------------------------------------------------------------------------------------

describe("CPU ambient", () => {
  const plan = seedPlan("master");
  const fw4 = plan.host.firewalls.find((f) => f.family === 4);
  const pre = chain(fw4, "mangle", "ztunnel-PREROUTING");

  it("is planned for the CPU role, without a ztunnel pod, links or link settings", () => {
    assert.equal(plan.role, "cpu");
    assert.equal(plan.family, 4);
    assert.equal(plan.ztunnelPod, undefined);
    assert.deepEqual(plan.host.links, []);
    assert.deepEqual(plan.host.linkSettings, []);
  });

  it("bug 14: everything arriving on the NIC is skip-marked (-i ens32 -j MARK --set-xmark 0x200/0x200)", () => {
    assert.ok(specs(pre).includes("-i ens32 -j MARK --set-xmark 0x200/0x200"), specs(pre).join("\n"));
    const r = pre.rules.find((x) => x.spec === "-i ens32 -j MARK --set-xmark 0x200/0x200");
    assert.match(r?.why ?? "", /bug 14/);
  });

  it("bug 14: no rule matches packets arriving on the NIC together with the ipset", () => {
    for (const fw of plan.host.firewalls)
      for (const t of fw.tables)
        for (const c of t.chains)
          for (const s of specs(c))
            assert.ok(
              !(/(^|\s)-i ens32(\s|$)/.test(s) && s.includes("--match-set")),
              `${t.table}/${c.name}: ${s}`,
            );
  });

  it("bug 14: the NIC skip comes before the meshed-source outbound mark", () => {
    const s = specs(pre);
    const nicSkip = s.indexOf("-i ens32 -j MARK --set-xmark 0x200/0x200");
    const outbound = s.indexOf(
      "-p tcp -m set --match-set ztunnel-pods-ips src -j MARK --set-xmark 0x100/0x100",
    );
    assert.ok(nicSkip >= 0 && outbound > nicSkip);
    assert.ok(s.slice(nicSkip, outbound).includes("-m mark --mark 0x200/0x200 -j RETURN"));
  });

  it("pins the ordered ztunnel-PREROUTING mangle rules of the seed master", () => {
    assert.deepEqual(specs(pre), [
      "-m connmark --mark 0x220/0x220 -j MARK --set-xmark 0x200/0x200",
      "-m mark --mark 0x200/0x200 -j RETURN",
      "-i ens32 -j MARK --set-xmark 0x200/0x200",
      "-p udp -j MARK --set-xmark 0x220/0x220",
      "-m mark --mark 0x200/0x200 -j RETURN",
      "-m connmark --mark 0x80/0x80 -j MARK --set-xmark 0x80/0x80",
      "-p tcp -m set --match-set ztunnel-pods-ips src -j MARK --set-xmark 0x100/0x100",
    ]);
  });

  it("bug 15: table 100 holds one route per meshed pod, via the DPU on the NIC", () => {
    assert.deepEqual(routesIn(plan.host, 100), [
      { family: 4, table: 100, dst: "10.244.0.5", via: "192.168.50.131", dev: "ens32", proto: "offmesh" },
      { family: 4, table: 100, dst: "10.244.0.6", via: "192.168.50.131", dev: "ens32", proto: "offmesh" },
    ]);
  });

  it("bug 15: rule 103 looks up table 100", () => {
    assert.deepEqual(
      plan.host.rules.find((r) => r.priority === 103),
      { family: 4, priority: 103, action: { lookup: 100 } },
    );
  });

  it("bug 15: the captured-reply rule (90, fwmark 0x80) precedes the relocated local rule (99)", () => {
    const reply = plan.host.rules.find((r) => r.priority === 90);
    assert.deepEqual(reply, {
      family: 4,
      priority: 90,
      fwmark: { value: 0x80, mask: 0x80 },
      action: { lookup: 101 },
    });
    assert.equal(plan.host.localRulePriority, 99);
    assert.ok(90 < plan.host.localRulePriority);
    const text = renderIpRules(plan.host.rules, 4, plan.host.localRulePriority).split("\n");
    const replyAt = text.indexOf("90:\tfrom all fwmark 0x80/0x80 lookup 101");
    const localAt = text.indexOf("99:\tfrom all lookup local");
    assert.ok(replyAt >= 0 && localAt > replyAt, text.join("\n"));
    assert.ok(!text.includes("0:\tfrom all lookup local"));
  });

  it("bug 15: POSTROUTING connmarks connections captured towards the DPU; PREROUTING restores the mark", () => {
    assert.deepEqual(specs(chain(fw4, "mangle", "ztunnel-POSTROUTING")), [
      "-o ens32 -p tcp -m conntrack --ctdir ORIGINAL -m set --match-set ztunnel-pods-ips dst -j CONNMARK --set-xmark 0x80/0x80",
    ]);
    assert.ok(specs(pre).includes("-m connmark --mark 0x80/0x80 -j MARK --set-xmark 0x80/0x80"));
  });

  it("bug 15: no -s <gateway>/32 host exemption in ztunnel-OUTPUT (nor anywhere)", () => {
    assert.deepEqual(specs(chain(fw4, "mangle", "ztunnel-OUTPUT")), []);
    assert.ok(allSpecs(plan.host).every((s) => !s.includes("-s 10.244.0.1/32")));
  });

  it("the full ip rule set: 90, 100 (skip → main), 101 (outbound → 101), 103 (→ 100); no 102", () => {
    assert.deepEqual(plan.host.rules, [
      { family: 4, priority: 90, fwmark: { value: 0x80, mask: 0x80 }, action: { lookup: 101 } },
      { family: 4, priority: 100, fwmark: { value: 0x200, mask: 0x200 }, action: { goto: 32766 } },
      { family: 4, priority: 101, fwmark: { value: 0x100, mask: 0x100 }, action: { lookup: 101 } },
      { family: 4, priority: 103, action: { lookup: 100 } },
    ]);
  });

  it("table 101 holds only the default route via the DPU", () => {
    assert.deepEqual(routesIn(plan.host, 101), [
      { family: 4, table: 101, dst: "default", via: "192.168.50.131", dev: "ens32", proto: "offmesh" },
    ]);
  });

  it("with no meshed pods: table 100 is empty, table 101 still routes via the DPU, a note says so", () => {
    const p = seedPlan("master", { pods: [] });
    assert.deepEqual(routesIn(p.host, 100), []);
    assert.equal(routesIn(p.host, 101).length, 1);
    assert.ok(p.notes.includes("no meshed pods on this node yet; the rules are in place for the first one"));
  });

  it("the ipset holds the CPU's meshed pods", () => {
    assert.deepEqual(plan.host.ipsets, [
      {
        name: "ztunnel-pods-ips",
        type: "hash:ip",
        family: 4,
        members: [
          { ip: "10.244.0.5", comment: "uid-sleep" },
          { ip: "10.244.0.6", comment: "uid-productpage" },
        ],
      },
    ]);
  });

  it("nat: meshed TCP is accepted (no kube-proxy DNAT, no masquerade); no DNS DNAT without captureDNS", () => {
    assert.deepEqual(specs(chain(fw4, "nat", "ztunnel-PREROUTING")), [
      "-m mark --mark 0x100/0x100 -j ACCEPT",
    ]);
    assert.deepEqual(specs(chain(fw4, "nat", "ztunnel-POSTROUTING")), [
      "-m mark --mark 0x100/0x100 -j ACCEPT",
    ]);
    assert.ok(allSpecs(plan.host).every((s) => !s.includes("DNAT")));
  });

  it("DNS DNAT to the DPU's ztunnel port 15053 only when ztunnel.captureDNS", () => {
    const p = seedPlan("worker1");
    const nat = chain(p.host.firewalls[0], "nat", "ztunnel-PREROUTING");
    assert.deepEqual(specs(nat), [
      "-m mark --mark 0x100/0x100 -j ACCEPT",
      "-p udp -m set --match-set ztunnel-pods-ips src -m udp --dport 53 -j DNAT --to-destination 10.244.2.2:15053",
    ]);
  });

  it("DNS DNAT with an IPv6 ztunnel is written [addr]:port", () => {
    const f = facts({
      nic: { name: "eth0", ip: "fd00::11" },
      podCIDRs: ["fd00:244:11::/64"],
      podGateway: "fd00:244:11::1",
      clusterPodCIDRs: ["fd00:244::/48"],
      ztunnel: { ip: "fd00:244:21::2", captureDNS: true },
    });
    const out = planCpuAmbient({ family: 6, facts: f, dpuIp: "fd00::21", members: [] });
    const nat = out.firewalls[0]?.tables
      .find((t) => t.table === "nat")
      ?.chains.find((c) => c.name === "ztunnel-PREROUTING");
    assert.ok(nat);
    assert.ok(
      specs(nat).includes(
        "-p udp -m set --match-set ztunnel-pods-ips src -m udp --dport 53 -j DNAT --to-destination [fd00:244:21::2]:15053",
      ),
    );
    assert.deepEqual(out.routes, [
      { family: 6, table: 101, dst: "default", via: "fd00::21", dev: "eth0", proto: "offmesh" },
    ]);
  });

  it("sysctls: forwarding, liberal conntrack, rp_filter=0 and accept_local=1 on the NIC (bug 13)", () => {
    assert.equal(sysctl(plan.host, "net.ipv4.ip_forward"), "1");
    assert.equal(sysctl(plan.host, "net.netfilter.nf_conntrack_tcp_be_liberal"), "1");
    for (const l of ["all", "default", "ens32"])
      assert.equal(sysctl(plan.host, `net.ipv4.conf.${l}.rp_filter`), "0", l);
    assert.equal(sysctl(plan.host, "net.ipv4.conf.ens32.accept_local"), "1");
  });

  it("the main table routes every other node's pods via the DPU", () => {
    assert.deepEqual(
      routesIn(plan.host, "main").map((r) => [r.dst, r.via]),
      [
        ["10.244.4.0/24", "192.168.50.131"],
        ["10.244.1.0/24", "192.168.50.131"],
        ["10.244.3.0/24", "192.168.50.131"],
        ["10.244.2.0/24", "192.168.50.131"],
      ],
    );
  });
});

// ---- DPU ----------------------------------------------------------------------------------------

const DPU_PREROUTING_SEED = [
  "-i istioin -j MARK --set-xmark 0x200/0x200",
  "-i istioin -j RETURN",
  "-i istioout -j MARK --set-xmark 0x200/0x200",
  "-i istioout -j RETURN",
  "-p udp -m udp --dport 6081 -j RETURN",
  "-m connmark --mark 0x220/0x220 -j MARK --set-xmark 0x200/0x200",
  "-m mark --mark 0x200/0x200 -j RETURN",
  "! -i veth1ae58883 -m connmark --mark 0x210/0x210 -j MARK --set-xmark 0x40/0x40",
  "-m mark --mark 0x40/0x40 -j RETURN",
  "! -s 10.244.1.2/32 -i veth1ae58883 -j MARK --set-xmark 0x210/0x210",
  "-m mark --mark 0x200/0x200 -j RETURN",
  "-i veth1ae58883 -j MARK --set-xmark 0x220/0x220",
  "-p udp -j MARK --set-xmark 0x220/0x220",
  "-m mark --mark 0x200/0x200 -j RETURN",
  "-p tcp -m set --match-set ztunnel-pods-ips src -j MARK --set-xmark 0x100/0x100",
];

describe("DPU ambient", () => {
  const plan = seedPlan("master-dpu");
  const fw4 = plan.host.firewalls.find((f) => f.family === 4);

  it("pins the exact ordered ztunnel-PREROUTING mangle rules of the seed master-dpu (upstream set)", () => {
    assert.deepEqual(specs(chain(fw4, "mangle", "ztunnel-PREROUTING")), DPU_PREROUTING_SEED);
  });

  it("the other mangle chains match upstream: connmark save in FORWARD/INPUT, gateway skip in OUTPUT", () => {
    const save = [
      "-m mark --mark 0x220/0x220 -j CONNMARK --save-mark --nfmask 0x220 --ctmask 0x220",
      "-m mark --mark 0x210/0x210 -j CONNMARK --save-mark --nfmask 0x210 --ctmask 0x210",
    ];
    assert.deepEqual(specs(chain(fw4, "mangle", "ztunnel-FORWARD")), save);
    assert.deepEqual(specs(chain(fw4, "mangle", "ztunnel-INPUT")), save);
    assert.deepEqual(specs(chain(fw4, "mangle", "ztunnel-OUTPUT")), [
      "-s 10.244.1.1/32 -j MARK --set-xmark 0x220/0xffffffff",
    ]);
    assert.deepEqual(specs(chain(fw4, "mangle", "ztunnel-POSTROUTING")), []);
  });

  it("nat: meshed TCP accepted in PREROUTING and POSTROUTING, no DNS DNAT without captureDNS", () => {
    assert.deepEqual(specs(chain(fw4, "nat", "ztunnel-PREROUTING")), [
      "-m mark --mark 0x100/0x100 -j ACCEPT",
    ]);
    assert.deepEqual(specs(chain(fw4, "nat", "ztunnel-POSTROUTING")), [
      "-m mark --mark 0x100/0x100 -j ACCEPT",
    ]);
  });

  it("DNS DNAT to its own ztunnel when captureDNS", () => {
    const p = seedPlan("worker1-dpu");
    assert.ok(
      specs(chain(p.host.firewalls[0], "nat", "ztunnel-PREROUTING")).includes(
        "-p udp -m set --match-set ztunnel-pods-ips src -m udp --dport 53 -j DNAT --to-destination 10.244.2.2:15053",
      ),
    );
  });

  it("ip rules match upstream: 100 skip → main, 101 → 101, 102 proxy-return → 102, 103 → 100; local at 0", () => {
    assert.deepEqual(plan.host.rules, [
      { family: 4, priority: 100, fwmark: { value: 0x200, mask: 0x200 }, action: { goto: 32766 } },
      { family: 4, priority: 101, fwmark: { value: 0x100, mask: 0x100 }, action: { lookup: 101 } },
      { family: 4, priority: 102, fwmark: { value: 0x40, mask: 0x40 }, action: { lookup: 102 } },
      { family: 4, priority: 103, action: { lookup: 100 } },
    ]);
    assert.equal(plan.host.localRulePriority, 0);
  });

  it("tables 100/101/102 route into the ztunnel through the tunnels and its veth", () => {
    const ztunnel = (table: number): Route => ({
      family: 4,
      table,
      dst: "10.244.1.2",
      dev: "veth1ae58883",
      scope: "link",
      proto: "offmesh",
    });
    const member = (ip: string): Route => ({
      family: 4,
      table: 100,
      dst: ip,
      via: "192.168.126.2",
      dev: "istioin",
      src: "10.244.1.1",
      proto: "offmesh",
    });
    assert.deepEqual(routesIn(plan.host, 100), [
      ztunnel(100),
      member("10.244.0.5"),
      member("10.244.0.6"),
      member("10.244.1.7"),
    ]);
    assert.deepEqual(routesIn(plan.host, 101), [
      ztunnel(101),
      { family: 4, table: 101, dst: "default", via: "192.168.127.2", dev: "istioout", proto: "offmesh" },
    ]);
    assert.deepEqual(routesIn(plan.host, 102), [
      ztunnel(102),
      {
        family: 4,
        table: 102,
        dst: "default",
        via: "10.244.1.2",
        dev: "veth1ae58883",
        onlink: true,
        proto: "offmesh",
      },
    ]);
  });

  it("captures its own and its CPU's meshed pods (bug 26)", () => {
    assert.deepEqual(memberIps(plan.host), ["10.244.0.5", "10.244.0.6", "10.244.1.7"]);
  });

  it("geneve: UDP dport 6081 RETURN, geneve links with VNIs 1000/1001 to the ztunnel", () => {
    assert.deepEqual(plan.host.links, [
      {
        kind: "geneve",
        name: "istioin",
        vni: 1000,
        remote: "10.244.1.2",
        dstport: 6081,
        addresses: ["192.168.126.1/30"],
        mtu: 1500,
      },
      {
        kind: "geneve",
        name: "istioout",
        vni: 1001,
        remote: "10.244.1.2",
        dstport: 6081,
        addresses: ["192.168.127.1/30"],
        mtu: 1500,
      },
    ]);
  });

  it("vxlan: UDP dport 4789 RETURN, vxlan links on 4789", () => {
    const p = seedPlan("master-dpu", { tunnel: "vxlan" });
    const pre = specs(chain(p.host.firewalls[0], "mangle", "ztunnel-PREROUTING"));
    assert.ok(pre.includes("-p udp -m udp --dport 4789 -j RETURN"));
    assert.ok(!pre.some((s) => s.includes("6081")));
    assert.deepEqual(
      p.host.links.map((l) => [l.kind, l.name, "dstport" in l ? l.dstport : undefined]),
      [
        ["vxlan", "istioin", 4789],
        ["vxlan", "istioout", 4789],
      ],
    );
  });

  it("veth: no tunnel UDP rule; veth links whose peers go into the ztunnel pod", () => {
    const p = seedPlan("master-dpu", { tunnel: "veth" });
    const pre = specs(chain(p.host.firewalls[0], "mangle", "ztunnel-PREROUTING"));
    assert.ok(!pre.some((s) => s.includes("--dport")), pre.join("\n"));
    assert.deepEqual(
      pre,
      DPU_PREROUTING_SEED.filter((s) => !s.includes("--dport 6081")),
    );
    assert.deepEqual(p.host.links, [
      {
        kind: "veth",
        name: "istioin",
        peer: "pistioin",
        peerNetns: "ztunnel-pod",
        addresses: ["192.168.126.1/30"],
        mtu: 1500,
      },
      {
        kind: "veth",
        name: "istioout",
        peer: "pistioout",
        peerNetns: "ztunnel-pod",
        addresses: ["192.168.127.1/30"],
        mtu: 1500,
      },
    ]);
  });

  it("link settings: the ztunnel's host veth is raised by 50 for geneve and vxlan, untouched for veth", () => {
    for (const tunnel of ["geneve", "vxlan"] as const) {
      for (const mtu of [1500, 9000]) {
        const p = seedPlan("master-dpu", { tunnel, nic: { name: "ens32", ip: "192.168.50.131", mtu } });
        assert.deepEqual(
          p.host.linkSettings.map((s) => [s.name, s.mtu]),
          [["veth1ae58883", mtu + 50]],
          `${tunnel} ${mtu}`,
        );
        assert.ok(
          p.host.links.every((l) => l.mtu === mtu),
          "the tunnel links carry the NIC's MTU",
        );
      }
    }
    assert.deepEqual(seedPlan("master-dpu", { tunnel: "veth" }).host.linkSettings, []);
  });

  it("IPv6: the host veth is raised by the IPv6 tunnel overhead (70)", () => {
    const f = facts({
      nic: { name: "eth0", ip: "fd00::21", mtu: 1500 },
      podCIDRs: ["fd00:244:21::/64"],
      podGateway: "fd00:244:21::1",
      clusterPodCIDRs: ["fd00:244::/48"],
      ztunnel: { ip: "fd00:244:21::2", hostVeth: "vethz" },
    });
    const out = planProxyNodeAmbient({ family: 6, facts: f, members: [] });
    assert.deepEqual(
      out.linkSettings.map((s) => s.mtu),
      [1570],
    );
    assert.deepEqual(
      out.links.map((l) => l.addresses),
      [["fd16:9254:7126::1/126"], ["fd16:9254:7127::1/126"]],
    );
  });

  it("sysctls: rp_filter=0 and accept_local=1 on the ztunnel veth and both tunnels (bug 13)", () => {
    for (const l of ["all", "default", "veth1ae58883", "istioin", "istioout"])
      assert.equal(sysctl(plan.host, `net.ipv4.conf.${l}.rp_filter`), "0", l);
    for (const l of ["veth1ae58883", "istioin", "istioout"])
      assert.equal(sysctl(plan.host, `net.ipv4.conf.${l}.accept_local`), "1", l);
    const fix = plan.host.sysctls.find((s) => s.key === "net.ipv4.conf.istioin.rp_filter");
    assert.match(fix?.why ?? "", /bug 13/);
    assert.equal(sysctl(plan.host, "net.ipv4.ip_forward"), "1");
  });

  it("sysctls with veth tunnels: rp_filter=0 and accept_local=1 on the veth pair ends too (bug 13)", () => {
    const p = seedPlan("master-dpu", { tunnel: "veth" });
    for (const l of ["veth1ae58883", "istioin", "istioout"]) {
      assert.equal(sysctl(p.host, `net.ipv4.conf.${l}.rp_filter`), "0", l);
      assert.equal(sysctl(p.host, `net.ipv4.conf.${l}.accept_local`), "1", l);
    }
  });

  it("has a ztunnel pod state while the ztunnel runs", () => {
    assert.ok(plan.ztunnelPod);
  });
});

describe("DPU ambient: fail closed without a ztunnel", () => {
  // No ztunnel: neither in the facts nor among the pods.
  const f = seedFacts("master-dpu", { pods: PODS.filter((p) => p.name !== "ztunnel-master-dpu") });
  const plan = planned(planNode(SEED, "master-dpu", facts({ ...f, ztunnel: undefined })));

  it("tables 100/101/102 hold blackhole routes (one per meshed pod, defaults in 101/102)", () => {
    const bh = (table: number, dst: string): Route => ({
      family: 4,
      table,
      type: "blackhole",
      dst,
      proto: "offmesh",
    });
    assert.deepEqual(routesIn(plan.host, 100), [
      bh(100, "10.244.0.5"),
      bh(100, "10.244.0.6"),
      bh(100, "10.244.1.7"),
    ]);
    assert.deepEqual(routesIn(plan.host, 101), [bh(101, "default")]);
    assert.deepEqual(routesIn(plan.host, 102), [bh(102, "default")]);
  });

  it("creates no links, no link settings and no ztunnel pod state", () => {
    assert.deepEqual(plan.host.links, []);
    assert.deepEqual(plan.host.linkSettings, []);
    assert.equal(plan.ztunnelPod, undefined);
  });

  it("says so in a note", () => {
    assert.ok(
      plan.notes.includes(
        "no ztunnel pod is running here; meshed traffic is held by blackhole routes until it is (fail closed)",
      ),
      JSON.stringify(plan.notes),
    );
  });

  it("keeps the capture rules, without the ones naming the ztunnel's veth", () => {
    assert.deepEqual(specs(chain(plan.host.firewalls[0], "mangle", "ztunnel-PREROUTING")), [
      "-i istioin -j MARK --set-xmark 0x200/0x200",
      "-i istioin -j RETURN",
      "-i istioout -j MARK --set-xmark 0x200/0x200",
      "-i istioout -j RETURN",
      "-p udp -m udp --dport 6081 -j RETURN",
      "-m connmark --mark 0x220/0x220 -j MARK --set-xmark 0x200/0x200",
      "-m mark --mark 0x200/0x200 -j RETURN",
      "-p udp -j MARK --set-xmark 0x220/0x220",
      "-m mark --mark 0x200/0x200 -j RETURN",
      "-p tcp -m set --match-set ztunnel-pods-ips src -j MARK --set-xmark 0x100/0x100",
    ]);
  });

  it("a ztunnel without a known host veth is held the same way, with its own note", () => {
    const p = planned(planNode(SEED, "master-dpu", facts({ ...f, ztunnel: { ip: "10.244.1.2" } })));
    assert.ok(routesIn(p.host, 101).every((r) => r.type === "blackhole"));
    assert.deepEqual(p.host.links, []);
    assert.equal(p.ztunnelPod, undefined);
    assert.ok(
      p.notes.some((n) => /host-side veth is not known yet.*fail closed/.test(n)),
      JSON.stringify(p.notes),
    );
  });
});

// ---- single -------------------------------------------------------------------------------------

describe("single ambient", () => {
  const plan = seedPlan("edge1");
  const dpu = seedPlan("master-dpu");

  it("has the same rule set as a DPU (with its own veth and ztunnel address)", () => {
    const rename = (s: string): string =>
      s
        .replaceAll("veth1ae58883", "veth7f3e0b21")
        .replaceAll("10.244.1.2/32", "10.244.4.2/32")
        .replaceAll("10.244.1.1/32", "10.244.4.1/32");
    assert.equal(plan.role, "single");
    const mine = plan.host.firewalls[0];
    const theirs = dpu.host.firewalls[0];
    for (const [table, name] of [
      ["mangle", "ztunnel-PREROUTING"],
      ["mangle", "ztunnel-INPUT"],
      ["mangle", "ztunnel-FORWARD"],
      ["mangle", "ztunnel-OUTPUT"],
      ["mangle", "ztunnel-POSTROUTING"],
      ["nat", "ztunnel-PREROUTING"],
      ["nat", "ztunnel-POSTROUTING"],
    ] as const) {
      assert.deepEqual(
        specs(chain(mine, table, name)),
        specs(chain(theirs, table, name)).map(rename),
        `${table}/${name}`,
      );
    }
    assert.deepEqual(plan.host.rules, dpu.host.rules);
    assert.equal(plan.host.localRulePriority, 0);
  });

  it("captures only its own pods", () => {
    assert.deepEqual(memberIps(plan.host), ["10.244.4.6"]);
    assert.deepEqual(
      routesIn(plan.host, 100)
        .filter((r) => r.dev === "istioin")
        .map((r) => r.dst),
      ["10.244.4.6"],
    );
  });

  it("routes CPUs' pods via their DPUs and the rest directly (bug 2)", () => {
    assert.deepEqual(
      routesIn(plan.host, "main").map((r) => [r.dst, r.via]),
      [
        ["10.244.0.0/24", "192.168.50.131"],
        ["10.244.1.0/24", "192.168.50.131"],
        ["10.244.3.0/24", "192.168.50.128"],
        ["10.244.2.0/24", "192.168.50.128"],
      ],
    );
  });

  it("has a ztunnel pod state", () => {
    assert.ok(plan.ztunnelPod);
    assert.equal(plan.ztunnelPod.links.length, 2);
    assert.ok(
      specs(chain(plan.ztunnelPod.firewalls[0], "mangle", "ztunnel-PREROUTING")).includes(
        "! -d 10.244.4.2/32 -i eth0 -p tcp -j MARK --set-xmark 0x4d3/0xfff",
      ),
    );
  });
});

// ---- ztunnel pod --------------------------------------------------------------------------------

describe("ztunnel pod", () => {
  const zpod = seedPlan("master-dpu").ztunnelPod;
  assert.ok(zpod);
  const fw = zpod.firewalls[0];

  it("TPROXY rules to 15008 (HBONE on pistioin), 15001 (pistioout), 15006 (pistioin), then the 0x4d3 mark", () => {
    assert.deepEqual(specs(chain(fw, "mangle", "ztunnel-PREROUTING")), [
      "-i pistioin -p tcp -m tcp --dport 15008 -j TPROXY --on-port 15008 --on-ip 127.0.0.1 --tproxy-mark 0x400/0xfff",
      "-i pistioout -p tcp -j TPROXY --on-port 15001 --on-ip 127.0.0.1 --tproxy-mark 0x400/0xfff",
      "-i pistioin -p tcp -j TPROXY --on-port 15006 --on-ip 127.0.0.1 --tproxy-mark 0x400/0xfff",
      "! -d 10.244.1.2/32 -i eth0 -p tcp -j MARK --set-xmark 0x4d3/0xfff",
    ]);
  });

  it("nat OUTPUT redirects node-local HBONE 15088 to 15008", () => {
    assert.deepEqual(specs(chain(fw, "nat", "ztunnel-OUTPUT")), [
      "-p tcp -m tcp --dport 15088 -j REDIRECT --to-ports 15008",
    ]);
  });

  it("jumps: mangle PREROUTING and nat OUTPUT only", () => {
    assert.deepEqual(
      fw?.tables.map((t) => [t.table, t.jumps]),
      [
        ["mangle", [{ chain: "PREROUTING", spec: "-j ztunnel-PREROUTING" }]],
        ["nat", [{ chain: "OUTPUT", spec: "-j ztunnel-OUTPUT" }]],
      ],
    );
  });

  it("ip rules 20000–20003 by mark under mask 0xfff", () => {
    assert.deepEqual(zpod.rules, [
      { family: 4, priority: 20000, fwmark: { value: 0x400, mask: 0xfff }, action: { lookup: 100 } },
      { family: 4, priority: 20001, fwmark: { value: 0x401, mask: 0xfff }, action: { lookup: 101 } },
      { family: 4, priority: 20002, fwmark: { value: 0x402, mask: 0xfff }, action: { lookup: 102 } },
      { family: 4, priority: 20003, fwmark: { value: 0x4d3, mask: 0xfff }, action: { lookup: 100 } },
    ]);
    assert.equal(zpod.localRulePriority, 0);
    assert.deepEqual(zpod.ipsets, []);
  });

  it("tables: 100 local default on lo; 101 via pistioout; 102 via pistioin; host reachable on eth0", () => {
    const toHost = (table: number): Route => ({
      family: 4,
      table,
      dst: "10.244.1.1",
      dev: "eth0",
      scope: "link",
      proto: "offmesh",
    });
    assert.deepEqual(routesIn(zpod, 100), [
      { family: 4, table: 100, type: "local", dst: "default", dev: "lo", scope: "host", proto: "offmesh" },
    ]);
    assert.deepEqual(routesIn(zpod, 101), [
      toHost(101),
      { family: 4, table: 101, dst: "default", via: "192.168.127.1", dev: "pistioout", proto: "offmesh" },
    ]);
    assert.deepEqual(routesIn(zpod, 102), [
      toHost(102),
      { family: 4, table: 102, dst: "default", via: "192.168.126.1", dev: "pistioin", proto: "offmesh" },
    ]);
    assert.deepEqual([...new Set(zpod.routes.map((r) => r.table))].sort(), [100, 101, 102]);
  });

  it("pod ends of the tunnels point at the host side; eth0 raised by 50 for geneve", () => {
    assert.deepEqual(
      zpod.links.map((l) => [l.kind, l.name, "remote" in l ? l.remote : undefined, l.addresses, l.mtu]),
      [
        ["geneve", "pistioin", "10.244.1.1", ["192.168.126.2/30"], 1500],
        ["geneve", "pistioout", "10.244.1.1", ["192.168.127.2/30"], 1500],
      ],
    );
    assert.deepEqual(
      zpod.linkSettings.map((s) => [s.name, s.mtu]),
      [["eth0", 1550]],
    );
  });

  it("veth tunnels: pod ends are veth peers, no eth0 MTU change", () => {
    const f = seedFacts("master-dpu", { tunnel: "veth" });
    const p = planZtunnelPod(4, f, "10.244.1.2");
    assert.deepEqual(
      p.links.map((l) => [l.kind, l.name]),
      [
        ["veth-peer", "pistioin"],
        ["veth-peer", "pistioout"],
      ],
    );
    assert.deepEqual(p.linkSettings, []);
  });

  it("rp_filter=0 on all, default, eth0 and the tunnel ends", () => {
    assert.deepEqual(
      zpod.sysctls.map((s) => [s.key, s.value]),
      ["all", "default", "eth0", "pistioin", "pistioout"].map((l) => [`net.ipv4.conf.${l}.rp_filter`, "0"]),
    );
  });

  it("IPv6: TPROXY on ::1, /128 for the ztunnel address", () => {
    const f = facts({
      nic: { name: "eth0", ip: "fd00::21" },
      podCIDRs: ["fd00:244:21::/64"],
      podGateway: "fd00:244:21::1",
      clusterPodCIDRs: ["fd00:244::/48"],
      ztunnel: { ip: "fd00:244:21::2", hostVeth: "vethz" },
    });
    const p = planZtunnelPod(6, f, "fd00:244:21::2");
    const s = specs(chain(p.firewalls[0], "mangle", "ztunnel-PREROUTING"));
    assert.ok(s.every((x) => !x.includes("127.0.0.1")));
    assert.ok(s[1]?.includes("--on-ip ::1"));
    assert.equal(s[3], "! -d fd00:244:21::2/128 -i eth0 -p tcp -j MARK --set-xmark 0x4d3/0xfff");
    assert.deepEqual(p.sysctls, []);
    assert.deepEqual(
      p.linkSettings.map((x) => x.mtu),
      [1570],
    );
  });

  it("no LOG rules anywhere, host or pod, on any example-like node (bug 34)", () => {
    for (const self of Object.keys(NODES) as SeedNode[]) {
      const p = seedPlan(self);
      for (const state of [p.host, ...(p.ztunnelPod ? [p.ztunnelPod] : [])])
        for (const s of allSpecs(state)) assert.ok(!/-j (N?F?LOG|ULOG|TRACE)\b/.test(s), `${self}: ${s}`);
    }
  });
});

// ---- canonical spelling ----------------------------------------------------------------------------

describe("iptables specs are in iptables-save's canonical spelling", () => {
  it("IPv6 ztunnel and gateway addresses written non-canonically appear canonically in every rule", () => {
    const topo6 = topology("singles:", "  - nodeName: edge6", "    nodeIP: 'fd00::40'");
    const f = facts({
      nic: { name: "eth0", ip: "fd00::40" },
      podCIDRs: ["fd00:244:4::/64"],
      podGateway: "FD00:244:4:0:0:0:0:1",
      clusterPodCIDRs: ["fd00:244::/48"],
      ztunnel: { ip: "FD00:244:4:0:0:0:0:2", hostVeth: "vethz", captureDNS: true },
    });
    const p = planned(planNode(topo6, "edge6", f));
    const all = [...allSpecs(p.host), ...(p.ztunnelPod ? allSpecs(p.ztunnelPod) : [])];
    assert.ok(
      all.includes("! -s fd00:244:4::2/128 -i vethz -j MARK --set-xmark 0x210/0x210"),
      all.join("\n"),
    );
    assert.ok(all.includes("-s fd00:244:4::1/128 -j MARK --set-xmark 0x220/0xffffffff"), all.join("\n"));
    assert.ok(
      all.some((s) => s.endsWith("--to-destination [fd00:244:4::2]:15053")),
      all.join("\n"),
    );
    assert.ok(
      all.includes("! -d fd00:244:4::2/128 -i eth0 -p tcp -j MARK --set-xmark 0x4d3/0xfff"),
      all.join("\n"),
    );
    assert.ok(
      all.every((s) => !/FD00|:0:0:/.test(s)),
      all.join("\n"),
    );
  });
});

// ---- composition --------------------------------------------------------------------------------

describe("planNode: composition and merge", () => {
  it("merges ambient and masquerade into one firewall per family; nat holds both", () => {
    const p = seedPlan("master");
    assert.deepEqual(
      p.host.firewalls.map((f) => [f.family, f.tables.map((t) => t.table)]),
      [[4, ["mangle", "nat"]]],
    );
    const nat = p.host.firewalls[0]?.tables.find((t) => t.table === "nat");
    assert.deepEqual(
      nat?.chains.map((c) => c.name),
      ["ztunnel-PREROUTING", "ztunnel-POSTROUTING", "OFFMESH-MASQ-AGENT"],
    );
    assert.deepEqual(
      nat?.jumps.map((j) => [j.chain, /-j (\S+)$/.exec(j.spec)?.[1]]),
      [
        ["PREROUTING", "ztunnel-PREROUTING"],
        ["POSTROUTING", "ztunnel-POSTROUTING"],
        ["POSTROUTING", "OFFMESH-MASQ-AGENT"],
      ],
    );
  });

  it("dual-stack cluster CIDRs add an IPv6 nat firewall holding only the masquerade chain", () => {
    const p = seedPlan("master-dpu", { clusterPodCIDRs: ["10.244.0.0/16", "fd00:244::/48"] });
    assert.deepEqual(
      p.host.firewalls.map((f) => [f.family, f.tables.map((t) => [t.table, t.chains.map((c) => c.name)])]),
      [
        [
          4,
          [
            [
              "mangle",
              [
                "ztunnel-FORWARD",
                "ztunnel-INPUT",
                "ztunnel-OUTPUT",
                "ztunnel-POSTROUTING",
                "ztunnel-PREROUTING",
              ],
            ],
            ["nat", ["ztunnel-PREROUTING", "ztunnel-POSTROUTING", "OFFMESH-MASQ-AGENT"]],
          ],
        ],
        [6, [["nat", ["OFFMESH-MASQ-AGENT"]]]],
      ],
    );
  });

  it("host routes are the CNI routes followed by the ambient routes; notes gather every planner's", () => {
    const p = seedPlan("master");
    assert.deepEqual([...new Set(p.host.routes.map((r) => r.table))], ["main", 101, 100]);
    assert.deepEqual(p.notes, [
      "pod default/node-exporter uses the host network; it is not captured (bug 17)",
      "pod default/reviews-pending has no IPv4 address yet; it is not captured until it has one (bug 17)",
    ]);
  });

  it("the conflist is planned for every role", () => {
    for (const self of Object.keys(NODES) as SeedNode[]) {
      const p = seedPlan(self);
      assert.equal(p.conflist.plugins[0]?.type, "ptp", self);
    }
  });
});

describe("mergeFirewalls (bug 9)", () => {
  const jump = { chain: "POSTROUTING" as const, spec: "-j X" };
  const fragment = (chainName: string): Firewall => ({
    family: 4,
    tables: [{ table: "nat", chains: [{ name: chainName, rules: [{ spec: "-j RETURN" }] }], jumps: [jump] }],
  });

  it("keeps a jump given twice once", () => {
    const merged = mergeFirewalls([fragment("A"), fragment("B")]);
    assert.deepEqual(merged, [
      {
        family: 4,
        tables: [
          {
            table: "nat",
            chains: [
              { name: "A", rules: [{ spec: "-j RETURN" }] },
              { name: "B", rules: [{ spec: "-j RETURN" }] },
            ],
            jumps: [jump],
          },
        ],
      },
    ]);
  });

  it("the same jump spec in two different built-in chains is two jumps", () => {
    const other: Firewall = {
      family: 4,
      tables: [{ table: "nat", chains: [], jumps: [{ chain: "PREROUTING", spec: "-j X" }] }],
    };
    assert.equal(mergeFirewalls([fragment("A"), other])[0]?.tables[0]?.jumps.length, 2);
  });

  it("throws when a chain is planned by two fragments", () => {
    assert.throws(
      () => mergeFirewalls([fragment("A"), fragment("A")]),
      /chain nat\/A planned by two fragments/,
    );
  });

  it("a chain of the same name in another table or family is not a conflict", () => {
    const mangle: Firewall = {
      family: 4,
      tables: [{ table: "mangle", chains: [{ name: "A", rules: [] }], jumps: [] }],
    };
    const v6: Firewall = { ...fragment("A"), family: 6 };
    const merged = mergeFirewalls([fragment("A"), mangle, v6]);
    assert.deepEqual(
      merged.map((f) => [f.family, f.tables.map((t) => t.table)]),
      [
        [4, ["nat", "mangle"]],
        [6, ["nat"]],
      ],
    );
  });

  it("families come out in ascending order", () => {
    const v6: Firewall = { ...fragment("A"), family: 6 };
    assert.deepEqual(
      mergeFirewalls([v6, fragment("A")]).map((f) => f.family),
      [4, 6],
    );
  });
});

/**
 * The one rule the upstream set repeats on purpose: a RETURN after each block of skip marks. It is
 * never adjacent to itself; every other rule of a chain must be unique.
 */
const UPSTREAM_REPEATS = ["-m mark --mark 0x200/0x200 -j RETURN"];

describe("no duplicates by construction, on every example node (bug 9)", () => {
  const examples = fileURLToPath(new URL("../../../examples/", import.meta.url));

  it("every chain's rules have unique specs (but the upstream RETURN) and every table's jumps are unique", async () => {
    let checked = 0;
    for (const dir of (await readdir(examples, { withFileTypes: true })).filter((d) => d.isDirectory())) {
      const base = `${examples}${dir.name}/`;
      const topo = await loadTopologyFile(`${base}cluster-conf.yaml`);
      for (const file of (await readdir(base)).filter(
        (f) => f.endsWith(".yaml") && f !== "cluster-conf.yaml",
      )) {
        const name = file.replace(/\.yaml$/, "");
        const f = await loadFactsFile(`${base}${file}`, { topology: topo, node: name });
        const p = planned(planNode(topo, name, f));
        for (const state of [p.host, ...(p.ztunnelPod ? [p.ztunnelPod] : [])]) {
          for (const fw of state.firewalls) {
            for (const t of fw.tables) {
              const where = `${dir.name}/${name} IPv${fw.family} ${t.table}`;
              const jumps = t.jumps.map((j) => `${j.chain} ${j.spec}`);
              assert.equal(
                new Set(jumps).size,
                jumps.length,
                `${where}: duplicate jump in ${jumps.join(" | ")}`,
              );
              const names = t.chains.map((c) => c.name);
              assert.equal(new Set(names).size, names.length, `${where}: chain planned twice`);
              for (const c of t.chains) {
                const s = specs(c);
                const once = s.filter((x) => !UPSTREAM_REPEATS.includes(x));
                assert.equal(
                  new Set(once).size,
                  once.length,
                  `${where}/${c.name}: duplicate rule in\n${s.join("\n")}`,
                );
                s.forEach((x, i) =>
                  assert.notEqual(x, s[i - 1], `${where}/${c.name}: rule ${i} repeats the one before it`),
                );
              }
            }
          }
          const rules = state.rules.map((r) => `${r.family} ${r.priority}`);
          assert.equal(new Set(rules).size, rules.length, `${dir.name}/${name}: duplicate ip rule priority`);
          const routes = state.routes.map((r) => `${r.family} ${r.table} ${r.type ?? ""} ${r.dst}`);
          assert.equal(new Set(routes).size, routes.length, `${dir.name}/${name}: duplicate route`);
        }
        checked++;
      }
    }
    assert.ok(checked >= 8, `checked ${checked} example nodes`);
  });

  it("PREROUTING repeats `-m mark --mark 0x200/0x200 -j RETURN` exactly as often as upstream (DPU 3, CPU 2)", () => {
    // The upstream rule set contains the same RETURN rule three times on purpose (after each block of
    // skip marks); this pins that it is exactly the upstream count, not a duplicate introduced by merging.
    const pre = specs(chain(seedPlan("master-dpu").host.firewalls[0], "mangle", "ztunnel-PREROUTING"));
    assert.equal(pre.filter((s) => s === "-m mark --mark 0x200/0x200 -j RETURN").length, 3);
    const cpu = specs(chain(seedPlan("master").host.firewalls[0], "mangle", "ztunnel-PREROUTING"));
    assert.equal(cpu.filter((s) => s === "-m mark --mark 0x200/0x200 -j RETURN").length, 2);
  });
});

// ---- unknown node, determinism ----------------------------------------------------------------------

describe("planNode: unknown node (bug 20)", () => {
  it("plans nothing, with a reason naming the node and the topology file", () => {
    const out = planNode(SEED, "ghost", seedFacts("master"));
    assert.equal(out.planned, false);
    if (out.planned) return;
    assert.equal(out.node, "ghost");
    assert.match(out.reason, /"ghost"/);
    assert.match(out.reason, /cluster-conf\.yaml/);
    assert.match(out.reason, /plans nothing/);
  });

  it("an empty node name is not matched to anything (bug 20)", () => {
    const out = planNode(SEED, "", seedFacts("master"));
    assert.equal(out.planned, false);
  });

  it("renderOutcome prints the reason as one comment line", () => {
    const out = planNode(SEED, "ghost", seedFacts("master"));
    const text = renderOutcome(out);
    assert.match(
      text,
      /^# offmesh: nothing planned for node ghost: node "ghost" is not declared in cluster-conf\.yaml/,
    );
    assert.equal(text.split("\n").length, 2);
  });
});

describe("planNode: determinism", () => {
  for (const self of Object.keys(NODES) as SeedNode[]) {
    it(`planning ${self} twice gives deep-equal plans`, () => {
      assert.deepEqual(planNode(SEED, self, seedFacts(self)), planNode(SEED, self, seedFacts(self)));
    });
  }

  for (const self of Object.keys(NODES) as SeedNode[]) {
    it(`the network state of ${self} does not depend on the order of its pods`, () => {
      const a = seedPlan(self);
      const b = seedPlan(self, { pods: [...PODS].reverse() });
      const c = seedPlan(self, { pods: [...PODS.slice(5), ...PODS.slice(0, 5)] });
      for (const other of [b, c]) {
        assert.deepEqual(other.host, a.host);
        assert.deepEqual(other.ztunnelPod, a.ztunnelPod);
        assert.deepEqual(other.conflist, a.conflist);
      }
    });
  }

  it("the whole plan, notes included, does not depend on the order of the pods", () => {
    const a = seedPlan("master");
    const b = seedPlan("master", { pods: [...PODS].reverse() });
    assert.deepEqual(b, a);
  });

  it("the plan does not depend on the order of facts.nodes", () => {
    const f = seedFacts("master-dpu");
    const a = planNode(SEED, "master-dpu", f);
    const b = planNode(SEED, "master-dpu", facts({ ...f, nodes: [...f.nodes].reverse() }));
    assert.deepEqual(b, a);
  });
});

// ---- render -------------------------------------------------------------------------------------

describe("render", () => {
  it("renderIptablesSave: *table, sorted chain declarations, jumps in hook order, chains' rules, COMMIT", () => {
    const fw: Firewall = {
      family: 4,
      tables: [
        {
          table: "mangle",
          chains: [
            {
              name: "ztunnel-PREROUTING",
              rules: [{ spec: "-j RETURN", why: "because" }, { spec: "-p udp -j ACCEPT" }],
            },
            { name: "OFFMESH-B", rules: [] },
            { name: "ztunnel-FORWARD", rules: [{ spec: "-j ACCEPT" }] },
          ],
          jumps: [
            { chain: "POSTROUTING", spec: "-j OFFMESH-B" },
            { chain: "OUTPUT", spec: "-j ztunnel-FORWARD" },
            { chain: "PREROUTING", spec: "-j ztunnel-PREROUTING" },
            { chain: "FORWARD", spec: "-j ztunnel-FORWARD" },
            { chain: "INPUT", spec: "-j ztunnel-PREROUTING" },
          ],
        },
        {
          table: "nat",
          chains: [{ name: "X", rules: [{ spec: "-j DNAT --to-destination 1.2.3.4" }] }],
          jumps: [],
        },
      ],
    };
    assert.equal(
      renderIptablesSave(fw),
      [
        "*mangle",
        ":OFFMESH-B - [0:0]",
        ":ztunnel-FORWARD - [0:0]",
        ":ztunnel-PREROUTING - [0:0]",
        "-A PREROUTING -j ztunnel-PREROUTING",
        "-A INPUT -j ztunnel-PREROUTING",
        "-A FORWARD -j ztunnel-FORWARD",
        "-A OUTPUT -j ztunnel-FORWARD",
        "-A POSTROUTING -j OFFMESH-B",
        "-A ztunnel-FORWARD -j ACCEPT",
        "# because",
        "-A ztunnel-PREROUTING -j RETURN",
        "-A ztunnel-PREROUTING -p udp -j ACCEPT",
        "COMMIT",
        "*nat",
        ":X - [0:0]",
        "-A X -j DNAT --to-destination 1.2.3.4",
        "COMMIT",
        "",
      ].join("\n"),
    );
    assert.ok(!renderIptablesSave(fw, false).includes("# because"));
  });

  it("renderIptablesSave keeps the planned order of two jumps in the same hook", () => {
    const text = renderIptablesSave(seedPlan("master").host.firewalls[0] as Firewall, false);
    const nat = text.slice(text.indexOf("*nat"));
    const post = nat.split("\n").filter((l) => l.startsWith("-A POSTROUTING"));
    assert.deepEqual(
      post.map((l) => /-j (\S+)$/.exec(l)?.[1]),
      ["ztunnel-POSTROUTING", "OFFMESH-MASQ-AGENT"],
    );
  });

  it("renderIpRules: IPv4 adds local, main and default rules, sorted by priority; other family's rules left out", () => {
    const rules: IpRule[] = [
      { family: 4, priority: 103, action: { lookup: 100 } },
      { family: 4, priority: 100, fwmark: { value: 0x200, mask: 0x200 }, action: { goto: 32766 } },
      { family: 6, priority: 101, fwmark: { value: 0x100, mask: 0x100 }, action: { lookup: 101 } },
    ];
    assert.equal(
      renderIpRules(rules, 4, 0),
      [
        "0:\tfrom all lookup local",
        "100:\tfrom all fwmark 0x200/0x200 goto 32766",
        "103:\tfrom all lookup 100",
        "32766:\tfrom all lookup main",
        "32767:\tfrom all lookup default",
        "",
      ].join("\n"),
    );
  });

  it("renderIpRules: IPv6 has no 32767 default rule; a relocated local rule is printed at its priority", () => {
    const rules: IpRule[] = [
      { family: 6, priority: 90, fwmark: { value: 0x80, mask: 0x80 }, action: { lookup: 101 } },
    ];
    assert.equal(
      renderIpRules(rules, 6, 99),
      [
        "90:\tfrom all fwmark 0x80/0x80 lookup 101",
        "99:\tfrom all lookup local",
        "32766:\tfrom all lookup main",
        "",
      ].join("\n"),
    );
  });

  it("routeText: blackhole, local, onlink, src, plain unicast, and no proto when none", () => {
    assert.equal(
      routeText({ family: 4, table: 101, type: "blackhole", dst: "default", proto: "offmesh" }),
      "blackhole default proto 176",
    );
    assert.equal(
      routeText({
        family: 4,
        table: 100,
        type: "local",
        dst: "default",
        dev: "lo",
        scope: "host",
        proto: "offmesh",
      }),
      "local default dev lo proto 176 scope host",
    );
    assert.equal(
      routeText({
        family: 4,
        table: 102,
        dst: "default",
        via: "10.244.1.2",
        dev: "veth0",
        onlink: true,
        proto: "offmesh",
      }),
      "default via 10.244.1.2 dev veth0 proto 176 onlink",
    );
    assert.equal(
      routeText({
        family: 4,
        table: 100,
        dst: "10.244.0.5",
        via: "192.168.126.2",
        dev: "istioin",
        src: "10.244.1.1",
        proto: "offmesh",
      }),
      "10.244.0.5 via 192.168.126.2 dev istioin proto 176 src 10.244.1.1",
    );
    assert.equal(
      routeText({
        family: 4,
        table: 100,
        type: "unicast",
        dst: "10.244.1.2",
        dev: "veth0",
        scope: "link",
        proto: "offmesh",
      }),
      "10.244.1.2 dev veth0 proto 176 scope link",
    );
    assert.equal(
      routeText({ family: 4, table: "main", dst: "10.0.0.0/8", via: "10.0.0.1" }),
      "10.0.0.0/8 via 10.0.0.1",
    );
  });

  it("renderRoutes: only the table asked for, default first, then numerically by destination", () => {
    const r = (table: Route["table"], dst: string): Route => ({
      family: 4,
      table,
      dst,
      dev: "x",
      proto: "offmesh",
    });
    const text = renderRoutes(
      [
        r(100, "10.244.0.10"),
        r(101, "default"),
        r(100, "10.244.0.9"),
        r(100, "default"),
        r(100, "10.244.0.100"),
      ],
      100,
    );
    assert.deepEqual(text.split("\n"), [
      "default dev x proto 176",
      "10.244.0.9 dev x proto 176",
      "10.244.0.10 dev x proto 176",
      "10.244.0.100 dev x proto 176",
      "",
    ]);
    assert.equal(renderRoutes([], 100), "");
  });

  it("renderIpsetSave: create line with family and comment support, one add line per member", () => {
    assert.equal(
      renderIpsetSave({
        name: "ztunnel-pods-ips",
        type: "hash:ip",
        family: 4,
        members: [
          { ip: "10.244.0.5", comment: "uid-a" },
          { ip: "10.244.0.6", comment: "uid-b" },
        ],
      }),
      [
        "create ztunnel-pods-ips hash:ip family inet hashsize 1024 maxelem 65536 comment",
        'add ztunnel-pods-ips 10.244.0.5 comment "uid-a"',
        'add ztunnel-pods-ips 10.244.0.6 comment "uid-b"',
        "",
      ].join("\n"),
    );
    assert.equal(
      renderIpsetSave({ name: "s", type: "hash:ip", family: 6, members: [] }),
      "create s hash:ip family inet6 hashsize 1024 maxelem 65536 comment\n",
    );
  });

  it("renderPlan: header with role and family, notes, conflist, host state, then the ztunnel pod section", () => {
    const text = renderPlan(seedPlan("master-dpu"));
    const lines = text.split("\n");
    assert.equal(lines[0], "# offmesh: desired state of node master-dpu (role dpu, IPv4)");
    assert.equal(lines[1], "# notes:");
    assert.ok(text.includes("## CNI conflist\n{"));
    const pod = text.indexOf("# ---- inside the ztunnel pod's network namespace ----");
    assert.ok(pod > text.indexOf("## iptables-save"));
    assert.ok(text.indexOf("## ip route show table main    (offmesh's routes only)") < pod);
    assert.ok(
      text.slice(pod).includes("## ip route show table 100\nlocal default dev lo proto 176 scope host\n"),
    );
    assert.ok(text.includes("ip link set veth1ae58883 mtu 1550    # "));
    assert.ok(!renderPlan(seedPlan("master")).includes("inside the ztunnel pod"));
  });
});
