import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync, existsSync } from "node:fs";
import { basename } from "node:path";
import { formatIssue } from "../../src/configfile/issues.js";
import type { ConfigIssue } from "../../src/configfile/issues.js";
import { parseFacts } from "../../src/netplan/facts.js";
import type { NodeFacts } from "../../src/netplan/facts.js";
import { parseTopology } from "../../src/topology/index.js";
import type { Topology } from "../../src/topology/index.js";
import { assertIssue, assertOneIssue, expectAccepted, expectRejected, issueFor } from "../support/issues.js";
import type { ExpectedIssue } from "../support/issues.js";
import { fromRoot } from "../support/paths.js";

const FILE = "node-facts.yaml";

/** Join lines into a YAML document; keeps line numbers in the tests easy to read off. */
function yaml(...lines: string[]): string {
  return lines.join("\n") + "\n";
}

function topologyOf(text: string, file = "cluster-conf.yaml"): Topology {
  const result = parseTopology(text, file);
  if (!result.ok) assert.fail(`topology rejected:\n${result.issues.map(formatIssue).join("\n")}`);
  return result.value;
}

const SEED_TOPOLOGY_TEXT = readFileSync(fromRoot("examples/seed/cluster-conf.yaml"), "utf8");
// The seed cluster: master/master-dpu (192.168.50.130/.131), worker1/worker1-dpu (.133/.128).
const SEED = topologyOf(SEED_TOPOLOGY_TEXT);
// The seed cluster plus a node without a DPU, edge1 at 192.168.50.140.
const SEED_WITH_SINGLE = topologyOf(
  SEED_TOPOLOGY_TEXT + yaml("singles:", "  - nodeIP: 192.168.50.140", "    nodeName: edge1"),
);

type Context = { topology: Topology; node: string };
const seedContext = (node: string): Context => ({ topology: SEED, node });

// The smallest valid facts of the CPU node "master" of the seed cluster, in block style.
const MIN_LINES = [
  "nic:", //                                   1
  "  name: ens32", //                          2
  "  ip: 192.168.50.130", //                   3
  "podCIDRs: [10.244.0.0/24]", //              4
  "podGateway: 10.244.0.1", //                 5
  "clusterPodCIDRs: [10.244.0.0/16]", //       6
] as const;

/**
 * MIN_LINES with some lines (1-based) replaced, or removed when the replacement is `null`, and
 * `extra` lines appended (they start at line 7 when nothing is removed). A replacement holding "\n"
 * inserts lines, shifting the ones after it.
 */
function minimal(replace: Record<number, string | null> = {}, ...extra: string[]): string {
  const lines: string[] = [];
  MIN_LINES.forEach((line, i) => {
    const r = replace[i + 1];
    if (r === undefined) lines.push(line);
    else if (r !== null) lines.push(r);
  });
  return yaml(...lines, ...extra);
}

// The smallest valid facts of the DPU node "master-dpu" of the seed cluster.
const DPU_LINES = [
  "node: master-dpu", //                       1
  "nic: { name: ens32, ip: 192.168.50.131 }", // 2
  "podCIDRs: [10.244.1.0/24]", //              3
  "podGateway: 10.244.1.1", //                 4
  "clusterPodCIDRs: [10.244.0.0/16]", //       5
] as const;

function accept(text: string, context?: Context): NodeFacts {
  return expectAccepted(parseFacts(text, FILE, context), "the facts");
}

function reject(text: string, context?: Context): ConfigIssue[] {
  return expectRejected(parseFacts(text, FILE, context), FILE, "the facts");
}

/** The file must be rejected with exactly one issue, matching `expected`. */
function rejectOnce(text: string, expected: ExpectedIssue, context?: Context): ConfigIssue {
  return assertOneIssue(reject(text, context), expected);
}

// ---------------------------------------------------------------------------------------------

describe("parseFacts: the example files", () => {
  const examples = readdirSync(fromRoot("examples")).sort();
  it("finds example facts to check", () => {
    assert.ok(examples.length > 0);
  });
  for (const example of examples) {
    const configPath = fromRoot("examples", example, "cluster-conf.yaml");
    if (!existsSync(configPath)) continue;
    const factFiles = readdirSync(fromRoot("examples", example))
      .filter((f) => f.endsWith(".yaml") && f !== "cluster-conf.yaml")
      .sort();
    for (const file of factFiles) {
      const node = basename(file, ".yaml");
      it(`accepts examples/${example}/${file} for node ${node}, with and without its topology`, () => {
        const topology = topologyOf(readFileSync(configPath, "utf8"), configPath);
        assert.ok(topology.byName.has(node), `${node} is declared in examples/${example}/cluster-conf.yaml`);
        const text = readFileSync(fromRoot("examples", example, file), "utf8");
        const facts = accept(text, { topology, node });
        assert.equal(facts.node, node, "the example names its node");
        assert.deepEqual(accept(text), facts, "the topology context only adds checks");
      });
    }
  }

  it("reads examples/seed/master-dpu.yaml into the expected values", () => {
    const text = readFileSync(fromRoot("examples/seed/master-dpu.yaml"), "utf8");
    const facts = accept(text, seedContext("master-dpu"));
    assert.deepEqual(facts.nic, { name: "ens32", ip: "192.168.50.131", mtu: 1500 });
    assert.deepEqual(facts.podCIDRs, ["10.244.1.0/24"]);
    assert.equal(facts.podGateway, "10.244.1.1");
    assert.deepEqual(facts.clusterPodCIDRs, ["10.244.0.0/16"]);
    assert.deepEqual(
      facts.nodes.map((n) => n.name),
      ["master", "worker1-dpu", "worker1"],
    );
    assert.deepEqual(facts.nodes[0], {
      name: "master",
      ips: ["192.168.50.130"],
      podCIDRs: ["10.244.0.0/24"],
    });
    assert.deepEqual(facts.ztunnel, { ip: "10.244.1.2", hostVeth: "veth1ae58883", captureDNS: false });
    assert.equal(facts.tunnel, "geneve");
    assert.equal(facts.pods.length, 5);
    assert.deepEqual(facts.pods[0], {
      uid: "5b1c0e55-0c4f-4d7e-9d4e-0a7f3c1e2a01",
      name: "sleep-7d8c5",
      namespace: "default",
      node: "master",
      ips: ["10.244.0.5"],
      hostNetwork: false,
    });
    assert.equal(facts.pods[2]?.hostNetwork, true);
    assert.deepEqual(facts.pods[3]?.ips, []);
  });

  it("reads the CPU example's ztunnel without a host veth, and defaults its tunnel", () => {
    const text = readFileSync(fromRoot("examples/seed/master.yaml"), "utf8");
    const facts = accept(text, seedContext("master"));
    assert.deepEqual(facts.ztunnel, { ip: "10.244.1.2", captureDNS: false });
    assert.equal(facts.tunnel, "geneve", "master.yaml has no tunnel key");
  });

  it("reads the large examples' MTU, tunnel kinds and a DPU without ztunnel", () => {
    const topology = topologyOf(readFileSync(fromRoot("examples/large/cluster-conf.yaml"), "utf8"));
    const read = (node: string): NodeFacts =>
      accept(readFileSync(fromRoot(`examples/large/${node}.yaml`), "utf8"), { topology, node });
    const cpu2dpu = read("cpu2-dpu");
    assert.equal(cpu2dpu.nic.mtu, 9000);
    assert.equal(cpu2dpu.tunnel, "vxlan");
    assert.equal(cpu2dpu.ztunnel?.captureDNS, true);
    assert.equal(read("edge1").tunnel, "veth");
    assert.equal(read("cpu3-dpu").ztunnel, undefined, "no ztunnel running: the key is absent");
  });
});

describe("parseFacts: defaults", () => {
  it("fills every optional key of a minimal file", () => {
    const facts = accept(minimal(), seedContext("master"));
    assert.deepEqual(facts, {
      nic: { name: "ens32", ip: "192.168.50.130", mtu: 1500 },
      podCIDRs: ["10.244.0.0/24"],
      podGateway: "10.244.0.1",
      clusterPodCIDRs: ["10.244.0.0/16"],
      nodes: [],
      tunnel: "geneve",
      pods: [],
    });
    assert.equal(facts.node, undefined);
    assert.equal(facts.ztunnel, undefined);
  });

  it("defaults a pod's ips to [] and hostNetwork to false", () => {
    const facts = accept(
      minimal({}, "pods:", "  - { uid: u1, name: sleep, namespace: default, node: master }"),
      seedContext("master"),
    );
    assert.deepEqual(facts.pods, [
      { uid: "u1", name: "sleep", namespace: "default", node: "master", ips: [], hostNetwork: false },
    ]);
  });

  it("defaults ztunnel.captureDNS to false and leaves hostVeth unset", () => {
    const facts = accept(minimal({}, "ztunnel: { ip: 10.244.1.2 }"), seedContext("master"));
    assert.deepEqual(facts.ztunnel, { ip: "10.244.1.2", captureDNS: false });
  });

  it("defaults a listed node's podCIDRs to []", () => {
    const facts = accept(minimal({}, "nodes:", "  - { name: worker1, ips: [192.168.50.133] }"));
    assert.deepEqual(facts.nodes, [{ name: "worker1", ips: ["192.168.50.133"], podCIDRs: [] }]);
  });

  it("keeps explicit values instead of the defaults", () => {
    const facts = accept(
      minimal(
        { 3: "  ip: 192.168.50.130\n  mtu: 9000" },
        "tunnel: vxlan",
        "ztunnel: { ip: 10.244.1.2, captureDNS: true }",
        "nodes: [{ name: worker1, ips: [192.168.50.133], podCIDRs: [10.244.3.0/24] }]",
        "pods: [{ uid: u1, name: n, namespace: ns, node: master, hostNetwork: true, ips: [192.168.50.130] }]",
      ),
      seedContext("master"),
    );
    assert.equal(facts.nic.mtu, 9000);
    assert.equal(facts.tunnel, "vxlan");
    assert.equal(facts.ztunnel?.captureDNS, true);
    assert.deepEqual(facts.nodes[0]?.podCIDRs, ["10.244.3.0/24"]);
    assert.equal(facts.pods[0]?.hostNetwork, true);
    assert.deepEqual(facts.pods[0]?.ips, ["192.168.50.130"]);
  });
});

describe("parseFacts: accepted edge values", () => {
  it("accepts the MTU bounds 576 and 65535", () => {
    for (const mtu of [576, 65535]) {
      const facts = accept(minimal({ 3: `  ip: 192.168.50.130\n  mtu: ${mtu}` }));
      assert.equal(facts.nic.mtu, mtu);
    }
  });

  it("accepts a 15-character interface name", () => {
    assert.equal(accept(minimal({ 2: "  name: enp129s0f1np1vx" })).nic.name, "enp129s0f1np1vx");
  });

  it("accepts one IPv4 and one IPv6 pod CIDR (dual-stack)", () => {
    const facts = accept(
      minimal({ 4: "podCIDRs: [10.244.0.0/24, 'fd00:10:244::/64']" }),
      seedContext("master"),
    );
    assert.deepEqual(facts.podCIDRs, ["10.244.0.0/24", "fd00:10:244::/64"]);
  });

  it("rejects a CIDR with host bits set, naming the network it meant", () => {
    const parsed = parseFacts(minimal({ 4: "podCIDRs: [10.244.0.5/24]" }), "facts.yaml");
    assert.equal(parsed.ok, false);
    const issue = parsed.ok ? undefined : parsed.issues[0];
    assert.equal(issue?.field, "podCIDRs[0]");
    assert.match(
      issue?.message ?? "",
      /10\.244\.0\.5\/24 has host bits set; the network is 10\.244\.0\.0\/24/,
    );
  });

  it("compares nic.ip with the topology after IPv6 normalisation, and stores it canonically", () => {
    const topology = topologyOf(yaml("singles:", "  - nodeIP: 2001:db8::10", "    nodeName: six"));
    const facts = accept(
      yaml(
        "nic: { name: eth0, ip: '2001:DB8:0::10' }",
        "podCIDRs: ['fd00:0:0:1::/64']",
        "podGateway: 'fd00:0:0:1::1'",
        "clusterPodCIDRs: ['fd00::/48']",
        "ztunnel: { ip: 'fd00:0:0:1::2', hostVeth: veth0 }",
      ),
      { topology, node: "six" },
    );
    assert.equal(facts.nic.ip, "2001:db8::10");
    assert.equal(facts.ztunnel?.ip, "fd00:0:0:1::2");
  });

  it("runs no cross-check without a topology context", () => {
    // Wrong node, wrong address, gateway outside the pod CIDR, the node listed as another node.
    const text = minimal(
      { 3: "  ip: 10.9.9.9", 5: "podGateway: 10.99.0.1" },
      "node: somebody",
      "nodes:",
      "  - { name: somebody, ips: [10.9.9.9] }",
    );
    accept(text);
  });
});

// ---------------------------------------------------------------------------------------------

describe("parseFacts: malformed YAML", () => {
  it("reports a syntax error with its position", () => {
    const issues = reject(minimal({ 4: "podCIDRs: [10.244.0.0/24" }), seedContext("master"));
    assert.ok(issues.length >= 1);
    const first = issues[0];
    assert.equal(first?.field, "(yaml)");
    assert.ok(first?.line !== undefined && first.line >= 4, `line of: ${first && formatIssue(first)}`);
    assert.match(first?.message ?? "", /not well-formed YAML/);
  });

  it("reports a stray bracket at its line and column", () => {
    rejectOnce(minimal({ 6: "clusterPodCIDRs: [10.244.0.0/16]]" }), {
      field: "(yaml)",
      line: 6,
      column: 33,
      message: [/not well-formed YAML/, /"\]"/],
    });
  });

  it("reports a mapping nested in a plain value at its line", () => {
    rejectOnce(minimal({ 5: "podGateway: 10.244.0.1: x" }), {
      field: "(yaml)",
      line: 5,
      message: [/not well-formed YAML/, /[Nn]ested mappings/],
    });
  });

  it("reports a duplicate top-level key at its second occurrence, naming the first", () => {
    rejectOnce(minimal({}, "podGateway: 10.244.0.1"), {
      field: "podGateway",
      line: 7,
      column: 1,
      message: [/duplicate key "podGateway"/, /line 5/],
    });
  });

  it("reports a duplicate key inside nic", () => {
    rejectOnce(minimal({ 3: "  ip: 192.168.50.130\n  name: eth0" }), {
      field: "nic.name",
      line: 4,
      message: [/duplicate key "name"/, /line 2/],
    });
  });

  it("reports a duplicate key inside a list entry with its index", () => {
    rejectOnce(
      minimal(
        {},
        "nodes:",
        "  - { name: worker1, ips: [192.168.50.133] }",
        "  - { name: a, ips: [10.0.0.1], ips: [10.0.0.2] }",
      ),
      { field: "nodes[1].ips", line: 9, message: [/duplicate key "ips"/] },
    );
  });
});

describe("parseFacts: missing keys", () => {
  const topLevel: [number, string, RegExp][] = [
    [4, "podCIDRs", /missing/],
    [5, "podGateway", /missing/],
    [6, "clusterPodCIDRs", /missing/],
  ];
  for (const [lineNo, field, message] of topLevel) {
    it(`reports a missing ${field} at the top of the file`, () => {
      rejectOnce(minimal({ [lineNo]: null }), { field, line: 1, message: [message] });
    });
  }

  it("reports a missing nic at the top of the file", () => {
    rejectOnce(minimal({ 1: null, 2: null, 3: null }), { field: "nic", line: 1, message: [/missing/] });
  });

  it("reports a missing nic.name at the nic mapping", () => {
    rejectOnce(minimal({ 2: null }), { field: "nic.name", line: 2, message: [/missing/] });
  });

  it("reports a missing nic.ip at the nic mapping", () => {
    rejectOnce(minimal({ 3: null }), { field: "nic.ip", line: 2, message: [/missing/] });
  });

  it("reports every missing required key of a nearly empty file", () => {
    const issues = reject(yaml("# facts", "node: master"));
    assert.deepEqual(issues.map((i) => i.field).sort(), ["clusterPodCIDRs", "nic", "podCIDRs", "podGateway"]);
    for (const issue of issues) assertIssue(issue, { field: issue.field, line: 2, message: [/missing/] });
  });

  it("rejects an empty file as a whole", () => {
    const issues = reject("");
    assert.equal(issues.length, 1);
    assertIssue(issues[0], { field: "(file)", line: undefined, message: [/empty|missing|mapping/] });
  });

  it("reports a pod without uid at its list entry", () => {
    rejectOnce(minimal({}, "pods:", "  - { name: sleep, namespace: default, node: master }"), {
      field: "pods[0].uid",
      line: 8,
      message: [/missing/],
    });
  });

  it("reports a listed node without ips, and a ztunnel without ip", () => {
    const issues = reject(minimal({}, "nodes:", "  - { name: worker1 }", "ztunnel: { captureDNS: true }"));
    assert.equal(issues.length, 2, issues.map(formatIssue).join("\n"));
    assertIssue(issueFor(issues, "nodes[0].ips"), { field: "nodes[0].ips", line: 8, message: [/missing/] });
    assertIssue(issueFor(issues, "ztunnel.ip"), { field: "ztunnel.ip", line: 9, message: [/missing/] });
  });

  it("rejects empty podCIDRs and clusterPodCIDRs lists", () => {
    const issues = reject(minimal({ 4: "podCIDRs: []", 6: "clusterPodCIDRs: []" }));
    assert.equal(issues.length, 2, issues.map(formatIssue).join("\n"));
    assertIssue(issueFor(issues, "podCIDRs"), { field: "podCIDRs", line: 4, message: [/pod CIDR/] });
    assertIssue(issueFor(issues, "clusterPodCIDRs"), {
      field: "clusterPodCIDRs",
      line: 6,
      message: [/cluster's pod CIDRs/],
    });
  });

  it("rejects a listed node with an empty ips list", () => {
    rejectOnce(minimal({}, "nodes:", "  - { name: worker1, ips: [] }"), {
      field: "nodes[0].ips",
      line: 8,
      message: [/InternalIP/],
    });
  });
});

describe("parseFacts: unknown keys", () => {
  it("names an unknown top-level key and suggests the near one; the real key is then missing", () => {
    const issues = reject(minimal({ 4: "podCIDR: [10.244.0.0/24]" }));
    assert.equal(issues.length, 2, issues.map(formatIssue).join("\n"));
    assertIssue(issueFor(issues, "podCIDR"), {
      field: "podCIDR",
      line: 4,
      column: 1,
      message: [/unknown key "podCIDR"/, /did you mean "podCIDRs"/, /allowed keys: .*clusterPodCIDRs/],
    });
    assertIssue(issueFor(issues, "podCIDRs"), { field: "podCIDRs", line: 1, message: [/missing/] });
  });

  it("names an unknown key in nic", () => {
    rejectOnce(minimal({ 3: "  ip: 192.168.50.130\n  mut: 9000" }), {
      field: "nic.mut",
      line: 4,
      column: 3,
      message: [/unknown key "mut"/, /did you mean "mtu"\?/, /allowed keys: name, ip, mtu/],
    });
  });

  it("names an unknown key in a listed node with its index", () => {
    rejectOnce(
      minimal(
        {},
        "nodes:",
        "  - { name: master-dpu, ips: [192.168.50.131] }",
        "  - name: worker1",
        "    ips: [192.168.50.133]",
        "    podCIDR: [10.244.3.0/24]",
      ),
      {
        field: "nodes[1].podCIDR",
        line: 11,
        column: 5,
        message: [/unknown key "podCIDR"/, /did you mean "podCIDRs"/, /allowed keys: name, ips, podCIDRs/],
      },
    );
  });

  it("names an unknown key in a pod; the misspelt required key is missing too", () => {
    const issues = reject(
      minimal({}, "pods:", "  - uid: u1", "    name: sleep", "    namespce: default", "    node: master"),
    );
    assert.equal(issues.length, 2, issues.map(formatIssue).join("\n"));
    assertIssue(issueFor(issues, "pods[0].namespce"), {
      field: "pods[0].namespce",
      line: 10,
      message: [/unknown key "namespce"/, /did you mean "namespace"/],
    });
    assertIssue(issueFor(issues, "pods[0].namespace"), {
      field: "pods[0].namespace",
      line: 8,
      message: [/missing/],
    });
  });

  it("names an unknown key in ztunnel (keys are case-sensitive)", () => {
    rejectOnce(minimal({}, "ztunnel:", "  ip: 10.244.1.2", "  hostveth: veth1"), {
      field: "ztunnel.hostveth",
      line: 9,
      message: [
        /unknown key "hostveth"/,
        /did you mean "hostVeth"/,
        /allowed keys: ip, hostVeth, captureDNS/,
      ],
    });
  });

  it("lists the allowed keys without a suggestion when nothing is close", () => {
    const issue = rejectOnce(minimal({}, "kubeletVersion: 1.30"), {
      field: "kubeletVersion",
      line: 7,
      message: [/unknown key "kubeletVersion"/, /allowed keys: node, nic, podCIDRs/],
    });
    assert.doesNotMatch(issue.message, /did you mean/);
  });

  it("reports every unknown key of one mapping", () => {
    const issues = reject(minimal({ 3: "  ip: 192.168.50.130\n  mut: 1\n  nmae: x" }));
    assert.deepEqual(
      issues.map((i) => [i.field, i.line]),
      [
        ["nic.mut", 4],
        ["nic.nmae", 5],
      ],
    );
  });

  it("locates an unknown key that YAML reads as a number at its own line", () => {
    rejectOnce(minimal({}, "1500: mtu"), {
      field: "1500",
      line: 7,
      message: [/unknown key "1500"/],
    });
  });
});

describe("parseFacts: wrong types", () => {
  it("rejects a number where an IP string is expected, without calling it missing", () => {
    rejectOnce(minimal({ 5: "podGateway: 10" }), {
      field: "podGateway",
      line: 5,
      message: [/string/],
      notMessage: [/missing/],
    });
  });

  it("rejects a quoted MTU, without calling it missing", () => {
    rejectOnce(minimal({ 3: "  ip: 192.168.50.130\n  mtu: '1500'" }), {
      field: "nic.mtu",
      line: 4,
      message: [/number/],
      notMessage: [/missing/],
    });
  });

  it("rejects a fractional MTU", () => {
    rejectOnce(minimal({ 3: "  ip: 192.168.50.130\n  mtu: 1500.5" }), {
      field: "nic.mtu",
      line: 4,
      message: [/int/],
      notMessage: [/missing/],
    });
  });

  it("rejects a scalar where a mapping or a list is expected", () => {
    const issues = reject(minimal({ 1: "nic: ens32", 2: null, 3: null, 4: "podCIDRs: 10.244.0.0/24" }));
    assert.equal(issues.length, 2, issues.map(formatIssue).join("\n"));
    assertIssue(issueFor(issues, "nic"), {
      field: "nic",
      line: 1,
      message: [/object|mapping/],
      notMessage: [/missing/],
    });
    assertIssue(issueFor(issues, "podCIDRs"), {
      field: "podCIDRs",
      line: 2,
      message: [/array|list/],
      notMessage: [/missing/],
    });
  });

  it("rejects non-boolean hostNetwork and captureDNS (YAML 1.2: yes is a string)", () => {
    const issues = reject(
      minimal(
        {},
        "ztunnel: { ip: 10.244.1.2, captureDNS: yes }",
        "pods:",
        "  - { uid: u1, name: n, namespace: ns, node: master, hostNetwork: 'true' }",
      ),
    );
    assert.equal(issues.length, 2, issues.map(formatIssue).join("\n"));
    assertIssue(issueFor(issues, "ztunnel.captureDNS"), {
      field: "ztunnel.captureDNS",
      line: 7,
      message: [/boolean|true or false/],
      notMessage: [/missing/],
    });
    assertIssue(issueFor(issues, "pods[0].hostNetwork"), {
      field: "pods[0].hostNetwork",
      line: 9,
      message: [/boolean|true or false/],
      notMessage: [/missing/],
    });
  });

  it("rejects a document that is a list, not a mapping", () => {
    rejectOnce(yaml("- nic: { name: ens32, ip: 192.168.50.130 }"), {
      field: "(file)",
      line: 1,
      message: [/object|mapping/],
      notMessage: [/missing/],
    });
  });
});

describe("parseFacts: bad values", () => {
  it("rejects addresses that are not IP addresses, wherever they are", () => {
    const issues = reject(
      minimal(
        { 3: "  ip: 192.168.50.300", 5: "podGateway: 10.244.0.1/24" },
        "nodes:",
        "  - { name: worker1, ips: [worker1.example] }",
        "ztunnel: { ip: 'fe80::1%eth0' }",
        "pods:",
        "  - { uid: u1, name: n, namespace: ns, node: master, ips: [10.244.0.5, 10.244.0.256] }",
      ),
    );
    assert.deepEqual(issues.map((i) => [i.field, i.line]).sort(), [
      ["nic.ip", 3],
      ["nodes[0].ips[0]", 8],
      ["podGateway", 5],
      ["pods[0].ips[1]", 11],
      ["ztunnel.ip", 9],
    ]);
    for (const issue of issues) assert.match(issue.message, /must be an IP address/, formatIssue(issue));
  });

  it("rejects bad CIDRs: prefix too long, no prefix, not an address", () => {
    const issues = reject(
      minimal(
        { 4: "podCIDRs: [10.244.0.0/33]", 6: "clusterPodCIDRs: [10.244.0.0]" },
        "nodes:",
        "  - { name: master-dpu, ips: [192.168.50.131] }",
        "  - { name: worker1, ips: [192.168.50.133], podCIDRs: [nope] }",
      ),
    );
    assert.deepEqual(
      issues.map((i) => [i.field, i.line]),
      [
        ["podCIDRs[0]", 4],
        ["clusterPodCIDRs[0]", 6],
        ["nodes[1].podCIDRs[0]", 9],
      ],
    );
    for (const issue of issues) assert.match(issue.message, /must be a CIDR/, formatIssue(issue));
  });

  it("rejects an interface name longer than 15 characters", () => {
    rejectOnce(minimal({ 2: "  name: enp129s0f1np1vx0" }), {
      field: "nic.name",
      line: 2,
      message: [/interface name/, /15 characters/],
    });
  });

  it("rejects interface names with a slash, a colon or a space, and an empty one", () => {
    for (const bad of ["'ens/32'", "'ens32:1'", "'ens 32'", "''"]) {
      rejectOnce(minimal({ 2: `  name: ${bad}` }), {
        field: "nic.name",
        line: 2,
        message: [/must be a Linux interface name/],
      });
    }
  });

  it("checks ztunnel.hostVeth as an interface name too", () => {
    rejectOnce(minimal({}, "ztunnel: { ip: 10.244.1.2, hostVeth: veth/1 }"), {
      field: "ztunnel.hostVeth",
      line: 7,
      message: [/interface name/],
    });
  });

  it("rejects an MTU out of range", () => {
    const cases: [number, RegExp][] = [
      [575, /at least 576/],
      [0, /at least 576/],
      [65536, /at most 65535/],
    ];
    for (const [mtu, message] of cases) {
      rejectOnce(minimal({ 3: `  ip: 192.168.50.130\n  mtu: ${mtu}` }), {
        field: "nic.mtu",
        line: 4,
        column: 8,
        message: [message],
      });
    }
  });

  it("rejects a tunnel other than geneve, vxlan or veth (case-sensitive)", () => {
    for (const tunnel of ["gre", "GENEVE", "''"]) {
      rejectOnce(minimal({}, `tunnel: ${tunnel}`), {
        field: "tunnel",
        line: 7,
        message: [/geneve/, /vxlan/, /veth/],
      });
    }
  });

  it("rejects empty names in pods and listed nodes", () => {
    const issues = reject(
      minimal(
        {},
        "nodes:",
        "  - { name: '', ips: [10.0.0.1] }",
        "pods:",
        "  - { uid: '', name: n, namespace: ns, node: master }",
      ),
    );
    assert.deepEqual(
      issues.map((i) => [i.field, i.line]),
      [
        ["nodes[0].name", 8],
        ["pods[0].uid", 10],
      ],
    );
    for (const issue of issues) assert.match(issue.message, /must not be empty/);
  });
});

describe("parseFacts: several problems at once", () => {
  it("reports every schema problem of the file in one pass", () => {
    const issues = reject(
      yaml(
        "node: master", //                                             1
        "nic: { name: ens/32, ip: 192.168.50.130, mtu: 10 }", //       2
        "podCIDRs: [10.244.0.0/33]", //                                3
        "podGateway: nope", //                                         4
        "clusterPodCIDRs: []", //                                      5
        "tunnel: gre", //                                              6
        "bogus: 1", //                                                 7
      ),
      seedContext("master"),
    );
    assert.deepEqual(issues.map((i) => [i.field, i.line]).sort(), [
      ["bogus", 7],
      ["clusterPodCIDRs", 5],
      ["nic.mtu", 2],
      ["nic.name", 2],
      ["podCIDRs[0]", 3],
      ["podGateway", 4],
      ["tunnel", 6],
    ]);
  });

  it("reports every cross-check problem of the file in one pass", () => {
    const issues = reject(
      yaml(
        "node: worker1", //                                            1
        "nic: { name: ens32, ip: 192.168.50.131 }", //                 2
        "podCIDRs: [10.244.0.0/24, 10.9.0.0/24]", //                   3
        "podGateway: 10.9.9.1", //                                     4
        "clusterPodCIDRs: [10.244.0.0/16]", //                         5
        "nodes:", //                                                   6
        "  - { name: master, ips: [192.168.50.130] }", //              7
        "  - { name: worker1, ips: [192.168.50.133] }", //             8
        "  - { name: worker1, ips: [192.168.50.133] }", //             9
      ),
      seedContext("master"),
    );
    assert.deepEqual(issues.map((i) => [i.field, i.line]).sort(), [
      ["nic.ip", 2],
      ["node", 1],
      ["nodes[0].name", 7],
      ["nodes[2].name", 9],
      ["podCIDRs[1]", 3],
      ["podGateway", 4],
    ]);
  });
});

// ---------------------------------------------------------------------------------------------

describe("parseFacts: cross-checks against the topology", () => {
  it("rejects facts that name another node than --node", () => {
    rejectOnce(
      minimal({}, "node: worker1"),
      { field: "node", line: 7, column: 7, message: [/"worker1"/, /--node is "master"/] },
      seedContext("master"),
    );
  });

  it("accepts facts that name the --node node", () => {
    assert.equal(accept(minimal({}, "node: master"), seedContext("master")).node, "master");
  });

  it("rejects a nic.ip other than the topology's address of the node", () => {
    rejectOnce(
      minimal({ 3: "  ip: 192.168.50.131" }),
      {
        field: "nic.ip",
        line: 3,
        column: 7,
        message: [
          /192\.168\.50\.131/,
          /cluster-conf\.yaml/,
          /"master"/,
          /192\.168\.50\.130/,
          /pairs\[0\]\.cpuNodeName/,
        ],
      },
      seedContext("master"),
    );
  });

  it("rejects a podGateway outside the node's pod CIDRs", () => {
    rejectOnce(
      minimal({ 5: "podGateway: 10.244.1.1" }),
      { field: "podGateway", line: 5, message: [/10\.244\.1\.1/, /not inside/, /10\.244\.0\.0\/24/] },
      seedContext("master"),
    );
  });

  it("rejects a podGateway of a family the pod CIDRs lack", () => {
    rejectOnce(
      minimal({ 5: "podGateway: 'fd00::1'" }),
      { field: "podGateway", line: 5, message: [/not inside/] },
      seedContext("master"),
    );
  });

  it("rejects two pod CIDRs of one family", () => {
    rejectOnce(
      minimal({ 4: "podCIDRs: [10.244.0.0/24, 10.245.0.0/24]" }),
      { field: "podCIDRs[1]", line: 4, message: [/one pod CIDR per IP family/, /10\.245\.0\.0\/24/, /IPv4/] },
      seedContext("master"),
    );
  });

  it("rejects two IPv6 pod CIDRs next to an IPv4 one, naming the second IPv6", () => {
    rejectOnce(
      minimal({ 4: "podCIDRs: ['fd00:1::/64', 10.244.0.0/24, 'fd00:2::/64']" }),
      { field: "podCIDRs[2]", line: 4, message: [/IPv6/] },
      seedContext("master"),
    );
  });

  it("rejects a nodes list that contains the node itself", () => {
    rejectOnce(
      minimal(
        {},
        "nodes:",
        "  - { name: master-dpu, ips: [192.168.50.131] }",
        "  - { name: master, ips: [192.168.50.130] }",
      ),
      { field: "nodes[1].name", line: 9, message: [/the node itself/] },
      seedContext("master"),
    );
  });

  it("rejects a node listed twice, at its second entry", () => {
    rejectOnce(
      minimal(
        {},
        "nodes:",
        "  - name: worker1", //                      8
        "    ips: [192.168.50.133]",
        "  - { name: master-dpu, ips: [192.168.50.131] }",
        "  - name: worker1", //                      11
        "    ips: [192.168.50.133]",
      ),
      { field: "nodes[2].name", line: 11, message: [/"worker1"/, /listed twice/] },
      seedContext("master"),
    );
  });

  it("rejects a DPU whose ztunnel has no hostVeth", () => {
    rejectOnce(
      yaml(...DPU_LINES, "ztunnel:", "  ip: 10.244.1.2", "  captureDNS: true"),
      { field: "ztunnel.hostVeth", line: 7, message: [/required/, /dpu/, /veth/] },
      seedContext("master-dpu"),
    );
  });

  it("rejects a single whose ztunnel has no hostVeth", () => {
    rejectOnce(
      yaml(
        "nic: { name: eth0, ip: 192.168.50.140 }",
        "podCIDRs: [10.244.4.0/24]",
        "podGateway: 10.244.4.1",
        "clusterPodCIDRs: [10.244.0.0/16]",
        "ztunnel: { ip: 10.244.4.2 }",
      ),
      { field: "ztunnel.hostVeth", line: 5, message: [/required/, /single/] },
      { topology: SEED_WITH_SINGLE, node: "edge1" },
    );
  });

  it("accepts a DPU whose ztunnel has a hostVeth, and one with no ztunnel at all (fail closed)", () => {
    const withVeth = accept(
      yaml(...DPU_LINES, "ztunnel: { ip: 10.244.1.2, hostVeth: veth1ae58883 }"),
      seedContext("master-dpu"),
    );
    assert.equal(withVeth.ztunnel?.hostVeth, "veth1ae58883");
    assert.equal(accept(yaml(...DPU_LINES), seedContext("master-dpu")).ztunnel, undefined);
  });

  it("accepts a CPU whose ztunnel (the DPU's) has no hostVeth", () => {
    const facts = accept(minimal({}, "ztunnel: { ip: 10.244.1.2, captureDNS: true }"), seedContext("master"));
    assert.equal(facts.ztunnel?.hostVeth, undefined);
  });

  it("leaves a node the topology does not declare to the planner", () => {
    // Only the node-independent checks apply; `offmesh render` then plans nothing and says why.
    accept(minimal({ 3: "  ip: 10.1.2.3" }, "ztunnel: { ip: 10.244.0.2 }"), seedContext("ghost"));
    rejectOnce(
      minimal({ 5: "podGateway: 10.244.9.1" }),
      { field: "podGateway", line: 5, message: [/not inside/] },
      seedContext("ghost"),
    );
  });
});
