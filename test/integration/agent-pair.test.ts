import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { pino } from "pino";
import type { Logger } from "pino";
import { startDaemon } from "../../src/agent/daemon.js";
import type { DaemonOptions, RunningDaemon } from "../../src/agent/daemon.js";
import { signRequest } from "../../src/agent/pair.js";
import type { PairPod } from "../../src/agent/pair.js";
import { exchangeLine, PairCallError, PairClient } from "../../src/agent/pair-client.js";
import type { PairRoute } from "../../src/agent/pair-client.js";
import { PairKeyError } from "../../src/agent/pair-key.js";
import { MemoryClusterSource } from "../../src/cluster/memory.js";
import type { ClusterPod } from "../../src/cluster/types.js";
import { CniRuntime, createPodNetns, deletePodNetns, kubernetesCniArgs } from "../../src/cni/runtime.js";
import type { RuntimeConflist } from "../../src/cni/runtime.js";
import { ambient, namespace, pod, SEED_NODES, seedTopologyText } from "../support/cluster.js";
import { ipsetMembers } from "../support/kernel.js";
import { createNetns, rootOnly, testNetnsName } from "../support/netns.js";
import type { TestNetns } from "../support/netns.js";
import { fromRoot } from "../support/paths.js";
import { until } from "../support/wait.js";
import { createWire } from "../support/wire.js";

// "The pair agrees before a pod speaks": the CPU agent master and the DPU agent master-dpu run as
// daemons in this process, each in its node's namespace on one wire, each with its own view of the
// cluster. Pods are created through the real CNI chain on master. The DPU's view never hears of a
// pod unless a test says so: whatever the DPU captures, it learnt over the pair channel.

const scratch = mkdtempSync(join(tmpdir(), "offmesh-pair-"));
const cniBin = join(scratch, "bin");
mkdirSync(cniBin);
symlinkSync(fromRoot("bin/offmesh-cni"), join(cniBin, "offmesh-cni"));
const podNetns: string[] = [];
after(async () => {
  for (const ns of podNetns) await deletePodNetns(ns).catch(() => undefined);
  rmSync(scratch, { recursive: true, force: true });
});

function keyFile(name: string, text: string): string {
  const path = join(scratch, name);
  writeFileSync(path, text, { mode: 0o600 });
  chmodSync(path, 0o600);
  return path;
}
const KEY_TEXT = "3f".repeat(32);
const KEY_FILE = keyFile("pair.key", `${KEY_TEXT}\n`);
const KEY = Buffer.from(KEY_TEXT);
const WRONG_KEY = Buffer.from("0a".repeat(32));
const PORT = 15031;
const GRACE_MS = 60_000;

const CPU_IP = "192.168.50.130";
const DPU_IP = "192.168.50.131";
const DPU = { name: "master-dpu", ip: DPU_IP };

interface Node {
  readonly daemon: RunningDaemon;
  readonly ns: TestNetns;
  readonly runtime: CniRuntime;
  conflist(): RuntimeConflist;
}

async function startNode(
  ns: TestNetns,
  nodeName: string,
  source: MemoryClusterSource,
  tag: string,
  extra: Partial<DaemonOptions> = {},
): Promise<Node> {
  const dir = join(scratch, tag);
  mkdirSync(dir, { recursive: true });
  const daemon = await startDaemon(
    {
      nodeName,
      clusterState: join(dir, "unused-state.yaml"),
      clusterConf: join(dir, "unused-conf.yaml"),
      netns: ns.path,
      stateDir: join(dir, "state"),
      socketPath: join(dir, "cni.sock"),
      cniConfDir: join(dir, "net.d"),
      ipamDataDir: join(dir, "ipam"),
      resyncMs: 3_600_000,
      log: pino({ level: "silent" }),
      pairKeyFile: KEY_FILE,
      pairPort: PORT,
      pairGraceMs: GRACE_MS,
      ...extra,
    },
    source,
  );
  const runtime = new CniRuntime({
    cniPath: [cniBin, "/usr/lib/cni"],
    cacheDir: join(dir, "cache"),
    hostNetns: ns.path,
    timeoutMs: 20_000,
  });
  return {
    daemon,
    ns,
    runtime,
    conflist: () =>
      JSON.parse(readFileSync(join(dir, "net.d", "10-offmesh.conflist"), "utf8")) as RuntimeConflist,
  };
}

function seedSource(): MemoryClusterSource {
  const source = new MemoryClusterSource();
  source.setTopology({ text: seedTopologyText(), source: "cluster-conf.yaml" });
  for (const n of SEED_NODES) source.upsertNode(n);
  source.upsertNamespace(ambient("apps"));
  source.upsertNamespace(namespace("plain"));
  source.upsertNamespace(namespace("istio-system"));
  return source;
}

let podSeq = 0;
async function sandbox(): Promise<string> {
  const name = testNetnsName(`ppod${podSeq++}`);
  const netns = await createPodNetns(name);
  podNetns.push(name);
  return netns;
}

const attachment = (p: ClusterPod, netns: string) => ({
  containerId: `c-${p.uid}`,
  netns,
  ifName: "eth0",
  args: kubernetesCniArgs({ namespace: p.namespace, name: p.name, uid: p.uid }),
});

/** The DPU's members as a set (ipset lists them in hash order). */
const captured = (ns: TestNetns): string[] => ipsetMembers(ns).sort();
const table100 = (ns: TestNetns): string => ns.sh("ip", ["route", "show", "table", "100"]);
const escaped = (ip: string): string => ip.replace(/\./g, "\\.");
const heldUids = (n: Node): string[] => n.daemon.agent.status().pairChannel.held.map((h) => h.uid);

describe("the pair channel between master and master-dpu", { ...rootOnly }, () => {
  let cpuNs: TestNetns;
  let dpuNs: TestNetns;
  let strangerNs: TestNetns;
  let cpuSource: MemoryClusterSource;
  let dpuSource: MemoryClusterSource;
  let cpu: Node;
  let dpu: Node;
  let clockOffset = 0;
  const fromCpu: PairRoute = { from: CPU_IP, to: DPU };
  const client = (over: { key?: Buffer; netns?: string; now?: () => number } = {}): PairClient =>
    new PairClient({
      key: over.key ?? KEY,
      port: PORT,
      timeoutMs: 2000,
      netnsPath: over.netns ?? cpuNs.path,
      ...(over.now ? { now: over.now } : {}),
    });

  before(async () => {
    const wire = createWire("pair");
    cpuNs = createNetns("pair-master");
    dpuNs = createNetns("pair-mdpu");
    strangerNs = createNetns("pair-stranger");
    wire.plug(cpuNs, "ens32", `${CPU_IP}/24`);
    wire.plug(dpuNs, "ens32", `${DPU_IP}/24`);
    // worker1's address: a node of the cluster, but not master-dpu's partner.
    wire.plug(strangerNs, "ens32", "192.168.50.133/24");
    cpuSource = seedSource();
    dpuSource = seedSource();
    dpu = await startNode(dpuNs, "master-dpu", dpuSource, "dpu", { now: () => Date.now() + clockOffset });
    cpu = await startNode(cpuNs, "master", cpuSource, "cpu", { pairTimeoutMs: 2000 });
  });
  after(async () => {
    await cpu?.daemon.stop();
    await dpu?.daemon.stop();
  });

  it("reports the channel in both agents' status", () => {
    const d = dpu.daemon.agent.status().pairChannel;
    assert.deepEqual(d, { enabled: true, detail: `serving ${DPU_IP}:${PORT}`, held: [] });
    const c = cpu.daemon.agent.status().pairChannel;
    assert.equal(c.enabled, true);
    assert.match(c.detail, /holds new meshed pods on master-dpu \(192\.168\.50\.131:15031\)/);
  });

  let sleep: ClusterPod;
  let sleepIp = "";
  let sleepNetns = "";
  it("puts a new meshed pod of master into master-dpu's set before the pod's ADD returns", async () => {
    sleep = pod({ uid: "uid-sleep", name: "sleep", namespace: "apps", nodeName: "master", phase: "Pending" });
    cpuSource.upsertPod(sleep);
    sleepNetns = await sandbox();
    const result = await cpu.runtime.add(cpu.conflist(), attachment(sleep, sleepNetns));
    // Read the moment the ADD resolved; neither API view has the pod's address, and the DPU's
    // view does not know the pod at all.
    const dpuMembers = ipsetMembers(dpuNs);
    const dpuRoutes = table100(dpuNs);
    sleepIp = result.ips?.[0]?.address.split("/")[0] ?? assert.fail("the chain gave no address");
    assert.deepEqual(dpuMembers, [sleepIp]);
    assert.match(dpuRoutes, new RegExp(`^blackhole ${escaped(sleepIp)} proto 176`, "m"));
    assert.deepEqual(ipsetMembers(cpuNs), [sleepIp]);
    assert.equal(dpuSource.snapshot().pods.has(sleep.uid), false);
    assert.deepEqual(cpuSource.snapshot().pods.get(sleep.uid)?.ips, []);
    assert.deepEqual(heldUids(dpu), [sleep.uid]);
  });

  it("keeps holding while the API has not confirmed the pod, also through a full resync", async () => {
    await dpu.daemon.agent.resync();
    assert.deepEqual(ipsetMembers(dpuNs), [sleepIp]);
    assert.deepEqual(heldUids(dpu), [sleep.uid]);
  });

  it("hands the pod over to the API once the API confirms it; the grace period no longer applies", async () => {
    const running = { ...sleep, ips: [sleepIp], phase: "Running" as const };
    cpuSource.upsertPod(running);
    dpuSource.upsertPod(running);
    await dpu.daemon.agent.resync();
    assert.deepEqual(heldUids(dpu), [], "the hold was confirmed and dropped");
    clockOffset += GRACE_MS + 1000;
    await dpu.daemon.agent.resync();
    assert.deepEqual(ipsetMembers(dpuNs), [sleepIp], "an ordinary member now");
  });

  describe("refuses forged calls, and they change nothing", () => {
    const ghost: PairPod = {
      uid: "uid-ghost",
      name: "ghost",
      namespace: "apps",
      node: "master",
      ips: ["10.244.0.200"],
    };
    let membersBefore: string[] = [];
    let routesBefore = "";
    before(() => {
      membersBefore = captured(dpuNs);
      routesBefore = table100(dpuNs);
    });
    const refusal = async (call: Promise<unknown>): Promise<PairCallError> => {
      const err = await call.then(
        () => assert.fail("the DPU accepted a forged call"),
        (e: unknown) => e,
      );
      assert.ok(err instanceof PairCallError, String(err));
      return err;
    };
    const unchanged = (): void => {
      assert.deepEqual(captured(dpuNs), membersBefore);
      assert.equal(table100(dpuNs), routesBefore);
      assert.deepEqual(heldUids(dpu), []);
    };

    it("a call signed with another key", async () => {
      const err = await refusal(client({ key: WRONG_KEY }).hold(fromCpu, ghost));
      assert.equal(err.kind, "bad-answer");
      assert.match(err.message, /pair key differs.*bad credential: the request's MAC does not verify/);
      unchanged();
    });

    it("a call with the right key from another node's address", async () => {
      const err = await refusal(
        client({ netns: strangerNs.path }).hold({ from: "192.168.50.133", to: DPU }, ghost),
      );
      assert.equal(err.kind, "refused");
      assert.match(err.message, /caller 192\.168\.50\.133 is not master \(192\.168\.50\.130\)/);
      unchanged();
    });

    it("a pod address outside master's pod CIDR, and a pod of another node", async () => {
      const outside = await refusal(client().hold(fromCpu, { ...ghost, ips: ["10.244.3.9"] }));
      assert.equal(outside.kind, "refused");
      assert.match(
        outside.message,
        /address 10\.244\.3\.9 is outside the pod CIDR of master \(10\.244\.0\.0\/24\)/,
      );
      const elsewhere = await refusal(
        client().hold(fromCpu, { ...ghost, node: "worker1", ips: ["10.244.3.9"] }),
      );
      assert.match(elsewhere.message, /is on node worker1, not on master/);
      unchanged();
    });

    it("a stale request and a replayed one", async () => {
      const stale = await refusal(client({ now: () => Date.now() - 120_000 }).hold(fromCpu, ghost));
      assert.match(stale.message, /stale request/);
      const signed = signRequest(KEY, { op: "release", uid: "uid-nobody" }, Date.now());
      const target = { host: DPU_IP, port: PORT, localAddress: CPU_IP, netnsPath: cpuNs.path };
      assert.match(await exchangeLine(target, signed.line, 2000), /not held on master-dpu/);
      assert.match(await exchangeLine(target, signed.line, 2000), /replayed request/);
      unchanged();
    });
  });

  it("drops a held pod the API never confirms, on the first resync after the grace period", async () => {
    const ghost: PairPod = {
      uid: "uid-ghost",
      name: "ghost",
      namespace: "apps",
      node: "master",
      ips: ["10.244.0.201"],
    };
    const accepted = await client().hold(fromCpu, ghost);
    assert.deepEqual(accepted.captured, ["10.244.0.201"]);
    assert.deepEqual(captured(dpuNs), [sleepIp, "10.244.0.201"].sort());
    clockOffset += GRACE_MS - 1000;
    await dpu.daemon.agent.resync();
    assert.deepEqual(heldUids(dpu), [ghost.uid], "still inside the grace period");
    assert.deepEqual(captured(dpuNs), [sleepIp, "10.244.0.201"].sort());
    clockOffset += 2000;
    await dpu.daemon.agent.resync();
    assert.deepEqual(heldUids(dpu), []);
    assert.deepEqual(ipsetMembers(dpuNs), [sleepIp]);
    assert.doesNotMatch(table100(dpuNs), /10\.244\.0\.201/);
  });

  it("drops the pod on the DPU when master's CNI DEL tears it down, held or confirmed", async () => {
    const web = pod({ uid: "uid-web", name: "web", namespace: "apps", nodeName: "master", phase: "Pending" });
    cpuSource.upsertPod(web);
    const webNetns = await sandbox();
    const added = await cpu.runtime.add(cpu.conflist(), attachment(web, webNetns));
    const webIp = added.ips?.[0]?.address.split("/")[0] ?? assert.fail("no address");
    assert.deepEqual(captured(dpuNs), [sleepIp, webIp].sort());
    await cpu.runtime.del(cpu.conflist(), attachment(web, webNetns));
    await until("master-dpu to release web", () => !ipsetMembers(dpuNs).includes(webIp));
    assert.deepEqual(heldUids(dpu), []);
    // sleep is an ordinary member the DPU's API view still shows with its address.
    await cpu.runtime.del(cpu.conflist(), attachment(sleep, sleepNetns));
    await until("master-dpu to release sleep", () => !ipsetMembers(dpuNs).includes(sleepIp));
    await dpu.daemon.agent.resync();
    assert.deepEqual(ipsetMembers(dpuNs), [], "the resync keeps it out although the API still shows it");
  });

  it("fails a meshed pod's ADD, naming the DPU, while master-dpu's agent is down", async () => {
    await dpu.daemon.stop();
    const late = pod({
      uid: "uid-late",
      name: "late",
      namespace: "apps",
      nodeName: "master",
      phase: "Pending",
    });
    cpuSource.upsertPod(late);
    const netns = await sandbox();
    await assert.rejects(cpu.runtime.add(cpu.conflist(), attachment(late, netns)), (err: Error) => {
      assert.match(
        err.message,
        /pod apps\/late is captured on master but its DPU master-dpu did not confirm holding it/,
      );
      assert.match(err.message, /fail closed/);
      assert.match(err.message, /cannot connect to 192\.168\.50\.131:15031: ECONNREFUSED/);
      return true;
    });
    const plainPod = pod({
      uid: "uid-plain",
      name: "legacy",
      namespace: "plain",
      nodeName: "master",
      phase: "Pending",
    });
    cpuSource.upsertPod(plainPod);
    const plainNetns = await sandbox();
    await cpu.runtime.add(cpu.conflist(), attachment(plainPod, plainNetns));
    // A pod outside the mesh needs no DPU: its ADD succeeds.
  });
});

describe("the pair channel's configuration", { ...rootOnly }, () => {
  function capture(): { log: Logger; lines: string[] } {
    const lines: string[] = [];
    return { log: pino({ level: "warn" }, { write: (s: string) => void lines.push(s) }), lines };
  }

  it("is off without a key file: the agent warns at start and status says so", async () => {
    const ns = createNetns("pair-off");
    const { log, lines } = capture();
    const node = await startNode(ns, "worker1", seedSource(), "off", { pairKeyFile: undefined, log });
    try {
      const s = node.daemon.agent.status().pairChannel;
      assert.equal(s.enabled, false);
      assert.match(s.detail, /^off: no pair key configured \(--pair-key-file\)/);
      assert.ok(
        lines.some((l) => /"level":40.*off: no pair key configured/.test(l)),
        `a warning was logged:\n${lines.join("")}`,
      );
    } finally {
      await node.daemon.stop();
    }
  });

  it("refuses to start with a key that is too short", async () => {
    const ns = createNetns("pair-short");
    const short = keyFile("short.key", "secret\n");
    await assert.rejects(
      startNode(ns, "worker1", seedSource(), "short", { pairKeyFile: short }),
      (err: Error) => err instanceof PairKeyError && /holds 6 bytes; at least 32/.test(err.message),
    );
  });
});
