import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { planCniRoutes } from "../../src/netplan/cniRoutes.js";
import { planConflist } from "../../src/netplan/conflist.js";
import type { NodeFacts } from "../../src/netplan/facts.js";
import { planMasquerade } from "../../src/netplan/masquerade.js";
import type { Route } from "../../src/netplan/types.js";
import { facts, node, topology } from "../support/netplan.js";
import type { FactsInput } from "../support/netplan.js";

// Unit tests of the planners that do not depend on the ambient mode: the main-table routes to the
// other nodes' pod CIDRs (cniRoutes.ts), the CNI conflist (conflist.ts) and the masquerade chain
// (masquerade.ts).

const NIC = "eno1";

// Two CPU/DPU pairs and two singles. Node i has address 10.0.0.i and pod CIDR 10.244.i.0/24
// (fd00:244:i::/64 in the dual-stack tests).
const TOPO = topology(
  "pairs:",
  "  - { cpuNodeName: cpu-a, cpuNodeIP: 10.0.0.11, dpuNodeName: dpu-a, dpuNodeIP: 10.0.0.21 }",
  "  - { cpuNodeName: cpu-b, cpuNodeIP: 10.0.0.12, dpuNodeName: dpu-b, dpuNodeIP: 10.0.0.22 }",
  "singles:",
  "  - { nodeName: single-a, nodeIP: 10.0.0.31 }",
  "  - { nodeName: single-b, nodeIP: 10.0.0.32 }",
);

/** Every node the tests know, including one the topology does not declare. */
const CLUSTER: Record<string, { ip: string; n: number }> = {
  "cpu-a": { ip: "10.0.0.11", n: 11 },
  "cpu-b": { ip: "10.0.0.12", n: 12 },
  "dpu-a": { ip: "10.0.0.21", n: 21 },
  "dpu-b": { ip: "10.0.0.22", n: 22 },
  "single-a": { ip: "10.0.0.31", n: 31 },
  "single-b": { ip: "10.0.0.32", n: 32 },
  outsider: { ip: "10.0.0.99", n: 99 },
};

const cidr4 = (name: string): string => `10.244.${CLUSTER[name]?.n}.0/24`;
const cidr6 = (name: string): string => `fd00:244:${CLUSTER[name]?.n}::/64`;
const addr6 = (name: string): string => `fd00::${CLUSTER[name]?.n}`;

/** Facts of `self` listing every other node of CLUSTER (IPv4 only). */
function factsOf(self: string, extra: Partial<FactsInput> = {}): NodeFacts {
  const me = CLUSTER[self];
  assert.ok(me);
  return facts({
    node: self,
    nic: { name: NIC, ip: me.ip },
    podCIDRs: [cidr4(self)],
    podGateway: `10.244.${me.n}.1`,
    clusterPodCIDRs: ["10.244.0.0/16"],
    nodes: Object.entries(CLUSTER)
      .filter(([name]) => name !== self)
      .map(([name, n]) => ({ name, ips: [n.ip], podCIDRs: [cidr4(name)] })),
    ...extra,
  });
}

/** Facts of `self` in a dual-stack cluster: every node has an IPv6 address and IPv6 pod CIDR. */
function dualStackFactsOf(self: string, withoutV6: readonly string[] = []): NodeFacts {
  const me = CLUSTER[self];
  assert.ok(me);
  return facts({
    node: self,
    nic: { name: NIC, ip: me.ip },
    podCIDRs: [cidr4(self), cidr6(self)],
    podGateway: `10.244.${me.n}.1`,
    clusterPodCIDRs: ["10.244.0.0/16", "fd00:244::/48"],
    nodes: Object.entries(CLUSTER)
      .filter(([name]) => name !== self)
      .map(([name, n]) => ({
        name,
        ips: withoutV6.includes(name) ? [n.ip] : [n.ip, addr6(name)],
        podCIDRs: [cidr4(name), cidr6(name)],
      })),
  });
}

function routeTo(routes: readonly Route[], dst: string): Route | undefined {
  const matching = routes.filter((r) => r.dst === dst);
  assert.ok(matching.length <= 1, `at most one route to ${dst}, got ${JSON.stringify(matching)}`);
  return matching[0];
}

describe("planCniRoutes: next hop per (this node's role × target's role)", () => {
  // [self, target, expected next hop (node name), what the row of the table in cniRoutes.ts says]
  const table: readonly [string, string, string, string][] = [
    ["cpu-a", "dpu-a", "dpu-a", "cpu → its own DPU: via its own DPU"],
    ["cpu-a", "cpu-b", "dpu-a", "cpu → another CPU: via its own DPU"],
    ["cpu-a", "dpu-b", "dpu-a", "cpu → another DPU: via its own DPU"],
    ["cpu-a", "single-a", "dpu-a", "cpu → a single: via its own DPU"],
    ["dpu-a", "cpu-a", "cpu-a", "dpu → its own CPU: direct"],
    ["dpu-a", "dpu-b", "dpu-b", "dpu → another DPU: direct"],
    ["dpu-a", "single-a", "single-a", "dpu → a single: direct"],
    ["dpu-a", "cpu-b", "dpu-b", "dpu → another CPU: via that CPU's DPU"],
    ["single-a", "cpu-a", "dpu-a", "single → a CPU: via that CPU's DPU (bug 2)"],
    ["single-a", "cpu-b", "dpu-b", "single → another CPU: via that CPU's DPU (bug 2)"],
    ["single-a", "dpu-a", "dpu-a", "single → a DPU: direct (bug 2)"],
    ["single-a", "single-b", "single-b", "single → another single: direct (bug 2)"],
  ];
  for (const [self, target, hop, title] of table) {
    it(title, () => {
      const out = planCniRoutes(TOPO, node(TOPO, self), factsOf(self));
      assert.deepEqual(routeTo(out.routes, cidr4(target)), {
        family: 4,
        table: "main",
        dst: cidr4(target),
        via: CLUSTER[hop]?.ip,
        dev: NIC,
        proto: "offmesh",
      });
    });
  }

  it("dpu → a node not in the topology: routed to it directly, with a note naming node and file", () => {
    const out = planCniRoutes(TOPO, node(TOPO, "dpu-a"), factsOf("dpu-a"));
    assert.equal(routeTo(out.routes, cidr4("outsider"))?.via, "10.0.0.99");
    const notes = out.notes.filter((n) => n.includes("outsider"));
    assert.equal(notes.length, 1);
    assert.match(notes[0] ?? "", /not in cluster-conf\.yaml/);
    assert.match(notes[0] ?? "", /directly/);
  });

  it("single → a node not in the topology: routed to it directly, with a note (bug 2)", () => {
    const out = planCniRoutes(TOPO, node(TOPO, "single-a"), factsOf("single-a"));
    assert.equal(routeTo(out.routes, cidr4("outsider"))?.via, "10.0.0.99");
    const notes = out.notes.filter((n) => n.includes("outsider"));
    assert.equal(notes.length, 1);
    assert.match(notes[0] ?? "", /not in cluster-conf\.yaml/);
  });

  it("cpu → a node not in the topology: routed via its own DPU, with a note", () => {
    const out = planCniRoutes(TOPO, node(TOPO, "cpu-a"), factsOf("cpu-a"));
    assert.equal(routeTo(out.routes, cidr4("outsider"))?.via, "10.0.0.21");
    const notes = out.notes.filter((n) => n.includes("outsider"));
    assert.equal(notes.length, 1);
    assert.match(notes[0] ?? "", /not in cluster-conf\.yaml/);
    assert.match(notes[0] ?? "", /DPU/);
  });

  it("nodes declared in the topology are routed without a note; only the undeclared one gets one", () => {
    const out = planCniRoutes(TOPO, node(TOPO, "dpu-a"), factsOf("dpu-a"));
    assert.deepEqual(out.notes, [
      "node outsider is not in cluster-conf.yaml; its pods are routed to it directly",
    ]);
  });

  it("singles get one real route per other node's pod CIDR, never an empty one (bug 2)", () => {
    const out = planCniRoutes(TOPO, node(TOPO, "single-a"), factsOf("single-a"));
    assert.equal(out.routes.length, Object.keys(CLUSTER).length - 1);
    for (const r of out.routes) {
      assert.ok(r.via && r.via.length > 0, `route ${r.dst} has a next hop`);
      assert.ok(r.dst.length > 0);
    }
  });

  it("a target without pod CIDRs gets no route and a note", () => {
    const f = factsOf("dpu-a");
    const withEmpty = facts({
      ...f,
      nodes: f.nodes.map((n) => (n.name === "single-b" ? { name: n.name, ips: n.ips } : n)),
    });
    const out = planCniRoutes(TOPO, node(TOPO, "dpu-a"), withEmpty);
    assert.equal(routeTo(out.routes, cidr4("single-b")), undefined);
    assert.equal(out.routes.length, Object.keys(CLUSTER).length - 2);
    assert.ok(
      out.notes.includes("node single-b has no pod CIDR yet; nothing to route"),
      `notes: ${JSON.stringify(out.notes)}`,
    );
  });

  for (const self of ["cpu-a", "dpu-a", "single-a"]) {
    it(`the node itself is never routed (${self}, facts as the agent writes them)`, () => {
      const out = planCniRoutes(TOPO, node(TOPO, self), factsOf(self));
      assert.equal(routeTo(out.routes, cidr4(self)), undefined);
      assert.ok(out.routes.every((r) => r.via !== CLUSTER[self]?.ip));
    });

    it(`the node itself is never routed, even when facts.nodes lists it (${self})`, () => {
      const f = factsOf(self);
      const me = CLUSTER[self];
      assert.ok(me);
      const listingSelf = facts({
        ...f,
        nodes: [...f.nodes, { name: self, ips: [me.ip], podCIDRs: [cidr4(self)] }],
      });
      const out = planCniRoutes(TOPO, node(TOPO, self), listingSelf);
      assert.equal(
        routeTo(out.routes, cidr4(self)),
        undefined,
        "a route in the main table to the node's own pod CIDR would send local pod traffic away",
      );
    });
  }

  it("every route is in the main table, tagged proto offmesh, on the facts' NIC", () => {
    for (const self of ["cpu-a", "cpu-b", "dpu-a", "dpu-b", "single-a", "single-b"]) {
      const out = planCniRoutes(TOPO, node(TOPO, self), factsOf(self));
      assert.ok(out.routes.length > 0);
      for (const r of out.routes) {
        assert.equal(r.table, "main", `${self}: ${r.dst}`);
        assert.equal(r.proto, "offmesh", `${self}: ${r.dst}`);
        assert.equal(r.dev, NIC, `${self}: ${r.dst}`);
        assert.equal(r.family, 4, `${self}: ${r.dst}`);
        assert.equal(r.type, undefined, `${self}: ${r.dst} is a unicast route`);
      }
    }
  });

  it("routes are sorted by target name and do not depend on the order of facts.nodes", () => {
    const f = factsOf("dpu-a");
    const reversed = facts({ ...f, nodes: [...f.nodes].reverse() });
    const a = planCniRoutes(TOPO, node(TOPO, "dpu-a"), f);
    const b = planCniRoutes(TOPO, node(TOPO, "dpu-a"), reversed);
    assert.deepEqual(a, b);
    assert.deepEqual(
      a.routes.map((r) => r.dst),
      ["cpu-a", "cpu-b", "dpu-b", "outsider", "single-a", "single-b"].map(cidr4),
    );
  });

  it("a pod CIDR is written in canonical network form", () => {
    const f = factsOf("dpu-a");
    const sloppy = facts({
      ...f,
      nodes: [
        { name: "dpu-b", ips: ["10.0.0.22", "fd00::22"], podCIDRs: ["10.244.22.0/24", "FD00:244:22:0::/64"] },
      ],
    });
    const out = planCniRoutes(TOPO, node(TOPO, "dpu-a"), sloppy);
    assert.deepEqual(
      out.routes.map((r) => r.dst),
      ["10.244.22.0/24", "fd00:244:22::/64"],
    );
  });
});

describe("planCniRoutes: dual stack (bug 4)", () => {
  it("cpu: an IPv6 pod CIDR is routed via its own DPU's IPv6 address from facts.nodes", () => {
    const out = planCniRoutes(TOPO, node(TOPO, "cpu-a"), dualStackFactsOf("cpu-a"));
    assert.deepEqual(routeTo(out.routes, cidr6("cpu-b")), {
      family: 6,
      table: "main",
      dst: cidr6("cpu-b"),
      via: addr6("dpu-a"),
      dev: NIC,
      proto: "offmesh",
    });
    assert.equal(routeTo(out.routes, cidr4("cpu-b"))?.via, "10.0.0.21");
    assert.deepEqual(out.notes, [
      "node outsider is not in cluster-conf.yaml; its pods are reached through this CPU's DPU like any other",
    ]);
  });

  it("dpu: another CPU's IPv6 pod CIDR is routed via that CPU's DPU's IPv6 address", () => {
    const out = planCniRoutes(TOPO, node(TOPO, "dpu-a"), dualStackFactsOf("dpu-a"));
    assert.equal(routeTo(out.routes, cidr6("cpu-b"))?.via, addr6("dpu-b"));
    assert.equal(routeTo(out.routes, cidr6("cpu-a"))?.via, addr6("cpu-a"));
    assert.equal(routeTo(out.routes, cidr6("single-a"))?.via, addr6("single-a"));
    assert.equal(routeTo(out.routes, cidr6("outsider"))?.via, addr6("outsider"));
    for (const r of out.routes) {
      assert.equal(r.family, r.dst.includes(":") ? 6 : 4, r.dst);
      assert.equal(
        r.via?.includes(":"),
        r.family === 6,
        `${r.dst} via ${r.via}: next hop of the same family`,
      );
    }
  });

  it("single: a CPU's IPv6 pod CIDR is routed via that CPU's DPU's IPv6 address", () => {
    const out = planCniRoutes(TOPO, node(TOPO, "single-a"), dualStackFactsOf("single-a"));
    assert.equal(routeTo(out.routes, cidr6("cpu-a"))?.via, addr6("dpu-a"));
    assert.equal(routeTo(out.routes, cidr6("single-b"))?.via, addr6("single-b"));
  });

  it("an IPv6 address from facts.nodes is written canonically", () => {
    const f = dualStackFactsOf("dpu-a");
    const sloppy = facts({
      ...f,
      nodes: f.nodes.map((n) => (n.name === "dpu-b" ? { ...n, ips: ["10.0.0.22", "FD00:0:0::22"] } : n)),
    });
    const out = planCniRoutes(TOPO, node(TOPO, "dpu-a"), sloppy);
    assert.equal(routeTo(out.routes, cidr6("dpu-b"))?.via, "fd00::22");
  });

  it("an IPv6 pod CIDR is skipped with a note when the next hop has no IPv6 address", () => {
    const out = planCniRoutes(TOPO, node(TOPO, "dpu-a"), dualStackFactsOf("dpu-a", ["dpu-b"]));
    // cpu-b and dpu-b are both reached through dpu-b, which has no IPv6 address.
    assert.equal(routeTo(out.routes, cidr6("cpu-b")), undefined);
    assert.equal(routeTo(out.routes, cidr6("dpu-b")), undefined);
    // Their IPv4 CIDRs are still routed, and other nodes' IPv6 CIDRs too.
    assert.equal(routeTo(out.routes, cidr4("cpu-b"))?.via, "10.0.0.22");
    assert.equal(routeTo(out.routes, cidr4("dpu-b"))?.via, "10.0.0.22");
    assert.equal(routeTo(out.routes, cidr6("single-a"))?.via, addr6("single-a"));
    assert.ok(
      out.notes.includes(`no IPv6 address known for dpu-b (next hop to cpu-b); ${cidr6("cpu-b")} not routed`),
      `notes: ${JSON.stringify(out.notes)}`,
    );
    assert.ok(
      out.notes.includes(`no IPv6 address known for dpu-b (next hop to dpu-b); ${cidr6("dpu-b")} not routed`),
      `notes: ${JSON.stringify(out.notes)}`,
    );
  });

  it("cpu: every IPv6 CIDR is skipped with a note when its own DPU has no IPv6 address", () => {
    const out = planCniRoutes(TOPO, node(TOPO, "cpu-a"), dualStackFactsOf("cpu-a", ["dpu-a"]));
    assert.ok(out.routes.every((r) => r.family === 4));
    assert.equal(out.routes.length, Object.keys(CLUSTER).length - 1);
    const skipped = out.notes.filter((n) => n.startsWith("no IPv6 address known for dpu-a"));
    assert.equal(skipped.length, Object.keys(CLUSTER).length - 1);
  });

  it("IPv6 topology: an IPv4 pod CIDR is routed via the next hop's IPv4 address from facts.nodes", () => {
    const topo6 = topology(
      "pairs:",
      "  - { cpuNodeName: cpu-a, cpuNodeIP: 'fd00::11', dpuNodeName: dpu-a, dpuNodeIP: 'fd00::21' }",
      "singles:",
      "  - { nodeName: single-a, nodeIP: 'fd00::31' }",
    );
    const f = facts({
      nic: { name: NIC, ip: "fd00::31" },
      podCIDRs: [cidr6("single-a"), cidr4("single-a")],
      podGateway: "fd00:244:31::1",
      clusterPodCIDRs: ["fd00:244::/48"],
      nodes: [
        { name: "cpu-a", ips: ["fd00::11"], podCIDRs: [cidr6("cpu-a"), cidr4("cpu-a")] },
        { name: "dpu-a", ips: ["fd00::21", "10.0.0.21"], podCIDRs: [cidr6("dpu-a")] },
      ],
    });
    const out = planCniRoutes(topo6, node(topo6, "single-a"), f);
    assert.equal(routeTo(out.routes, cidr6("cpu-a"))?.via, "fd00::21");
    assert.equal(routeTo(out.routes, cidr4("cpu-a"))?.via, "10.0.0.21");
    assert.equal(routeTo(out.routes, cidr4("cpu-a"))?.family, 4);
    assert.equal(routeTo(out.routes, cidr6("dpu-a"))?.via, "fd00::21");
    assert.deepEqual(out.notes, []);
  });
});

describe("planConflist", () => {
  const base = factsOf("cpu-a");

  it("is ptp with host-local IPAM, then portmap, then the chained offmesh-cni plugin", () => {
    const c = planConflist(base);
    assert.equal(c.cniVersion, "1.0.0");
    assert.equal(c.name, "offmesh");
    assert.deepEqual(
      c.plugins.map((p) => p.type),
      ["ptp", "portmap", "offmesh-cni"],
    );
    assert.deepEqual(c.plugins[2], { type: "offmesh-cni", agentSocket: "/run/offmesh/cni.sock" });
    const ptp = c.plugins[0];
    assert.equal(ptp?.ipMasq, false);
    assert.deepEqual(ptp?.ipam, {
      type: "host-local",
      dataDir: "/run/cni-ipam-state",
      routes: [{ dst: "0.0.0.0/0" }],
      ranges: [[{ subnet: "10.244.11.0/24", gateway: "10.244.11.1" }]],
    });
    assert.deepEqual(c.plugins[1], { type: "portmap", capabilities: { portMappings: true } });
  });

  it("takes the IPAM data directory and the agent socket as options", () => {
    const c = planConflist(base, {
      ipamDataDir: "/run/offmesh/lab/n1/ipam",
      agentSocket: "/run/offmesh/lab/n1/cni.sock",
    });
    assert.equal((c.plugins[0]?.ipam as { dataDir: string }).dataDir, "/run/offmesh/lab/n1/ipam");
    assert.deepEqual(c.plugins[2], { type: "offmesh-cni", agentSocket: "/run/offmesh/lab/n1/cni.sock" });
  });

  it("writes the NIC's MTU into ptp (bug 6)", () => {
    const jumbo = facts({ ...base, nic: { name: NIC, ip: "10.0.0.11", mtu: 9000 } });
    assert.equal(planConflist(jumbo).plugins[0]?.mtu, 9000);
  });

  it("writes the default MTU 1500 when the facts do not give one (bug 6)", () => {
    assert.equal(base.nic.mtu, 1500);
    assert.equal(planConflist(base).plugins[0]?.mtu, 1500);
  });

  it("dual stack: one range set per CIDR, gateway only on the range containing podGateway, a default route per family", () => {
    const dual = facts({ ...base, podCIDRs: ["10.244.11.0/24", "fd00:244:11::/64"] });
    assert.deepEqual(planConflist(dual).plugins[0]?.ipam, {
      type: "host-local",
      dataDir: "/run/cni-ipam-state",
      routes: [{ dst: "0.0.0.0/0" }, { dst: "::/0" }],
      ranges: [[{ subnet: "10.244.11.0/24", gateway: "10.244.11.1" }], [{ subnet: "fd00:244:11::/64" }]],
    });
  });

  it("dual stack: an IPv6 pod gateway goes on the IPv6 range, canonically written", () => {
    const dual = facts({
      ...base,
      podCIDRs: ["10.244.11.0/24", "fd00:244:11::/64"],
      podGateway: "FD00:244:11:0::1",
    });
    const ipam = planConflist(dual).plugins[0]?.ipam as { ranges: unknown };
    assert.deepEqual(ipam.ranges, [
      [{ subnet: "10.244.11.0/24" }],
      [{ subnet: "fd00:244:11::/64", gateway: "fd00:244:11::1" }],
    ]);
  });

  it("a gateway outside every pod CIDR is placed on no range", () => {
    const odd = facts({ ...base, podGateway: "10.9.9.1" });
    const ipam = planConflist(odd).plugins[0]?.ipam as { ranges: unknown };
    assert.deepEqual(ipam.ranges, [[{ subnet: "10.244.11.0/24" }]]);
  });

  it("the subnet is written in canonical network form", () => {
    const sloppy = facts({ ...base, podCIDRs: ["FD00:244:11:0::/64"], podGateway: "FD00:244:11::1" });
    const ipam = planConflist(sloppy).plugins[0]?.ipam as { ranges: unknown };
    assert.deepEqual(ipam.ranges, [[{ subnet: "fd00:244:11::/64", gateway: "fd00:244:11::1" }]]);
  });
});

describe("planMasquerade", () => {
  const JUMP =
    '-m addrtype ! --dst-type LOCAL -m comment --comment "offmesh-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom OFFMESH-MASQ-AGENT chain" -j OFFMESH-MASQ-AGENT';
  const ret = (c: string): string =>
    `-d ${c} -m comment --comment "offmesh-masq-agent: cluster pod traffic is not subject to MASQUERADE" -j RETURN`;
  const MASQ =
    '-m comment --comment "offmesh-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE';

  it("one RETURN per cluster CIDR, in order, then MASQUERADE last, with the POSTROUTING jump", () => {
    const f = facts({ ...factsOf("cpu-a"), clusterPodCIDRs: ["10.244.0.0/16", "10.96.0.0/12"] });
    assert.deepEqual(planMasquerade(f), [
      {
        family: 4,
        tables: [
          {
            table: "nat",
            chains: [
              {
                name: "OFFMESH-MASQ-AGENT",
                rules: [{ spec: ret("10.244.0.0/16") }, { spec: ret("10.96.0.0/12") }, { spec: MASQ }],
              },
            ],
            jumps: [{ chain: "POSTROUTING", spec: JUMP }],
          },
        ],
      },
    ]);
  });

  it("MASQUERADE is the last rule and the only one", () => {
    const f = facts({
      ...factsOf("cpu-a"),
      clusterPodCIDRs: ["10.244.0.0/16", "10.250.0.0/16", "10.1.0.0/16"],
    });
    const rules = planMasquerade(f)[0]?.tables[0]?.chains[0]?.rules ?? [];
    assert.equal(rules.length, 4);
    assert.ok(rules.at(-1)?.spec.endsWith("-j MASQUERADE"));
    assert.equal(
      rules.filter((r) => r.spec.includes("MASQUERADE") && !r.spec.includes("-j RETURN")).length,
      1,
    );
    assert.ok(rules.slice(0, -1).every((r) => r.spec.endsWith("-j RETURN")));
  });

  it("dual stack: one firewall per family, IPv4 first, each with only its own family's CIDRs", () => {
    const f = facts({
      ...factsOf("cpu-a"),
      clusterPodCIDRs: ["fd00:244::/48", "10.244.0.0/16", "fd00:96::/112"],
    });
    const fws = planMasquerade(f);
    assert.deepEqual(
      fws.map((fw) => fw.family),
      [4, 6],
    );
    assert.deepEqual(fws[0]?.tables[0]?.chains[0]?.rules, [{ spec: ret("10.244.0.0/16") }, { spec: MASQ }]);
    assert.deepEqual(fws[1]?.tables[0]?.chains[0]?.rules, [
      { spec: ret("fd00:244::/48") },
      { spec: ret("fd00:96::/112") },
      { spec: MASQ },
    ]);
    for (const fw of fws) {
      assert.equal(fw.tables.length, 1);
      assert.deepEqual(fw.tables[0]?.jumps, [{ chain: "POSTROUTING", spec: JUMP }]);
    }
  });

  it("cluster CIDRs are written in canonical network form", () => {
    const f = facts({ ...factsOf("cpu-a"), clusterPodCIDRs: ["10.244.0.0/16", "FD00:244:0::/48"] });
    const specs = planMasquerade(f).flatMap((fw) => fw.tables[0]?.chains[0]?.rules.map((r) => r.spec) ?? []);
    assert.deepEqual(specs, [ret("10.244.0.0/16"), MASQ, ret("fd00:244::/48"), MASQ]);
  });

  it("a cluster CIDR listed twice (or spelled two ways) gives one RETURN rule (bug 9: no duplicate rules)", () => {
    const f = facts({
      ...factsOf("cpu-a"),
      clusterPodCIDRs: ["10.244.0.0/16", "10.244.0.0/16", "FD00:244::/48", "fd00:244:0::/48"],
    });
    const specs = planMasquerade(f).flatMap((fw) => fw.tables[0]?.chains[0]?.rules.map((r) => r.spec) ?? []);
    assert.deepEqual(specs, [ret("10.244.0.0/16"), MASQ, ret("fd00:244::/48"), MASQ]);
  });
});
