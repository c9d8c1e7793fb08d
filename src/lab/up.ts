import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { labApply, labGet, labSetTopology } from "../cluster/lab-client.js";
import { applyRequest } from "./api/protocol.js";
import type { ApplyObject } from "./api/protocol.js";
import { labDown } from "./down.js";
import {
  agentComponent,
  APISERVER_COMPONENT,
  CONTROLPLANE_COMPONENT,
  labStateDir,
  labStatePaths,
  nodeNetns,
  podNetns,
  ZTUNNEL_NAMESPACE,
} from "./names.js";
import type { LabStatePaths } from "./names.js";
import { netnsPath } from "../cni/runtime.js";
import { createLabNetwork } from "./netns.js";
import { httpInNetns } from "./probe.js";
import { LabProcesses } from "./processes.js";
import {
  clusterNamespaces,
  clusterNodes,
  clusterPolicies,
  clusterServices,
  controlPlaneNode,
  formatSpec,
  labNodes,
  topologyText,
  workloadPods,
  ztunnelPods,
} from "./spec.js";
import type { LabPod, LabSpec } from "./spec.js";

// `offmesh lab up`: the lab's whole cluster, from nothing, in the order a real one comes up —
// network, API server, node agents, control plane, kubelets, then the objects (ztunnel pods,
// workloads, services, policies) the kubelets turn into pods.

export const CONTROL_PLANE_PORT = 15012;
export const KUBELET_PREFIX = "kubelet-";
export const PAIR_PORT = 15031;

/** The project root (dist/src/lab/up.js → ../../..), for bin/offmesh and bin/offmesh-cni. */
export const PROJECT_ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const OFFMESH_BIN = join(PROJECT_ROOT, "bin", "offmesh");
const CNI_PLUGIN_DIRS = ["/usr/lib/cni", "/opt/cni/bin"];

export interface LabUpProgress {
  step(message: string): void;
}

export interface LabUpResult {
  readonly stateDir: string;
  readonly controlPlaneAddress: string;
  readonly pods: number;
}

export class LabUpError extends Error {
  constructor(
    readonly step: string,
    message: string,
  ) {
    super(`lab up: ${step}: ${message}`);
    this.name = "LabUpError";
  }
}

export async function labUp(
  spec: LabSpec,
  progress: LabUpProgress,
  opts: { timeoutMs?: number } = {},
): Promise<LabUpResult> {
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const stateDir = labStateDir(spec.name);
  const paths = labStatePaths(stateDir);
  progress.step(`removing leftovers of an earlier lab "${spec.name}"`);
  await labDown(spec.name);

  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  writeFileSync(paths.spec, formatSpec(spec));
  writeFileSync(paths.clusterConf, topologyText(spec));
  const cniBin = prepareCniBin(stateDir);
  const processes = new LabProcesses(stateDir);
  const node = (...args: string[]): string[] => [process.execPath, OFFMESH_BIN, ...args];

  progress.step("network: wire bridge, node namespaces, the internet");
  await createLabNetwork(spec, stateDir);

  progress.step("lab API server");
  processes.start({
    name: APISERVER_COMPONENT,
    argv: node("lab", "apiserver", "--state-dir", stateDir, "--socket", paths.apiSocket),
  });
  await waitFor(
    "the lab API server",
    timeoutMs,
    async () => (await labGet(paths.apiSocket, 2_000).catch(() => undefined))?.ok === true,
  );
  const topo = await labSetTopology(paths.apiSocket, { text: topologyText(spec), source: paths.clusterConf });
  if (!topo.ok) throw new LabUpError("topology", topo.error);
  await apply(paths, [
    ...clusterNodes(spec).map((o) => applyRequest("node", o)),
    ...clusterNamespaces(spec).map((o) => applyRequest("namespace", o)),
  ]);

  progress.step("node agents");
  const pairKeys = writePairKeys(spec, stateDir);
  for (const n of labNodes(spec)) {
    const np = paths.node(n.name);
    mkdirSync(np.dir, { recursive: true });
    const key = pairKeys.get(n.name);
    processes.start({
      name: agentComponent(n.name),
      netns: nodeNetns(spec.name, n.name),
      argv: node(
        "agent",
        "run",
        "--node",
        n.name,
        "--cluster-api",
        paths.apiSocket,
        "--state-dir",
        np.agentStateDir,
        "--socket",
        np.agentSocket,
        "--cni-conf-dir",
        np.cniConfDir,
        "--ipam-dir",
        np.ipamDir,
        "--resync",
        "10",
        ...(key ? ["--pair-key-file", key, "--pair-port", String(PAIR_PORT)] : []),
      ),
    });
  }
  await waitFor("every node agent's CNI conflist", timeoutMs, () =>
    labNodes(spec).every((n) => existsSync(join(paths.node(n.name).cniConfDir, "10-offmesh.conflist"))),
  );

  const cp = controlPlaneNode(spec);
  const controlPlaneAddress = `${cp.ip}:${CONTROL_PLANE_PORT}`;
  progress.step(`control plane on ${cp.name} (${controlPlaneAddress})`);
  processes.start({
    name: CONTROLPLANE_COMPONENT,
    netns: nodeNetns(spec.name, cp.name),
    argv: node(
      "controlplane",
      "run",
      "--cluster-api",
      paths.apiSocket,
      "--state-dir",
      paths.controlplaneDir,
      "--listen",
      controlPlaneAddress,
      "--http-addr",
      "127.0.0.1:15014",
      "--tls-ip",
      cp.ip,
    ),
  });
  await waitFor("the control plane's root certificate", timeoutMs, () =>
    existsSync(join(paths.controlplaneDir, "ca", "root-cert.pem")),
  );

  progress.step("kubelets");
  for (const n of labNodes(spec)) {
    processes.start({
      name: `${KUBELET_PREFIX}${n.name}`,
      argv: node(
        "lab",
        "kubelet",
        "--name",
        spec.name,
        "--node",
        n.name,
        "--control-plane",
        controlPlaneAddress,
        "--cni-path",
        [cniBin, ...CNI_PLUGIN_DIRS].join(":"),
      ),
    });
  }

  const pods = [...ztunnelPods(spec), ...workloadPods(spec)];
  progress.step(`pods: ${pods.length} (ztunnels first), services and policies`);
  await apply(paths, [
    ...pods.map(podObject),
    ...clusterServices(spec).map((o) => applyRequest("service", o)),
    ...clusterPolicies(spec).map((o) => applyRequest("policy", o)),
  ]);
  await waitFor("every pod running", timeoutMs, async () => {
    const got = await labGet(paths.apiSocket, 5_000).catch(() => undefined);
    if (!got?.ok) return false;
    return pods.every((p) =>
      got.state.pods.some(
        (c) => c.namespace === p.namespace && c.name === p.name && c.phase === "Running" && c.ips.length > 0,
      ),
    );
  });
  // Running pods are not yet a working mesh: a ztunnel starts after its pod's sandbox, and learns
  // the workloads over xDS after that. The lab is up when every ztunnel is ready and knows every
  // workload's address, so traffic right after `lab up` is meshed, not refused or timed out.
  progress.step("ztunnels: ready and knowing every workload");
  const workloadIps = async (): Promise<string[]> => {
    const got = await labGet(paths.apiSocket, 5_000).catch(() => undefined);
    return got?.ok
      ? got.state.pods.filter((p) => p.namespace !== ZTUNNEL_NAMESPACE).flatMap((p) => p.ips)
      : [];
  };
  await waitFor("every ztunnel ready and knowing every workload", timeoutMs, async () => {
    const ips = await workloadIps();
    for (const z of ztunnelPods(spec)) {
      const netns = netnsPath(podNetns(spec.name, z.node, z.namespace, z.name));
      if ((await httpInNetns(netns, ZTUNNEL_READINESS_PORT, "/healthz/ready")).status !== 200) return false;
      const dump = await httpInNetns(netns, ZTUNNEL_ADMIN_PORT, "/config_dump");
      if (dump.status !== 200 || !ips.every((ip) => knowsWorkload(dump.body ?? "", ip))) return false;
    }
    return true;
  });
  progress.step("lab is up");
  return { stateDir, controlPlaneAddress, pods: pods.length };
}

const ZTUNNEL_READINESS_PORT = 15021;
const ZTUNNEL_ADMIN_PORT = 15000;

/** Whether a ztunnel's /config_dump lists a workload with address `ip`. */
function knowsWorkload(configDump: string, ip: string): boolean {
  try {
    const dump = JSON.parse(configDump) as { workloads?: { workloadIps?: string[] }[] };
    return (dump.workloads ?? []).some((w) => w.workloadIps?.includes(ip));
  } catch {
    return false;
  }
}

function podObject(p: LabPod): ApplyObject {
  return {
    kind: "pod",
    object: {
      name: p.name,
      namespace: p.namespace,
      nodeName: p.node,
      serviceAccount: p.serviceAccount,
      labels: { ...p.labels },
      phase: "Pending",
    },
  };
}

async function apply(paths: LabStatePaths, objects: ApplyObject[]): Promise<void> {
  const res = await labApply(paths.apiSocket, objects);
  if (!res.ok)
    throw new LabUpError(
      "apply",
      `${res.error}${res.issues.map((i) => `\n  ${JSON.stringify(i)}`).join("")}`,
    );
}

/** A directory holding offmesh-cni, first on the runtime's CNI_PATH. */
function prepareCniBin(stateDir: string): string {
  const dir = join(stateDir, "cni-bin");
  mkdirSync(dir, { recursive: true });
  const link = join(dir, "offmesh-cni");
  if (!existsSync(link)) symlinkSync(join(PROJECT_ROOT, "bin", "offmesh-cni"), link);
  return dir;
}

/** One random key per CPU/DPU pair, shared by the two agents (the pair channel). */
function writePairKeys(spec: LabSpec, stateDir: string): Map<string, string> {
  const keys = new Map<string, string>();
  for (const pair of spec.pairs) {
    const file = join(stateDir, `pair-${pair.cpu.name}.key`);
    writeFileSync(file, randomBytes(32).toString("hex") + "\n", { mode: 0o600 });
    keys.set(pair.cpu.name, file);
    keys.set(pair.dpu.name, file);
  }
  return keys;
}

async function waitFor(
  what: string,
  timeoutMs: number,
  check: () => boolean | Promise<boolean>,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline)
      throw new LabUpError(
        "waiting",
        `${what}: not there after ${timeoutMs} ms (see the logs: offmesh lab logs)`,
      );
    await new Promise((r) => setTimeout(r, 200));
  }
}
