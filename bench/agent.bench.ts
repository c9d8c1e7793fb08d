// Benchmark of the node agent's apply path against the real kernel (root, network namespaces).
// Not a test: it measures and records. Every figure is also given as a ratio against a baseline
// measured in the same run on the same machine: the bare kernel commands that make the same
// change (ipset restore + ip -batch), with no planning, reading or diffing.
//
//   npm run build && node dist/bench/agent.bench.js [--out bench/results]
import { execFileSync, spawn } from "node:child_process";
import { appendFileSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { NodeAgent } from "../src/agent/agent.js";
import { AgentMetrics } from "../src/agent/metrics.js";
import { MemoryClusterSource } from "../src/cluster/memory.js";
import type { ClusterPod } from "../src/cluster/types.js";
import type { AgentRequest } from "../src/cni/protocol.js";
import { serveAgentSocket } from "../src/cni/socket.js";
import { Runner } from "../src/netapply/exec.js";
import { Reconciler } from "../src/netapply/reconciler.js";

const SIZES = [1, 100, 5000];
const REPEAT = 5;
const RUN = `ombench-${process.pid}`;
const created: string[] = [];
const scratch = mkdtempSync(join(tmpdir(), "offmesh-bench-"));
const root = join(import.meta.dirname, "..", "..");

function sh(args: string[], input?: string): string {
  return execFileSync(args[0] ?? "", args.slice(1), { encoding: "utf8", input: input ?? "" });
}
function netns(label: string): string {
  const name = `${RUN}-${label}`;
  sh(["ip", "netns", "add", name]);
  created.push(name);
  sh(["ip", "-n", name, "link", "set", "lo", "up"]);
  return name;
}
/** A node namespace with its NIC, the peer end in a wire namespace. */
function nodeNetns(label: string): string {
  const wire = netns(`${label}-w`);
  const node = netns(label);
  sh(["ip", "-n", wire, "link", "add", "p0", "type", "veth", "peer", "name", "ens32", "netns", node]);
  sh(["ip", "-n", wire, "link", "set", "p0", "up"]);
  sh(["ip", "-n", node, "addr", "add", "192.168.50.130/24", "dev", "ens32"]);
  sh(["ip", "-n", node, "link", "set", "ens32", "up"]);
  return node;
}

const TOPOLOGY = `pairs:
  - { cpuNodeIP: 192.168.50.130, dpuNodeIP: 192.168.50.131, cpuNodeName: master, dpuNodeName: master-dpu }
`;
const podIp = (i: number): string => `10.128.${Math.floor(i / 250)}.${(i % 250) + 2}`;
function meshedPod(i: number): ClusterPod {
  return {
    uid: `uid-${i}`,
    name: `p-${i}`,
    namespace: "apps",
    nodeName: "master",
    ips: [podIp(i)],
    hostNetwork: false,
    labels: {},
    annotations: {},
    phase: "Running",
    ready: true,
    serviceAccount: "default",
    terminating: false,
  };
}
function source(pods: number): MemoryClusterSource {
  const s = new MemoryClusterSource();
  s.setTopology({ text: TOPOLOGY, source: "bench" });
  s.upsertNode({ name: "master", internalIPs: ["192.168.50.130"], podCIDRs: ["10.128.0.0/16"], labels: {} });
  s.upsertNode({
    name: "master-dpu",
    internalIPs: ["192.168.50.131"],
    podCIDRs: ["10.129.0.0/24"],
    labels: {},
  });
  s.upsertNamespace({ name: "apps", labels: { "istio.io/dataplane-mode": "ambient" } });
  for (let i = 0; i < pods; i++) s.upsertPod(meshedPod(i));
  return s;
}

const addRequest = (i: number): AgentRequest => ({
  op: "add",
  pod: {
    namespace: "apps",
    name: `p-${i}`,
    uid: `uid-${i}`,
    containerId: `c${i}`,
    netns: "/x",
    ifname: "eth0",
  },
  ips: [podIp(i)],
});

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
async function time(fn: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  await fn();
  return performance.now() - t;
}

/** The bare kernel work of capturing `n` pods on a CPU: one ipset restore and one ip batch. */
function baselineCapture(node: string, n: number): number {
  const set = `ombase${n}`;
  const ipset = [`create ${set} hash:ip family inet hashsize 1024 maxelem 65536 comment`];
  const routes: string[] = [];
  for (let i = 0; i < n; i++) {
    ipset.push(`add ${set} ${podIp(i)} comment "uid-${i}"`);
    routes.push(`route replace ${podIp(i)} via 192.168.50.131 dev ens32 table 200 proto 176`);
  }
  const t = performance.now();
  sh(["ip", "netns", "exec", node, "ipset", "restore"], ipset.join("\n") + "\n");
  sh(["ip", "-n", node, "-batch", "-"], routes.join("\n") + "\n");
  const ms = performance.now() - t;
  sh(["ip", "netns", "exec", node, "ipset", "destroy", set]);
  sh(["ip", "-n", node, "route", "flush", "table", "200"]);
  return ms;
}

/** The bare kernel work of capturing one more pod: one ipset add and one route add. */
function baselineOne(node: string, i: number): number {
  const t = performance.now();
  sh(["ip", "netns", "exec", node, "ipset", "add", "ztunnel-pods-ips", podIp(i), "-exist"]);
  sh([
    "ip",
    "-n",
    node,
    "route",
    "replace",
    podIp(i),
    "via",
    "192.168.50.131",
    "dev",
    "ens32",
    "table",
    "200",
    "proto",
    "176",
  ]);
  const ms = performance.now() - t;
  sh(["ip", "netns", "exec", node, "ipset", "del", "ztunnel-pods-ips", podIp(i)]);
  sh(["ip", "-n", node, "route", "flush", "table", "200"]);
  return ms;
}

function agentFor(node: string, src: MemoryClusterSource, tag: string): NodeAgent {
  const runner = new Runner(`/var/run/netns/${node}`);
  return new NodeAgent({
    nodeName: "master",
    source: src,
    runner,
    applier: new Reconciler({ runner, stateDir: join(scratch, tag) }),
    metrics: new AgentMetrics(),
    log: pino({ level: "silent" }),
    resyncMs: 3_600_000,
    podWaitMs: 100,
  });
}

/** The offmesh-cni plugin exec'd as a runtime would, against a live agent socket. */
function pluginAdd(socket: string, i: number): Promise<number> {
  const conf = JSON.stringify({
    cniVersion: "1.0.0",
    name: "offmesh",
    type: "offmesh-cni",
    agentSocket: socket,
    prevResult: { cniVersion: "1.0.0", ips: [{ address: `${podIp(i)}/16` }] },
  });
  return new Promise((resolve, reject) => {
    const t = performance.now();
    const child = spawn(join(root, "bin", "offmesh-cni"), [], {
      env: {
        ...process.env,
        CNI_COMMAND: "ADD",
        CNI_CONTAINERID: `c${i}`,
        CNI_NETNS: "/var/run/netns/none",
        CNI_IFNAME: "eth0",
        CNI_PATH: "/usr/lib/cni",
        CNI_ARGS: `K8S_POD_NAMESPACE=apps;K8S_POD_NAME=p-${i};K8S_POD_UID=uid-${i}`,
      },
      stdio: ["pipe", "pipe", "inherit"],
    });
    child.on("close", (code) =>
      code === 0 ? resolve(performance.now() - t) : reject(new Error(`plugin exit ${code}`)),
    );
    child.stdin.end(conf);
  });
}

async function main(): Promise<void> {
  const outDir = process.argv.includes("--out")
    ? (process.argv[process.argv.indexOf("--out") + 1] ?? "bench/results")
    : "bench/results";
  const rows: string[] = [];
  const row = (what: string, ms: number, base: number): void => {
    rows.push(`| ${what} | ${ms.toFixed(1)} ms | ${base.toFixed(1)} ms | ${(ms / base).toFixed(2)}× |`);
    console.log(`${what}: ${ms.toFixed(1)} ms (baseline ${base.toFixed(1)} ms, ${(ms / base).toFixed(2)}×)`);
  };

  for (const n of SIZES) {
    const cold: number[] = [];
    const warm: number[] = [];
    const base: number[] = [];
    for (let r = 0; r < REPEAT; r++) {
      const node = nodeNetns(`n${n}r${r}`);
      const agent = agentFor(node, source(n), `n${n}r${r}`);
      cold.push(await time(() => agent.start()));
      warm.push(await time(() => agent.resync()));
      base.push(baselineCapture(node, n));
      await agent.stop();
    }
    row(`first apply, ${n} meshed pods (plan + read + write everything)`, median(cold), median(base));
    row(`full resync, ${n} meshed pods, nothing to change`, median(warm), median(base));
  }

  // ADD → captured with 5,000 pods already on the node.
  const node = nodeNetns("add");
  const src = source(5000);
  const agent = agentFor(node, src, "add");
  await agent.start();
  const socket = join(scratch, "add.sock");
  const server = await serveAgentSocket(socket, (req) => agent.handle(req));
  const inAgent: number[] = [];
  const viaPlugin: number[] = [];
  const one: number[] = [];
  const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 150));
  for (let k = 0; k < 20; k++) {
    const i = 5000 + k;
    src.upsertPod({ ...meshedPod(i), ips: [] });
    // The kubelet creates the pod object, the informer delivers it, then the runtime runs the
    // sandbox and CNI ADD: let the agent finish handling the pod event first, as it would.
    await settle();
    inAgent.push(await time(() => agent.handle(addRequest(i))));
    const j = 6000 + k;
    src.upsertPod({ ...meshedPod(j), ips: [] });
    await settle();
    viaPlugin.push(await pluginAdd(socket, j));
    one.push(baselineOne(node, 7000 + k));
  }
  // Under churn: the ADD arrives while the agent is still replanning after the pod's own event.
  const churn: number[] = [];
  for (let k = 0; k < 20; k++) {
    const i = 8000 + k;
    src.upsertPod({ ...meshedPod(i), ips: [] });
    churn.push(await time(() => agent.handle(addRequest(i))));
    await settle();
  }
  row("ADD → captured at 5,000 pods, agent side (request to answer)", median(inAgent), median(one));
  row(
    "ADD → captured at 5,000 pods, through the plugin process (includes starting node)",
    median(viaPlugin),
    median(one),
  );
  row(
    "ADD → captured at 5,000 pods, agent side, ADD right after the pod event (churn)",
    median(churn),
    median(one),
  );
  await server.close();
  await agent.stop();

  const cpu = cpus()[0]?.model ?? "unknown cpu";
  const kernel = sh(["uname", "-r"]).trim();
  const header = [
    `## ${new Date().toISOString().slice(0, 10)} — agent apply path`,
    "",
    `Machine: ${cpus().length} × ${cpu}, kernel ${kernel}, Node ${process.version}. Median of ${REPEAT} runs (20 for ADD).`,
    "Baseline: the bare kernel commands making the same change in the same run (ipset restore + ip -batch for N pods; ipset add + ip route replace for one).",
    "",
    "| measurement | offmesh | baseline | ratio |",
    "|---|---|---|---|",
  ];
  mkdirSync(outDir, { recursive: true });
  appendFileSync(join(outDir, "agent.md"), [...header, ...rows, "", ""].join("\n"));
  console.log(`recorded in ${join(outDir, "agent.md")}`);
}

try {
  await main();
} finally {
  for (const ns of created) {
    try {
      sh(["ip", "netns", "del", ns]);
    } catch {
      // already gone
    }
  }
  rmSync(scratch, { recursive: true, force: true });
}
