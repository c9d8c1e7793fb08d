import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError, formatIssue } from "../../src/configfile/issues.js";
import type { ConfigIssue } from "../../src/configfile/issues.js";
import {
  loadTopologyFile,
  lookupByIp,
  lookupByName,
  pairPartner,
  parseTopology,
  servedNodes,
  servingNode,
} from "../../src/topology/index.js";
import type { NodeLookup, Topology, TopologyNode } from "../../src/topology/index.js";
import { assertIssue, assertOneIssue, expectAccepted, expectRejected, issueFor } from "../support/issues.js";
import type { ExpectedIssue } from "../support/issues.js";

const FILE = "cluster-conf.yaml";

/** Join lines into a YAML document; keeps line numbers in the tests easy to read off. */
function yaml(...lines: string[]): string {
  return lines.join("\n") + "\n";
}

// The two-pair seed cluster. Line numbers: pairs[0] spans 2-5, pairs[1] spans 6-9.
const SEED_LINES = [
  "pairs:", //                                 1
  "  - cpuNodeIP: 192.168.50.130", //          2
  "    dpuNodeIP: 192.168.50.131", //          3
  "    cpuNodeName: master", //                4
  "    dpuNodeName: master-dpu", //            5
  "  - cpuNodeIP: 192.168.50.133", //          6
  "    dpuNodeIP: 192.168.50.128", //          7
  "    cpuNodeName: worker1", //               8
  "    dpuNodeName: worker1-dpu", //           9
] as const;
const SEED = yaml(...SEED_LINES);

// The seed cluster plus one single. singles[0] spans lines 11-12.
const SEED_WITH_SINGLE = yaml(
  ...SEED_LINES,
  "singles:", //                               10
  "  - nodeIP: 192.168.50.140", //             11
  "    nodeName: edge1", //                    12
);

/** The seed with line `lineNo` (1-based) replaced by `replacement` (or removed when undefined). */
function seedWithLine(lineNo: number, replacement: string | undefined): string {
  const lines: string[] = [...SEED_LINES];
  if (replacement === undefined) lines.splice(lineNo - 1, 1);
  else lines[lineNo - 1] = replacement;
  return yaml(...lines);
}

function accept(text: string): Topology {
  return expectAccepted(parseTopology(text, FILE), "the file");
}

function reject(text: string): ConfigIssue[] {
  return expectRejected(parseTopology(text, FILE), FILE, "the file");
}

/** The file must be rejected with exactly one issue, matching `expected`. */
function rejectOnce(text: string, expected: ExpectedIssue): ConfigIssue {
  return assertOneIssue(reject(text), expected);
}

function found(lookup: NodeLookup): TopologyNode {
  if (!lookup.found) assert.fail(`expected a node, got: ${lookup.reason}`);
  return lookup.node;
}

function notFound(lookup: NodeLookup): string {
  if (lookup.found) assert.fail(`expected no node, got ${lookup.node.name}`);
  assert.ok(lookup.reason.length > 0, "a miss carries a reason");
  return lookup.reason;
}

describe("parseTopology: accepted files", () => {
  it("accepts the two-pair seed cluster and indexes all four nodes", () => {
    const topo = accept(SEED);
    assert.equal(topo.file, FILE);
    assert.equal(topo.family, 4);
    assert.deepEqual(topo.pairs, [
      { cpu: { name: "master", ip: "192.168.50.130" }, dpu: { name: "master-dpu", ip: "192.168.50.131" } },
      { cpu: { name: "worker1", ip: "192.168.50.133" }, dpu: { name: "worker1-dpu", ip: "192.168.50.128" } },
    ]);
    assert.deepEqual(topo.singles, []);
    assert.deepEqual(
      topo.nodes.map((n) => [n.name, n.ip, n.role, n.partner?.name, n.declaredAt]),
      [
        ["master", "192.168.50.130", "cpu", "master-dpu", "pairs[0].cpuNodeName"],
        ["master-dpu", "192.168.50.131", "dpu", "master", "pairs[0].dpuNodeName"],
        ["worker1", "192.168.50.133", "cpu", "worker1-dpu", "pairs[1].cpuNodeName"],
        ["worker1-dpu", "192.168.50.128", "dpu", "worker1", "pairs[1].dpuNodeName"],
      ],
    );
    assert.equal(topo.byName.size, 4);
    assert.equal(topo.byIp.size, 4);
    assert.equal(topo.byIp.get("192.168.50.128")?.name, "worker1-dpu");
  });

  it("accepts the seed cluster plus a single and gives the single no partner", () => {
    const topo = accept(SEED_WITH_SINGLE);
    assert.deepEqual(topo.singles, [{ name: "edge1", ip: "192.168.50.140" }]);
    const edge = topo.byName.get("edge1");
    assert.equal(edge?.role, "single");
    assert.equal(edge?.partner, undefined);
    assert.equal(edge?.declaredAt, "singles[0].nodeName");
    assert.equal(topo.nodes.length, 5);
  });

  it("accepts a file with singles only", () => {
    const topo = accept(
      yaml(
        "singles:",
        "  - nodeIP: 10.0.0.1",
        "    nodeName: edge1",
        "  - nodeName: edge2",
        "    nodeIP: 10.0.0.2",
      ),
    );
    assert.deepEqual(topo.pairs, []);
    assert.deepEqual(topo.singles, [
      { name: "edge1", ip: "10.0.0.1" },
      { name: "edge2", ip: "10.0.0.2" },
    ]);
    assert.ok(topo.nodes.every((n) => n.role === "single"));
  });

  it("accepts an empty pairs key next to non-empty singles", () => {
    const topo = accept(yaml("pairs:", "singles:", "  - nodeIP: 10.0.0.1", "    nodeName: edge1"));
    assert.equal(topo.nodes.length, 1);
  });

  it("accepts an IPv6 file and normalises addresses to lower-case compressed form", () => {
    const topo = accept(
      yaml(
        "pairs:",
        "  - cpuNodeIP: 2001:DB8::1",
        "    dpuNodeIP: 2001:0db8:0000:0000:0000:0000:0000:0002",
        "    cpuNodeName: master",
        "    dpuNodeName: master-dpu",
        "singles:",
        "  - nodeIP: FD00:0:0::A",
        "    nodeName: edge1",
      ),
    );
    assert.equal(topo.family, 6);
    assert.deepEqual(topo.pairs[0], {
      cpu: { name: "master", ip: "2001:db8::1" },
      dpu: { name: "master-dpu", ip: "2001:db8::2" },
    });
    assert.deepEqual(topo.singles[0], { name: "edge1", ip: "fd00::a" });
    assert.deepEqual([...topo.byIp.keys()], ["2001:db8::1", "2001:db8::2", "fd00::a"]);
  });

  it("keeps numeric-looking node names exactly as written", () => {
    const topo = accept(
      yaml(
        "pairs:",
        "  - cpuNodeIP: 10.0.0.1",
        "    dpuNodeIP: 10.0.0.2",
        "    cpuNodeName: 123",
        "    dpuNodeName: 0123",
        "singles:",
        "  - nodeIP: 10.0.0.3",
        "    nodeName: 1e3",
        "  - nodeIP: 10.0.0.4",
        "    nodeName: 1.0",
        "  - nodeIP: 10.0.0.5",
        "    nodeName: 0x1f",
      ),
    );
    assert.deepEqual(
      topo.nodes.map((n) => n.name),
      ["123", "0123", "1e3", "1.0", "0x1f"],
    );
    assert.equal(topo.byName.get("0123")?.role, "dpu");
  });

  it("accepts quoted values, comments, flow style and any key order", () => {
    const topo = accept(
      yaml(
        "# cluster description",
        "pairs:",
        '  - dpuNodeName: "master-dpu"  # the DPU',
        "    cpuNodeName: 'master'",
        '    dpuNodeIP: "192.168.50.131"',
        "    cpuNodeIP: 192.168.50.130",
        "singles: [{nodeName: edge1, nodeIP: 192.168.50.140}]",
      ),
    );
    assert.deepEqual(topo.pairs[0], {
      cpu: { name: "master", ip: "192.168.50.130" },
      dpu: { name: "master-dpu", ip: "192.168.50.131" },
    });
    assert.deepEqual(topo.singles, [{ name: "edge1", ip: "192.168.50.140" }]);
  });

  it("accepts a node name of exactly 253 characters and dotted names", () => {
    const long = "a".repeat(253);
    const topo = accept(
      yaml(
        "singles:",
        "  - nodeIP: 10.0.0.1",
        `    nodeName: ${long}`,
        "  - nodeIP: 10.0.0.2",
        "    nodeName: node-2.rack.dc1",
      ),
    );
    assert.ok(topo.byName.has(long));
    assert.ok(topo.byName.has("node-2.rack.dc1"));
  });
});

describe("parseTopology: malformed documents", () => {
  it("rejects malformed YAML with the position of the syntax error", () => {
    // `192.168.50.131: x` is a nested mapping in a compact mapping.
    rejectOnce(seedWithLine(3, "    dpuNodeIP: 192.168.50.131: x"), {
      field: "(yaml)",
      line: 3,
      message: [/not well-formed YAML/],
    });
  });

  it("rejects tab indentation with the line of the tab", () => {
    // The YAML parser may add follow-on errors after the tab; the tab itself must be among them.
    const issues = reject(seedWithLine(3, "\tdpuNodeIP: 192.168.50.131"));
    assert.ok(
      issues.every((i) => i.field === "(yaml)"),
      issues.map(formatIssue).join("\n"),
    );
    assertIssue(
      issues.find((i) => /[Tt]ab/.test(i.message)),
      { field: "(yaml)", line: 3, column: 1, message: [/not well-formed YAML/, /Tabs are not allowed/] },
    );
  });

  it("rejects a duplicate YAML key, naming the duplicated field and its line", () => {
    const text = yaml(
      "pairs:", //                              1
      "  - cpuNodeIP: 192.168.50.130", //       2
      "    cpuNodeIP: 192.168.50.132", //       3
      "    dpuNodeIP: 192.168.50.131", //       4
      "    cpuNodeName: master", //             5
      "    dpuNodeName: master-dpu", //         6
    );
    const issue = rejectOnce(text, { field: "pairs[0].cpuNodeIP", line: 3, message: [/unique|duplicate/i] });
    assert.equal(issue.column, 5);
  });

  it("rejects an empty file, without a position", () => {
    const issue = rejectOnce("", {
      field: "(file)",
      line: undefined,
      message: [/empty/, /pairs/, /singles/],
    });
    assert.equal(formatIssue(issue), `${FILE}: (file): ${issue.message}`);
  });

  it("rejects a file holding only comments and blank lines as empty", () => {
    rejectOnce(yaml("# nothing here", "", "   "), { field: "(file)", line: undefined, message: [/empty/] });
  });

  it("rejects a top level that is a list", () => {
    rejectOnce(yaml("- cpuNodeIP: 192.168.50.130", "  cpuNodeName: master"), {
      field: "(file)",
      line: 1,
      column: 1,
      message: [/must be a mapping/, /found a list/],
    });
  });

  it("rejects a top level that is a plain scalar", () => {
    rejectOnce(yaml("hello"), { field: "(file)", line: 1, message: [/must be a mapping/, /"hello"/] });
  });

  it("rejects the top-level typo `pair:` with a did-you-mean hint", () => {
    const text = yaml("pair:", ...SEED_LINES.slice(1));
    rejectOnce(text, {
      field: "pair",
      line: 1,
      column: 1,
      message: [/unknown key "pair"/, /did you mean "pairs"\?/, /allowed keys: pairs, singles/],
    });
  });

  it("rejects an unrelated top-level key without a misleading hint", () => {
    const issues = reject(yaml(...SEED_LINES, "nodes: []"));
    assert.equal(issues.length, 1);
    assertIssue(issues[0], { field: "nodes", line: 10, message: [/unknown key "nodes"/, /allowed keys/] });
    assert.doesNotMatch(issues[0]?.message ?? "", /did you mean/);
  });

  it("rejects a non-string top-level key, attributing it to the whole file", () => {
    rejectOnce(yaml("? [pairs]", ": []"), {
      field: "(file)",
      line: 1,
      message: [/keys must be plain strings/],
    });
  });

  it("rejects pairs given as a mapping instead of a list", () => {
    rejectOnce(yaml("pairs:", "  cpuNodeIP: 192.168.50.130", "  cpuNodeName: master"), {
      field: "pairs",
      line: 2,
      message: [/must be a list/, /found a mapping/],
    });
  });

  it("rejects singles given as a scalar instead of a list", () => {
    rejectOnce(yaml(...SEED_LINES, "singles: edge1"), {
      field: "singles",
      line: 10,
      column: 10,
      message: [/must be a list/, /"edge1"/],
    });
  });

  it("rejects a pair entry that is not a mapping", () => {
    rejectOnce(yaml(...SEED_LINES, "  - worker2"), {
      field: "pairs[2]",
      line: 10,
      column: 5,
      message: [/must be a mapping/, /"worker2"/],
    });
  });

  it("rejects a single entry that is a list", () => {
    rejectOnce(yaml("singles:", "  - [192.168.50.140, edge1]"), {
      field: "singles[0]",
      line: 2,
      message: [/must be a mapping/, /found a list/],
    });
  });
});

describe("parseTopology: missing and unknown keys", () => {
  // In the seed, pairs[1] starts on line 6; deleting any of its lines leaves it starting there.
  const pairKeyLines = { cpuNodeIP: 6, dpuNodeIP: 7, cpuNodeName: 8, dpuNodeName: 9 } as const;
  for (const [key, lineNo] of Object.entries(pairKeyLines)) {
    it(`rejects a pair without ${key}, pointing at the pair entry`, () => {
      const text =
        lineNo === 6
          ? // keep the "- " list marker when dropping the entry's first line
            yaml(...SEED_LINES.slice(0, 5), "  - dpuNodeIP: 192.168.50.128", ...SEED_LINES.slice(7))
          : seedWithLine(lineNo, undefined);
      rejectOnce(text, { field: `pairs[1].${key}`, line: 6, column: 5, message: [/is missing/] });
    });
  }

  it("rejects a single without nodeIP", () => {
    rejectOnce(yaml(...SEED_LINES, "singles:", "  - nodeName: edge1"), {
      field: "singles[0].nodeIP",
      line: 11,
      message: [/is missing/],
    });
  });

  it("rejects a single without nodeName", () => {
    rejectOnce(yaml(...SEED_LINES, "singles:", "  - nodeIP: 192.168.50.140"), {
      field: "singles[0].nodeName",
      line: 11,
      message: [/is missing/],
    });
  });

  it("rejects the pair key typo `cpuNodeIp` with a hint, and reports cpuNodeIP as missing", () => {
    const issues = reject(seedWithLine(6, "  - cpuNodeIp: 192.168.50.133"));
    assert.equal(issues.length, 2, issues.map(formatIssue).join("\n"));
    assertIssue(issueFor(issues, "pairs[1].cpuNodeIp"), {
      field: "pairs[1].cpuNodeIp",
      line: 6,
      column: 5,
      message: [/unknown key "cpuNodeIp"/, /did you mean "cpuNodeIP"\?/],
    });
    assertIssue(issueFor(issues, "pairs[1].cpuNodeIP"), {
      field: "pairs[1].cpuNodeIP",
      line: 6,
      message: [/is missing/],
    });
  });

  it("rejects the single key typo `nodename` with a hint, and reports nodeName as missing", () => {
    const issues = reject(
      yaml(...SEED_LINES, "singles:", "  - nodeIP: 192.168.50.140", "    nodename: edge1"),
    );
    assert.equal(issues.length, 2, issues.map(formatIssue).join("\n"));
    assertIssue(issueFor(issues, "singles[0].nodename"), {
      field: "singles[0].nodename",
      line: 12,
      column: 5,
      message: [/unknown key "nodename"/, /did you mean "nodeName"\?/, /allowed keys: nodeIP, nodeName/],
    });
    assertIssue(issueFor(issues, "singles[0].nodeName"), {
      field: "singles[0].nodeName",
      line: 11,
      message: [/is missing/],
    });
  });

  it("rejects an extra unknown key in a single even when the required keys are present", () => {
    rejectOnce(
      yaml(...SEED_LINES, "singles:", "  - nodeIP: 192.168.50.140", "    nodeName: edge1", "    rack: r7"),
      {
        field: "singles[0].rack",
        line: 13,
        message: [/unknown key "rack"/, /allowed keys: nodeIP, nodeName/],
      },
    );
  });

  it("rejects an extra unknown key in a pair", () => {
    rejectOnce(yaml(...SEED_LINES, "    dpuModel: bf3"), {
      field: "pairs[1].dpuModel",
      line: 10,
      message: [/unknown key "dpuModel"/, /allowed keys: cpuNodeIP, dpuNodeIP, cpuNodeName, dpuNodeName/],
    });
  });
});

describe("parseTopology: values", () => {
  it("rejects an IP key with no value", () => {
    rejectOnce(seedWithLine(7, "    dpuNodeIP:"), {
      field: "pairs[1].dpuNodeIP",
      line: 7,
      message: [/must be a non-empty string/, /empty value/],
    });
  });

  it("rejects a name key with no value on the entry's last line", () => {
    rejectOnce(seedWithLine(9, "    dpuNodeName:"), {
      field: "pairs[1].dpuNodeName",
      line: 9,
      message: [/must be a non-empty string/, /empty value/],
    });
  });

  it("rejects an empty quoted string and a blank string", () => {
    rejectOnce(seedWithLine(4, '    cpuNodeName: ""'), {
      field: "pairs[0].cpuNodeName",
      line: 4,
      column: 18,
      message: [/must be a non-empty string/, /""/],
    });
    rejectOnce(seedWithLine(2, '  - cpuNodeIP: "   "'), {
      field: "pairs[0].cpuNodeIP",
      line: 2,
      message: [/must be a non-empty string/],
    });
  });

  it("rejects a list value", () => {
    rejectOnce(seedWithLine(8, "    cpuNodeName: [worker1]"), {
      field: "pairs[1].cpuNodeName",
      line: 8,
      message: [/must be a non-empty string/, /found a list/],
    });
  });

  it("rejects a mapping value", () => {
    const lines: string[] = [...SEED_LINES];
    lines.splice(6, 1, "    dpuNodeIP:", "      v4: 192.168.50.128");
    rejectOnce(yaml(...lines), {
      field: "pairs[1].dpuNodeIP",
      line: 8,
      message: [/must be a non-empty string/, /found a mapping/],
    });
  });

  const badIps: ReadonlyArray<readonly [string, string]> = [
    ["an octet out of range", "192.168.50.300"],
    ["a word", "worker1-dpu"],
    ["too few octets", "192.168.50"],
    ["an octet with a leading zero", "192.168.050.128"],
    ["a CIDR", "192.168.50.128/24"],
    ["a bare number", "10"],
    ["a malformed IPv6 address", "2001:db8:::1"],
  ];
  for (const [what, ip] of badIps) {
    it(`rejects an IP that is ${what} (${ip})`, () => {
      rejectOnce(seedWithLine(7, `    dpuNodeIP: ${ip}`), {
        field: "pairs[1].dpuNodeIP",
        line: 7,
        column: 16,
        message: [new RegExp(`"${ip.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}" is not an IP address`)],
      });
    });
  }

  it("rejects an IPv6 address with a zone index instead of throwing", () => {
    const text = yaml("singles:", "  - nodeIP: fe80::1%eth0", "    nodeName: edge1");
    let result: ReturnType<typeof parseTopology> | undefined;
    assert.doesNotThrow(() => {
      result = parseTopology(text, FILE);
    });
    assert.equal(result?.ok, false);
    if (result === undefined || result.ok) return;
    assert.equal(result.issues.length, 1);
    assertIssue(result.issues[0], { field: "singles[0].nodeIP", line: 2, message: [/fe80::1%eth0/] });
  });

  const unusable: ReadonlyArray<readonly [string, RegExp]> = [
    ["127.0.0.1", /loopback/],
    ["127.1.2.3", /loopback/],
    ["0.0.0.0", /unspecified/],
    ["224.0.0.1", /multicast/],
    ["239.255.255.250", /multicast/],
    ["255.255.255.255", /broadcast/],
  ];
  for (const [ip, why] of unusable) {
    it(`rejects the IPv4 address ${ip} (${why.source})`, () => {
      rejectOnce(seedWithLine(3, `    dpuNodeIP: ${ip}`), {
        field: "pairs[0].dpuNodeIP",
        line: 3,
        message: [why, /cannot be a node's address/],
      });
    });
  }

  const unusable6: ReadonlyArray<readonly [string, RegExp]> = [
    ["::1", /loopback/],
    ["0:0:0:0:0:0:0:1", /loopback/],
    ["::", /unspecified/],
    ["ff02::1", /multicast/],
    ["FF05::1:3", /multicast/],
  ];
  for (const [ip, why] of unusable6) {
    it(`rejects the IPv6 address ${ip} (${why.source})`, () => {
      rejectOnce(
        yaml(
          "singles:",
          "  - nodeIP: 2001:db8::1",
          "    nodeName: edge1",
          `  - nodeIP: "${ip}"`,
          "    nodeName: edge2",
        ),
        {
          field: "singles[1].nodeIP",
          line: 4,
          message: [why, /cannot be a node's address/],
        },
      );
    });
  }

  const badNames: ReadonlyArray<readonly [string, string]> = [
    ["upper case", "Worker1"],
    ["an underscore", "worker_1"],
    ["a leading hyphen", "-worker1"],
    ["a trailing hyphen", "worker1-"],
    ["a space", "'worker 1'"],
    ["an empty label", "worker1..dpu"],
    ["254 characters", "a".repeat(254)],
  ];
  for (const [what, name] of badNames) {
    it(`rejects a node name with ${what}`, () => {
      const shown = name.replace(/^'|'$/g, "");
      const issue = rejectOnce(seedWithLine(8, `    cpuNodeName: ${name}`), {
        field: "pairs[1].cpuNodeName",
        line: 8,
        column: 18,
        message: [/is not a valid Kubernetes node name/, /at most 253 characters/],
      });
      assert.ok(issue.message.includes(`"${shown}"`), `message quotes the name: ${issue.message}`);
    });
  }

  it("rejects an invalid single node name", () => {
    rejectOnce(yaml("singles:", "  - nodeIP: 10.0.0.1", "    nodeName: Edge_1"), {
      field: "singles[0].nodeName",
      line: 3,
      message: [/"Edge_1" is not a valid Kubernetes node name/],
    });
  });
});

describe("parseTopology: uniqueness and address family", () => {
  it("rejects a node name repeated across pairs, pointing back at the first declaration", () => {
    rejectOnce(seedWithLine(8, "    cpuNodeName: master"), {
      field: "pairs[1].cpuNodeName",
      line: 8,
      message: [/node name "master" is already declared at pairs\[0\]\.cpuNodeName \(line 4\)/],
    });
  });

  it("rejects a pair whose CPU and DPU have the same name", () => {
    rejectOnce(seedWithLine(5, "    dpuNodeName: master"), {
      field: "pairs[0].dpuNodeName",
      line: 5,
      message: [/node name "master" is already declared at pairs\[0\]\.cpuNodeName \(line 4\)/],
    });
  });

  it("rejects a single that reuses a pair's node name", () => {
    rejectOnce(yaml(...SEED_LINES, "singles:", "  - nodeIP: 192.168.50.140", "    nodeName: worker1-dpu"), {
      field: "singles[0].nodeName",
      line: 12,
      message: [/node name "worker1-dpu" is already declared at pairs\[1\]\.dpuNodeName \(line 9\)/],
    });
  });

  it("rejects a node name repeated across singles", () => {
    rejectOnce(
      yaml(
        "singles:",
        "  - nodeIP: 10.0.0.1",
        "    nodeName: edge1",
        "  - nodeIP: 10.0.0.2",
        "    nodeName: edge1",
      ),
      {
        field: "singles[1].nodeName",
        line: 5,
        message: [/already declared at singles\[0\]\.nodeName \(line 3\)/],
      },
    );
  });

  it("rejects an IP repeated across pairs", () => {
    rejectOnce(seedWithLine(7, "    dpuNodeIP: 192.168.50.130"), {
      field: "pairs[1].dpuNodeIP",
      line: 7,
      message: [
        /address 192\.168\.50\.130 is already declared at pairs\[0\]\.cpuNodeIP \(line 2\)/,
        /unique/,
      ],
    });
  });

  it("rejects a pair whose CPU and DPU share an IP", () => {
    rejectOnce(seedWithLine(3, "    dpuNodeIP: 192.168.50.130"), {
      field: "pairs[0].dpuNodeIP",
      line: 3,
      message: [/already declared at pairs\[0\]\.cpuNodeIP \(line 2\)/],
    });
  });

  it("rejects a single that reuses a pair's IP", () => {
    rejectOnce(yaml(...SEED_LINES, "singles:", "  - nodeIP: 192.168.50.131", "    nodeName: edge1"), {
      field: "singles[0].nodeIP",
      line: 11,
      message: [/already declared at pairs\[0\]\.dpuNodeIP \(line 3\)/],
    });
  });

  it("rejects the same IPv6 address spelled two different ways", () => {
    rejectOnce(
      yaml(
        "singles:",
        "  - nodeIP: 2001:db8::1",
        "    nodeName: edge1",
        "  - nodeIP: 2001:DB8:0:0::0001",
        "    nodeName: edge2",
      ),
      {
        field: "singles[1].nodeIP",
        line: 4,
        message: [/already declared at singles\[0\]\.nodeIP \(line 2\)/],
      },
    );
  });

  it("rejects an IPv6 address in a file whose first address is IPv4", () => {
    rejectOnce(seedWithLine(7, "    dpuNodeIP: 2001:db8::128"), {
      field: "pairs[1].dpuNodeIP",
      line: 7,
      message: [
        /2001:db8::128 is IPv6/,
        /first node address \(pairs\[0\]\.cpuNodeIP \(line 2\)\) is IPv4/,
        /one family/,
      ],
    });
  });

  it("rejects an IPv4 address in a file whose first address is IPv6", () => {
    rejectOnce(
      yaml(
        "singles:",
        "  - nodeIP: 2001:db8::1",
        "    nodeName: edge1",
        "  - nodeIP: 10.0.0.2",
        "    nodeName: edge2",
      ),
      {
        field: "singles[1].nodeIP",
        line: 4,
        message: [/10\.0\.0\.2 is IPv4/, /singles\[0\]\.nodeIP \(line 2\)\) is IPv6/],
      },
    );
  });

  it("rejects a file that declares no nodes (`pairs: []`)", () => {
    rejectOnce(yaml("pairs: []"), { field: "(file)", line: 1, message: [/declares no nodes/] });
  });

  it("rejects a file whose pairs and singles are both empty", () => {
    rejectOnce(yaml("pairs:", "singles: []"), { field: "(file)", line: 1, message: [/declares no nodes/] });
  });
});

describe("parseTopology: reporting", () => {
  it("reports every error at once, each with its own field and line", () => {
    const text = yaml(
      "pairs:", //                             1
      "  - cpuNodeIP: 192.168.50.300", //      2  bad IP
      "    dpuNodeIP: 192.168.50.131", //      3
      "    cpuNodeName: master", //            4
      "    dpuNodeName: master-dpu", //        5
      "  - cpuNodeIP: 192.168.50.133", //      6
      "    dpuNodeIP: 192.168.50.128", //      7
      "    cpuNodeName: Worker1", //           8  upper case
      "    dpuNodeName: worker1-dpu", //       9
      "singles:", //                           10
      "  - nodeIP: 192.168.50.140", //         11
      "    nodeName: edge1", //                12
      "    rack: r7", //                       13 unknown key
    );
    const issues = reject(text);
    assert.equal(issues.length, 3, issues.map(formatIssue).join("\n"));
    assertIssue(issueFor(issues, "pairs[0].cpuNodeIP"), {
      field: "pairs[0].cpuNodeIP",
      line: 2,
      message: [/is not an IP address/],
    });
    assertIssue(issueFor(issues, "pairs[1].cpuNodeName"), {
      field: "pairs[1].cpuNodeName",
      line: 8,
      message: [/not a valid Kubernetes node name/],
    });
    assertIssue(issueFor(issues, "singles[0].rack"), {
      field: "singles[0].rack",
      line: 13,
      message: [/unknown key/],
    });
  });

  it("reports problems in several entries of the same kind", () => {
    const issues = reject(
      yaml("singles:", "  - nodeIP: 127.0.0.1", "    nodeName: a", "  - nodeIP: 10.0.0.2", "    nodeName: B"),
    );
    assert.deepEqual(
      issues.map((i) => [i.field, i.line]),
      [
        ["singles[0].nodeIP", 2],
        ["singles[1].nodeName", 5],
      ],
    );
  });

  it("does not add 'declares no nodes' on top of real errors", () => {
    const issues = reject(yaml("pairs:", "  - cpuNodeIP: 10.0.0.1"));
    assert.ok(
      issues.every((i) => !/declares no nodes/.test(i.message)),
      issues.map(formatIssue).join("\n"),
    );
    assert.deepEqual(issues.map((i) => i.field).sort(), [
      "pairs[0].cpuNodeName",
      "pairs[0].dpuNodeIP",
      "pairs[0].dpuNodeName",
    ]);
  });

  it("formats an issue as file:line:col: field: message", () => {
    const issue = rejectOnce(seedWithLine(7, "    dpuNodeIP: 192.168.50.300"), {
      field: "pairs[1].dpuNodeIP",
      line: 7,
      column: 16,
      message: [/is not an IP address/],
    });
    assert.equal(
      formatIssue(issue),
      'cluster-conf.yaml:7:16: pairs[1].dpuNodeIP: "192.168.50.300" is not an IP address',
    );
  });

  it("formats an issue without a position as file: field: message, and a missing column as 1", () => {
    assert.equal(
      formatIssue({ file: "c.yaml", field: "(file)", message: "is empty" }),
      "c.yaml: (file): is empty",
    );
    assert.equal(
      formatIssue({ file: "c.yaml", line: 4, field: "pairs", message: "m" }),
      "c.yaml:4:1: pairs: m",
    );
  });

  it("formats every issue of a ConfigError on its own line", () => {
    const err = new ConfigError([
      { file: "c.yaml", line: 2, column: 3, field: "a", message: "x" },
      { file: "c.yaml", field: "(file)", message: "y" },
    ]);
    assert.equal(err.message, "c.yaml:2:3: a: x\nc.yaml: (file): y");
    assert.equal(err.issues.length, 2);
  });
});

describe("loadTopologyFile", () => {
  it("loads a valid file and throws ConfigError with every issue for an invalid one", async () => {
    const dir = await mkdtemp(join(tmpdir(), "offmesh-topology-"));
    try {
      const good = join(dir, "good.yaml");
      await writeFile(good, SEED_WITH_SINGLE);
      const topo = await loadTopologyFile(good);
      assert.equal(topo.file, good);
      assert.equal(topo.nodes.length, 5);

      const bad = join(dir, "bad.yaml");
      await writeFile(bad, yaml("pair:", "singles: edge1"));
      await assert.rejects(loadTopologyFile(bad), (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        assert.deepEqual(
          err.issues.map((i) => [i.file, i.field, i.line]),
          [
            [bad, "pair", 1],
            [bad, "singles", 2],
          ],
        );
        return true;
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("throws ConfigError naming the file when it cannot be read", async () => {
    const missing = join(tmpdir(), "offmesh-no-such-dir", "cluster-conf.yaml");
    await assert.rejects(loadTopologyFile(missing), (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.equal(err.issues.length, 1);
      assertIssue(err.issues[0], { field: "(file)", line: undefined, message: [/cannot be read/] });
      assert.equal(err.issues[0]?.file, missing);
      return true;
    });
  });
});

describe("lookups", () => {
  const topo = accept(SEED_WITH_SINGLE);

  it("lookupByName finds a CPU node with its role and DPU partner", () => {
    const node = found(lookupByName(topo, "master"));
    assert.equal(node.role, "cpu");
    assert.equal(node.ip, "192.168.50.130");
    assert.deepEqual(node.partner, { name: "master-dpu", ip: "192.168.50.131" });
  });

  it("lookupByName finds a DPU node with its role and CPU partner", () => {
    const node = found(lookupByName(topo, "worker1-dpu"));
    assert.equal(node.role, "dpu");
    assert.equal(node.ip, "192.168.50.128");
    assert.deepEqual(node.partner, { name: "worker1", ip: "192.168.50.133" });
  });

  it("lookupByName finds a single, which has no partner", () => {
    const node = found(lookupByName(topo, "edge1"));
    assert.equal(node.role, "single");
    assert.equal(node.partner, undefined);
  });

  it("lookupByName reports an unknown node with a reason naming it and the file", () => {
    const reason = notFound(lookupByName(topo, "ghost"));
    assert.match(reason, /"ghost"/);
    assert.match(reason, /cluster-conf\.yaml/);
  });

  it("lookupByName never matches the empty name", () => {
    notFound(lookupByName(topo, ""));
  });

  it("lookupByName is exact (no case folding)", () => {
    notFound(lookupByName(topo, "Master"));
  });

  it("lookupByIp finds CPU, DPU and single nodes by address", () => {
    assert.equal(found(lookupByIp(topo, "192.168.50.133")).name, "worker1");
    assert.equal(found(lookupByIp(topo, "192.168.50.131")).name, "master-dpu");
    assert.equal(found(lookupByIp(topo, "192.168.50.140")).name, "edge1");
  });

  it("lookupByIp reports an unknown address with a reason naming it", () => {
    const reason = notFound(lookupByIp(topo, "192.168.50.199"));
    assert.match(reason, /192\.168\.50\.199/);
    assert.match(reason, /cluster-conf\.yaml/);
  });

  it("lookupByIp reports text that is not an address as not found", () => {
    notFound(lookupByIp(topo, "master"));
    notFound(lookupByIp(topo, ""));
  });

  it("lookupByIp does not throw on an IPv6 address with a zone index", () => {
    const v6 = accept(yaml("singles:", "  - nodeIP: fe80::1", "    nodeName: edge1"));
    let result: NodeLookup | undefined;
    assert.doesNotThrow(() => {
      result = lookupByIp(v6, "fe80::2%eth0");
    });
    assert.equal(result?.found, false);
  });

  it("lookupByIp canonicalises IPv6 input", () => {
    const v6 = accept(yaml("singles:", "  - nodeIP: 2001:DB8::1", "    nodeName: edge1"));
    assert.equal(found(lookupByIp(v6, "2001:db8::1")).name, "edge1");
    assert.equal(found(lookupByIp(v6, "2001:0DB8:0:0:0:0:0:1")).name, "edge1");
    notFound(lookupByIp(v6, "2001:db8::2"));
  });

  it("servingNode maps a CPU node to its DPU", () => {
    assert.equal(found(servingNode(topo, "master")).name, "master-dpu");
    assert.equal(found(servingNode(topo, "worker1")).name, "worker1-dpu");
  });

  it("servingNode maps a DPU node to itself", () => {
    assert.equal(found(servingNode(topo, "master-dpu")).name, "master-dpu");
  });

  it("servingNode maps a single to itself", () => {
    assert.equal(found(servingNode(topo, "edge1")).name, "edge1");
  });

  it("servingNode reports an unknown or empty node as not found", () => {
    assert.match(notFound(servingNode(topo, "ghost")), /"ghost"/);
    notFound(servingNode(topo, ""));
  });

  it("servedNodes of a DPU are the DPU and its CPU", () => {
    assert.deepEqual(
      servedNodes(topo, "master-dpu").map((n) => n.name),
      ["master-dpu", "master"],
    );
    assert.deepEqual(
      servedNodes(topo, "worker1-dpu").map((n) => n.name),
      ["worker1-dpu", "worker1"],
    );
  });

  it("servedNodes of a single is the single alone", () => {
    assert.deepEqual(
      servedNodes(topo, "edge1").map((n) => n.name),
      ["edge1"],
    );
  });

  it("servedNodes of a CPU node is empty (it runs no ztunnel)", () => {
    assert.deepEqual(servedNodes(topo, "master"), []);
  });

  it("servedNodes of an unknown or empty node is empty, never every node", () => {
    assert.deepEqual(servedNodes(topo, "ghost"), []);
    assert.deepEqual(servedNodes(topo, ""), []);
  });

  it("serving and served agree: every node is served by exactly the node servingNode names", () => {
    for (const node of topo.nodes) {
      const server = found(servingNode(topo, node.name));
      const servers = topo.nodes.filter((s) => servedNodes(topo, s.name).some((n) => n.name === node.name));
      assert.deepEqual(
        servers.map((s) => s.name),
        [server.name],
        `servers of ${node.name}`,
      );
    }
  });

  it("pairPartner maps CPU to DPU and DPU to CPU", () => {
    assert.equal(found(pairPartner(topo, "master")).name, "master-dpu");
    assert.equal(found(pairPartner(topo, "master-dpu")).name, "master");
    assert.equal(found(pairPartner(topo, "worker1-dpu")).name, "worker1");
  });

  it("pairPartner of a single is not found, saying it is a single", () => {
    assert.match(notFound(pairPartner(topo, "edge1")), /"edge1" is a single/);
  });

  it("pairPartner of an unknown node is not found", () => {
    assert.match(notFound(pairPartner(topo, "ghost")), /not declared/);
  });
});
