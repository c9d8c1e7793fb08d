import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { parseFacts } from "../../src/netplan/facts.js";
import { planNode } from "../../src/netplan/plan.js";
import type { Sysctl } from "../../src/netplan/types.js";
import { SysctlBackend } from "../../src/netapply/sysctl.js";
import { parseTopology } from "../../src/topology/parse.js";
import { createNetns, isRoot, rootOnly } from "../support/netns.js";
import type { TestNetns } from "../support/netns.js";
import { fromRoot } from "../support/paths.js";

// The sysctl backend in a network namespace: the CPU plan's sysctls applied (they are per
// namespace, so the root namespace must not change), originals recorded once and restored.

// Created when the file loads, so that the support module's cleanup hook belongs to the file.
const netns = isRoot ? createNetns("sysctl") : undefined;

function masterSysctls(): readonly Sysctl[] {
  const configPath = "examples/seed/cluster-conf.yaml";
  const topo = parseTopology(readFileSync(fromRoot(configPath), "utf8"), configPath);
  assert.ok(topo.ok);
  const factsPath = "examples/seed/master.yaml";
  const facts = parseFacts(readFileSync(fromRoot(factsPath), "utf8"), factsPath, {
    topology: topo.value,
    node: "master",
  });
  assert.ok(facts.ok);
  const outcome = planNode(topo.value, "master", facts.value);
  assert.ok(outcome.planned);
  return outcome.plan.host.sysctls;
}

const procPath = (key: string): string => `/proc/sys/${key.replaceAll(".", "/")}`;

describe("sysctl backend", { ...rootOnly }, () => {
  const planned = masterSysctls();
  let ns: TestNetns;
  let dir: string;
  let stateFile: string;
  let backend: SysctlBackend;
  /** Values in the namespace before any test wrote them. */
  const originals = new Map<string, string>();
  // A key whose value the test sets to differ from the root namespace's, to show which one changes.
  const probe = "net.ipv4.conf.default.accept_local";
  let rootProbe: string;

  const read = (key: string): string => ns.sh("cat", [procPath(key)]).trim();
  const state = (): Record<string, string> =>
    (JSON.parse(readFileSync(stateFile, "utf8")) as { originals: Record<string, string> }).originals;

  before(() => {
    assert.ok(netns);
    ns = netns;
    ns.sh("ip", ["link", "add", "name", "ens32", "type", "veth", "peer", "name", "ens32-far"]);
    ns.sh("ip", ["link", "add", "name", "gone0", "type", "veth", "peer", "name", "gone0-far"]);
    dir = mkdtempSync(join(tmpdir(), "omt-sysctl-"));
    stateFile = join(dir, "nested", "state", "sysctl.json");
    backend = new SysctlBackend(ns.runner, stateFile);
    rootProbe = readFileSync(procPath(probe), "utf8").trim();
    for (const key of [...planned.map((s) => s.key), probe, "net.ipv4.conf.gone0.rp_filter"]) {
      originals.set(key, read(key));
    }
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  it("a dry run reports the changes and writes nothing, not even the state file", async () => {
    const result = await backend.reconcile(planned, { dryRun: true });
    assert.equal(result.writes, 0);
    assert.ok(result.changes.length > 0);
    assert.equal(existsSync(stateFile), false);
    for (const s of planned) assert.equal(read(s.key), originals.get(s.key), s.key);
  });

  it("applies the CPU plan's sysctls in the namespace, after recording the values it changes", async () => {
    const probeValue = rootProbe === "0" ? "1" : "0";
    const desired = [...planned, { key: probe, value: probeValue }];
    const result = await backend.reconcile(desired);
    const differing = desired.filter((s) => originals.get(s.key) !== s.value);
    assert.equal(result.writes, 1);
    assert.deepEqual(
      result.changes.map((c) => c.detail),
      differing.map((s) => `${s.key} = ${s.value} (was ${originals.get(s.key)})`),
    );
    for (const s of desired) assert.equal(read(s.key), s.value, s.key);
    assert.deepEqual(state(), Object.fromEntries(differing.map((s) => [s.key, originals.get(s.key)])));
    assert.equal(readFileSync(procPath(probe), "utf8").trim(), rootProbe, "the root namespace is untouched");
  });

  it("applying again writes nothing", async () => {
    const desired = [...planned, { key: probe, value: rootProbe === "0" ? "1" : "0" }];
    assert.deepEqual(await backend.reconcile(desired), { changes: [], writes: 0 });
  });

  it("a later change of a recorded key keeps its first original", async () => {
    const key = "net.ipv4.conf.ens32.rp_filter";
    await backend.reconcile([{ key, value: "2" }]);
    assert.equal(state()[key], originals.get(key));
    await backend.reconcile([{ key, value: "1" }]);
    assert.equal(read(key), "1");
    assert.equal(state()[key], originals.get(key));
    await backend.reconcile([{ key: "net.ipv4.conf.gone0.rp_filter", value: "2" }]);
    assert.equal(state()["net.ipv4.conf.gone0.rp_filter"], originals.get("net.ipv4.conf.gone0.rp_filter"));
  });

  it("a key that does not exist fails naming it, and nothing is written", async () => {
    const key = "net.ipv4.conf.ens32.rp_filter";
    await assert.rejects(
      backend.reconcile([
        { key, value: "2" },
        { key: "net.ipv4.conf.nosuchlink0.rp_filter", value: "0" },
      ]),
      {
        name: "ApplyError",
        message: `sysctl: net.ipv4.conf.nosuchlink0.rp_filter does not exist in netns ${ns.path}`,
      },
    );
    assert.equal(read(key), "1");
  });

  it("cleanup restores every original, skips keys of links that are gone, removes the state file", async () => {
    ns.sh("ip", ["link", "del", "dev", "gone0"]);
    const result = await backend.cleanup();
    assert.equal(result.writes, 1);
    assert.ok(result.changes.every((c) => c.action === "restore" && !c.detail.includes("gone0")));
    for (const key of [...planned.map((s) => s.key), probe]) assert.equal(read(key), originals.get(key), key);
    assert.equal(existsSync(stateFile), false);
    assert.deepEqual(await backend.cleanup(), { changes: [], writes: 0 });
  });

  it("a state file that is not JSON is left alone and nothing is written", async () => {
    writeFileSync(stateFile, "{ not json");
    await assert.rejects(backend.reconcile([{ key: "net.ipv4.ip_forward", value: "1" }]), /is not JSON/);
    assert.equal(readFileSync(stateFile, "utf8"), "{ not json");
    assert.equal(read("net.ipv4.ip_forward"), originals.get("net.ipv4.ip_forward"));
    rmSync(stateFile);
  });
});
