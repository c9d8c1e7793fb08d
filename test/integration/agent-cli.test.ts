import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { stringify } from "yaml";
import { createNetns, rootOnly } from "../support/netns.js";
import type { TestNetns } from "../support/netns.js";
import { ipsetMembers } from "../support/kernel.js";
import { fromRoot } from "../support/paths.js";
import { until } from "../support/wait.js";
import { createWire } from "../support/wire.js";

// `offmesh agent` as a user runs it: a daemon process inside a node's namespace, fed by a cluster
// state file, asked with `offmesh agent status`, stopped with SIGTERM, cleaned with `cleanup`.

const offmesh = fromRoot("bin/offmesh");
const dir = mkdtempSync(join(tmpdir(), "offmesh-agent-cli-"));
const statePath = join(dir, "cluster.yaml");
const confPath = join(dir, "cluster-conf.yaml");
const stateDir = join(dir, "state");
const socket = join(dir, "cni.sock");
let daemon: ChildProcess | undefined;
after(() => {
  if (daemon?.exitCode === null) daemon.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

const cpuPod = (i: number): Record<string, unknown> => ({
  uid: `uid-${i}`,
  name: `app-${i}`,
  namespace: "apps",
  nodeName: "master",
  ips: [`10.244.0.${10 + i}`],
});

function writeState(pods: number): void {
  writeFileSync(
    statePath,
    stringify({
      nodes: [
        { name: "master", internalIPs: ["192.168.50.130"], podCIDRs: ["10.244.0.0/24"] },
        { name: "master-dpu", internalIPs: ["192.168.50.131"], podCIDRs: ["10.244.1.0/24"] },
      ],
      namespaces: [{ name: "apps", labels: { "istio.io/dataplane-mode": "ambient" } }],
      pods: Array.from({ length: pods }, (_, i) => cpuPod(i)),
    }),
  );
}

function run(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(offmesh, args, { encoding: "utf8", timeout: 20_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const members = ipsetMembers;

describe("offmesh agent (the daemon and its commands)", { ...rootOnly }, () => {
  let node: TestNetns;
  before(() => {
    const wire = createWire("cli");
    node = createNetns("cli-master");
    wire.plug(node, "ens32", "192.168.50.130/24");
    writeFileSync(
      confPath,
      spawnSync("cat", [fromRoot("examples/seed/cluster-conf.yaml")], { encoding: "utf8" }).stdout,
    );
    writeState(1);
  });

  it("runs in the node's namespace and answers `offmesh agent status`", async () => {
    daemon = spawn(
      "ip",
      [
        "netns",
        "exec",
        node.name,
        offmesh,
        "agent",
        "run",
        "--node",
        "master",
        "--cluster-state",
        statePath,
        "--cluster-conf",
        confPath,
        "--state-dir",
        stateDir,
        "--socket",
        socket,
        "--cni-conf-dir",
        join(dir, "net.d"),
        "--resync",
        "1",
        "--metrics-addr",
        "127.0.0.1:15030",
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    let stderr = "";
    daemon.stderr?.on("data", (b: Buffer) => (stderr += b.toString()));
    await until(`the agent's socket (stderr: ${stderr})`, () => existsSync(socket));
    await until("the first apply", () =>
      run(["agent", "status", "--socket", socket, "--json"]).stdout.includes('"lastApply"'),
    );
    const status = run(["agent", "status", "--socket", socket]);
    assert.equal(status.status, 0, status.stderr);
    assert.match(status.stdout, /^node\s+master \(cpu, paired with master-dpu\)$/m);
    assert.match(status.stdout, /^ready\s+yes$/m);
    assert.match(status.stdout, /^members\s+1$/m);
    assert.match(status.stdout, /10\.244\.0\.10\s+uid-0/);
    assert.deepEqual(members(node), ["10.244.0.10"]);
    assert.ok(existsSync(join(dir, "net.d", "10-offmesh.conflist")), "conflist installed");
  });

  it("follows changes of the cluster state file", async () => {
    writeState(3);
    await until("three members", () => members(node).length === 3);
    assert.deepEqual(members(node).sort(), ["10.244.0.10", "10.244.0.11", "10.244.0.12"]);
  });

  it("repairs drift on demand with `offmesh agent resync`", () => {
    node.sh("ipset", ["del", "ztunnel-pods-ips", "10.244.0.11"]);
    const res = run(["agent", "resync", "--socket", socket]);
    assert.equal(res.status, 0, res.stderr);
    assert.match(res.stdout, /drift repairs [1-9]/);
    assert.equal(members(node).length, 3);
  });

  it("serves Prometheus metrics and readiness inside the node", () => {
    const fetchIn = (path: string): string =>
      node.sh("node", [
        "-e",
        `fetch("http://127.0.0.1:15030${path}").then(async r => process.stdout.write(r.status + " " + await r.text()))`,
      ]);
    const metrics = fetchIn("/metrics");
    assert.match(metrics, /^200 /);
    assert.match(metrics, /^offmesh_agent_members 3$/m);
    assert.match(metrics, /^offmesh_agent_applies_total\{kind="full",result="ok"\} \d+$/m);
    assert.match(metrics, /offmesh_agent_apply_duration_seconds_bucket/);
    assert.match(fetchIn("/healthz"), /^200 ready/);
  });

  it("refuses a second agent for the same node, naming the first", () => {
    const second = run([
      "agent",
      "run",
      "--node",
      "master",
      "--cluster-state",
      statePath,
      "--cluster-conf",
      confPath,
      "--state-dir",
      stateDir,
      "--socket",
      join(dir, "other.sock"),
      "--metrics-addr",
      "127.0.0.1:0",
    ]);
    assert.equal(second.status, 1);
    assert.match(
      second.stderr,
      /agent\.lock is held by process \d+: another offmesh agent manages this node/,
    );
  });

  it("reports a rejected topology change and keeps the rules", async () => {
    writeFileSync(confPath, "pairs:\n  - cpuNodeIP: 192.168.50.130\n");
    await until("the rejection", () =>
      run(["agent", "status", "--socket", socket]).stdout.includes("rejected"),
    );
    const status = run(["agent", "status", "--socket", socket]).stdout;
    assert.match(status, /error: .*cluster-conf\.yaml rejected, keeping the previous topology/);
    assert.equal(members(node).length, 3);
    writeFileSync(
      confPath,
      spawnSync("cat", [fromRoot("examples/seed/cluster-conf.yaml")], { encoding: "utf8" }).stdout,
    );
    await until(
      "the topology back",
      () => !run(["agent", "status", "--socket", socket]).stdout.includes("rejected"),
    );
  });

  it("stops on SIGTERM leaving the rules in place (fail closed); cleanup removes them", async () => {
    const proc = daemon;
    assert.ok(proc?.pid);
    const exited = new Promise<number | null>((r) => proc.once("exit", (code) => r(code)));
    proc.kill("SIGTERM");
    assert.equal(await exited, 0);
    assert.equal(members(node).length, 3, "rules stay after the agent exits");
    const cleanup = run(["agent", "cleanup", "--netns", node.path, "--state-dir", stateDir]);
    assert.equal(cleanup.status, 0, cleanup.stderr);
    assert.match(cleanup.stdout, /^cleanup: \d+ changes, \d+ writes$/m);
    assert.doesNotMatch(node.sh("iptables-save", []), /ztunnel-|OFFMESH-/);
    assert.doesNotMatch(node.sh("ip", ["rule"]), /^(90|99|100|101|103):/m);
    assert.doesNotMatch(node.sh("ipset", ["list", "-n"]), /ztunnel/);
  });
});
