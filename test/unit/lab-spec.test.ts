import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { formatIssue } from "../../src/configfile/issues.js";
import type { ConfigIssue } from "../../src/configfile/issues.js";
import { convertPolicy } from "../../src/controlplane/policy.js";
import {
  bridgePortName,
  internetNetns,
  isLabNetns,
  labNameProblem,
  labStateDir,
  labStatePaths,
  MAX_NETNS_NAME,
  nodeNetns,
  podNetns,
  shortenName,
  wireNetns,
  ztunnelPodName,
} from "../../src/lab/names.js";
import { planLabNetwork } from "../../src/lab/netns.js";
import {
  clusterNamespaces,
  clusterNodes,
  clusterPolicies,
  clusterServices,
  controlPlaneNode,
  DEFAULT_SPEC_FILE,
  DEFAULT_SPEC_TEXT,
  formatSpec,
  labNodes,
  resolveSpec,
  topologyText,
  workloadPods,
  ztunnelPods,
} from "../../src/lab/spec.js";
import type { LabSpec } from "../../src/lab/spec.js";
import { lookupByName, parseTopology, servedNodes } from "../../src/topology/index.js";
import { assertIssue, expectAccepted, issueFor } from "../support/issues.js";
import { fromRoot } from "../support/paths.js";

const FILE = "lab.yaml";

function yaml(...lines: string[]): string {
  return lines.join("\n") + "\n";
}

function accept(text: string, name?: string): LabSpec {
  const r = resolveSpec(text, FILE, name === undefined ? {} : { name });
  if ("issues" in r)
    assert.fail(`expected the spec to be accepted, got:\n${r.issues.map(formatIssue).join("\n")}`);
  return r.spec;
}

function reject(text: string, name?: string): ConfigIssue[] {
  const r = resolveSpec(text, FILE, name === undefined ? {} : { name });
  if ("spec" in r) assert.fail("expected the spec to be rejected");
  assert.ok(r.issues.length > 0);
  return r.issues;
}

// A small valid lab. pairs[0] is on lines 2-3, singles[0] on 5, namespaces on 7-8, workloads 10-11.
const BASE_LINES = [
  "pairs:", //                                                                    1
  "  - cpu: { name: cpu1, ip: 192.168.50.10, podCIDR: 10.244.0.0/24 }", //         2
  "    dpu: { name: dpu1, ip: 192.168.50.11, podCIDR: 10.244.1.0/24 }", //         3
  "singles:", //                                                                  4
  "  - { name: edge1, ip: 192.168.50.20, podCIDR: 10.244.2.0/24 }", //             5
  "namespaces:", //                                                               6
  "  - { name: default, labels: { istio.io/dataplane-mode: ambient } }", //        7
  "  - { name: legacy }", //                                                      8
  "workloads:", //                                                                9
  "  - { name: client, namespace: default, node: cpu1 }", //                      10
  "  - { name: server, namespace: legacy, node: edge1, serviceAccount: sa }", //  11
] as const;
const BASE = yaml(...BASE_LINES);

/** BASE with line `n` (1-based) replaced, and `more` lines appended. */
function baseWith(n: number | undefined, line: string | undefined, ...more: string[]): string {
  const lines: string[] = [...BASE_LINES];
  if (n !== undefined && line !== undefined) lines[n - 1] = line;
  return yaml(...lines, ...more);
}

/** Column of the first occurrence of `needle` on line `n` of `text` (1-based). */
function col(text: string, n: number, needle: string): number {
  const line = text.split("\n")[n - 1] ?? "";
  const i = line.indexOf(needle);
  assert.ok(i >= 0, `"${needle}" is not on line ${n}: ${line}`);
  return i + 1;
}

describe("lab spec: the default", () => {
  it("is embedded verbatim from labs/default.yaml", () => {
    assert.equal(DEFAULT_SPEC_TEXT, readFileSync(fromRoot(DEFAULT_SPEC_FILE), "utf8"));
  });

  it("is the seed cluster plus edge1, with the design's addresses and pod CIDRs", () => {
    const spec = accept(DEFAULT_SPEC_TEXT);
    assert.equal(spec.name, "oml");
    assert.equal(spec.nic, "ens3");
    assert.deepEqual(spec.wire, { subnet: "192.168.50.0/24" });
    assert.deepEqual(spec.internet, { address: "203.0.113.10", wireAddress: "192.168.50.254" });
    assert.deepEqual(
      labNodes(spec).map((n) => [n.name, n.role, n.ip, n.podCIDR]),
      [
        ["master", "cpu", "192.168.50.130", "10.244.0.0/24"],
        ["master-dpu", "dpu", "192.168.50.131", "10.244.1.0/24"],
        ["worker1", "cpu", "192.168.50.133", "10.244.3.0/24"],
        ["worker1-dpu", "dpu", "192.168.50.128", "10.244.2.0/24"],
        ["edge1", "single", "192.168.50.140", "10.244.4.0/24"],
      ],
    );
    assert.deepEqual(spec.namespaces, [
      { name: "default", labels: { "istio.io/dataplane-mode": "ambient" } },
      { name: "legacy", labels: {} },
    ]);
    assert.deepEqual(
      spec.workloads.map(
        (w) => `${w.namespace}/${w.name}@${w.node} sa=${w.serviceAccount} app=${w.labels["app"]}`,
      ),
      [
        "default/client@master sa=client app=client",
        "default/server@worker1 sa=server app=server",
        "default/neighbour@master sa=neighbour app=neighbour",
        "legacy/client@master sa=client app=client",
        "legacy/server@worker1 sa=server app=server",
        "legacy/neighbour@master sa=neighbour app=neighbour",
        "default/edge@edge1 sa=edge app=edge",
      ],
    );
    assert.deepEqual(spec.policies, []);
    assert.deepEqual(spec.services, []);
    assert.equal(controlPlaneNode(spec).name, "master");
  });

  it("gives every DPU and single a ztunnel pod in istio-system, and no CPU", () => {
    const spec = accept(DEFAULT_SPEC_TEXT);
    assert.deepEqual(
      ztunnelPods(spec),
      [["master-dpu"], ["worker1-dpu"], ["edge1"]].map(([node]) => ({
        name: `ztunnel-${node}`,
        namespace: "istio-system",
        node,
        serviceAccount: "ztunnel",
        labels: { app: "ztunnel" },
      })),
    );
    assert.deepEqual(
      clusterNamespaces(spec).map((n) => n.name),
      ["default", "legacy", "istio-system"],
    );
    assert.equal(workloadPods(spec).length, 7);
  });

  it("an empty file is the defaults with no nodes, which is refused", () => {
    const issues = reject("");
    assertIssue(issueFor(issues, "(file)"), {
      field: "(file)",
      line: undefined,
      message: [/declares no nodes/],
    });
  });
});

describe("lab spec: derived files and objects", () => {
  it("topologyText is a cluster-conf.yaml the topology parser accepts, with the same nodes and roles", () => {
    const spec = accept(DEFAULT_SPEC_TEXT);
    const topo = expectAccepted(parseTopology(topologyText(spec), "cluster-conf.yaml"), "topologyText");
    assert.deepEqual(
      topo.nodes.map((n) => [n.name, n.role, n.ip]),
      labNodes(spec).map((n) => [n.name, n.role, n.ip]),
    );
    const dpu = lookupByName(topo, "master-dpu");
    assert.ok(dpu.found);
    assert.equal(dpu.node.partner?.name, "master");
    assert.deepEqual(
      servedNodes(topo, "worker1-dpu").map((n) => n.name),
      ["worker1-dpu", "worker1"],
    );
  });

  it("topologyText of a lab with singles only (no pairs key) parses too", () => {
    const spec = accept(yaml("singles:", "  - { name: solo, ip: 192.168.50.5, podCIDR: 10.9.0.0/24 }"));
    const topo = expectAccepted(parseTopology(topologyText(spec), "c.yaml"), "topologyText");
    assert.deepEqual(topo.pairs, []);
    assert.deepEqual(topo.singles, [{ name: "solo", ip: "192.168.50.5" }]);
  });

  it("formatSpec writes the resolved spec so that resolving it again gives the same spec", () => {
    const spec = accept(
      baseWith(
        undefined,
        undefined,
        "services:",
        "  - name: web",
        "    namespace: default",
        "    clusterIP: 10.96.0.10",
        "    ports: [{ name: http, port: 80, targetPort: 8081 }, { name: tcp, port: 8080 }]",
        "    selector: { app: server }",
        "policies:",
        "  - name: allow-client",
        "    namespace: legacy",
        "    spec: { action: ALLOW, rules: [{ from: [{ source: { principals: ['*/ns/default/sa/client'] } }] }] }",
      ),
    );
    assert.deepEqual(accept(formatSpec(spec)), spec);
    assert.deepEqual(accept(formatSpec(accept(DEFAULT_SPEC_TEXT))), accept(DEFAULT_SPEC_TEXT));
  });

  it("clusterNodes carry address, pod CIDR and the offMeshNodeType label of each role", () => {
    const nodes = clusterNodes(accept(BASE));
    assert.deepEqual(nodes, [
      {
        name: "cpu1",
        internalIPs: ["192.168.50.10"],
        podCIDRs: ["10.244.0.0/24"],
        labels: { "kubernetes.io/hostname": "cpu1", offMeshNodeType: "cpu" },
      },
      {
        name: "dpu1",
        internalIPs: ["192.168.50.11"],
        podCIDRs: ["10.244.1.0/24"],
        labels: { "kubernetes.io/hostname": "dpu1", offMeshNodeType: "dpu" },
      },
      {
        name: "edge1",
        internalIPs: ["192.168.50.20"],
        podCIDRs: ["10.244.2.0/24"],
        labels: { "kubernetes.io/hostname": "edge1", offMeshNodeType: "single" },
      },
    ]);
  });

  it("services and policies become cluster objects; the policy converts for ztunnel", () => {
    const spec = accept(
      baseWith(
        undefined,
        undefined,
        "services:",
        "  - { name: web, namespace: default, clusterIP: 10.96.0.10, ports: [{ port: 80 }], selector: { app: x } }",
        "policies:",
        "  - { name: deny-all, namespace: default, spec: { action: DENY, rules: [{}] } }",
      ),
    );
    assert.deepEqual(clusterServices(spec), [
      {
        namespace: "default",
        name: "web",
        clusterIPs: ["10.96.0.10"],
        ports: [{ port: 80, targetPort: 80, protocol: "TCP" }],
        selector: { app: "x" },
      },
    ]);
    const [policy] = clusterPolicies(spec);
    assert.ok(policy);
    const converted = convertPolicy(policy, { rootNamespace: "istio-system" });
    assert.ok(!("error" in converted) && converted.authorization, "the policy converts");
  });

  it("workloads default their service account to their name and their labels to {app: name}", () => {
    const spec = accept(BASE);
    assert.deepEqual(spec.workloads, [
      {
        name: "client",
        namespace: "default",
        node: "cpu1",
        serviceAccount: "client",
        labels: { app: "client" },
      },
      { name: "server", namespace: "legacy", node: "edge1", serviceAccount: "sa", labels: { app: "server" } },
    ]);
  });
});

describe("lab spec: field rules", () => {
  it("the lab name is 1-8 lower-case letters or digits", () => {
    const text = baseWith(undefined, undefined, "name: Lab-1");
    const issues = reject(text);
    assertIssue(issueFor(issues, "name"), {
      field: "name",
      line: 12,
      column: 7,
      message: [/1 to 8 lower-case/],
    });
    assert.equal(accept(baseWith(undefined, undefined, "name: lab12345")).name, "lab12345");
    assert.match(labNameProblem("123456789") ?? "", /not a valid lab name/);
    assert.equal(labNameProblem("a1"), undefined);
  });

  it("--name overrides the spec's name and is checked the same way", () => {
    assert.equal(accept(BASE, "t1").name, "t1");
    const [issue] = reject(BASE, "With-Caps");
    assert.deepEqual({ file: issue?.file, field: issue?.field }, { file: "--name", field: "name" });
  });

  it("node, namespace and workload names are DNS labels", () => {
    const text = baseWith(2, "  - cpu: { name: CPU_1, ip: 192.168.50.10, podCIDR: 10.244.0.0/24 }");
    assertIssue(issueFor(reject(text), "pairs[0].cpu.name"), {
      field: "pairs[0].cpu.name",
      line: 2,
      column: col(text, 2, "CPU_1"),
      message: [/"CPU_1" is not a valid node name/, /DNS label/],
    });
    const ns = baseWith(8, "  - { name: legacy.old }");
    assertIssue(issueFor(reject(ns), "namespaces[1].name"), {
      field: "namespaces[1].name",
      line: 8,
      message: [/namespace name/],
    });
    const wl = baseWith(10, "  - { name: -client, namespace: default, node: cpu1 }");
    assertIssue(issueFor(reject(wl), "workloads[0].name"), {
      field: "workloads[0].name",
      line: 10,
      message: [/pod name/],
    });
  });

  it("unknown keys are named with a suggestion", () => {
    const text = baseWith(5, "  - { name: edge1, ipp: 192.168.50.20, podCIDR: 10.244.2.0/24 }");
    const issues = reject(text);
    assertIssue(issueFor(issues, "singles[0].ipp"), {
      field: "singles[0].ipp",
      line: 5,
      column: col(text, 5, "ipp"),
      message: [/unknown key "ipp"/, /did you mean "ip"\?/],
    });
    assertIssue(issueFor(issues, "singles[0].ip"), {
      field: "singles[0].ip",
      line: 5,
      message: [/^is missing$/],
    });
  });

  it("a number where a name belongs says to quote it", () => {
    const text = baseWith(undefined, undefined, "nic: 1234");
    assertIssue(issueFor(reject(text), "nic"), {
      field: "nic",
      line: 12,
      message: [/must be a string/, /quote/],
    });
  });

  it("the NIC name must be a Linux interface name", () => {
    assertIssue(issueFor(reject(baseWith(undefined, undefined, "nic: a-very-long-interface")), "nic"), {
      field: "nic",
      line: 12,
      message: [/interface name/],
    });
  });

  it("addresses are IPv4 and pod CIDRs have no host bits and hold at least 8 addresses", () => {
    const text = yaml(
      "singles:",
      "  - { name: a, ip: 'fd00::1', podCIDR: 10.1.0.0/24 }",
      "  - { name: b, ip: 192.168.50.2, podCIDR: 10.2.0.1/24 }",
      "  - { name: c, ip: 192.168.50.3, podCIDR: 10.3.0.0/30 }",
    );
    const issues = reject(text);
    assertIssue(issueFor(issues, "singles[0].ip"), {
      field: "singles[0].ip",
      line: 2,
      message: [/not an IPv4 address/],
    });
    assertIssue(issueFor(issues, "singles[1].podCIDR"), {
      field: "singles[1].podCIDR",
      line: 3,
      message: [/host bits/, /network is 10\.2\.0\.0\/24/],
    });
    assertIssue(issueFor(issues, "singles[2].podCIDR"), {
      field: "singles[2].podCIDR",
      line: 4,
      message: [/at most \/29/],
    });
  });

  it("label keys and values follow Kubernetes syntax; the key itself is pointed at", () => {
    const text = baseWith(7, "  - { name: default, labels: { 'bad key': x, ok: 'no spaces allowed' } }");
    const issues = reject(text);
    assertIssue(issueFor(issues, 'namespaces[0].labels["bad key"]'), {
      field: 'namespaces[0].labels["bad key"]',
      line: 7,
      column: col(text, 7, "'bad key'"),
      message: [/label key "bad key"/],
    });
    assertIssue(issueFor(issues, "namespaces[0].labels.ok"), {
      field: "namespaces[0].labels.ok",
      line: 7,
      column: col(text, 7, "'no spaces"),
      message: [/not a valid label value/],
    });
  });

  it("service ports are 1-65535; a named targetPort is accepted", () => {
    const text = baseWith(
      undefined,
      undefined,
      "services:",
      "  - { name: web, namespace: default, clusterIP: 10.96.0.1, ports: [{ port: 0, targetPort: http }] }",
    );
    assertIssue(issueFor(reject(text), "services[0].ports[0].port"), {
      field: "services[0].ports[0].port",
      line: 13,
      message: [/1–65535/],
    });
  });
});

describe("lab spec: cross-field rules", () => {
  it("node names are unique across pairs and singles", () => {
    const text = baseWith(5, "  - { name: dpu1, ip: 192.168.50.20, podCIDR: 10.244.2.0/24 }");
    assertIssue(issueFor(reject(text), "singles[0].name"), {
      field: "singles[0].name",
      line: 5,
      column: col(text, 5, "dpu1"),
      message: [/"dpu1" is already used at pairs\[0\]\.dpu\.name/],
    });
  });

  it("node addresses are unique", () => {
    const text = baseWith(5, "  - { name: edge1, ip: 192.168.50.10, podCIDR: 10.244.2.0/24 }");
    assertIssue(issueFor(reject(text), "singles[0].ip"), {
      field: "singles[0].ip",
      line: 5,
      column: col(text, 5, "192.168.50.10"),
      message: [/already used at pairs\[0\]\.cpu\.ip/],
    });
  });

  it("node addresses lie inside the wire subnet and are not its network or broadcast address", () => {
    const text = baseWith(
      2,
      "  - cpu: { name: cpu1, ip: 192.168.51.10, podCIDR: 10.244.0.0/24 }",
      "wire: { subnet: 192.168.50.0/24 }",
    );
    assertIssue(issueFor(reject(text), "pairs[0].cpu.ip"), {
      field: "pairs[0].cpu.ip",
      line: 2,
      message: [/not inside the wire subnet 192\.168\.50\.0\/24/],
    });
    const edge = baseWith(3, "    dpu: { name: dpu1, ip: 192.168.50.255, podCIDR: 10.244.1.0/24 }");
    assertIssue(issueFor(reject(edge), "pairs[0].dpu.ip"), {
      field: "pairs[0].dpu.ip",
      line: 3,
      message: [/broadcast/],
    });
  });

  it("no node may take the internet's wire address", () => {
    const text = baseWith(5, "  - { name: edge1, ip: 192.168.50.254, podCIDR: 10.244.2.0/24 }");
    assertIssue(issueFor(reject(text), "singles[0].ip"), {
      field: "singles[0].ip",
      line: 5,
      message: [/internet's wire address/],
    });
    // Moving the internet's wire address frees .254 for the node.
    accept(
      baseWith(
        5,
        "  - { name: edge1, ip: 192.168.50.254, podCIDR: 10.244.2.0/24 }",
        "internet: { wireAddress: 192.168.50.1 }",
      ),
    );
  });

  it("the internet address is inside 203.0.113.0/24 and its wire address inside the wire", () => {
    const text = baseWith(
      undefined,
      undefined,
      "internet:",
      "  address: 198.51.100.1",
      "  wireAddress: 10.0.0.1",
    );
    const issues = reject(text);
    assertIssue(issueFor(issues, "internet.address"), {
      field: "internet.address",
      line: 13,
      message: [/not inside 203\.0\.113\.0\/24/],
    });
    assertIssue(issueFor(issues, "internet.wireAddress"), {
      field: "internet.wireAddress",
      line: 14,
      message: [/not inside the wire subnet/],
    });
  });

  it("the wire subnet may not overlap the internet's range", () => {
    const text = yaml(
      "wire: { subnet: 203.0.113.0/25 }",
      "internet: { wireAddress: 203.0.113.100 }",
      "singles: [{ name: a, ip: 203.0.113.2, podCIDR: 10.1.0.0/24 }]",
    );
    assertIssue(issueFor(reject(text), "wire.subnet"), {
      field: "wire.subnet",
      line: 1,
      message: [/overlaps 203\.0\.113\.0\/24/],
    });
  });

  it("pod CIDRs are disjoint and overlap neither the wire, the internet nor reserved ranges", () => {
    const text = yaml(
      "singles:",
      "  - { name: a, ip: 192.168.50.2, podCIDR: 10.244.0.0/16 }",
      "  - { name: b, ip: 192.168.50.3, podCIDR: 10.244.7.0/24 }",
      "  - { name: c, ip: 192.168.50.4, podCIDR: 192.168.50.128/25 }",
      "  - { name: d, ip: 192.168.50.5, podCIDR: 203.0.113.0/28 }",
      "  - { name: e, ip: 192.168.50.6, podCIDR: 127.1.0.0/24 }",
    );
    const issues = reject(text);
    assertIssue(issueFor(issues, "singles[1].podCIDR"), {
      field: "singles[1].podCIDR",
      line: 3,
      message: [/overlaps 10\.244\.0\.0\/16 at singles\[0\]\.podCIDR/, /disjoint/],
    });
    assertIssue(issueFor(issues, "singles[2].podCIDR"), {
      field: "singles[2].podCIDR",
      line: 4,
      message: [/overlaps the wire subnet/],
    });
    assertIssue(issueFor(issues, "singles[3].podCIDR"), {
      field: "singles[3].podCIDR",
      line: 5,
      message: [/203\.0\.113\.0\/24/],
    });
    assertIssue(issueFor(issues, "singles[4].podCIDR"), {
      field: "singles[4].podCIDR",
      line: 6,
      message: [/loopback/],
    });
    assert.equal(issues.length, 4, issues.map(formatIssue).join("\n"));
  });

  it("namespaces are declared once", () => {
    const text = baseWith(8, "  - { name: default }");
    const issues = reject(text);
    assertIssue(issueFor(issues, "namespaces[1].name"), {
      field: "namespaces[1].name",
      line: 8,
      message: [/"default" is already declared at namespaces\[0\]\.name/],
    });
  });

  it("workloads name a declared node and namespace, once each", () => {
    const text = baseWith(
      undefined,
      undefined,
      "  - { name: client, namespace: default, node: cpu2 }",
      "  - { name: x, namespace: prod, node: cpu1 }",
    );
    const issues = reject(text);
    assertIssue(issueFor(issues, "workloads[2].node"), {
      field: "workloads[2].node",
      line: 12,
      column: col(text, 12, "cpu2"),
      message: [/node "cpu2" is not declared/, /cpu1, dpu1, edge1/],
    });
    assertIssue(issueFor(issues, "workloads[2].name"), {
      field: "workloads[2].name",
      line: 12,
      message: [/default\/client is already declared at workloads\[0\]\.name/],
    });
    assertIssue(issueFor(issues, "workloads[3].namespace"), {
      field: "workloads[3].namespace",
      line: 13,
      message: [/namespace "prod" is not declared/],
    });
  });

  it("workloads may use istio-system without declaring it, but not a ztunnel's name", () => {
    const text = baseWith(
      undefined,
      undefined,
      "  - { name: ztunnel-dpu1, namespace: istio-system, node: cpu1 }",
    );
    assertIssue(issueFor(reject(text), "workloads[2].name"), {
      field: "workloads[2].name",
      line: 12,
      message: [/ztunnel pod the lab creates/],
    });
    accept(baseWith(undefined, undefined, "  - { name: tools, namespace: istio-system, node: cpu1 }"));
  });

  it("a node that runs a ztunnel has a name short enough for its ztunnel pod", () => {
    const long = "d".repeat(56);
    const text = baseWith(3, `    dpu: { name: ${long}, ip: 192.168.50.11, podCIDR: 10.244.1.0/24 }`);
    assertIssue(issueFor(reject(text), "pairs[0].dpu.name"), {
      field: "pairs[0].dpu.name",
      line: 3,
      message: [/at most 55 characters/],
    });
    // A CPU node runs no ztunnel: the same name is fine there.
    accept(
      baseWith(2, `  - cpu: { name: ${long}, ip: 192.168.50.10, podCIDR: 10.244.0.0/24 }`).replace(
        "node: cpu1",
        `node: ${long}`,
      ),
    );
  });

  it("services: declared namespace, unique cluster IP outside node, pod and internet ranges, named ports", () => {
    const text = baseWith(
      undefined,
      undefined,
      "services:",
      "  - { name: a, namespace: default, clusterIP: 10.96.0.1, ports: [{ port: 80 }] }",
      "  - { name: b, namespace: default, clusterIP: 10.96.0.1, ports: [{ port: 80 }] }",
      "  - { name: c, namespace: nope, clusterIP: 10.244.1.9, ports: [{ port: 80 }, { port: 81 }] }",
    );
    const issues = reject(text);
    assertIssue(issueFor(issues, "services[1].clusterIP"), {
      field: "services[1].clusterIP",
      line: 14,
      message: [/already used by services\[0\]\.clusterIP/],
    });
    assertIssue(issueFor(issues, "services[2].namespace"), {
      field: "services[2].namespace",
      line: 15,
      message: [/"nope" is not declared/],
    });
    assertIssue(issueFor(issues, "services[2].clusterIP"), {
      field: "services[2].clusterIP",
      line: 15,
      message: [/inside the pod CIDR 10\.244\.1\.0\/24 \(pairs\[0\]\.dpu\.podCIDR\)/],
    });
    assertIssue(issueFor(issues, "services[2].ports[0]"), {
      field: "services[2].ports[0]",
      line: 15,
      message: [/needs a name/],
    });
  });

  it("policies: declared namespace, unique, and a spec the control plane accepts", () => {
    const text = baseWith(
      undefined,
      undefined,
      "policies:",
      "  - name: p",
      "    namespace: default",
      "    spec: { action: MAYBE }",
      "  - { name: p, namespace: default }",
    );
    const issues = reject(text);
    assertIssue(issueFor(issues, "policies[0].spec"), {
      field: "policies[0].spec",
      line: 15,
      column: col(text, 15, "{ action"),
      message: [/spec\.action: must be ALLOW, DENY, AUDIT or CUSTOM/],
    });
    assertIssue(issueFor(issues, "policies[1].name"), {
      field: "policies[1].name",
      line: 16,
      message: [/already declared/],
    });
  });

  it("reports every problem at once, top to bottom", () => {
    const text = yaml(
      "singles:",
      "  - { name: a, ip: 10.0.0.1, podCIDR: 10.244.0.0/24 }",
      "  - { name: a, ip: 192.168.50.2, podCIDR: 10.244.0.0/24 }",
    );
    const issues = reject(text);
    assert.deepEqual(
      issues.map((i) => `${i.line} ${i.field}`),
      ["2 singles[0].ip", "3 singles[1].name", "3 singles[1].podCIDR"],
    );
  });

  it("malformed YAML and repeated keys are reported by the YAML layer", () => {
    assertIssue(issueFor(reject("pairs: [\n"), "(yaml)"), {
      field: "(yaml)",
      line: 2,
      message: [/not well-formed YAML/],
    });
    const dup = baseWith(undefined, undefined, "nic: eth0", "nic: eth1");
    assertIssue(issueFor(reject(dup), "nic"), { field: "nic", line: 13, message: [/duplicate key "nic"/] });
  });
});

describe("lab names", () => {
  it("every namespace carries the lab prefix and matches isLabNetns", () => {
    const names = [
      wireNetns("oml"),
      internetNetns("oml"),
      nodeNetns("oml", "master-dpu"),
      podNetns("oml", "master", "default", "client"),
    ];
    assert.deepEqual(names, ["oml-wire", "oml-internet", "oml-n-master-dpu", "oml-p-master.default.client"]);
    for (const n of names) assert.ok(isLabNetns("oml", n), n);
    for (const n of names) assert.ok(!isLabNetns("om", n), `${n} is not lab "om"'s`);
  });

  it("isLabNetns leaves other labs' and the test suite's namespaces alone", () => {
    assert.ok(!isLabNetns("oml", "oml2-wire"));
    assert.ok(!isLabNetns("oml", "oml-"));
    assert.ok(!isLabNetns("oml", "oml-n-"));
    assert.ok(!isLabNetns("oml", "omlx-n-a"));
    assert.ok(!isLabNetns("omt", "omt-1a2b3c-client"), "test namespaces look like omt-<run>-<label>");
    assert.ok(!isLabNetns("oml", "cni-1234"));
  });

  it("pods of the same name in different namespaces get different namespaces", () => {
    assert.notEqual(
      podNetns("oml", "master", "default", "client"),
      podNetns("oml", "master", "legacy", "client"),
    );
    // With dashes as the only separator these two would collide.
    assert.notEqual(podNetns("oml", "a-b", "c", "d"), podNetns("oml", "a", "b-c", "d"));
  });

  it("long names are shortened to 60 characters with a hash, deterministically and distinctly", () => {
    const node = "n".repeat(63);
    const a = podNetns("lab12345", node, "x".repeat(63), "pod-a");
    const b = podNetns("lab12345", node, "x".repeat(63), "pod-b");
    assert.equal(a.length, MAX_NETNS_NAME);
    assert.equal(b.length, MAX_NETNS_NAME);
    assert.notEqual(a, b);
    assert.equal(a, podNetns("lab12345", node, "x".repeat(63), "pod-a"));
    assert.ok(a.startsWith("lab12345-p-"));
    assert.ok(isLabNetns("lab12345", a));
    const n = nodeNetns("lab12345", node);
    assert.equal(n.length, MAX_NETNS_NAME);
    assert.ok(isLabNetns("lab12345", n));
    assert.equal(shortenName("short"), "short");
    assert.match(shortenName("y".repeat(61)), /^y{51}-[0-9a-f]{8}$/);
  });

  it("the state directory and its files", () => {
    assert.equal(labStateDir("oml"), "/run/offmesh-lab/oml");
    const p = labStatePaths(labStateDir("oml"));
    assert.equal(p.spec, "/run/offmesh-lab/oml/spec.yaml");
    assert.equal(p.clusterConf, "/run/offmesh-lab/oml/cluster-conf.yaml");
    assert.equal(p.clusterJson, "/run/offmesh-lab/oml/cluster.json");
    assert.equal(p.apiSocket, "/run/offmesh-lab/oml/api.sock");
    assert.equal(p.rootCert, "/run/offmesh-lab/oml/root-cert.pem");
    assert.equal(p.controlplaneDir, "/run/offmesh-lab/oml/controlplane");
    assert.equal(p.pidFile("agent-master"), "/run/offmesh-lab/oml/pids/agent-master.pid");
    assert.equal(p.logFile("controlplane"), "/run/offmesh-lab/oml/logs/controlplane.log");
    assert.equal(p.tokenFile(ztunnelPodName("edge1")), "/run/offmesh-lab/oml/tokens/ztunnel-edge1.token");
    assert.deepEqual(p.node("master"), {
      dir: "/run/offmesh-lab/oml/nodes/master",
      cniConfDir: "/run/offmesh-lab/oml/nodes/master/net.d",
      ipamDir: "/run/offmesh-lab/oml/nodes/master/ipam",
      agentSocket: "/run/offmesh-lab/oml/nodes/master/cni.sock",
      agentStateDir: "/run/offmesh-lab/oml/nodes/master/state",
    });
    // Unix socket paths are limited to 107 bytes; the longest node name must still fit.
    assert.ok(labStatePaths(labStateDir("lab12345")).node("n".repeat(63)).agentSocket.length <= 107);
  });

  it("the network plan: one cable per node into br0, the internet on .254 and routed from every node", () => {
    const plan = planLabNetwork(accept(DEFAULT_SPEC_TEXT));
    assert.equal(plan.wire.netns, "oml-wire");
    assert.deepEqual(
      plan.nodes.map((n) => [n.netns, n.nic, n.address, n.bridgePort]),
      [
        ["oml-n-master", "ens3", "192.168.50.130/24", bridgePortName(0)],
        ["oml-n-master-dpu", "ens3", "192.168.50.131/24", "p-1"],
        ["oml-n-worker1", "ens3", "192.168.50.133/24", "p-2"],
        ["oml-n-worker1-dpu", "ens3", "192.168.50.128/24", "p-3"],
        ["oml-n-edge1", "ens3", "192.168.50.140/24", "p-4"],
      ],
    );
    assert.deepEqual(plan.internet.addresses, ["203.0.113.10/24", "192.168.50.254/24"]);
    assert.deepEqual(plan.internetRoute, { to: "203.0.113.0/24", via: "192.168.50.254" });
    for (const n of plan.nodes) assert.ok(n.bridgePort.length <= 15);
  });
});
