import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { runCli } from "../../src/cli/main.js";
import { captureIo } from "../support/io.js";
import { fromRoot } from "../support/paths.js";

const seed = fromRoot("examples/seed/cluster-conf.yaml");
const scratch = mkdtempSync(join(tmpdir(), "offmesh-cli-"));
after(() => rmSync(scratch, { recursive: true, force: true }));

function write(name: string, text: string): string {
  const path = join(scratch, name);
  writeFileSync(path, text);
  return path;
}

describe("offmesh validate", () => {
  it("exits 0 and prints a summary table of pairs and singles", async () => {
    const io = captureIo();
    assert.equal(await runCli(["validate", fromRoot("examples/large/cluster-conf.yaml")], io), 0);
    const out = io.stdout();
    assert.match(out, /valid, IPv4, 3 pairs, 1 single/);
    assert.match(out, /^ENTRY\s+NODE\s+ROLE\s+IP\s+PARTNER\s+SERVED BY ZTUNNEL ON$/m);
    assert.match(out, /^pairs\[1\]\s+cpu2\s+cpu\s+10\.10\.0\.12\s+cpu2-dpu\s+cpu2-dpu$/m);
    assert.match(out, /^singles\[0\]\s+edge1\s+single\s+10\.10\.0\.31\s+-\s+edge1$/m);
    assert.equal(io.stderr(), "");
  });

  it("--json prints the nodes with role, partner and serving node", async () => {
    const io = captureIo();
    assert.equal(await runCli(["validate", "--json", seed], io), 0);
    const doc = JSON.parse(io.stdout()) as {
      ok: boolean;
      family: string;
      nodes: { name: string; servedBy: string }[];
    };
    assert.equal(doc.ok, true);
    assert.equal(doc.family, "IPv4");
    assert.deepEqual(
      doc.nodes.map((n) => [n.name, n.servedBy]),
      [
        ["master", "master-dpu"],
        ["master-dpu", "master-dpu"],
        ["worker1", "worker1-dpu"],
        ["worker1-dpu", "worker1-dpu"],
      ],
    );
  });

  it("exits 1 and prints every error with file, line and field", async () => {
    const bad = write(
      "bad.yaml",
      [
        "pairs:",
        "  - cpuNodeIP: 10.0.0.1",
        "    dpuNodeIP: 10.0.0.1",
        "    cpuNodeName: Master",
        "    dpuNodeName: m-dpu",
        "    extra: 1",
      ].join("\n"),
    );
    const io = captureIo();
    assert.equal(await runCli(["validate", bad], io), 1);
    const lines = io.stderr().trimEnd().split("\n");
    assert.equal(lines.length, 3, io.stderr());
    assert.ok(lines.every((l) => l.startsWith(`error: ${bad}:`)));
    assert.match(io.stderr(), /:6:5: pairs\[0\]\.extra: unknown key "extra"/);
    assert.match(io.stderr(), /:4:18: pairs\[0\]\.cpuNodeName: "Master" is not a valid Kubernetes node name/);
    assert.match(io.stderr(), /:3:16: pairs\[0\]\.dpuNodeIP: address 10\.0\.0\.1 is already declared/);
    assert.equal(io.stdout(), "");
  });

  it("--json reports errors as data and still exits 1", async () => {
    const io = captureIo();
    assert.equal(await runCli(["validate", "--json", write("empty.yaml", "")], io), 1);
    const doc = JSON.parse(io.stdout()) as { ok: boolean; issues: { field: string }[] };
    assert.equal(doc.ok, false);
    assert.equal(doc.issues[0]?.field, "(file)");
  });

  it("names a file that cannot be read", async () => {
    const io = captureIo();
    assert.equal(await runCli(["validate", join(scratch, "missing.yaml")], io), 1);
    assert.match(io.stderr(), /missing\.yaml: \(file\): cannot be read/);
  });

  it("exits 2 on a usage error", async () => {
    const io = captureIo();
    assert.equal(await runCli(["validate"], io), 2);
    assert.match(io.stderr(), /missing required argument/);
  });
});

describe("offmesh render", () => {
  const args = (node: string): string[] => [
    "render",
    "--config",
    seed,
    "--facts",
    fromRoot(`examples/seed/${node}.yaml`),
    "--node",
    node,
  ];

  it("prints the node's state in the operators' formats", async () => {
    const io = captureIo();
    assert.equal(await runCli(args("master-dpu"), io), 0);
    const out = io.stdout();
    for (const heading of [
      "## CNI conflist",
      "## iptables-save",
      "## ipset save ztunnel-pods-ips",
      "## ip rule",
      "## ip route show table main",
      "## ip route show table 100",
      "## ip route show table 101",
      "## ip route show table 102",
      "## links",
      "## sysctl",
      "# ---- inside the ztunnel pod's network namespace ----",
    ]) {
      assert.ok(out.includes(heading), `missing section ${heading}`);
    }
  });

  it("--json prints the plan as data", async () => {
    const io = captureIo();
    assert.equal(await runCli([...args("master"), "--json"], io), 0);
    const doc = JSON.parse(io.stdout()) as {
      planned: boolean;
      plan: { role: string; host: { ipsets: { members: unknown[] }[] } };
    };
    assert.equal(doc.planned, true);
    assert.equal(doc.plan.role, "cpu");
    assert.equal(doc.plan.host.ipsets[0]?.members.length, 2);
  });

  it("refuses a node that is not in the topology and says why (bug 20)", async () => {
    const io = captureIo();
    const facts = write(
      "stranger.yaml",
      "nic: { name: eth0, ip: 192.168.50.200 }\npodCIDRs: [10.244.9.0/24]\npodGateway: 10.244.9.1\nclusterPodCIDRs: [10.244.0.0/16]\n",
    );
    assert.equal(await runCli(["render", "--config", seed, "--facts", facts, "--node", "stranger"], io), 1);
    assert.match(
      io.stderr(),
      /stranger: nothing planned: node "stranger" is not declared in .*cluster-conf\.yaml/,
    );
    assert.equal(io.stdout(), "");
  });

  it("rejects facts that disagree with the topology, naming the field", async () => {
    const io = captureIo();
    const facts = write(
      "wrong-ip.yaml",
      "nic: { name: ens32, ip: 192.168.50.199 }\npodCIDRs: [10.244.0.0/24]\npodGateway: 10.244.0.1\nclusterPodCIDRs: [10.244.0.0/16]\n",
    );
    assert.equal(await runCli(["render", "--config", seed, "--facts", facts, "--node", "master"], io), 1);
    assert.match(
      io.stderr(),
      /wrong-ip\.yaml:1:\d+: nic\.ip: 192\.168\.50\.199 is not the address .* declares for "master"/,
    );
  });

  it("requires --config, --facts and --node", async () => {
    const io = captureIo();
    assert.equal(await runCli(["render", "--config", seed], io), 2);
    assert.match(io.stderr(), /required option/);
  });
});

describe("bin/offmesh", () => {
  it("runs the built CLI and passes its exit code through", () => {
    const ok = execFileSync(fromRoot("bin/offmesh"), ["validate", seed], { encoding: "utf8" });
    assert.match(ok, /2 pairs, 0 singles/);
    const bad = spawnSync(fromRoot("bin/offmesh"), ["validate", join(scratch, "nope.yaml")], {
      encoding: "utf8",
    });
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /cannot be read/);
  });
});

describe("offmesh controlplane run: proxy authentication flags", () => {
  const base = ["controlplane", "run", "--cluster-state", "s.yaml", "--cluster-conf", "c.yaml"];

  it("refuses --kubeconfig without --proxy-auth kubernetes, starting nothing", async () => {
    const io = captureIo();
    assert.equal(await runCli([...base, "--kubeconfig", "k"], io), 2);
    assert.match(io.stderr(), /--kubeconfig and --token-audience need --proxy-auth kubernetes/);
  });

  it("refuses an unknown --proxy-auth", async () => {
    const io = captureIo();
    assert.equal(await runCli([...base, "--proxy-auth", "ldap"], io), 2);
    assert.match(io.stderr(), /--proxy-auth.*ldap.*lab, kubernetes/s);
  });

  it("names the kubeconfig that cannot be used", async () => {
    const io = captureIo();
    const missing = join(scratch, "no-kubeconfig");
    const args = [
      ...base,
      "--proxy-auth",
      "kubernetes",
      "--kubeconfig",
      missing,
      "--state-dir",
      join(scratch, "cp"),
    ];
    assert.equal(await runCli([...args, "--listen", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"], io), 1);
    assert.match(io.stderr(), /--kubeconfig: .*no-kubeconfig: no such file/);
  });
});
